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

use super::{default_spool, fsync_dir, parse_name, validate_wal, wal_dir_of, write_atomically};
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

    let spooled = spool.join(name.to_string());
    if let Ok(meta) = fs::metadata(&spooled) {
        match fs::rename(&spooled, dest) {
            Ok(()) => {
                fsync_dir(&wal_dir_of(dest))?;
                return Ok(FetchOutcome::Restored {
                    from_spool: true,
                    size: meta.len(),
                    prefetch_after,
                });
            }
            // A spool on another file system, or a race with the prefetcher's cleanup: fetch
            // from the repository as if the spool were empty.
            Err(e) => tracing::debug!("cannot take {} from the spool: {e}", spooled.display()),
        }
    }

    let repo_handle = repo.get().await?;
    let Some(bytes) = repo_handle.get_wal(&name).await? else {
        return Ok(FetchOutcome::NotFound);
    };
    if name.segment().is_some() {
        check_fetched(repo_handle.identity().await?.as_ref(), &name, &bytes)?;
    }
    let size = bytes.len() as u64;
    let dest_owned = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&dest_owned, &bytes))
        .await
        .map_err(join_error)??;
    Ok(FetchOutcome::Restored {
        from_spool: false,
        size,
        prefetch_after,
    })
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
    fs::create_dir_all(spool)
        .map_err(|e| EngineError::io(format!("cannot create {}", spool.display()), e))?;
    let lock_path = spool.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| EngineError::io(format!("cannot open {}", lock_path.display()), e))?;
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
            if target.exists() {
                return Ok(Some(seg));
            }
            let name = WalFileName::Segment(seg);
            let Some(bytes) = repo_handle.get_wal(&name).await? else {
                return Ok(None);
            };
            check_fetched(Some(&identity), &name, &bytes)?;
            tokio::task::spawn_blocking(move || write_atomically(&target, &bytes))
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
        let stale = if file.ends_with(".lifeboat-tmp") {
            true
        } else if let Ok(WalFileName::Segment(seg)) = WalFileName::parse(&file) {
            seg.timeline < after.timeline || (seg.timeline == after.timeline && file <= after_text)
        } else {
            false
        };
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}
