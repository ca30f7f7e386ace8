//! `lifeboat serve` as a child process for end-to-end tests, and plain HTTP/1.1 GETs to it.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_testkit::cluster::TestCluster;
use serde_json::Value;

use super::Setup;

/// A running `lifeboat serve`, killed on drop if the test did not stop it, so a failing
/// assertion never leaves it running (and prints the end of its log).
pub struct Daemon {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Start `lifeboat serve` with the setup's config (which must listen on `port`), logging to
    /// `log_name` in the test directory, and wait until it answers `/api/status`.
    pub fn start(setup: &Setup, port: u16, log_name: &str) -> Daemon {
        let daemon = Daemon::spawn(setup, &setup.config, port, log_name);
        daemon.wait_status(
            "the daemon answers /api/status",
            Duration::from_secs(60),
            |s| s["generated_at"].is_string(),
        );
        daemon
    }

    /// Start `lifeboat serve` with `config` (which must listen on `port`), logging to `log_name`
    /// in the test directory, without waiting for it.
    pub fn spawn(setup: &Setup, config: &Path, port: u16, log_name: &str) -> Daemon {
        let log = setup.dir.path().join(log_name);
        let out = fs::File::create(&log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let child = setup
            .cmd_with(config)
            .args(["--log-level", "info", "serve"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start lifeboat serve");
        Daemon {
            child: Some(child),
            port,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }

    /// `/api/status`, which must answer 200 with JSON.
    pub fn status(&self) -> Value {
        let (code, body) = self.get("/api/status");
        assert_eq!(code, 200, "/api/status: {body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Poll `/api/status` until `done` holds for it, and return that status; fail with the end
    /// of the daemon's log after `timeout`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = try_get(self.port, "/api/status")
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                && done(&status)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; daemon log:\n{}",
                tail(&self.log_text(), 60)
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the daemon did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    tail(&self.log_text(), 60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if thread::panicking() {
                eprintln!("daemon log:\n{}", tail(&self.log_text(), 80));
            }
        }
    }
}

/// Append the daemon's config to the setup's config file: `cluster` to back up and drill (`db`,
/// `pgdata`), then `sections`.
pub fn daemon_config(setup: &Setup, cluster: &TestCluster, sections: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&setup.config)
        .expect("config file");
    write!(
        f,
        "db = \"{}\"\npgdata = \"{}\"\n{sections}",
        cluster.conninfo(),
        cluster.datadir.display()
    )
    .expect("write config");
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The body of a 200 answer, None for anything else (not up yet, error).
pub fn try_get(port: u16, path: &str) -> Option<String> {
    let (code, body) = request(port, path).ok()?;
    (code == 200).then_some(body)
}

/// GET `path` from 127.0.0.1:`port`: the status code and the body; panics if there is no
/// HTTP answer.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    request(port, path).unwrap_or_else(|e| panic!("GET {path} from port {port}: {e}"))
}

pub fn request(port: u16, path: &str) -> Result<(u16, String), String> {
    http_request(port, "GET", path, "")
}

/// `method path` to 127.0.0.1:`port` with `headers` (each ending in `\r\n`): the status code
/// and the body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to the daemon: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("timeout: {e}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("send request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read response: {e}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status code in {head:?}"))?;
    Ok((code, body.to_string()))
}
