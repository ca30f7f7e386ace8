//! The WAL receiver's supervisor: with `[stream]` configured, `serve` keeps one child
//! `lifeboat wal-stream` running beside the scheduled jobs (never through their one-at-a-time
//! executor: it runs for good), started again after it exits, with a backoff; and stops it with
//! SIGTERM (SIGKILL after a grace) when the daemon stops.
//!
//! The child is the command an operator runs (same `--config` and `--repo`, the daemon's
//! environment: credentials never go on its command line). Its stderr is passed on to the
//! daemon's log, and its last error kept for the status and the `stream_down` alert.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, watch};

use crate::runner::{Launcher, error_text, terminate};
use crate::schedule::rfc3339;
use crate::status::ReceiverProcess;

/// The first wait before a start again; doubled after each quick exit, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A child that ran this long before exiting was healthy: the next wait is [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(120);
/// Lines of the child's stderr kept to explain its exit.
const LINES_KEPT: usize = 60;

/// The receiver's process state, shared with the health loop.
pub type SharedReceiver = Arc<Mutex<ReceiverProcess>>;

/// Run `lifeboat wal-stream` until `stop`; `changed` is woken when it starts or exits (the
/// status is refreshed at once).
pub async fn supervise(
    launcher: Launcher,
    state: SharedReceiver,
    mut stop: watch::Receiver<bool>,
    changed: Arc<Notify>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut child = match launcher.command_with(&["wal-stream"]).spawn() {
            Ok(child) => child,
            Err(e) => {
                let message = format!("cannot start {} wal-stream: {e}", launcher.exe.display());
                tracing::error!("{message}");
                set(&state, &changed, |p| p.last_error = Some(message));
                if wait_or_stop(&mut stop, backoff, &state, &changed).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let started = Instant::now();
        let pid = child.id();
        tracing::info!(pid, "WAL receiver started (lifeboat wal-stream)");
        set(&state, &changed, |p| {
            p.pid = pid;
            p.running_since = Some(rfc3339(Utc::now()));
            p.starts += 1;
            p.restart_at = None;
        });
        // stdout carries nothing of use; it is drained so the child never blocks on it.
        let stdout = child.stdout.take().map(|out| {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut BufReader::new(out), &mut tokio::io::sink()).await;
            })
        });
        let stderr = child
            .stderr
            .take()
            .map(|err| tokio::spawn(forward_stderr(err, state.clone(), pid)));
        let status = tokio::select! {
            status = child.wait() => status,
            () = stopped(&mut stop) => {
                tracing::info!(pid, "stopping the WAL receiver (SIGTERM)");
                terminate(&mut child).await
            }
        };
        let tail = match stderr {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        if let Some(task) = stdout {
            let _ = task.await;
        }
        let ran = started.elapsed();
        let stopping = *stop.borrow();
        let (code, why) = match &status {
            Ok(s) => (
                s.code(),
                match s.code() {
                    Some(c) => format!("exited with code {c}"),
                    None => "was killed by a signal".to_string(),
                },
            ),
            Err(e) => (None, format!("was lost track of: {e}")),
        };
        let error = error_text(tail.join("\n").as_bytes());
        if stopping {
            tracing::info!(pid, "the WAL receiver {why} on the daemon's shutdown");
        } else {
            tracing::warn!(
                pid,
                seconds = ran.as_secs(),
                "the WAL receiver {why}: {}",
                error.as_deref().unwrap_or("it printed no error")
            );
        }
        if ran >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        let restart_at = (!stopping)
            .then(|| rfc3339(Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default()));
        set(&state, &changed, |p| {
            p.pid = None;
            p.running_since = None;
            p.last_exit = Some(rfc3339(Utc::now()));
            p.last_exit_code = code;
            if !stopping {
                p.last_error = Some(match &error {
                    Some(e) => format!("{why}: {e}"),
                    None => why,
                });
            }
            p.restart_at = restart_at;
        });
        if stopping {
            return;
        }
        if wait_or_stop(&mut stop, backoff, &state, &changed).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Change the shared state and wake the health loop.
fn set(state: &SharedReceiver, changed: &Notify, f: impl FnOnce(&mut ReceiverProcess)) {
    f(&mut state.lock().unwrap_or_else(PoisonError::into_inner));
    changed.notify_one();
}

/// Sleep `wait`; true when the daemon is stopping instead.
async fn wait_or_stop(
    stop: &mut watch::Receiver<bool>,
    wait: Duration,
    state: &SharedReceiver,
    changed: &Notify,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stopped(stop) => {
            set(state, changed, |p| p.restart_at = None);
            true
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Pass the child's stderr on to the daemon's log line by line, keep its last warning or error
/// as the running receiver's `last_error` (it reconnects on its own, saying why), and return its
/// last lines.
async fn forward_stderr(
    err: tokio::process::ChildStderr,
    state: SharedReceiver,
    pid: Option<u32>,
) -> Vec<String> {
    let mut reader = BufReader::new(err);
    let mut kept = VecDeque::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = strip_ansi(&String::from_utf8_lossy(&buf));
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!(pid, "wal-stream: {line}");
        // What it says it is doing (INFO) is no error: only warnings and errors are kept.
        let level = line.split_whitespace().nth(1).unwrap_or("");
        if !matches!(level, "INFO" | "DEBUG" | "TRACE") {
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_error = Some(line.to_string());
        }
        kept.push_back(line.to_string());
        if kept.len() > LINES_KEPT {
            kept.pop_front();
        }
    }
    kept.into()
}

/// `text` without terminal colour sequences (`ESC [ … letter`), which the child's log may carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_sequences_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[33m WARN\u{1b}[0m streaming stopped"),
            " WARN streaming stopped"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
