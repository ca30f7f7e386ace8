//! Tiny webhook (HTTP) and SMTP receivers for alert tests: each listens on 127.0.0.1 on a free
//! port and records what arrives for the test to assert on (with `wait_*` helpers that time out,
//! so a missing alert fails the test instead of hanging it). Dropping a receiver stops it.
//!
//! The webhook receiver is an axum server on its own thread and runtime. The SMTP receiver is
//! hand-written (no maintained crate offers a small embeddable SMTP server): it serves every
//! connection on its own thread and decodes AUTH with the `base64` crate.
//!
//! ```ignore
//! let (url, hook) = WebhookReceiver::start();
//! let (port, smtp) = SmtpReceiver::start();
//! // ... write url (it ends in WEBHOOK_SECRET) and port into the config, run lifeboat ...
//! let json = hook.wait_for(1, RECEIVE_WAIT);
//! let mail = smtp.wait_for(1, RECEIVE_WAIT);
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use tokio::sync::oneshot;

/// A sensible default for `wait_for`: well above one delivery attempt (10 s) plus its retry.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(30);
/// The last path segment of every [`WebhookReceiver`] URL: stands for the token real webhook URLs
/// carry, so tests can assert it never shows up in output, logs or errors.
pub const WEBHOOK_SECRET: &str = "s3cr3t-webhook-token";
/// Idle SMTP connections are dropped after this, so no thread outlives its test for long.
const IDLE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the recorded data down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accept connections until `stop`, each handled on its own thread.
fn serve(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(IDLE));
            let handle = Arc::clone(&handle);
            thread::spawn(move || handle(conn));
        }
    });
}

/// Wake the accept loop so it sees `stop` and ends.
fn stop_listener(stop: &AtomicBool, addr: SocketAddr) {
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

/// Poll `get` until `done` holds or `timeout` passes; panics with what arrived, naming `what`.
fn wait<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    get: impl Fn() -> Vec<T>,
    done: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = get();
        if done(&got) {
            return got;
        }
        if Instant::now() >= deadline {
            panic!("{what}: condition not met within {timeout:?}; received so far: {got:#?}");
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------------------------

/// One HTTP request as received.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct HookShared {
    requests: Mutex<Vec<HttpRequest>>,
}

/// Records every request and answers `200 OK`.
pub struct WebhookReceiver {
    shared: Arc<HookShared>,
    addr: SocketAddr,
    /// Sent (or dropped) on drop: the server's runtime ends, and its connections with it.
    stop: Option<oneshot::Sender<()>>,
}

impl WebhookReceiver {
    /// Start; returns the URL to configure (`http://127.0.0.1:PORT/hooks/WEBHOOK_SECRET`; any
    /// path is accepted) and the receiver.
    pub fn start() -> (String, WebhookReceiver) {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("webhook receiver: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("webhook receiver: local address");
        listener
            .set_nonblocking(true)
            .expect("webhook receiver: non-blocking listener");
        let shared = Arc::new(HookShared {
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(record_request)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("webhook receiver: runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("webhook receiver: listener");
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        let receiver = WebhookReceiver {
            shared,
            addr,
            stop: Some(stop),
        };
        (receiver.url(), receiver)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/{WEBHOOK_SECRET}", self.addr)
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The JSON bodies received, oldest first (bodies that are not JSON are left out).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.requests()
            .iter()
            .filter_map(HttpRequest::json)
            .collect()
    }

    /// Wait until at least `n` JSON messages have arrived; returns all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        self.wait_until(timeout, |m| m.len() >= n)
    }

    /// Wait until `done` holds for the JSON messages received; returns them.
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        wait("webhook receiver", timeout, || self.messages(), done)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Record one request (any method, any path) and answer `200 OK`.
async fn record_request(
    State(shared): State<Arc<HookShared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
            (name.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    lock(&shared.requests).push(HttpRequest {
        method: method.to_string(),
        headers,
        body: body.to_vec(),
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response()
}

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

/// One message as received: envelope, raw DATA (dot-unstuffed, CRLF line ends) and the
/// credentials the client authenticated with, if any.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// (username, password) from AUTH PLAIN or AUTH LOGIN.
    pub auth: Option<(String, String)>,
}

impl Mail {
    /// A header's value with folded lines joined (`Subject`, `To`, ...), case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        let prefix = format!("{}:", name.to_ascii_lowercase());
        unfolded
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    }

    /// Everything after the headers.
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

struct SmtpShared {
    mails: Mutex<Vec<Mail>>,
    refuse: AtomicBool,
}

/// Speaks just enough SMTP for lettre without TLS (`tls = "none"`): EHLO/HELO, AUTH PLAIN/LOGIN,
/// MAIL, RCPT, DATA, RSET, NOOP, QUIT. STARTTLS is neither offered nor accepted.
pub struct SmtpReceiver {
    shared: Arc<SmtpShared>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl SmtpReceiver {
    /// Start; returns the port to configure (`server = "127.0.0.1"`, `tls = "none"`) and the receiver.
    pub fn start() -> (u16, SmtpReceiver) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("SMTP receiver: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("SMTP receiver: local address");
        let shared = Arc::new(SmtpShared {
            mails: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let conn_shared = Arc::clone(&shared);
        serve(listener, Arc::clone(&stop), move |conn| {
            let _ = handle_smtp(conn, &conn_shared);
        });
        (addr.port(), SmtpReceiver { shared, addr, stop })
    }

    /// While set, every recipient is refused with a permanent `550`, as a server that will not
    /// relay does.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    pub fn mails(&self) -> Vec<Mail> {
        lock(&self.shared.mails).clone()
    }

    /// Wait until at least `n` messages have arrived; returns all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        self.wait_until(timeout, |m| m.len() >= n)
    }

    /// Wait until `done` holds for the messages received; returns them.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[Mail]) -> bool) -> Vec<Mail> {
        wait("SMTP receiver", timeout, || self.mails(), done)
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        stop_listener(&self.stop, self.addr);
    }
}

fn handle_smtp(conn: TcpStream, shared: &SmtpShared) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut say = |text: &str| -> std::io::Result<()> {
        out.write_all(text.as_bytes())?;
        out.write_all(b"\r\n")?;
        out.flush()
    };
    let read = |reader: &mut BufReader<TcpStream>| -> std::io::Result<Option<String>> {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    };
    say("220 lifeboat-test-receiver ESMTP ready")?;
    let mut auth = None;
    let mut from = String::new();
    let mut to = Vec::new();
    while let Some(line) = read(&mut reader)? {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        match verb {
            "EHLO" => say(
                "250-lifeboat-test-receiver\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN",
            )?,
            "HELO" => say("250 lifeboat-test-receiver")?,
            "MAIL" => {
                from = angle(&line);
                to.clear();
                say("250 2.1.0 OK")?;
            }
            "RCPT" => {
                if shared.refuse.load(Ordering::SeqCst) {
                    say("550 5.7.1 relaying denied by the test receiver")?;
                } else {
                    to.push(angle(&line));
                    say("250 2.1.5 OK")?;
                }
            }
            "DATA" => {
                say("354 End data with <CR><LF>.<CR><LF>")?;
                let mut lines = Vec::new();
                loop {
                    let Some(l) = read(&mut reader)? else {
                        return Ok(());
                    };
                    if l == "." {
                        break;
                    }
                    lines.push(l.strip_prefix('.').map_or(l.clone(), str::to_string));
                }
                lock(&shared.mails).push(Mail {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data: lines.join("\r\n"),
                    auth: auth.clone(),
                });
                say("250 2.0.0 OK queued")?;
            }
            "AUTH" => {
                let words: Vec<&str> = line.split_whitespace().collect();
                let mechanism = words.get(1).map(|m| m.to_ascii_uppercase());
                match mechanism.as_deref() {
                    Some("PLAIN") => {
                        let encoded = match words.get(2) {
                            Some(w) => w.to_string(),
                            None => {
                                say("334 ")?;
                                read(&mut reader)?.unwrap_or_default()
                            }
                        };
                        let decoded =
                            String::from_utf8_lossy(&base64_decode(&encoded)).into_owned();
                        let mut fields = decoded.split('\0').skip(1);
                        let user = fields.next().unwrap_or("").to_string();
                        let pass = fields.next().unwrap_or("").to_string();
                        auth = Some((user, pass));
                        say("235 2.7.0 Authentication successful")?;
                    }
                    Some("LOGIN") => {
                        let user = match words.get(2) {
                            Some(w) => w.to_string(),
                            None => {
                                say("334 VXNlcm5hbWU6")?;
                                read(&mut reader)?.unwrap_or_default()
                            }
                        };
                        say("334 UGFzc3dvcmQ6")?;
                        let pass = read(&mut reader)?.unwrap_or_default();
                        let text =
                            |b: &str| String::from_utf8_lossy(&base64_decode(b)).into_owned();
                        auth = Some((text(&user), text(&pass)));
                        say("235 2.7.0 Authentication successful")?;
                    }
                    _ => say("504 5.5.4 mechanism not supported")?,
                }
            }
            "RSET" => {
                from.clear();
                to.clear();
                say("250 2.0.0 OK")?;
            }
            "NOOP" => say("250 2.0.0 OK")?,
            "QUIT" => {
                say("221 2.0.0 Bye")?;
                return Ok(());
            }
            "STARTTLS" => say("454 4.7.0 TLS not available")?,
            _ => say("502 5.5.2 command not implemented")?,
        }
    }
    Ok(())
}

/// The address inside `<...>` of `MAIL FROM:<a@b> BODY=8BITMIME`.
fn angle(line: &str) -> String {
    match (line.find('<'), line.find('>')) {
        (Some(start), Some(end)) if start < end => line[start + 1..end].to_string(),
        _ => line
            .split_once(':')
            .map_or("", |(_, a)| a.trim())
            .to_string(),
    }
}

/// Standard base64, padding optional; text that does not decode gives nothing.
fn base64_decode(text: &str) -> Vec<u8> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text.trim()).unwrap_or_default()
}
