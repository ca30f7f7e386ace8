//! Tiny webhook (HTTP) and SMTP receivers for alert tests: each listens on 127.0.0.1 on a free
//! port, serves every connection on its own thread, and records what arrives for the test to
//! assert on (with `wait_*` helpers that time out, so a missing alert fails the test instead of
//! hanging it). Dropping a receiver stops it.
//!
//! ```ignore
//! let (url, hook) = WebhookReceiver::start();
//! let (port, smtp) = SmtpReceiver::start();
//! // ... write url (it ends in WEBHOOK_SECRET) and port into the config, run lifeboat ...
//! let json = hook.wait_for(1, RECEIVE_WAIT);
//! let mail = smtp.wait_for(1, RECEIVE_WAIT);
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A sensible default for `wait_for`: well above one delivery attempt (10 s) plus its retry.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(30);
/// The last path segment of every [`WebhookReceiver`] URL: stands for the token real webhook URLs
/// carry, so tests can assert it never shows up in output, logs or errors.
pub const WEBHOOK_SECRET: &str = "s3cr3t-webhook-token";
/// Idle connections are dropped after this, so no thread outlives its test for long.
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
    pub path: String,
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
    status: AtomicU16,
}

/// Records every request and answers `200 OK` (or the status set with [`Self::set_status`]).
pub struct WebhookReceiver {
    shared: Arc<HookShared>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
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
        let shared = Arc::new(HookShared {
            requests: Mutex::new(Vec::new()),
            status: AtomicU16::new(200),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let conn_shared = Arc::clone(&shared);
        serve(listener, Arc::clone(&stop), move |conn| {
            handle_http(conn, &conn_shared)
        });
        let receiver = WebhookReceiver { shared, addr, stop };
        (receiver.url(), receiver)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/{WEBHOOK_SECRET}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answer later requests with `status` (e.g. 500 to play a broken chat service, then 200).
    /// Requests are recorded whatever the status.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
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
        stop_listener(&self.stop, self.addr);
    }
}

/// Serve requests on one connection (keep-alive) until it closes.
fn handle_http(conn: TcpStream, shared: &HookShared) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Some(request) = read_request(&mut reader) {
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        lock(&shared.requests).push(request);
        let status = shared.status.load(Ordering::SeqCst);
        let body = if (200..300).contains(&status) {
            "ok"
        } else {
            "test receiver says no"
        };
        let reply = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            reason(status),
            body.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() || writer.flush().is_err() || close {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// One request, or None at end of stream or on anything unreadable.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<HttpRequest> {
    let mut line = String::new();
    // Skip blank lines between requests (allowed by RFC 9112).
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if find("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let _ = reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let body =
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            read_chunked(reader)?
        } else {
            let len: usize = find("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).ok()?;
            body
        };
    Some(HttpRequest {
        method,
        path,
        headers,
        body,
    })
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let size_text = line.trim().split(';').next()?.trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).ok()?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                line.clear();
                if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        line.clear();
        reader.read_line(&mut line).ok()?;
    }
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

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// While set, every recipient is refused with a permanent `550`, as a server that will not
    /// relay does.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    pub fn mails(&self) -> Vec<Mail> {
        lock(&self.shared.mails).clone()
    }

    /// Raw DATA of every message received, oldest first.
    pub fn messages(&self) -> Vec<String> {
        self.mails().into_iter().map(|m| m.data).collect()
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

/// Standard base64, padding optional; unknown characters are skipped.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
