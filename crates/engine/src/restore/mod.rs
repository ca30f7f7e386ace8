//! `restore`: a backup written into a directory, with the recovery settings that bring it to the
//! target. Plan first ([`plan`]), then: create directories → (delta: compare what is there) →
//! fetch each needed chunk once, verify, write every place it goes → fsync → `backup_label`,
//! `tablespace_map`, recovery settings and the signal file last.

mod direct;
pub mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    Planned { files: u64, bytes: u64 },
    Written { bytes: u64 },
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
    drop(manifests);
    plan::check_paths(&manifest)?;
    let tablespaces = plan::tablespace_dirs(&manifest, &opts.tablespace_map)?;
    let target_dir = absolute(&opts.target_dir)?;
    plan::check_target(&target_dir, opts.delta, "target directory")?;
    for (oid, dir) in &tablespaces {
        // Delta may update a tablespace directory only when it belongs to this target already
        // (its pg_tblspc link points there); anything else may be a live cluster's tablespace.
        let link = target_dir.join("pg_tblspc").join(oid.to_string());
        let ours = fs::read_link(&link).is_ok_and(|to| to == *dir);
        plan::check_tablespace_dir(dir, *oid, opts.delta && ours)?;
    }
    let (wal_to, warnings) =
        plan::check_wal(repo, &manifest, &opts.target, identity.wal_segment_size).await?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let targets = file_targets(&manifest, &target_dir, &tablespaces);
    let bytes: u64 = targets.iter().map(|t| t.entry.size).sum();
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

    let mut report = RestoreReport {
        backup: manifest.label.clone(),
        plan: Some(plan),
        ..Default::default()
    };
    let layout = Layout {
        target_dir: target_dir.clone(),
        tablespaces: tablespaces.clone(),
    };
    let block_size = u64::from(manifest.block_size);
    let targets = Arc::new(targets);
    let (placements, kept, removed) = {
        let manifest = manifest.clone();
        let targets = targets.clone();
        let codec = repo.codec().clone();
        let delta = opts.delta;
        let parallel = opts.parallel.max(1);
        tokio::task::spawn_blocking(move || {
            prepare(
                &manifest, &layout, &targets, block_size, delta, &codec, parallel,
            )
        })
        .await
        .map_err(join_error)??
    };
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
    let mut writes = futures::stream::iter(placements)
        .map(|(chunk, places)| {
            let repo = repo.clone();
            let targets = targets.clone();
            let progress = progress.clone();
            let writer = writer.clone();
            async move {
                let raw = repo
                    .store()
                    .get(&chunk.key())
                    .await
                    .map_err(lifeboat_repo::RepoError::from)?;
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
    finish(&manifest, &target_dir, &tablespaces, opts)?;
    if let Some(owner) =
        lifeboat_pg::cluster::cluster_owner().map_err(|e| EngineError::Internal(e.to_string()))?
    {
        // Run as root: PostgreSQL refuses a data directory it does not own.
        for dir in std::iter::once(&target_dir).chain(tablespaces.values()) {
            lifeboat_pg::cluster::chown_recursive(dir, &owner).map_err(|e| {
                EngineError::invalid(
                    format!("cannot give {} to the postgres user: {e}", dir.display()),
                    "change its owner to the user PostgreSQL runs as",
                )
            })?;
        }
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

fn create_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            fs::remove_file(path).map_err(io(format!("cannot remove {}", path.display())))?;
            fs::create_dir(path).map_err(io(format!("cannot create {}", path.display())))?;
        }
        Err(_) => {
            fs::create_dir_all(path).map_err(io(format!("cannot create {}", path.display())))?
        }
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io(format!("cannot set the mode of {}", path.display())))
}

/// Create directories and files; with delta, remove what the backup does not hold and keep what
/// already matches. Returns the chunks to fetch with their placements, files kept, files removed.
fn prepare(
    manifest: &Manifest,
    layout: &Layout,
    targets: &[Target],
    block_size: u64,
    delta: bool,
    codec: &lifeboat_repo::Codec,
    parallel: usize,
) -> Result<(HashMap<ChunkId, Vec<Placement>>, u64, u64)> {
    create_dir(&layout.target_dir, 0o700)?;
    let mut expected: HashSet<PathBuf> = HashSet::new();
    expected.insert(layout.target_dir.clone());
    for (oid, dir) in &layout.tablespaces {
        create_dir(dir, 0o700)?;
        expected.insert(dir.clone());
        // pg_tblspc/<oid> is a link to the tablespace's directory.
        let link = layout.target_dir.join("pg_tblspc").join(oid.to_string());
        create_dir(&layout.target_dir.join("pg_tblspc"), 0o700)?;
        match fs::symlink_metadata(&link) {
            Ok(m)
                if m.file_type().is_symlink()
                    && fs::read_link(&link).ok().as_deref() == Some(dir.as_path()) => {}
            Ok(m) if m.is_dir() => fs::remove_dir_all(&link)
                .map_err(io(format!("cannot remove {}", link.display())))?,
            Ok(_) => {
                fs::remove_file(&link).map_err(io(format!("cannot remove {}", link.display())))?
            }
            Err(_) => {}
        }
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(dir, &link).map_err(io(format!(
                "cannot create the tablespace link {}",
                link.display()
            )))?;
        }
        expected.insert(link);
    }
    for entry in &manifest.entries {
        match entry {
            Entry::Dir { path, mode, root } => {
                let dest = destination(*root, path, &layout.target_dir, &layout.tablespaces);
                create_dir(&dest, *mode)?;
                expected.insert(dest);
            }
            // pg_wal comes back as a directory: a link would point at the source's WAL.
            Entry::Link { path, .. } if path == "pg_wal" => {
                let dest = layout.target_dir.join(path);
                create_dir(&dest, 0o700)?;
                expected.insert(dest);
            }
            Entry::Link { .. } | Entry::File(_) => {}
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
        if let Some(parent) = t.dest.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        expected.insert(t.dest.clone());
    }
    for entry in &manifest.entries {
        if let Entry::Link { path, target } = entry
            && path != "pg_wal"
        {
            let dest = layout.target_dir.join(path);
            if fs::symlink_metadata(&dest).is_err() {
                std::os::unix::fs::symlink(target, &dest)
                    .map_err(io(format!("cannot create the link {}", dest.display())))?;
            }
            expected.insert(dest);
        }
    }

    let mut removed = 0;
    if delta {
        let mut roots = vec![layout.target_dir.clone()];
        roots.extend(layout.tablespaces.values().cloned());
        for root in roots {
            removed += remove_unexpected(&root, &expected)?;
        }
    }

    // Which blocks must be written: all of them, or with delta those that differ.
    let needs: Vec<Vec<bool>> = parallel_map(targets, parallel, |t| {
        file_needs(t, block_size, delta, codec)
    })?;
    let mut kept = 0;
    let mut placements: HashMap<ChunkId, Vec<Placement>> = HashMap::new();
    for (i, (t, need)) in targets.iter().zip(&needs).enumerate() {
        if !need.iter().any(|n| *n) {
            kept += u64::from(delta);
            continue;
        }
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
    Ok((placements, kept, removed))
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

/// Per block (or one flag for a packed file): must it be written? Creates or resizes the file.
fn file_needs(
    t: &Target,
    block_size: u64,
    delta: bool,
    codec: &lifeboat_repo::Codec,
) -> Result<Vec<bool>> {
    let f = &t.entry;
    let blocks = if f.packed.is_some() {
        1
    } else {
        f.blocks.len()
    };
    let existing = if delta {
        fs::symlink_metadata(&t.dest).ok()
    } else {
        None
    };
    let mut need = vec![true; blocks];
    match existing {
        Some(m) if m.is_file() => {
            if f.size == 0 && m.len() == 0 {
                return Ok(vec![false]);
            }
            let mut handle =
                File::open(&t.dest).map_err(io(format!("cannot open {}", t.dest.display())))?;
            if let Some(p) = &f.packed {
                if m.len() == f.size {
                    let mut buf = Vec::with_capacity(f.size as usize);
                    handle
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
            if m.len() != f.size || (m.permissions().mode() & 0o7777) != f.mode {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&t.dest)
                    .map_err(io(format!("cannot open {}", t.dest.display())))?;
                file.set_len(f.size)
                    .map_err(io(format!("cannot resize {}", t.dest.display())))?;
                fs::set_permissions(&t.dest, fs::Permissions::from_mode(f.mode))
                    .map_err(io(format!("cannot set the mode of {}", t.dest.display())))?;
            }
            Ok(need)
        }
        other => {
            if other.is_some() {
                remove_any(&t.dest)?;
            }
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(f.mode & 0o7777)
                .open(&t.dest)
                .map_err(io(format!("cannot create {}", t.dest.display())))?;
            file.set_len(f.size)
                .map_err(io(format!("cannot size {}", t.dest.display())))?;
            fs::set_permissions(&t.dest, fs::Permissions::from_mode(f.mode & 0o7777))
                .map_err(io(format!("cannot set the mode of {}", t.dest.display())))?;
            if f.size == 0 {
                return Ok(vec![false]);
            }
            Ok(need)
        }
    }
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

/// Delta: remove everything under `root` the backup does not hold. Never follows links.
fn remove_unexpected(root: &Path, expected: &HashSet<PathBuf>) -> Result<u64> {
    let mut removed = 0;
    let listing = match fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
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
            remove_any(&path)?;
            removed += 1;
        } else if is_real_dir {
            removed += remove_unexpected(&path, expected)?;
        }
    }
    Ok(removed)
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
        File::open(&t.dest)
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

fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("cannot write {}", path.display())))
}

/// The last step: backup_label, tablespace_map, recovery settings, the signal file.
fn finish(
    manifest: &Manifest,
    target_dir: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    opts: &RestoreOptions,
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
            if item.file_name() == "archive_status" {
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
    let mut conf = fs::read_to_string(&conf_path).unwrap_or_default();
    conf = strip_recovery_settings(&conf);
    if !conf.is_empty() && !conf.ends_with('\n') {
        conf.push('\n');
    }
    conf.push_str(&format!(
        "# Recovery settings added by lifeboat restore of backup {} (removed by the next restore)\n",
        manifest.label
    ));
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
        .map_err(|e| EngineError::invalid(e.to_string(), "correct the recovery target option"))?,
    );
    write_file(&conf_path, &conf)?;
    let (signal, other) = if opts.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    let _ = fs::remove_file(target_dir.join(other));
    write_file(&target_dir.join(signal), "")?;
    File::open(target_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot fsync {}", target_dir.display())))?;
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
