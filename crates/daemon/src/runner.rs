//! Runs one job as a child `lifeboat` process and turns its exit into a [`JobRun`].
//!
//! The child gets the daemon's own `--config` and `--repo`, and inherits its environment (the
//! passphrase file, the PG* and AWS_* variables): it is exactly the command an operator would
//! run. Its JSON summary (stdout) and its error and hint (stderr) go into the record.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_repo::records::{JobRun, Outcome};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::schedule::{JobKind, rfc3339};

/// Keep at most this much of a child's stderr (its error is at the end).
const STDERR_KEPT: usize = 64 * 1024;
/// A JSON summary larger than this is not kept (memory stays bounded whatever a child prints).
const STDOUT_KEPT: usize = 16 << 20;
/// After SIGTERM, how long a child may take before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(15);

/// How to start `lifeboat` again with the daemon's own settings.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub exe: PathBuf,
    pub config: Option<PathBuf>,
    pub repo: Option<String>,
    pub host: String,
}

impl Launcher {
    fn command(&self, kind: JobKind) -> Command {
        self.command_with(&kind.args())
    }

    /// `lifeboat --config … --repo … ARGS`, stdin closed, stdout and stderr piped, killed when
    /// dropped.
    pub(crate) fn command_with(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(repo) = &self.repo {
            cmd.arg("--repo").arg(repo);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run `kind` to the end, or until `stop` turns true and `grace` has passed: then the child
    /// is stopped (SIGTERM, then SIGKILL) and the run recorded as interrupted. Every job is safe
    /// to abandon: an unfinished backup has no manifest and never counts, an unfinished expire
    /// leaves only unreferenced objects for the next one.
    pub async fn run(
        &self,
        kind: JobKind,
        scheduled_for: Option<DateTime<Utc>>,
        mut stop: watch::Receiver<bool>,
        grace: Duration,
    ) -> JobRun {
        let started_at = Utc::now();
        let clock = Instant::now();
        let mut run = JobRun {
            scheduled_for: scheduled_for.map(rfc3339),
            started: rfc3339(started_at),
            finished: String::new(),
            duration_seconds: 0.0,
            outcome: Outcome::Failed,
            message: None,
            summary: None,
            host: self.host.clone(),
            exit_code: None,
        };
        let mut child = match self.command(kind).spawn() {
            Ok(child) => child,
            Err(e) => {
                run.message = Some(format!(
                    "cannot start {} {}: {e}",
                    self.exe.display(),
                    kind.args().join(" ")
                ));
                return finish(run, clock);
            }
        };
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_capped(s, STDOUT_KEPT, Keep::Head)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_capped(s, STDERR_KEPT, Keep::Tail)));
        tracing::info!(job = kind.name(), pid = child.id(), "job started");

        let status = tokio::select! {
            status = child.wait() => Some(status),
            () = stopped(&mut stop) => None,
        };
        let (status, interrupted) = match status {
            Some(status) => (status, false),
            None => {
                tracing::info!(
                    job = kind.name(),
                    "shutting down: giving the running job {} s to finish",
                    grace.as_secs()
                );
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => (status, false),
                    Err(_) => (terminate(&mut child).await, true),
                }
            }
        };
        let out = join_output(stdout).await;
        let err = join_output(stderr).await;
        match status {
            Ok(status) if interrupted => {
                run.outcome = Outcome::Interrupted;
                run.exit_code = status.code();
                run.message = Some(format!(
                    "stopped by the daemon's shutdown after {} s of grace; nothing half-recorded: \
                     the run is repeated at the next start",
                    grace.as_secs()
                ));
            }
            Ok(status) if status.success() => {
                run.outcome = Outcome::Succeeded;
                run.exit_code = Some(0);
                run.summary = summary(&out);
                run.message = out.cut.then(|| summary_cut_note(&out));
            }
            Ok(status) => {
                run.exit_code = status.code();
                run.summary = summary(&out);
                let mut message = error_text(&err.kept).unwrap_or_else(|| match status.code() {
                    Some(code) => format!("exited with code {code} without a message"),
                    None => "killed by a signal".to_string(),
                });
                if out.cut {
                    message = format!("{message}\n({})", summary_cut_note(&out));
                }
                run.message = Some(message);
            }
            Err(e) => run.message = Some(format!("lost track of the child process: {e}")),
        }
        finish(run, clock)
    }
}

fn finish(mut run: JobRun, clock: Instant) -> JobRun {
    run.finished = rfc3339(Utc::now());
    run.duration_seconds = clock.elapsed().as_secs_f64();
    run
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        // The sender is gone: nobody can ask us to stop any more.
        std::future::pending::<()>().await;
    }
}

/// SIGTERM (a drill stops and removes its scratch cluster), then SIGKILL.
pub(crate) async fn terminate(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(TERM_GRACE, child.wait()).await {
            return status;
        }
    }
    let _ = child.start_kill();
    child.wait().await
}

/// Which part of a long output is worth keeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The beginning (a JSON summary: cut, it is of no use anyway).
    Head,
    /// The end (stderr: the error and its hint come last).
    Tail,
}

/// What was kept of a child's output, and whether some of it was dropped.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    /// Bytes read in all.
    total: u64,
    cut: bool,
}

/// Read `from` to its end, keeping at most `cap` bytes. Past the cap the rest is read and
/// dropped, so that the child never blocks on a full pipe, and each read costs only its own
/// bytes: nothing already kept is moved for the head, and the tail is a ring.
async fn read_capped(mut from: impl AsyncReadExt + Unpin, cap: usize, keep: Keep) -> Captured {
    let mut head = Vec::new();
    let mut tail = std::collections::VecDeque::new();
    let mut total = 0u64;
    let mut cut = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n as u64;
        let bytes = &buf[..n];
        match keep {
            Keep::Head => {
                let room = cap.saturating_sub(head.len());
                head.extend_from_slice(&bytes[..n.min(room)]);
                cut |= n > room;
            }
            Keep::Tail => {
                tail.extend(bytes);
                if tail.len() > cap {
                    cut = true;
                    let excess = tail.len() - cap;
                    tail.drain(..excess);
                }
            }
        }
    }
    let kept = match keep {
        Keep::Head => head,
        Keep::Tail => tail.into(),
    };
    Captured { kept, total, cut }
}

async fn join_output(task: Option<tokio::task::JoinHandle<Captured>>) -> Captured {
    match task {
        Some(t) => t.await.unwrap_or_default(),
        None => Captured::default(),
    }
}

/// The child's JSON summary, unless it was cut (a cut summary is not JSON).
fn summary(out: &Captured) -> Option<serde_json::Value> {
    if out.cut {
        return None;
    }
    serde_json::from_slice(&out.kept).ok()
}

fn summary_cut_note(out: &Captured) -> String {
    format!(
        "its JSON summary ({} bytes) was larger than the {} MiB kept, so it was not recorded",
        out.total,
        STDOUT_KEPT >> 20
    )
}

/// The child's `lifeboat: error: …` and `HINT: …` lines (and what follows them: some errors list
/// one problem per line), else its last lines.
pub(crate) fn error_text(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    let from = lines
        .iter()
        .position(|l| l.starts_with("lifeboat: error:"))
        .unwrap_or(lines.len().saturating_sub(10));
    let picked: Vec<&str> = lines[from..].iter().take(40).copied().collect();
    Some(
        picked
            .join("\n")
            .trim_start_matches("lifeboat: error: ")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that yields `total` bytes of `b'x'` in reads of at most 16 KiB.
    struct Endless {
        left: usize,
    }

    impl tokio::io::AsyncRead for Endless {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.left.min(buf.remaining()).min(16 * 1024);
            buf.put_slice(&vec![b'x'; n]);
            self.left -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn output_past_the_cap_is_read_and_dropped_without_copying_what_is_kept() {
        // 256 MiB through a 16 MiB cap: copying the kept part on every read (16 MiB per 16 KiB)
        // would move about 4 TB; dropping the excess takes well under a second.
        let clock = Instant::now();
        let total = 256 << 20;
        let out = read_capped(Endless { left: total }, 16 << 20, Keep::Head).await;
        assert_eq!(out.kept.len(), 16 << 20);
        assert_eq!(out.total, total as u64);
        assert!(out.cut);
        assert!(summary(&out).is_none());
        assert!(
            clock.elapsed() < Duration::from_secs(20),
            "{:?}",
            clock.elapsed()
        );

        let out = read_capped(&b"0123456789"[..], 4, Keep::Tail).await;
        assert_eq!((out.kept.as_slice(), out.cut), (&b"6789"[..], true));
        let out = read_capped(&b"0123456789"[..], 4, Keep::Head).await;
        assert_eq!((out.kept.as_slice(), out.cut), (&b"0123"[..], true));
        let out = read_capped(&b"{\"a\":1}"[..], 64, Keep::Head).await;
        assert!(!out.cut);
        assert_eq!(summary(&out), Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn error_text_keeps_the_error_and_the_hint() {
        let stderr = b"WARN something\nlifeboat: error: the repository is locked\nHINT: wait\n";
        assert_eq!(
            error_text(stderr).as_deref(),
            Some("the repository is locked\nHINT: wait")
        );
        assert_eq!(error_text(b"a\nb\n").as_deref(), Some("a\nb"));
        assert_eq!(error_text(b"\n"), None);
    }
}
