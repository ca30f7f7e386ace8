//! The background pusher's files in the spool: the lock that says a pusher runs, the error files
//! through which it hands a failed file's error to the `wal-push` call waiting for that file, and
//! its log.
//!
//! Layout: `<spool>/pusher/<repo-subdir>/lock`, `.../errors/<name>`, `.../pusher.log`; outside
//! `<spool>/pushed/<repo-subdir>/`, whose entries that are not `.ready` names get removed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::PushOptions;
use crate::{EngineError, Result};

/// Past this size the log is renamed to `pusher.log.1` (replacing the older one) and restarted.
const LOG_LIMIT: u64 = 1 << 20;

/// What the pusher could not do for one file, as the waiting `wal-push` reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PushFailure {
    /// The exit code the error would have given a synchronous `wal-push`.
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

/// The pusher's directory for one repository (one per spool subdirectory, like the markers).
pub(super) struct PusherDir {
    dir: PathBuf,
}

impl PusherDir {
    pub(super) fn new(wal_dir: &Path, options: &PushOptions, subdir: &str) -> Self {
        Self {
            dir: super::spool_of(wal_dir, options)
                .join("pusher")
                .join(subdir),
        }
    }

    pub(super) fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn errors(&self) -> PathBuf {
        self.dir.join("errors")
    }

    fn error_path(&self, name: &str) -> PathBuf {
        self.errors().join(name)
    }

    /// The lock file, created (0600) if missing; never through a symlink.
    pub(super) fn open_lock(&self) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        crate::archive::create_private_dir_all(&self.errors())?;
        let path = self.lock_path();
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| EngineError::io(format!("cannot open {}", path.display()), e))
    }

    /// Record why `name` could not be pushed (atomically: the waiting call reads whole files).
    pub(super) fn write_error(&self, name: &str, failure: &PushFailure) -> Result<()> {
        let text = serde_json::to_vec(failure)
            .map_err(|e| EngineError::Internal(format!("cannot encode an error: {e}")))?;
        crate::archive::create_private_dir_all(&self.errors())?;
        crate::archive::write_atomically(&self.error_path(name), &text, true)
    }

    /// The pusher's error for `name`, removed: the pusher tries that file again once it is gone.
    pub(super) fn take_error(&self, name: &str) -> Option<PushFailure> {
        let path = self.error_path(name);
        let text = fs::read(&path).ok()?;
        let _ = fs::remove_file(&path);
        Some(
            serde_json::from_slice(&text).unwrap_or_else(|_| PushFailure {
                code: 5,
                message: String::from_utf8_lossy(&text).into_owned(),
                hint: None,
            }),
        )
    }

    /// Names with an error file (the pusher leaves them alone until the file is removed).
    pub(super) fn error_names(&self) -> HashSet<String> {
        fs::read_dir(self.errors())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Remove error files of names PostgreSQL no longer has pending (and leftover temporary files).
    pub(super) fn prune_errors(&self, ready: &HashSet<String>) {
        remove_all_but(&self.errors(), ready);
    }

    /// Append a line to the log, best effort (nobody reads it but a person looking into a problem).
    pub(super) fn log(&self, line: &str) {
        let path = self.dir.join("pusher.log");
        if fs::metadata(&path).is_ok_and(|m| m.len() > LOG_LIMIT) {
            let _ = fs::rename(&path, self.dir.join("pusher.log.1"));
        }
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(mut f) = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            let _ = writeln!(f, "{stamp} [{}] {line}", std::process::id());
        }
    }
}

/// Remove every entry of `dir` whose name is not in `keep`.
pub(super) fn remove_all_but(dir: &Path, keep: &HashSet<String>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_none_or(|n| !keep.contains(n)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The pusher's hold on the lock: the descriptor the `wal-push` that started it handed over, or
/// one it opened itself.
pub(super) enum PusherLock {
    Inherited(RawFd),
    Own(File),
}

impl PusherLock {
    /// Take the lock: through descriptor `fd` when given (it must be the lock file of `dir`, which
    /// the parent locked: flock belongs to the open file description the child shares), else by
    /// opening the lock file. `None`: another pusher holds it.
    pub(super) fn acquire(dir: &PusherDir, fd: Option<RawFd>) -> Result<Option<Self>> {
        match fd {
            Some(fd) => {
                use std::os::unix::fs::MetadataExt;
                let lock_path = dir.lock_path();
                let expected = fs::metadata(&lock_path).map_err(|e| {
                    EngineError::io(format!("cannot stat {}", lock_path.display()), e)
                })?;
                // Without /proc the descriptor is trusted: only `wal-push` passes one.
                if let Ok(inherited) = fs::metadata(format!("/proc/self/fd/{fd}"))
                    && (inherited.dev(), inherited.ino()) != (expected.dev(), expected.ino())
                {
                    return Err(EngineError::invalid(
                        format!(
                            "descriptor {fd} is not the pusher's lock file {}",
                            lock_path.display()
                        ),
                        "the background pusher is started by `wal-push`; do not run it by hand with --lock-fd",
                    ));
                }
                let lock = Self::Inherited(fd);
                Ok(lock.try_relock().then_some(lock))
            }
            None => {
                let file = dir.open_lock()?;
                Ok(file.try_lock().is_ok().then_some(Self::Own(file)))
            }
        }
    }

    pub(super) fn unlock(&self) {
        match self {
            #[allow(deprecated)] // `Flock` needs an owned descriptor; this one is inherited.
            Self::Inherited(fd) => {
                let _ = nix::fcntl::flock(*fd, nix::fcntl::FlockArg::Unlock);
            }
            Self::Own(file) => {
                let _ = file.unlock();
            }
        }
    }

    pub(super) fn try_relock(&self) -> bool {
        match self {
            #[allow(deprecated)]
            Self::Inherited(fd) => {
                nix::fcntl::flock(*fd, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
            }
            Self::Own(file) => file.try_lock().is_ok(),
        }
    }
}
