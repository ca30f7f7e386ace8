//! `restore`: a backup written into a directory, with the recovery settings that bring it to the
//! target. Everything that can refuse comes first and writes nothing ([`plan`]: backup choice,
//! the manifest's rules, the target, the recovery settings, the WAL; then `plan_files`: what
//! delta keeps, rewrites and removes; then one listing proves every needed chunk is there;
//! `--dry-run` stops here). Then `apply`: removals, directories, files → fetch each needed chunk
//! once, verify, write every place it goes → fsync → `backup_label`, `tablespace_map`, recovery
//! settings and the signal file → the backup's own links last. No file is opened through a
//! symbolic link (`O_NOFOLLOW`), and every directory written into was verified or made real.

mod direct;
pub mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;
use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::{ChunkId, Entry, FileEntry, Manifest, Root};
use serde::Serialize;

use crate::backup::chunks::read_at_full;
use crate::{EngineError, Result, join_error};
pub use plan::Plan;

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
    /// Tablespace OID or name → directory.
    pub tablespace_map: HashMap<String, PathBuf>,
    pub dry_run: bool,
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
    let (wal_to, warnings) =
        plan::check_wal(repo, &manifest, &opts.target, identity.wal_segment_size).await?;
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
    check_chunks(repo, &manifests, &manifest, files.placements.keys()).await?;
    drop(manifests);
    let rewrite: Vec<PathBuf> = targets
        .iter()
        .zip(&files.actions)
        .filter(|(_, a)| **a != FileAction::Keep)
        .map(|(t, _)| t.dest.clone())
        .collect();
    let plan = Plan {
        backup: manifest.label.clone(),
        backup_stop_time: manifest.stop_time.clone(),
        backup_stop_lsn: manifest.stop_lsn,
        timeline: manifest.timeline.get(),
        wal_from: manifest.start_wal.clone(),
        wal_to,
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
    // Direct writes wait for the disk in the writing thread: more chunks in flight keep the
    // cores busy meanwhile.
    let in_flight = opts.parallel.max(1) * 4;
    let writer = Arc::new(direct::PieceWriter::new(opts.direct_io));
    let label = manifest.label.clone();
    let mut writes = futures::stream::iter(placements)
        .map(|(chunk, places)| {
            let repo = repo.clone();
            let targets = targets.clone();
            let progress = progress.clone();
            let writer = writer.clone();
            let label = label.clone();
            async move {
                let raw = repo
                    .store()
                    .get(&chunk.key())
                    .await
                    .map_err(|e| vanished(e, &chunk, &label))?;
                tokio::task::spawn_blocking(move || {
                    PLAIN_BUFFER.with_borrow_mut(|buf| {
                        let plain = repo.decode_chunk_aligned(&chunk, &raw, buf, direct::ALIGN)?;
                        write_chunk(plain, &places[..], &targets, &progress, &writer)
                    })
                })
                .await
                .map_err(join_error)?
            }
        })
        .buffer_unordered(in_flight);
    while let Some(written) = writes.next().await {
        let written = written?;
        report.bytes_written += written;
        events(RestoreEvent::Written { bytes: written });
    }

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

/// A chunk the listing held is gone when it is fetched: the repository lost it under us.
fn vanished(e: lifeboat_storage::StorageError, chunk: &ChunkId, label: &str) -> EngineError {
    if e.is_not_found() {
        EngineError::Corrupt {
            message: format!(
                "chunk {} of backup {label} vanished from the repository during the restore; the target directory is incomplete",
                chunk.key()
            ),
            hint: "something removed objects from the repository (an expire of another repository copy, a lifecycle rule, a person): run `lifeboat verify`, then restore again into an empty directory".into(),
        }
    } else {
        lifeboat_repo::RepoError::from(e).into()
    }
}

/// Every chunk the restore will fetch must be in the repository (one listing), or nothing is
/// written: a missing chunk is corruption, named with the backups that need it.
async fn check_chunks(
    repo: &Repository,
    manifests: &[Manifest],
    manifest: &Manifest,
    needed: impl Iterator<Item = &ChunkId>,
) -> Result<()> {
    let needed: Vec<ChunkId> = needed.copied().collect();
    if needed.is_empty() {
        return Ok(());
    }
    let present = repo.chunk_ids().await?;
    let mut missing: Vec<ChunkId> = needed
        .into_iter()
        .filter(|c| !present.contains(c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    let gone: HashSet<ChunkId> = missing.iter().copied().collect();
    let mut needing: Vec<String> = manifests
        .iter()
        .filter(|m| m.chunks().any(|c| gone.contains(&c)))
        .map(|m| m.label.clone())
        .collect();
    if !needing.contains(&manifest.label) {
        needing.push(manifest.label.clone());
    }
    const SHOWN: usize = 10;
    let mut names: Vec<String> = missing.iter().take(SHOWN).map(ChunkId::key).collect();
    if missing.len() > SHOWN {
        names.push(format!("and {} more", missing.len() - SHOWN));
    }
    Err(EngineError::Corrupt {
        message: format!(
            "backup {} cannot be restored: {} chunk(s) it needs are missing from the repository: {}; backups that need them: {}",
            manifest.label,
            missing.len(),
            names.join(", "),
            needing.join(", ")
        ),
        hint: "nothing was written; restore a backup that does not need these chunks (`lifeboat verify` names every affected backup), and find out what removed objects from the repository".into(),
    })
}

/// The block restore appends to `postgresql.auto.conf`, rendered (and so checked) before anything
/// is written.
fn recovery_conf(manifest: &Manifest, opts: &RestoreOptions) -> Result<String> {
    let mut conf = format!(
        "# Recovery settings added by lifeboat restore of backup {} (removed by the next restore)\n",
        manifest.label
    );
    if opts.archive_off {
        conf.push_str("archive_mode = 'off'\n");
    }
    // PostgreSQL refuses a `Z` zone in recovery_target_time: write the instant as +00.
    let target = match &opts.target {
        RecoveryTarget::Time(text) => RecoveryTarget::Time(
            plan::read_target_time(text).map_or_else(|| text.clone(), |t| t.for_postgres(text)),
        ),
        other => other.clone(),
    };
    conf.push_str(
        &lifeboat_pg::recovery::recovery_settings(
            &opts.restore_command,
            &target,
            opts.action,
            &opts.timeline,
            if opts.standby {
                opts.primary_conninfo.as_deref()
            } else {
                None
            },
        )
        .map_err(|e| {
            EngineError::invalid(
                e.to_string(),
                "correct the recovery target option; nothing was written",
            )
        })?,
    );
    Ok(conf)
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

/// What the planning pass decided for one file of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileAction {
    /// (Delta) the file is there with the right size and mode; only differing blocks are written.
    Keep,
    /// (Delta) a regular file is there, with the wrong size or mode: fixed, then its differing
    /// blocks written.
    Fix,
    /// Created (whatever is at its path removed first), every block written.
    Create,
}

/// The read-only plan of a restore's files: what each file needs, what goes, which chunks.
struct FilePlan {
    actions: Vec<FileAction>,
    /// Top-most paths to remove (delta: what the backup does not hold).
    remove: Vec<PathBuf>,
    placements: HashMap<ChunkId, Vec<Placement>>,
    /// Files left exactly as they were (delta).
    kept: u64,
}

/// Every path the restore makes or keeps: the roots, directories, files and their parents, links.
fn expected_paths(manifest: &Manifest, layout: &Layout, targets: &[Target]) -> HashSet<PathBuf> {
    let mut expected: HashSet<PathBuf> = HashSet::new();
    expected.insert(layout.target_dir.clone());
    expected.insert(layout.target_dir.join(plan::RESTORE_MARKER));
    for (oid, dir) in &layout.tablespaces {
        expected.insert(dir.clone());
        expected.insert(layout.target_dir.join("pg_tblspc"));
        expected.insert(layout.target_dir.join("pg_tblspc").join(oid.to_string()));
    }
    for entry in &manifest.entries {
        match entry {
            Entry::Dir { path, root, .. } => {
                expected.insert(destination(
                    *root,
                    path,
                    &layout.target_dir,
                    &layout.tablespaces,
                ));
            }
            Entry::Link { path, .. } => {
                expected.insert(layout.target_dir.join(path));
            }
            Entry::File(_) => {}
        }
    }
    for t in targets {
        let mut dir = t.dest.parent();
        while let Some(d) = dir {
            if !expected.insert(d.to_path_buf()) {
                break;
            }
            dir = d.parent();
        }
        expected.insert(t.dest.clone());
    }
    expected
}

/// Whether every directory from a root down to `dir` is a real directory (no link): only then
/// is a file found under it the one the restore would write.
fn real_dir_chain(dir: &Path, roots: &[PathBuf], memo: &mut HashMap<PathBuf, bool>) -> bool {
    if let Some(known) = memo.get(dir) {
        return *known;
    }
    let ok = if roots.iter().any(|r| r == dir) {
        // A root is the user's choice (or the tablespace location shown in the plan).
        fs::metadata(dir).is_ok_and(|m| m.is_dir())
    } else {
        fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
            && dir
                .parent()
                .is_some_and(|parent| real_dir_chain(parent, roots, memo))
    };
    memo.insert(dir.to_path_buf(), ok);
    ok
}

/// The planning pass: reads, never writes. With delta, compares what is there with the backup.
fn plan_files(
    manifest: &Manifest,
    layout: &Layout,
    targets: &[Target],
    block_size: u64,
    delta: bool,
    codec: &lifeboat_repo::Codec,
    parallel: usize,
) -> Result<FilePlan> {
    let mut remove = Vec::new();
    let mut readable = vec![false; targets.len()];
    if delta {
        let expected = expected_paths(manifest, layout, targets);
        find_unexpected(&layout.target_dir, &expected, true, &mut remove)?;
        for dir in layout.tablespaces.values() {
            // A tablespace directory may hold other majors' subdirectories: only what lies
            // under the backup's own is removed.
            find_unexpected(dir, &expected, false, &mut remove)?;
        }
        let mut roots = vec![layout.target_dir.clone()];
        roots.extend(layout.tablespaces.values().cloned());
        let mut memo = HashMap::new();
        for (t, ok) in targets.iter().zip(readable.iter_mut()) {
            *ok = t
                .dest
                .parent()
                .is_some_and(|p| real_dir_chain(p, &roots, &mut memo));
        }
    }
    let indexed: Vec<(&Target, bool)> = targets.iter().zip(readable).collect();
    let decided: Vec<(FileAction, Vec<bool>)> =
        parallel_map(&indexed, parallel, |(t, readable)| {
            file_needs(t, block_size, delta && *readable, codec)
        })?;
    let mut kept = 0;
    let mut actions = Vec::with_capacity(targets.len());
    let mut placements: HashMap<ChunkId, Vec<Placement>> = HashMap::new();
    for (i, (t, (action, need))) in targets.iter().zip(decided).enumerate() {
        if !need.iter().any(|n| *n) {
            kept += u64::from(action == FileAction::Keep);
            actions.push(action);
            continue;
        }
        // A file kept whose blocks differ is rewritten in part.
        actions.push(match action {
            FileAction::Keep => FileAction::Fix,
            other => other,
        });
        let f = &t.entry;
        if let Some(p) = &f.packed {
            placements.entry(p.chunk).or_default().push(Placement {
                file: i,
                file_offset: 0,
                chunk_offset: p.offset,
                len: f.size,
            });
        }
        for (index, chunk) in f.blocks.iter().enumerate() {
            if need.get(index).copied().unwrap_or(true) {
                let offset = index as u64 * block_size;
                placements.entry(*chunk).or_default().push(Placement {
                    file: i,
                    file_offset: offset,
                    chunk_offset: 0,
                    len: block_size.min(f.size.saturating_sub(offset)),
                });
            }
        }
    }
    Ok(FilePlan {
        actions,
        remove,
        placements,
        kept,
    })
}

/// Delta: collect the top-most paths under `root` the backup does not hold (`removable_here`:
/// also those directly in `root`). Never follows links.
fn find_unexpected(
    root: &Path,
    expected: &HashSet<PathBuf>,
    removable_here: bool,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let listing = match fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(EngineError::io(
                format!("cannot list {}", root.display()),
                e,
            ));
        }
    };
    for item in listing {
        let item = item.map_err(io(format!("cannot list {}", root.display())))?;
        let path = item.path();
        let is_real_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !expected.contains(&path) {
            if removable_here {
                out.push(path);
            }
        } else if is_real_dir {
            find_unexpected(&path, expected, true, out)?;
        }
    }
    out.sort();
    Ok(())
}

/// Make `dir` a real directory (not a link), and every directory between it and a root, creating
/// what is missing and replacing what is not a directory. `done` remembers what was verified.
fn real_dir(dir: &Path, roots: &[PathBuf], done: &mut HashSet<PathBuf>) -> Result<()> {
    if done.contains(dir) || roots.iter().any(|r| r == dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        real_dir(parent, roots, done)?;
    }
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove_any(dir)?;
            fs::create_dir(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        Err(_) => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io(format!("cannot create {}", dir.display())))?;
        }
    }
    done.insert(dir.to_path_buf());
    Ok(())
}

/// A root (the target or a tablespace directory): created if missing, with its mode.
fn create_root(path: &Path) -> Result<()> {
    if fs::metadata(path).is_err() {
        fs::create_dir_all(path).map_err(io(format!("cannot create {}", path.display())))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("cannot set the mode of {}", path.display())))
}

/// Set the mode of a directory verified to be a real one (never through a link).
fn set_dir_mode(path: &Path, mode: u32) -> Result<()> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(path)
        .map_err(io(format!("cannot open the directory {}", path.display())))?;
    dir.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io(format!("cannot set the mode of {}", path.display())))
}

/// The execution pass: directories, tablespace links, removals, files (created or resized).
fn apply(
    manifest: &Manifest,
    layout: &Layout,
    targets: &[Target],
    actions: &[FileAction],
    remove: &[PathBuf],
    marker: &str,
    parallel: usize,
) -> Result<()> {
    for path in remove {
        match fs::symlink_metadata(path) {
            Ok(_) => remove_any(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EngineError::io(
                    format!("cannot stat {}", path.display()),
                    e,
                ));
            }
        }
    }
    create_root(&layout.target_dir)?;
    // Before anything else is written: a restore killed from here on leaves a directory that
    // `--delta` recognises as this cluster's and finishes.
    write_file(&layout.target_dir.join(plan::RESTORE_MARKER), marker)?;
    fsync_dir(&layout.target_dir)?;
    let mut roots = vec![layout.target_dir.clone()];
    for dir in layout.tablespaces.values() {
        create_root(dir)?;
        roots.push(dir.clone());
    }
    let mut done: HashSet<PathBuf> = HashSet::new();
    for (oid, dir) in &layout.tablespaces {
        // pg_tblspc/<oid> is a link to the tablespace's directory; files of the tablespace are
        // written through the directory itself, never through this link.
        let pg_tblspc = layout.target_dir.join("pg_tblspc");
        real_dir(&pg_tblspc, &roots, &mut done)?;
        let link = pg_tblspc.join(oid.to_string());
        match fs::symlink_metadata(&link) {
            Ok(m)
                if m.file_type().is_symlink()
                    && fs::read_link(&link).ok().as_deref() == Some(dir.as_path()) => {}
            Ok(_) => {
                remove_any(&link)?;
                std::os::unix::fs::symlink(dir, &link).map_err(io(format!(
                    "cannot create the tablespace link {}",
                    link.display()
                )))?;
            }
            Err(_) => std::os::unix::fs::symlink(dir, &link).map_err(io(format!(
                "cannot create the tablespace link {}",
                link.display()
            )))?,
        }
    }
    for entry in &manifest.entries {
        match entry {
            Entry::Dir { path, mode, root } => {
                let dest = destination(*root, path, &layout.target_dir, &layout.tablespaces);
                if roots.contains(&dest) {
                    // A tablespace's own directory: the user's (or the plan's) path.
                    fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(io(format!("cannot set the mode of {}", dest.display())))?;
                } else {
                    real_dir(&dest, &roots, &mut done)?;
                    set_dir_mode(&dest, *mode)?;
                }
            }
            // pg_wal comes back as a directory: a link would point at the source's WAL.
            Entry::Link { path, .. } if path == "pg_wal" => {
                let dest = layout.target_dir.join(path);
                real_dir(&dest, &roots, &mut done)?;
                set_dir_mode(&dest, 0o700)?;
            }
            Entry::Link { .. } | Entry::File(_) => {}
        }
    }
    for t in targets {
        if let Some(parent) = t.dest.parent() {
            real_dir(parent, &roots, &mut done)?;
        }
    }
    let work: Vec<(&Target, FileAction)> = targets.iter().zip(actions.iter().copied()).collect();
    parallel_map(&work, parallel, |(t, action)| make_file(t, *action))?;
    Ok(())
}

/// Create or resize one file as planned; its parent is a verified real directory.
fn make_file(t: &Target, action: FileAction) -> Result<()> {
    let f = &t.entry;
    let file = match action {
        FileAction::Keep => return Ok(()),
        FileAction::Fix => OpenOptions::new()
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(&t.dest)
            .map_err(io(format!("cannot open {}", t.dest.display())))?,
        FileAction::Create => {
            if fs::symlink_metadata(&t.dest).is_ok() {
                remove_any(&t.dest)?;
            }
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(NOFOLLOW)
                .mode(f.mode & 0o7777)
                .open(&t.dest)
                .map_err(io(format!("cannot create {}", t.dest.display())))?
        }
    };
    file.set_len(f.size)
        .map_err(io(format!("cannot size {}", t.dest.display())))?;
    file.set_permissions(fs::Permissions::from_mode(f.mode & 0o7777))
        .map_err(io(format!("cannot set the mode of {}", t.dest.display())))
}

/// The backup's links (other than `pg_wal`), made after every file is written.
fn make_links(manifest: &Manifest, target_dir: &Path) -> Result<()> {
    for entry in &manifest.entries {
        if let Entry::Link { path, target } = entry
            && path != "pg_wal"
        {
            let dest = target_dir.join(path);
            match fs::symlink_metadata(&dest) {
                Ok(m)
                    if m.file_type().is_symlink()
                        && fs::read_link(&dest).ok().as_deref() == Some(Path::new(target)) =>
                {
                    continue;
                }
                Ok(_) => remove_any(&dest)?,
                Err(_) => {}
            }
            std::os::unix::fs::symlink(target, &dest)
                .map_err(io(format!("cannot create the link {}", dest.display())))?;
        }
    }
    Ok(())
}

/// Run `f` over `items` on up to `parallel` threads, keeping the order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let chunk = items.len().div_ceil(parallel.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| EngineError::Internal("a worker thread panicked".into()))??,
            );
        }
        Ok(out)
    })
}

/// Per block (or one flag for a packed file): must it be written, and what becomes of the file.
/// Reads only; `compare` (delta, under real directories) reads what is there.
fn file_needs(
    t: &Target,
    block_size: u64,
    compare: bool,
    codec: &lifeboat_repo::Codec,
) -> Result<(FileAction, Vec<bool>)> {
    let f = &t.entry;
    let blocks = if f.packed.is_some() {
        1
    } else {
        f.blocks.len()
    };
    let create = if f.size == 0 {
        vec![false]
    } else {
        vec![true; blocks]
    };
    let existing = if compare {
        fs::symlink_metadata(&t.dest).ok()
    } else {
        None
    };
    let Some(m) = existing.filter(|m| m.is_file()) else {
        return Ok((FileAction::Create, create));
    };
    let action = if m.len() == f.size && (m.permissions().mode() & 0o7777) == f.mode {
        FileAction::Keep
    } else {
        FileAction::Fix
    };
    if f.size == 0 {
        return Ok((action, vec![false]));
    }
    let mut need = vec![true; blocks];
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(&t.dest)
        .map_err(io(format!("cannot open {}", t.dest.display())))?;
    if let Some(p) = &f.packed {
        if m.len() == f.size {
            let mut buf = Vec::with_capacity(f.size as usize);
            (&handle)
                .read_to_end(&mut buf)
                .map_err(io(format!("cannot read {}", t.dest.display())))?;
            need[0] = codec.hash(&buf).0 != p.hash.0.0;
        }
    } else {
        let mut buf = vec![0u8; block_size as usize];
        for (index, chunk) in f.blocks.iter().enumerate() {
            let offset = index as u64 * block_size;
            let len = block_size.min(f.size - offset) as usize;
            if offset + len as u64 > m.len() {
                break;
            }
            let n = read_at_full(&handle, &mut buf[..len], offset)
                .map_err(io(format!("cannot read {}", t.dest.display())))?;
            need[index] = n != len || codec.hash(&buf[..len]) != chunk.0;
        }
    }
    Ok((action, need))
}

fn remove_any(path: &Path) -> Result<()> {
    let m = fs::symlink_metadata(path).map_err(io(format!("cannot stat {}", path.display())))?;
    if m.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .map_err(io(format!("cannot remove {}", path.display())))
}

thread_local! {
    // One decode buffer per worker thread, reused from chunk to chunk.
    static PLAIN_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which files still wait for pieces, and which are already fsynced.
struct FileProgress {
    pieces_left: Vec<AtomicUsize>,
    synced: Vec<AtomicBool>,
}

fn write_chunk(
    plain: &[u8],
    places: &[Placement],
    targets: &[Target],
    progress: &FileProgress,
    writer: &direct::PieceWriter,
) -> Result<u64> {
    let mut written = 0;
    for p in places {
        let t = &targets[p.file];
        let start = p.chunk_offset as usize;
        let end = start + p.len as usize;
        let data = plain.get(start..end).ok_or_else(|| {
            EngineError::Internal(format!(
                "chunk is {} bytes, {} needs bytes {start}..{end}",
                plain.len(),
                t.entry.path
            ))
        })?;
        let (file, _direct) = writer
            .write(&t.dest, data, p.file_offset)
            .map_err(io(format!("cannot write {}", t.dest.display())))?;
        written += p.len;
        if progress.pieces_left[p.file].fetch_sub(1, Ordering::AcqRel) == 1 {
            file.sync_all()
                .map_err(io(format!("cannot fsync {}", t.dest.display())))?;
            progress.synced[p.file].store(true, Ordering::Release);
        }
    }
    Ok(written)
}

/// fsync every file and directory written, so that the restore is durable before it reports.
fn sync_all(
    targets: &[Target],
    progress: &FileProgress,
    manifest: &Manifest,
    target_dir: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    parallel: usize,
) -> Result<()> {
    let unsynced: Vec<&Target> = targets
        .iter()
        .zip(&progress.synced)
        .filter(|(_, done)| !done.load(Ordering::Acquire))
        .map(|(t, _)| t)
        .collect();
    parallel_map(&unsynced, parallel * 2, |t| {
        OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(&t.dest)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot fsync {}", t.dest.display())))
    })?;
    let mut dirs: Vec<PathBuf> = vec![target_dir.to_path_buf()];
    dirs.extend(tablespaces.values().cloned());
    for e in &manifest.entries {
        if let Entry::Dir { path, root, .. } = e {
            dirs.push(destination(*root, path, target_dir, tablespaces));
        }
    }
    parallel_map(&dirs, parallel * 2, |d| {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot fsync the directory {}", d.display())))
    })?;
    Ok(())
}

/// Write a file restore makes itself: never through a link (one found at its name is removed;
/// the manifest's links are made only after this).
fn write_file(path: &Path, text: &str) -> Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        remove_any(path)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("cannot write {}", path.display())))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot fsync {}", dir.display())))
}

/// A restored file's text, read without following a link; empty when missing or unreadable.
fn read_restored(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// The last step: backup_label, tablespace_map, recovery settings (`settings`, rendered when the
/// restore was planned), the signal file.
fn finish(
    manifest: &Manifest,
    target_dir: &Path,
    settings: &str,
    standby: bool,
    tablespaces: &BTreeMap<u32, PathBuf>,
) -> Result<()> {
    write_file(&target_dir.join("backup_label"), &manifest.backup_label)?;
    if let Some(map) = &manifest.tablespace_map {
        // PostgreSQL recreates the pg_tblspc links from this map: point it at where each
        // tablespace was restored.
        let mut text = String::new();
        for line in map.lines().filter(|l| !l.trim().is_empty()) {
            let (oid, _) = line.split_once(' ').unwrap_or((line, ""));
            match oid.parse::<u32>().ok().and_then(|o| tablespaces.get(&o)) {
                Some(dir) => text.push_str(&format!("{oid} {}\n", dir.display())),
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        write_file(&target_dir.join("tablespace_map"), &text)?;
    }
    // Stale WAL and spools from an earlier life of this directory must not mix with the archive.
    let wal = target_dir.join("pg_wal");
    if let Ok(listing) = fs::read_dir(&wal) {
        for item in listing.flatten() {
            let path = item.path();
            let real_dir = item.file_type().is_ok_and(|t| t.is_dir());
            if item.file_name() == "archive_status" && real_dir {
                if let Ok(inner) = fs::read_dir(&path) {
                    for status in inner.flatten() {
                        remove_any(&status.path())?;
                    }
                }
                continue;
            }
            remove_any(&path)?;
        }
    }
    let conf_path = target_dir.join("postgresql.auto.conf");
    let mut conf = strip_recovery_settings(&read_restored(&conf_path));
    if !conf.is_empty() && !conf.ends_with('\n') {
        conf.push('\n');
    }
    conf.push_str(settings);
    write_file(&conf_path, &conf)?;
    let (signal, other) = if standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    let _ = fs::remove_file(target_dir.join(other));
    write_file(&target_dir.join(signal), "")?;
    Ok(())
}

/// Drop settings an earlier restore (delta) wrote, so they are not repeated: our whole block
/// (from its marker on), and recovery settings anywhere (PostgreSQL's ALTER SYSTEM rewrites the
/// file without our marker). archive_mode is dropped only inside our block: outside it, it is
/// the cluster's own setting.
fn strip_recovery_settings(conf: &str) -> String {
    const MARKER: &str = "# Recovery settings added by lifeboat";
    const KEYS: [&str; 9] = [
        "restore_command",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_lsn",
        "recovery_target_xid",
        "recovery_target_name",
        "recovery_target_action",
        "recovery_target_timeline",
        "primary_conninfo",
    ];
    conf.lines()
        .take_while(|line| !line.starts_with(MARKER))
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            !KEYS.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_repo::backup::Packed;
    use lifeboat_repo::{Codec, CompressionSettings};

    #[test]
    fn write_file_never_writes_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "precious").unwrap();
        let path = dir.path().join("postgresql.auto.conf");
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        write_file(&path, "restore_command = 'x'\n").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(read_restored(&path), "restore_command = 'x'\n");
    }

    #[test]
    fn piece_writer_refuses_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, vec![7u8; 8192]).unwrap();
        let path = dir.path().join("f");
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        for direct_io in [true, false] {
            let writer = direct::PieceWriter::new(direct_io);
            assert!(writer.write(&path, &[0u8; 4096], 0).is_err());
        }
        assert_eq!(fs::read(&outside).unwrap(), vec![7u8; 8192]);
    }

    /// Delta over a target whose `base` is a link to an outside directory holding the very file
    /// the backup has: the plan must not take the outside file as "kept", and applying it
    /// replaces the link with a directory and leaves the outside alone.
    #[test]
    fn delta_never_keeps_or_writes_a_file_under_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&target).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), "hello").unwrap();
        fs::set_permissions(outside.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("base")).unwrap();
        fs::write(target.join("stray"), "x").unwrap();

        let codec = Codec::new(CompressionSettings::default(), None);
        let hash = ChunkId(codec.hash(b"hello"));
        let file = FileEntry {
            path: "base/f".into(),
            root: Root::Pgdata,
            mode: 0o600,
            size: 5,
            mtime: 0,
            blocks: Vec::new(),
            packed: Some(Packed {
                chunk: hash,
                offset: 0,
                hash,
            }),
        };
        let entries = vec![
            Entry::Dir {
                path: "base".into(),
                mode: 0o700,
                root: Root::Pgdata,
            },
            Entry::File(file.clone()),
        ];
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format": "lifeboat-backup-manifest", "version": 1, "label": "L",
            "system_identifier": 1, "pg_version_num": 150000, "timeline": 1,
            "start_lsn": "0/0", "stop_lsn": "0/0", "start_wal": "", "stop_wal": "",
            "start_time": "", "stop_time": "", "duration_seconds": 0.0, "backup_label": "",
            "block_size": 8192, "data_checksums": true, "size": 5, "stored_size": 0,
            "entries": entries,
        }))
        .unwrap();
        let layout = Layout {
            target_dir: target.clone(),
            tablespaces: BTreeMap::new(),
        };
        let targets = file_targets(&manifest, &target, &layout.tablespaces);
        let plan = plan_files(&manifest, &layout, &targets, 8192, true, &codec, 2).unwrap();
        assert_eq!(plan.actions, vec![FileAction::Create]);
        assert_eq!(plan.remove, vec![target.join("stray")]);
        apply(
            &manifest,
            &layout,
            &targets,
            &plan.actions,
            &plan.remove,
            "",
            2,
        )
        .unwrap();
        assert!(fs::symlink_metadata(target.join("base")).unwrap().is_dir());
        assert_eq!(fs::metadata(target.join("base/f")).unwrap().len(), 5);
        assert!(!target.join("stray").exists());
        assert_eq!(fs::read_to_string(outside.join("f")).unwrap(), "hello");
    }

    #[test]
    fn a_chunk_that_vanishes_is_corruption_not_not_found() {
        let id = ChunkId(lifeboat_repo::ContentHash([3; 32]));
        let gone = vanished(
            lifeboat_storage::StorageError::not_found(&id.key()),
            &id,
            "L",
        );
        assert!(
            matches!(&gone, EngineError::Corrupt { message, .. } if message.contains(&id.to_string()) && message.contains("L")),
            "{gone:?}"
        );
        let other = vanished(
            lifeboat_storage::StorageError::new(lifeboat_storage::ErrorKind::Transient, "slow"),
            &id,
            "L",
        );
        assert!(matches!(other, EngineError::Repo(_)), "{other:?}");
    }
}
