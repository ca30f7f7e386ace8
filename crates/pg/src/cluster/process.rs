//! The OS user clusters run as ([`cluster_owner`], [`run_as`], ownership of their directories)
//! and the processes they leave ([`pid_alive`], zombies, children, signals).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, User, geteuid};

use super::{ClusterError, POSTGRES_USER, Result, io_err};

// ---------------------------------------------------------------------------------------------
// The OS user clusters run as
// ---------------------------------------------------------------------------------------------

/// An OS user that server programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Who local clusters run as: `None` means ourselves; when we are root it is the `postgres` OS
/// user, because PostgreSQL refuses to run as root.
pub fn cluster_owner() -> Result<Option<OsUser>> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name(POSTGRES_USER) {
        Ok(Some(user)) => Ok(Some(OsUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(ClusterError::NoPostgresUser),
        Err(source) => Err(ClusterError::UserLookup {
            name: POSTGRES_USER.to_owned(),
            source,
        }),
    }
}

/// Make `cmd` run as `owner` (when given); a no-op for `None`.
pub fn run_as<'a>(cmd: &'a mut Command, owner: Option<&OsUser>) -> &'a mut Command {
    if let Some(owner) = owner {
        cmd.uid(owner.uid).gid(owner.gid);
    }
    cmd
}

/// Give `path` and everything below it to `owner`. Symbolic links are re-owned themselves, never
/// followed.
pub fn chown_recursive(path: &Path, owner: &OsUser) -> Result<()> {
    let meta = fs::symlink_metadata(path)
        .map_err(io_err(format!("could not inspect {}", path.display())))?;
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).map_err(io_err(format!(
        "could not give {} to OS user {}",
        path.display(),
        owner.name
    )))?;
    if meta.is_dir() {
        let entries =
            fs::read_dir(path).map_err(io_err(format!("could not list {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("could not list {}", path.display())))?;
            chown_recursive(&entry.path(), owner)?;
        }
    }
    Ok(())
}

/// Whether `owner` (or we, for `None`) may create files in `dir`, judged from its mode bits.
pub(super) fn owner_can_write(dir: &Path, owner: Option<&OsUser>) -> bool {
    let Some(owner) = owner else { return true };
    let Ok(meta) = fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == owner.uid {
        mode & 0o300 == 0o300
    } else if meta.gid() == owner.gid {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

/// Create `dir` (and parents) if missing; a directory we create is given to `owner`.
pub(super) fn ensure_owned_dir(dir: &Path, owner: Option<&OsUser>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(format!(
        "could not create directory {}",
        dir.display()
    )))?;
    if let Some(owner) = owner {
        chown_recursive(dir, owner)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Whether process `pid` exists and has not exited (a zombie waiting to be reaped counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    pid_state(pid) == PidState::Alive
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PidState {
    Gone,
    /// Exited but not reaped: still in the process table, so `kill(pid, 0)` succeeds.
    Zombie,
    Alive,
}

pub(super) fn pid_state(pid: u32) -> PidState {
    let Ok(raw) = i32::try_from(pid) else {
        return PidState::Gone;
    };
    if raw <= 0 {
        return PidState::Gone;
    }
    match signal::kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return PidState::Gone,
    }
    match proc_stat(pid) {
        Some(('Z', _)) => PidState::Zombie,
        _ => PidState::Alive,
    }
}

/// State letter and parent pid of `pid` from `/proc/<pid>/stat` (Linux only).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." where comm may contain anything, including ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Living children of `parent`, from `/proc` (empty where there is no `/proc`).
pub(super) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(
            |&pid| matches!(proc_stat(pid), Some((state, ppid)) if ppid == parent && state != 'Z'),
        )
        .collect()
}

pub(super) fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid)
        .map_err(|_| ClusterError::Invalid(format!("process id {pid} is out of range")))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(ClusterError::Io {
            context: format!("could not send {sig} to process {pid}"),
            source: io::Error::from(e),
        }),
    }
}
