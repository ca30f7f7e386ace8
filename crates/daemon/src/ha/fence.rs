//! Fencing that does not depend on the agent staying alive: the keeper, a small child process
//! (`lifeboat ha-fence --pgdata DIR`) that holds the leader's deadline and stops PostgreSQL at
//! once (SIGQUIT to the postmaster: immediate shutdown) when it passes without a renewal.
//!
//! The agent tells it each new deadline over its stdin as a CLOCK_MONOTONIC instant (the same
//! clock in both processes), or `clear` when this member no longer leads. When the agent dies
//! (kill -9: stdin reaches end of file) or hangs (SIGSTOP: no new deadline), the keeper still
//! fences at the last deadline, which comes before the lease can expire in etcd; so no other
//! member can be promoted while this one still takes writes. The keeper exits once it has
//! fenced, or at end of file when no deadline is pending.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};

use crate::runner::Launcher;

/// Milliseconds on CLOCK_MONOTONIC (what `Instant` uses on Linux), shared by every process.
fn monotonic_ms() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs * 1000 + nanos / 1_000_000
        }
        // CLOCK_MONOTONIC always exists on Linux; 0 makes any deadline already past (fences).
        Err(_) => 0,
    }
}

/// The agent's handle on its keeper.
pub struct FenceKeeper {
    child: Child,
    stdin: ChildStdin,
}

impl FenceKeeper {
    /// Start `lifeboat ha-fence --pgdata DIR` with the daemon's binary.
    pub fn spawn(launcher: &Launcher, pgdata: &Path) -> std::io::Result<Self> {
        let mut cmd = tokio::process::Command::new(&launcher.exe);
        cmd.arg("ha-fence")
            .arg("--pgdata")
            .arg(pgdata)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // The keeper must outlive a killed agent: never killed with it.
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| {
            std::io::Error::other("the fence keeper was started without a pipe to its stdin")
        })?;
        Ok(Self { child, stdin })
    }

    /// Tell the keeper the new deadline (None: this member does not lead).
    pub async fn set_deadline(&mut self, deadline: Option<Instant>) -> std::io::Result<()> {
        let line = match deadline {
            Some(at) => {
                let remaining = at.saturating_duration_since(Instant::now());
                let ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
                format!("deadline {}\n", monotonic_ms().saturating_add(ms))
            }
            None => "clear\n".to_string(),
        };
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    /// Whether the keeper still runs (it exits after fencing).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// What the keeper's reader thread shares with its watch loop.
#[derive(Default)]
struct KeeperState {
    deadline_ms: Option<u64>,
    agent_gone: bool,
}

/// The keeper's main (`lifeboat ha-fence`): returns the process exit code.
pub fn keeper_main(pgdata: &Path) -> i32 {
    let shared = Arc::new((Mutex::new(KeeperState::default()), Condvar::new()));
    let reader = Arc::clone(&shared);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            let update = match (parts.next(), parts.next()) {
                (Some("deadline"), Some(ms)) => ms.parse::<u64>().ok().map(Some),
                (Some("clear"), None) => Some(None),
                _ => None,
            };
            let (lock, wake) = &*reader;
            if let Some(deadline) = update {
                lock.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .deadline_ms = deadline;
                wake.notify_all();
            } else {
                eprintln!("lifeboat ha-fence: ignoring an unknown line from the agent: {line:?}");
            }
        }
        let (lock, wake) = &*reader;
        lock.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .agent_gone = true;
        wake.notify_all();
    });

    let (lock, wake) = &*shared;
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        match state.deadline_ms {
            None if state.agent_gone => return 0,
            None => {
                state = wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            Some(deadline) => {
                let now = monotonic_ms();
                if now >= deadline {
                    drop(state);
                    let gone = lock.lock().map(|s| s.agent_gone).unwrap_or(true);
                    fence(pgdata, gone);
                    return 0;
                }
                // Wake at the deadline, or earlier when the agent sends a new one.
                let wait = Duration::from_millis((deadline - now).min(1000));
                state = wake
                    .wait_timeout(state, wait)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
    }
}

/// Stop the postmaster of `pgdata` at once: SIGQUIT (immediate shutdown: every backend exits
/// without a checkpoint, so no further commit is acknowledged); SIGKILL if it is still there
/// after 5 s.
fn fence(pgdata: &Path, agent_gone: bool) {
    let why = if agent_gone {
        "the agent is gone"
    } else {
        "the agent did not renew"
    };
    let Some(pid) = postmaster_pid(&pgdata.join("postmaster.pid")) else {
        eprintln!(
            "lifeboat ha-fence: the leader's deadline passed ({why}); no postmaster runs on {}",
            pgdata.display()
        );
        return;
    };
    eprintln!(
        "lifeboat ha-fence: the leader's deadline passed ({why}): stopping PostgreSQL (pid {pid}) \
         at once so that it takes no more writes"
    );
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGQUIT).is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn postmaster_pid(path: &PathBuf) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    (pid > 0 && kill(Pid::from_raw(pid), None).is_ok()).then_some(pid)
}
