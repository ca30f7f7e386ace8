//! A real S3-compatible server for tests: moto (`moto_server`) on a free port of 127.0.0.1.
//!
//! [`MotoServer::start`] returns a server that answers HTTP, or an error carrying the tail of its
//! log; it never silently skips. The server is killed on drop (also when the test panics). It stays
//! in the test's process group on purpose: a runner that kills a hung test's group (nextest) or a
//! Ctrl-C then takes moto down too. Buckets are created with plain HTTP over a `TcpStream`, which moto
//! accepts unsigned, to keep this crate free of an HTTP client.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long moto gets to answer its first request (it imports a lot of Python at start-up).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for one request of ours to the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running moto server; killed on drop.
pub struct MotoServer {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub port: u16,
    child: Child,
    log_path: PathBuf,
    // Holds the log file's directory alive until the server is gone.
    _log_dir: tempfile::TempDir,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl MotoServer {
    /// Start moto on a free port and wait (up to ~20 s) until it answers HTTP. Tries `moto_server`
    /// on PATH, then `python3 -m moto.server`.
    pub fn start() -> anyhow::Result<Self> {
        let candidates: [(&str, &[&str]); 2] =
            [("moto_server", &[]), ("python3", &["-m", "moto.server"])];
        let mut failures = Vec::new();
        for (program, args) in candidates {
            match Self::start_with(program, args) {
                Ok(server) => return Ok(server),
                Err(e) => {
                    let command = std::iter::once(program).chain(args.iter().copied());
                    failures.push(format!("{}: {e:#}", command.collect::<Vec<_>>().join(" ")));
                }
            }
        }
        bail!(
            "cannot start an S3 test server (moto):\n{}",
            failures.join("\n")
        )
    }

    fn start_with(program: &str, args: &[&str]) -> anyhow::Result<Self> {
        // Free a moment ago: moto binds it shortly after; a collision in between makes moto exit,
        // which `start` reports.
        let port = lifeboat_pg::net::free_port().context("finding a free port")?;
        let log_dir = tempfile::tempdir().context("creating a directory for the moto log")?;
        let log_path = log_dir.path().join("moto.log");
        // A file, not a pipe: moto logs every request and would block once a pipe filled up.
        let log = File::create(&log_path)
            .with_context(|| format!("creating moto log {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the moto log handle")?;
        let child = Command::new(program)
            .args(args)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("spawning {program}"))?;
        let mut server = MotoServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child,
            log_path,
            _log_dir: log_dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("checking on moto")? {
                bail!(
                    "moto exited with {status} before answering; log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = self.request("GET", "/") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "moto did not answer on {} within {}s; log:\n{}",
                    self.endpoint,
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Create bucket `name` (S3 names: 3-63 lower-case letters, digits, `-`, `.`).
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .request("PUT", &format!("/{name}"))
            .with_context(|| format!("creating bucket {name} on {}", self.endpoint))?;
        if status != 200 {
            bail!(
                "creating bucket {name} on {} failed with HTTP {status}: {body}",
                self.endpoint
            );
        }
        Ok(())
    }

    /// Standard AWS environment pointing a client at this server (moto accepts any credentials).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// One HTTP/1.1 request with an empty body; returns the status and the body as text.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed HTTP response: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        Ok((status, body.to_owned()))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // std's kill is a no-op once the child has been reaped, so this never signals a
        // recycled pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
