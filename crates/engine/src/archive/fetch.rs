//! `wal-fetch`: give PostgreSQL one WAL file during recovery, and fetch the next ones ahead.
//!
//! The contract with PostgreSQL is strict: success only once the whole file is at its destination;
//! "not found" only when the repository truly does not hold the file (recovery then ends, or a
//! standby waits); any other failure must stop recovery, never end it early. This module reports
//! those three cases distinctly; the CLI turns them into exit codes.
//!
//! Prefetch: after serving a segment, the CLI starts [`prefetch`] in a detached process which
//! fetches the next segments of the timeline into `<spool>/prefetch/`, each verified, fsynced and
//! renamed into place, so that later calls only rename a local file.

use std::fs;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::ClusterIdentity;

use super::{
    create_new_file, create_private_dir_all, default_spool, fsync_dir, parse_name, validate_wal,
    wal_dir_of, write_atomically,
};
use crate::error::join_error;
use crate::{EngineError, LazyRepo, Result};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Segments to fetch ahead of the one requested; 0 disables prefetch.
    pub prefetch: usize,
    /// Default `<dir of the destination>/lifeboat`.
    pub spool_dir: Option<PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            prefetch: 8,
            spool_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file is complete at the destination.
    Restored {
        from_spool: bool,
        size: u64,
        prefetch_after: Option<WalSegmentName>,
    },
    /// The repository does not hold this file.
    NotFound,
}

/// Where segments fetched ahead for this repository wait (see [`super::spool_subdir`]).
pub fn prefetch_dir(
    dest: &Path,
    options: &FetchOptions,
    store: &dyn lifeboat_storage::Store,
) -> PathBuf {
    options
        .spool_dir
        .clone()
        .unwrap_or_else(|| default_spool(&wal_dir_of(dest)))
        .join("prefetch")
        .join(super::spool_subdir(store))
}

pub async fn fetch(
    repo: &LazyRepo,
    name: &str,
    dest: &Path,
    options: &FetchOptions,
) -> Result<FetchOutcome> {
    let name = parse_name(name)?;
    let spool = prefetch_dir(dest, options, repo.store().as_ref());
    let prefetch_after = match &name {
        WalFileName::Segment(seg) if options.prefetch > 0 => Some(*seg),
        _ => None,
    };

    if let Some(size) = take_spooled(&spool, &name, dest)? {
        return Ok(FetchOutcome::Restored {
            from_spool: true,
            size,
            prefetch_after,
        });
    }

    let repo_handle = repo.get().await?;
    let bytes = match repo_handle.get_wal(&name).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(FetchOutcome::NotFound),
        Err(e @ lifeboat_repo::RepoError::Corrupt { .. }) => {
            return Err(damaged_in_repository(&name, e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    if name.segment().is_some() {
        check_fetched(repo_handle.identity().await?.as_ref(), &name, &bytes).map_err(
            |e| match e {
                EngineError::InvalidInput { message, .. } => damaged_in_repository(&name, message),
                EngineError::Repo(e @ lifeboat_repo::RepoError::ForeignCluster { .. }) => {
                    damaged_in_repository(&name, e.to_string())
                }
                other => other,
            },
        )?;
    }
    let size = bytes.len() as u64;
    let dest_owned = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&dest_owned, &bytes, false))
        .await
        .map_err(join_error)??;
    Ok(FetchOutcome::Restored {
        from_spool: false,
        size,
        prefetch_after,
    })
}

/// The repository's copy of `name` cannot be handed to PostgreSQL: what a recovery operator
/// needs to know and do.
fn damaged_in_repository(name: &WalFileName, message: String) -> EngineError {
    EngineError::Corrupt {
        message,
        hint: format!(
            "the repository's copy of {name} is damaged, so recovery was stopped on purpose (exit 200) instead of ending early without the WAL that follows it. Run `lifeboat verify` to see what else is damaged. If an intact copy of {name} exists (the primary's pg_wal, another archive), delete the damaged object from the repository and `lifeboat wal-push` that copy, then start the server again: recovery resumes where it stopped. Without one, recovery cannot go past {name}: restore again with a target before it (--target-time or --target-lsn)"
        ),
    }
}

/// A fetched segment must be what its name says and come from the repository's cluster: the
/// content hash proves the object is what was stored, this proves what was stored was right.
/// `bound` is the repository's cluster identity, read once by the caller.
fn check_fetched(bound: Option<&ClusterIdentity>, name: &WalFileName, bytes: &[u8]) -> Result<()> {
    let Some(found) = validate_wal(name, bytes)? else {
        return Ok(());
    };
    if let Some(bound) = bound
        && bound.system_identifier != found.system_identifier
    {
        return Err(lifeboat_repo::RepoError::ForeignCluster {
            bound: bound.system_identifier,
            offered: found.system_identifier,
        }
        .into());
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    pub fetched: Vec<String>,
    /// Another prefetcher held the spool lock, so this one did nothing.
    pub skipped_busy: bool,
}

/// Fetch up to `count` segments following `after` on its timeline into the spool, `parallel` at a
/// time, stopping at the first one the repository does not hold. One prefetcher per spool runs at
/// a time (a file lock); a second one returns at once.
pub async fn prefetch(
    repo: &LazyRepo,
    after: &WalSegmentName,
    count: usize,
    parallel: usize,
    spool: &Path,
) -> Result<PrefetchReport> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    create_private_dir_all(spool)?;
    let lock_path = spool.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| EngineError::io(format!("cannot open {}", lock_path.display()), e))?;
    let _ = lock.set_permissions(fs::Permissions::from_mode(0o600));
    if lock.try_lock().is_err() {
        return Ok(PrefetchReport {
            fetched: vec![],
            skipped_busy: true,
        });
    }
    let Some(identity) = repo.get().await?.identity().await? else {
        return Ok(PrefetchReport::default());
    };
    let seg_size = identity.wal_segment_size;
    clean_spool(spool, after);

    let mut wanted = Vec::new();
    let mut next = *after;
    for _ in 0..count {
        next = match next.next(seg_size) {
            Ok(n) => n,
            Err(_) => break,
        };
        wanted.push(next);
    }
    let repo_handle = repo.get().await?;
    let mut results = futures::stream::iter(wanted.into_iter().map(|seg| {
        let spool = spool.to_path_buf();
        async move {
            let target = spool.join(seg.to_string());
            if is_regular(&target) && is_regular(&sidecar_of(&target)) {
                return Ok(Some(seg));
            }
            let name = WalFileName::Segment(seg);
            let Some(bytes) = repo_handle.get_wal(&name).await? else {
                return Ok(None);
            };
            check_fetched(Some(&identity), &name, &bytes)?;
            tokio::task::spawn_blocking(move || spool_write(&target, &bytes))
                .await
                .map_err(join_error)??;
            Ok::<_, EngineError>(Some(seg))
        }
    }))
    .buffered(parallel.max(1));

    let mut report = PrefetchReport::default();
    while let Some(result) = results.next().await {
        match result? {
            Some(seg) => report.fetched.push(seg.to_string()),
            // The end of the archive: what follows is not there either (or not yet).
            None => break,
        }
    }
    Ok(report)
}

/// Remove spooled segments at or before `after` on its timeline (consumed or no longer needed),
/// segments of older timelines, and temporary files of an interrupted prefetcher.
fn clean_spool(spool: &Path, after: &WalSegmentName) {
    let Ok(entries) = fs::read_dir(spool) else {
        return;
    };
    let after_text = after.to_string();
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let (segment_name, is_sidecar) = match file.strip_suffix(SIDECAR_SUFFIX) {
            Some(data) => (data, true),
            None => (file.as_str(), false),
        };
        let stale = if file.ends_with(".lifeboat-tmp") {
            true
        } else if let Ok(WalFileName::Segment(seg)) = WalFileName::parse(segment_name) {
            seg.timeline < after.timeline
                || (seg.timeline == after.timeline && segment_name <= after_text.as_str())
                // A checksum whose segment is gone (the lock is held: no prefetcher is between
                // writing one and renaming the other).
                || (is_sidecar && !spool.join(segment_name).exists())
        } else {
            false
        };
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Beside each spooled segment `NAME`, `NAME.lifeboat-sum` says what it must be.
const SIDECAR_SUFFIX: &str = ".lifeboat-sum";

fn sidecar_of(spooled: &Path) -> PathBuf {
    let mut name = spooled.file_name().unwrap_or_default().to_os_string();
    name.push(SIDECAR_SUFFIX);
    spooled.with_file_name(name)
}

fn is_regular(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// What a spooled segment must be: its length and BLAKE3 hash. The prefetcher computes them from
/// the plaintext the repository decoded, after that decode checked the object's own length and
/// content hash; the hash is unkeyed (also in encrypted repositories) so that handing a segment
/// over needs neither the passphrase nor the repository.
#[derive(Debug, PartialEq, Eq)]
struct SpoolSum {
    len: u64,
    hash: blake3::Hash,
}

impl SpoolSum {
    const TAG: &str = "lifeboat-spool-v1";

    fn of(bytes: &[u8]) -> Self {
        Self {
            len: bytes.len() as u64,
            hash: blake3::hash(bytes),
        }
    }

    fn text(&self) -> String {
        format!("{} {} {}\n", Self::TAG, self.len, self.hash.to_hex())
    }

    fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_ascii_whitespace();
        if fields.next()? != Self::TAG {
            return None;
        }
        let len = fields.next()?.parse().ok()?;
        let hash = blake3::Hash::from_hex(fields.next()?).ok()?;
        fields.next().is_none().then_some(Self { len, hash })
    }
}

/// Put a fetched segment into the spool: the data to a temporary file, fsynced; then its checksum
/// beside it (written atomically); then the data renamed into place. Everything 0600.
fn spool_write(target: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let dir = wal_dir_of(target);
    let file_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::Internal(format!("bad spool path {}", target.display())))?;
    let tmp = dir.join(format!(".{file_name}.lifeboat-tmp"));
    let result = (|| {
        let mut f = create_new_file(&tmp, true)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| EngineError::io(format!("cannot write {}", tmp.display()), e))?;
        write_atomically(
            &sidecar_of(target),
            SpoolSum::of(bytes).text().as_bytes(),
            true,
        )?;
        fs::rename(&tmp, target).map_err(|e| {
            EngineError::io(
                format!("cannot rename {} to {}", tmp.display(), target.display()),
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

/// Hand the spooled copy of `name` over to `dest` if it is exactly what the prefetcher stored:
/// a regular file of this user, not linked elsewhere, whose length and hash match its checksum
/// file. The spool is untrusted: anything else is discarded (with a warning) and `None` returned,
/// so that the caller fetches the segment from the repository again. `None` too when there is
/// nothing spooled, or it cannot be moved next to `dest` (a spool on another file system).
fn take_spooled(spool: &Path, name: &WalFileName, dest: &Path) -> Result<Option<u64>> {
    let spooled = spool.join(name.to_string());
    let meta = match fs::symlink_metadata(&spooled) {
        Ok(meta) => meta,
        Err(_) => return Ok(None),
    };
    let sidecar = sidecar_of(&spooled);
    let discard = |path: &Path, why: &str| {
        tracing::warn!(
            "discarding the prefetched copy of {name} ({}): {why}; fetching {name} again from the repository",
            spooled.display()
        );
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(&sidecar);
        Ok(None)
    };
    if !meta.file_type().is_file() {
        return discard(
            &spooled,
            "it is not a regular file (a symbolic link or other)",
        );
    }
    let expected = match read_nofollow(&sidecar) {
        Ok(text) => match SpoolSum::parse(&text) {
            Some(sum) => sum,
            None => {
                return discard(
                    &spooled,
                    &format!("its checksum file {} is malformed", sidecar.display()),
                );
            }
        },
        Err(e) => {
            return discard(
                &spooled,
                &format!(
                    "its checksum file {} cannot be read: {e}",
                    sidecar.display()
                ),
            );
        }
    };
    // Moved out of the spool first (an atomic rename beside the destination), so that nothing in
    // the spool can change the file between its check and its hand-over.
    let dest_dir = wal_dir_of(dest);
    let checking = dest_dir.join(format!(".{name}.lifeboat-check"));
    if let Err(e) = fs::rename(&spooled, &checking) {
        // A spool on another file system, or a race with the prefetcher's cleanup: fetch from
        // the repository as if the spool were empty.
        tracing::debug!("cannot take {} from the spool: {e}", spooled.display());
        return Ok(None);
    }
    let _ = fs::remove_file(&sidecar);
    match check_spooled(&checking, &expected) {
        Ok(()) => {}
        Err(why) => {
            return discard(&checking, &why);
        }
    }
    if let Err(e) = fs::rename(&checking, dest) {
        let _ = fs::remove_file(&checking);
        return Err(EngineError::io(
            format!("cannot rename {} to {}", checking.display(), dest.display()),
            e,
        ));
    }
    fsync_dir(&dest_dir)?;
    Ok(Some(expected.len))
}

/// Read a small file without following a symlink at its path.
fn read_nofollow(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?
        .take(4096)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Why the file at `path` is not the segment `expected` describes, if it is not.
fn check_spooled(path: &Path, expected: &SpoolSum) -> std::result::Result<(), String> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "it belongs to user id {}, not to this user ({me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "others may write it (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    if meta.nlink() != 1 {
        return Err(format!("it has {} hard links", meta.nlink()));
    }
    if meta.len() != expected.len {
        return Err(format!(
            "it is {} bytes long, the repository's segment {} bytes (truncated or damaged)",
            meta.len(),
            expected.len
        ));
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != expected.len {
        return Err(format!("it changed while it was read ({total} bytes)"));
    }
    if hasher.finalize() != expected.hash {
        return Err(
            "its content differs from the repository's segment (damaged in the spool)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, WalFileName, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let wal = dir.path().join("pg_wal");
        create_private_dir_all(&spool).unwrap();
        fs::create_dir(&wal).unwrap();
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        spool_write(&spool.join(name.to_string()), &bytes).unwrap();
        (dir, spool, wal, name, bytes)
    }

    #[test]
    fn intact_spool_file_is_handed_over_private() {
        let (_dir, spool, wal, name, bytes) = setup();
        let spooled = spool.join(name.to_string());
        for p in [&spooled, &sidecar_of(&spooled)] {
            assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let dest = wal.join("RECOVERYXLOG");
        assert_eq!(take_spooled(&spool, &name, &dest).unwrap(), Some(100_000));
        assert_eq!(fs::read(&dest).unwrap(), bytes);
        assert!(!spooled.exists() && !sidecar_of(&spooled).exists());
    }

    #[test]
    fn damaged_spool_files_are_discarded() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 5] = [
            ("flipped", |p| {
                let mut b = fs::read(p).unwrap();
                b[5] ^= 1;
                fs::write(p, b).unwrap();
            }),
            ("truncated", |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..10]).unwrap();
            }),
            ("no sidecar", |p| fs::remove_file(sidecar_of(p)).unwrap()),
            ("bad sidecar", |p| fs::write(sidecar_of(p), "x").unwrap()),
            ("symlink", |p| {
                let copy = p.with_extension("copy");
                fs::rename(p, &copy).unwrap();
                std::os::unix::fs::symlink(&copy, p).unwrap();
            }),
        ];
        for (what, damage) in damages {
            let (_dir, spool, wal, name, _) = setup();
            let spooled = spool.join(name.to_string());
            damage(&spooled);
            let dest = wal.join("RECOVERYXLOG");
            assert_eq!(take_spooled(&spool, &name, &dest).unwrap(), None, "{what}");
            assert!(!dest.exists(), "{what}");
            assert!(
                fs::symlink_metadata(&spooled).is_err(),
                "{what}: left in the spool"
            );
            let left: Vec<_> = fs::read_dir(&wal).unwrap().collect();
            assert!(left.is_empty(), "{what}: {left:?}");
        }
    }

    #[test]
    fn a_leftover_temporary_file_is_never_handed_over() {
        let (_dir, spool, wal, name, _) = setup();
        let spooled = spool.join(name.to_string());
        // A prefetcher killed between writing its temporary file and renaming it.
        fs::rename(&spooled, spool.join(format!(".{name}.lifeboat-tmp"))).unwrap();
        let dest = wal.join("RECOVERYXLOG");
        assert_eq!(take_spooled(&spool, &name, &dest).unwrap(), None);
        assert!(!dest.exists());
        // The next prefetcher's cleanup removes it and the orphaned checksum.
        let after: WalSegmentName = "000000010000000000000001".parse().unwrap();
        clean_spool(&spool, &after);
        let left: Vec<_> = fs::read_dir(&spool).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn spool_sum_round_trip() {
        let sum = SpoolSum::of(b"abc");
        assert_eq!(SpoolSum::parse(&sum.text()), Some(sum));
        assert_eq!(SpoolSum::parse("lifeboat-spool-v1 3"), None);
        assert_eq!(SpoolSum::parse(""), None);
    }
}
