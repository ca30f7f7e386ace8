//! `restore`: a backup written into a directory, with the recovery settings that bring it to the
//! target. Everything that can refuse comes first and writes nothing ([`plan`]: backup choice,
//! the manifest's rules, the target, the recovery settings, the WAL; then `plan_files`: what
//! delta keeps, rewrites and removes; then one listing proves every needed chunk is there;
//! `--dry-run` stops here). Then `apply`: removals, directories, files → fetch each needed chunk
//! once, verify, write every place it goes → fsync → `backup_label`, `tablespace_map`, recovery
//! settings and the signal file → the backup's own links last. No file is opened through a
//! symbolic link (`O_NOFOLLOW`), and every directory written into was verified or made real.

mod direct;
mod fetch;
mod files;
mod finish;
pub mod plan;
pub(crate) mod tail;
#[cfg(test)]
mod tests;
pub mod timeline;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::{ChunkId, Entry, FileEntry, Manifest, Root};
use serde::Serialize;

use crate::backup::chunks::read_at_full;
use crate::{EngineError, Result, join_error};
use files::{FileAction, FilePlan, apply, make_links, parallel_map, plan_files, remove_any};
use finish::{finish, fsync_dir, recovery_conf, write_file};
pub use plan::Plan;
use write::{FileProgress, sync_all};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target_dir: PathBuf,
    /// A label, or `None`/"latest" to let the target choose.
    pub backup: Option<String>,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    pub timeline: TargetTimeline,
    pub delta: bool,
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    /// `primary_slot_name` for a standby.
    pub primary_slot_name: Option<String>,
    /// Tablespace OID or name → directory.
    pub tablespace_map: HashMap<String, PathBuf>,
    pub dry_run: bool,
    /// Threads planning a delta; four per thread decode and write chunks, since direct writes
    /// wait on the disk. Fetches in flight are the store's own setting
    /// ([`lifeboat_storage::Capabilities::concurrency`]).
    pub parallel: usize,
    /// Write `archive_mode = off` into the restored cluster, so that a copy (a drill, a test)
    /// does not archive its own timeline into the repository.
    pub archive_off: bool,
    /// The `restore_command` written into the restored cluster's settings.
    pub restore_command: String,
    /// Write file data with `O_DIRECT` where the filesystem takes it (see `direct`).
    pub direct_io: bool,
}

#[derive(Debug, Clone)]
pub enum RestoreEvent {
    Planned {
        files: u64,
        bytes: u64,
    },
    /// Before anything is written: a tablespace of the backup goes into `dir` (its location in
    /// the manifest, or `--tablespace-map`'s).
    Tablespace {
        oid: u32,
        name: String,
        dir: PathBuf,
    },
    Written {
        bytes: u64,
    },
    Syncing,
}

pub type EventSink = Arc<dyn Fn(RestoreEvent) + Send + Sync>;

#[derive(Debug, Clone, Serialize, Default)]
pub struct RestoreReport {
    pub backup: String,
    pub files_written: u64,
    pub bytes_written: u64,
    pub files_kept: u64,
    pub files_removed: u64,
    pub chunks_fetched: u64,
    /// GET requests made for chunk data: one per loose chunk, one per ranged read of a pack.
    pub requests: u64,
    pub duration_seconds: f64,
    pub dry_run: bool,
    pub plan: Option<Plan>,
}

/// One file of the backup and where it goes on this machine.
struct Target {
    entry: FileEntry,
    dest: PathBuf,
}

/// Part of a chunk to write into a file.
#[derive(Debug, Clone, Copy)]
struct Placement {
    file: usize,
    file_offset: u64,
    chunk_offset: u64,
    len: u64,
}

pub async fn restore(
    repo: &Repository,
    opts: &RestoreOptions,
    events: EventSink,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let identity = repo.identity().await?.ok_or_else(|| {
        EngineError::invalid(
            "the repository holds no backup",
            "take one with `lifeboat backup`",
        )
    })?;
    let (manifests, unreadable) = repo.readable_manifests().await?;
    for (label, problem) in &unreadable {
        tracing::warn!("backup {label} is unreadable and cannot be chosen: {problem}");
    }
    let manifest = plan::choose(&manifests, opts.backup.as_deref(), &opts.target)?.clone();
    plan::check_manifest(&manifest)?;
    let tablespaces = plan::tablespace_dirs(&manifest, &opts.tablespace_map)?;
    let target_dir = absolute(&opts.target_dir)?;
    plan::check_target(&target_dir, opts.delta, "target directory")?;
    if opts.delta {
        plan::check_delta_target(&target_dir, identity.system_identifier)?;
    }
    for (oid, dir) in &tablespaces {
        // Delta may update a tablespace directory only when it belongs to this target already
        // (its pg_tblspc link points there); anything else may be a live cluster's tablespace.
        let link = target_dir.join("pg_tblspc").join(oid.to_string());
        let ours = fs::read_link(&link).is_ok_and(|to| to == *dir);
        plan::check_tablespace_dir(dir, *oid, opts.delta && ours)?;
    }
    // Everything that can refuse the restore is decided before the first byte is written: the
    // recovery settings are rendered (and so checked) now, and the owner of the result looked up.
    let settings = recovery_conf(&manifest, opts)?;
    let owner =
        lifeboat_pg::cluster::cluster_owner().map_err(|e| EngineError::Internal(e.to_string()))?;
    timeline::check_target_timeline(repo, &manifest, &opts.timeline).await?;
    let (wal_to, mut warnings) =
        plan::check_wal(repo, &manifest, &opts.target, identity.wal_segment_size).await?;
    let streamed_tail = tail::find(
        repo,
        &manifest,
        opts,
        identity.wal_segment_size,
        &mut warnings,
    )
    .await?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    for ts in &manifest.tablespaces {
        if let Some(dir) = tablespaces.get(&ts.oid) {
            tracing::info!(
                "tablespace {} ({}, location {:?} in the backup) is restored into {}",
                ts.oid,
                ts.name,
                ts.location,
                dir.display()
            );
        }
    }
    let targets = file_targets(&manifest, &target_dir, &tablespaces);
    let bytes: u64 = targets.iter().map(|t| t.entry.size).sum();
    let layout = Arc::new(Layout {
        target_dir: target_dir.clone(),
        tablespaces: tablespaces.clone(),
    });
    let block_size = u64::from(manifest.block_size);
    let targets = Arc::new(targets);
    // Read only: what is kept, rewritten and removed, and which chunks that takes.
    let files = {
        let manifest = manifest.clone();
        let layout = layout.clone();
        let targets = targets.clone();
        let codec = repo.codec().clone();
        let delta = opts.delta;
        let parallel = opts.parallel.max(1);
        tokio::task::spawn_blocking(move || {
            plan_files(
                &manifest, &layout, &targets, block_size, delta, &codec, parallel,
            )
        })
        .await
        .map_err(join_error)??
    };
    tracing::debug!(
        "restore: planned in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let stored = fetch::check_chunks(repo, &manifests, &manifest, files.placements.keys()).await?;
    drop(manifests);
    let rewrite: Vec<PathBuf> = targets
        .iter()
        .zip(&files.actions)
        .filter(|(_, a)| **a != FileAction::Keep)
        .map(|(t, _)| t.dest.clone())
        .collect();
    let plan = Plan {
        backup: manifest.label.clone(),
        backup_stop_time: lifeboat_repo::timestamp::text(manifest.stop_time),
        backup_stop_lsn: manifest.stop_lsn,
        timeline: manifest.timeline.get(),
        wal_from: manifest.start_wal.to_string(),
        wal_to,
        streamed_wal_to: streamed_tail
            .as_ref()
            .and_then(|t| t.end_lsn(identity.wal_segment_size)),
        files: targets.len() as u64,
        bytes,
        target_dir: target_dir.clone(),
        tablespaces: tablespaces.clone(),
        warnings,
        files_to_remove: files.remove.len() as u64,
        files_to_rewrite: rewrite.len() as u64,
        remove: opts.delta.then(|| files.remove.clone()),
        rewrite: opts.delta.then_some(rewrite),
    };
    if opts.dry_run {
        return Ok(RestoreReport {
            backup: manifest.label.clone(),
            dry_run: true,
            duration_seconds: started.elapsed().as_secs_f64(),
            plan: Some(plan),
            ..Default::default()
        });
    }
    events(RestoreEvent::Planned {
        files: targets.len() as u64,
        bytes,
    });
    for ts in &manifest.tablespaces {
        if let Some(dir) = tablespaces.get(&ts.oid) {
            events(RestoreEvent::Tablespace {
                oid: ts.oid,
                name: ts.name.clone(),
                dir: dir.clone(),
            });
        }
    }

    let mut report = RestoreReport {
        backup: manifest.label.clone(),
        plan: Some(plan),
        ..Default::default()
    };
    let FilePlan {
        actions,
        remove,
        placements,
        kept,
    } = files;
    let removed = remove.len() as u64;
    {
        let manifest = manifest.clone();
        let layout = layout.clone();
        let targets = targets.clone();
        let parallel = opts.parallel.max(1);
        let marker = plan::restore_marker_text(identity.system_identifier, &manifest.label);
        tokio::task::spawn_blocking(move || {
            apply(
                &manifest, &layout, &targets, &actions, &remove, &marker, parallel,
            )
        })
        .await
        .map_err(join_error)??;
    }
    tracing::debug!(
        "restore: prepared in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    report.files_kept = kept;
    report.files_removed = removed;

    // Fetch each chunk once; write it wherever it goes.
    let touched: HashSet<usize> = placements
        .values()
        .flat_map(|v| v.iter().map(|p| p.file))
        .collect();
    // Every file of the backup that was (re)created, empty ones included; delta's kept files not.
    report.files_written = (targets.len() as u64)
        .saturating_sub(kept)
        .max(touched.len() as u64);
    report.chunks_fetched = placements.len() as u64;
    // Each file is fsynced as soon as its last piece is written, so that writeback overlaps the
    // rest of the restore instead of all happening at the end.
    let mut pieces_left: Vec<usize> = vec![0; targets.len()];
    for p in placements.values().flatten() {
        pieces_left[p.file] += 1;
    }
    let progress = Arc::new(FileProgress {
        synced: (0..targets.len()).map(|_| AtomicBool::new(false)).collect(),
        pieces_left: pieces_left.into_iter().map(AtomicUsize::new).collect(),
    });
    // Fetches wait on the store (its `concurrency` requests in flight); decoding and writing run
    // on `parallel` threads (see `fetch`).
    let sink = fetch::Sink {
        targets: targets.clone(),
        progress: progress.clone(),
        writer: Arc::new(direct::PieceWriter::new(opts.direct_io)),
        label: manifest.label.clone(),
        parallel: opts.parallel.max(1),
    };
    report.requests = fetch::fetch_and_write(repo, &stored, placements, sink, |written| {
        report.bytes_written += written;
        events(RestoreEvent::Written { bytes: written });
    })
    .await?;
    drop(stored);

    tracing::debug!(
        "restore: written in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    events(RestoreEvent::Syncing);
    {
        let targets = targets.clone();
        let manifest = manifest.clone();
        let target_dir = target_dir.clone();
        let tablespaces = tablespaces.clone();
        let parallel = opts.parallel.max(1);
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            sync_all(
                &targets,
                &progress,
                &manifest,
                &target_dir,
                &tablespaces,
                parallel,
            )
        })
        .await
        .map_err(join_error)??;
    }
    tracing::debug!(
        "restore: synced in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    finish(
        &manifest,
        &target_dir,
        &settings,
        opts.standby,
        &tablespaces,
    )?;
    if let Some(tail) = &streamed_tail {
        tail::write(&target_dir, tail, identity.wal_segment_size)?;
    }
    // The backup's own links last: nothing is written after them, so nothing through them.
    make_links(&manifest, &target_dir)?;
    remove_any(&target_dir.join(plan::RESTORE_MARKER))?;
    fsync_dir(&target_dir)?;
    if let Some(owner) = owner {
        // Run as root: PostgreSQL refuses a data directory it does not own. A walk of the whole
        // tree: off the runtime's threads.
        let dirs: Vec<PathBuf> = std::iter::once(target_dir.clone())
            .chain(tablespaces.values().cloned())
            .collect();
        tokio::task::spawn_blocking(move || {
            for dir in &dirs {
                lifeboat_pg::cluster::chown_recursive(dir, &owner).map_err(|e| {
                    EngineError::invalid(
                        format!("cannot give {} to the postgres user: {e}", dir.display()),
                        "change its owner to the user PostgreSQL runs as",
                    )
                })?;
            }
            Ok::<(), EngineError>(())
        })
        .await
        .map_err(join_error)??;
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .map_err(|e| EngineError::io("cannot read the current directory", e))
}

struct Layout {
    target_dir: PathBuf,
    tablespaces: BTreeMap<u32, PathBuf>,
}

/// Where a manifest path goes on this machine.
fn destination(
    root: Root,
    path: &str,
    target_dir: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
) -> PathBuf {
    if root == Root::Config {
        return target_dir.join(plan::CONFIG_DIR).join(path);
    }
    if let Some(rest) = path.strip_prefix("pg_tblspc/") {
        let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(dir) = oid.parse::<u32>().ok().and_then(|o| tablespaces.get(&o)) {
            return if inner.is_empty() {
                dir.clone()
            } else {
                dir.join(inner)
            };
        }
    }
    target_dir.join(path)
}

fn file_targets(
    manifest: &Manifest,
    target_dir: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
) -> Vec<Target> {
    manifest
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File(f) => Some(Target {
                dest: destination(f.root, &f.path, target_dir, tablespaces),
                entry: f.clone(),
            }),
            _ => None,
        })
        .collect()
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |e| EngineError::io(what, e)
}

/// Open flags for every file restore writes or reads back: never through a symbolic link.
const NOFOLLOW: i32 = nix::libc::O_NOFOLLOW;
