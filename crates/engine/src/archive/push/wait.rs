//! The `wal-push` call PostgreSQL makes, when a background pusher does the pushing: make sure one
//! runs, then wait for the requested file's outcome (its marker, or an error file).
//!
//! Exit 0 needs the marker: the pusher writes it only once the file is durably stored, with the
//! file's inode, size, mtime and ctime taken before reading it, and it must match a fresh `stat`.
//! A timeout, an error file, a pusher that keeps dying never give success.

use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{PushFailure, PusherDir};
use super::{Marker, PushOptions, file_name_of, parse_name, wal_dir_of};
use crate::{EngineError, Result};

/// How often the waiting call looks for its outcome: a marker appears within a few ms of the
/// upload's end, and PostgreSQL waits for this call before the next.
const POLL: Duration = Duration::from_millis(2);

/// Pushers this call starts without seeing its file's outcome before it pushes the file itself.
const MAX_STARTS: usize = 3;

/// What became of the file the call waits for.
#[derive(Debug)]
pub enum Waited {
    /// The pusher stored it, durably, and the file is unchanged since.
    Stored,
    /// The pusher could not store it: its error.
    Failed(PushFailure),
    /// Push it in this process (the reason says why: the pusher could not be started, kept
    /// dying, or the file changed after it was pushed).
    PushYourself(String),
    /// No outcome within the deadline; the pusher may still be at work on it.
    TimedOut(Duration),
}

/// Whether PostgreSQL has marked `path` ready for archiving (`archive_status/<name>.ready`): only
/// PostgreSQL's own calls go through the pusher; a call by hand pushes synchronously.
pub fn is_ready(path: &Path) -> bool {
    let Ok(name) = file_name_of(path) else {
        return false;
    };
    wal_dir_of(path)
        .join("archive_status")
        .join(format!("{name}.ready"))
        .exists()
}

/// Wait for the background pusher of repository `description` to store `path`. When no pusher
/// holds the lock, this call takes it and `start` must start one that inherits the locked
/// descriptor given (its close-on-exec flag is cleared), so no second pusher can start in between.
pub async fn wait_for_pusher(
    path: &Path,
    options: &PushOptions,
    description: &str,
    mut start: impl FnMut(i32) -> std::io::Result<()>,
    deadline: Duration,
) -> Result<Waited> {
    let name = parse_name(&file_name_of(path)?)?;
    let wal_dir = wal_dir_of(path);
    let subdir = crate::archive::spool_subdir_of(description);
    let markers = super::spool_of(&wal_dir, options)
        .join("pushed")
        .join(&subdir);
    let dir = PusherDir::new(&wal_dir, options, &subdir);
    let name = name.to_string();
    let give_up = Instant::now() + deadline;
    let mut starts = 0;
    loop {
        if let Some(outcome) = outcome(&markers, &dir, &name, path) {
            return Ok(outcome);
        }
        let lock = match dir.open_lock() {
            Ok(lock) => lock,
            Err(e) => return Ok(Waited::PushYourself(e.to_string())),
        };
        if lock.try_lock().is_ok() {
            // No pusher: it may have stored this file just before it exited.
            if let Some(outcome) = outcome(&markers, &dir, &name, path) {
                return Ok(outcome);
            }
            if starts == MAX_STARTS {
                return Ok(Waited::PushYourself(format!(
                    "the background pusher was started {MAX_STARTS} times and did not store {name}"
                )));
            }
            starts += 1;
            let started = hand_over(&lock).and_then(|fd| {
                start(fd).map_err(|e| EngineError::io("cannot start the background pusher", e))
            });
            if let Err(e) = started {
                return Ok(Waited::PushYourself(e.to_string()));
            }
            // The pusher holds the lock now, through the descriptor it inherited.
            drop(lock);
        }
        if Instant::now() >= give_up {
            return Ok(Waited::TimedOut(deadline));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The file's marker (consumed), else its error file (consumed), else nothing yet.
fn outcome(markers: &Path, dir: &PusherDir, name: &str, path: &Path) -> Option<Waited> {
    let marker_path = markers.join(name);
    if let Ok(recorded) = std::fs::read_to_string(&marker_path) {
        let _ = std::fs::remove_file(&marker_path);
        return Some(match Marker::of(path) {
            Ok(now) if now.text() == recorded => Waited::Stored,
            _ => Waited::PushYourself(format!(
                "{name} changed after the background pusher stored it"
            )),
        });
    }
    dir.take_error(name).map(Waited::Failed)
}

/// Let the locked descriptor pass to the child: clear its close-on-exec flag. Descriptors 0 to 2
/// are refused: a child's standard streams replace them.
fn hand_over(lock: &std::fs::File) -> Result<i32> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let fd = lock.as_raw_fd();
    if fd < 3 {
        return Err(EngineError::invalid(
            format!("the lock file got descriptor {fd}, a standard stream's"),
            "start wal-push with its standard input, output and error open",
        ));
    }
    fcntl(lock, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| {
        EngineError::io(
            "cannot pass the pusher's lock to it",
            std::io::Error::from(e),
        )
    })?;
    Ok(fd)
}
