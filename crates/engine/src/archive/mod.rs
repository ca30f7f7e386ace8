//! WAL archiving: `archive_command` (push) and `restore_command` (fetch), with their local spools.
//!
//! The spool lives beside the WAL by default (`pg_wal/lifeboat/`), on the same file system, so a
//! prefetched segment reaches its destination by an atomic rename. It holds only hints that
//! speed things up (what was pushed ahead, what was fetched ahead); losing it loses nothing.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use lifeboat_pg::walheader::{self, LongPageHeader};
use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::ClusterIdentity;

use crate::{EngineError, Result};

pub mod fetch;
pub mod push;

pub use fetch::{FetchOptions, FetchOutcome, PrefetchReport, fetch, prefetch};
pub use push::{PushOptions, PushOutcome, PushReport, already_pushed, push};

/// The directory PostgreSQL keeps WAL in, given the path of a file in it (%p or %p's target).
fn wal_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn default_spool(wal_dir: &Path) -> PathBuf {
    wal_dir.join("lifeboat")
}

/// The spool's subdirectory for one repository, named after its location. Markers and prefetched
/// files are facts about one repository: with two repositories fed from one cluster (`wal-push`
/// chained twice in archive_command) a shared marker would make the second call return 0 for a
/// segment only the first one stored.
pub fn spool_subdir(store: &dyn lifeboat_storage::Store) -> String {
    spool_subdir_of(&store.describe())
}

/// [`spool_subdir`] of the store whose `describe()` is `description`.
pub fn spool_subdir_of(description: &str) -> String {
    let hash = blake3::hash(description.as_bytes());
    format!("repo-{}", &hash.to_hex()[..16])
}

/// Check that `bytes` really is the WAL file `name` says, and say which cluster wrote it.
/// History and backup-label files carry no header and yield no identity; a history file must
/// parse as PostgreSQL reads it.
fn validate_wal(name: &WalFileName, bytes: &[u8]) -> Result<Option<ClusterIdentity>> {
    let identity = validate_wal_start(name, bytes, bytes.len() as u64)?;
    if let WalFileName::History(tli) = name {
        validate_history(*tli, bytes).map_err(|why| {
            EngineError::invalid(
                format!("{name} is not a valid timeline history file: {why}"),
                "PostgreSQL would stop every recovery that follows this timeline with \"syntax error in history file\", so lifeboat refuses to archive it. Each line must read `<parent timeline> <switch LSN> <reason>`, parent timelines increasing and lower than the timeline in the file's name: compare the file with the one in the primary's pg_wal and check the disk",
            )
        })?;
    }
    Ok(identity)
}

/// A timeline history file as PostgreSQL reads it (the same parser `verify` uses): text, every
/// line an ancestor older than `tli`, in increasing order.
fn validate_history(
    tli: lifeboat_pg::timeline::TimelineId,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not text: {e}"))?;
    lifeboat_pg::history::TimelineHistory::parse(tli, text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// [`validate_wal`] from the start of the file (at least its first page) and its length, for a
/// file read piece by piece.
fn validate_wal_start(
    name: &WalFileName,
    start: &[u8],
    file_len: u64,
) -> Result<Option<ClusterIdentity>> {
    let header: Option<LongPageHeader> = match name {
        WalFileName::Segment(seg) => Some(
            walheader::validate_segment_header(start, file_len, seg)
                .map_err(|e| invalid_wal(name, e))?,
        ),
        WalFileName::Partial(seg) => Some(
            walheader::validate_partial_header(start, file_len, seg)
                .map_err(|e| invalid_wal(name, e))?,
        ),
        WalFileName::History(_) | WalFileName::Backup { .. } => {
            if file_len == 0 {
                return Err(EngineError::invalid(
                    format!("{name} is empty"),
                    "PostgreSQL never archives an empty history or backup file: check the file system",
                ));
            }
            None
        }
    };
    Ok(header.map(|h| ClusterIdentity {
        system_identifier: h.system_identifier,
        pg_major: h.pg_major,
        wal_segment_size: u64::from(h.segment_size),
    }))
}

fn invalid_wal(name: &WalFileName, e: impl std::fmt::Display) -> EngineError {
    EngineError::invalid(
        format!("{name} is not a valid WAL file: {e}"),
        "the file is damaged or not what its name says; lifeboat refuses to archive it. Compare it with the cluster's pg_wal and check the disk",
    )
}

/// Write `bytes` to `dest` through a temporary file beside it: write, fsync, rename, fsync the
/// directory. A crash leaves either no file or the whole file, never a partial one at `dest`.
/// `private`: the file is made 0600 whatever the umask (spool files); otherwise it gets the
/// caller's umask, as PostgreSQL's own files in `pg_wal` do.
fn write_atomically(dest: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = wal_dir_of(dest);
    let file_name = dest.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        EngineError::invalid(
            format!("{} is not a file path", dest.display()),
            "give a file path",
        )
    })?;
    let tmp = dir.join(format!(".{file_name}.lifeboat-tmp"));
    let result = (|| {
        let mut f = create_new_file(&tmp, private)?;
        f.write_all(bytes)
            .map_err(|e| EngineError::io(format!("cannot write {}", tmp.display()), e))?;
        f.sync_all()
            .map_err(|e| EngineError::io(format!("cannot fsync {}", tmp.display()), e))?;
        fs::rename(&tmp, dest).map_err(|e| {
            EngineError::io(
                format!("cannot rename {} to {}", tmp.display(), dest.display()),
                e,
            )
        })?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create `path` afresh: whatever is there (a leftover temporary file, a symlink planted in a
/// spool) is removed first, and the file is created exclusively, so a link is never followed.
/// `private`: mode 0600, also under a permissive umask.
fn create_new_file(path: &Path, private: bool) -> Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(EngineError::io(
                format!("cannot remove {}", path.display()),
                e,
            ));
        }
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    let file = options
        .open(path)
        .map_err(|e| EngineError::io(format!("cannot create {}", path.display()), e))?;
    if private {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| EngineError::io(format!("cannot chmod 600 {}", path.display()), e))?;
    }
    Ok(file)
}

/// `create_dir_all` for the spool: every directory it creates is 0700, whatever the umask (a
/// spool outside `pg_wal` would otherwise be readable by everyone: it holds WAL).
fn create_private_dir_all(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_private_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| EngineError::io(format!("cannot chmod 700 {}", dir.display()), e)),
        // Made by a concurrent call in the meantime.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(EngineError::io(
            format!("cannot create {}", dir.display()),
            e,
        )),
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(format!("cannot fsync directory {}", dir.display()), e))
}

fn file_name_of(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            EngineError::invalid(
                format!("{} has no file name", path.display()),
                "pass %p (archive_command) or %f %p (restore_command)",
            )
        })
}

fn parse_name(text: &str) -> Result<WalFileName> {
    WalFileName::parse(text).map_err(|e| {
        EngineError::invalid(
            format!("\"{text}\" is not a WAL file name: {e}"),
            "lifeboat archives what PostgreSQL archives: segments, .partial, .history and .backup files; use %p in archive_command and %f %p in restore_command",
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn history_files_must_parse_as_postgres_reads_them() {
        let name = WalFileName::parse("00000003.history").unwrap();
        let good = b"1\t0/3000000\tno recovery target specified\n2\t0/50000A0\tx\n";
        assert!(validate_wal(&name, good).unwrap().is_none());
        for bad in [
            &b"garbage\n"[..],
            b"1\t0/3000000\tx\n3\t0/5000000\ty\n",
            b"2\t0/3000000\tx\n1\t0/5000000\ty\n",
            b"\xff1\t0/3000000\n",
            b"",
        ] {
            let err = validate_wal(&name, bad).unwrap_err();
            assert!(matches!(err, EngineError::InvalidInput { .. }), "{bad:?}");
            assert!(err.to_string().contains("00000003.history"), "{err}");
        }
    }
}
