//! `backup`: a consistent base backup of a running cluster into the repository.
//!
//! Order (docs/FORMAT.md, "Backups"): `pg_backup_start` on one session → walk the data directory
//! → copy every file through the chunk pipeline → copy `global/pg_control` last → (in a
//! repository of packs) store the last pack and the index naming this backup's packs →
//! `pg_backup_stop` → wait until the WAL from the start to the stop segment is in the repository →
//! store the manifest. Only the manifest makes the backup exist, so an interrupted backup leaves
//! chunks (loose ones, and packs named by a checkpoint index, are reused by the next backup) but
//! never a restorable-looking backup.

pub mod chunks;
pub mod packer;
pub(crate) mod reuse;
pub mod scan;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lifeboat_pg::backup_label::BackupLabel;
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::session::{ConnSpec, Session};
use lifeboat_pg::walname::WalSegmentName;
use lifeboat_repo::backup::{
    ChunkId, Entry, FileEntry, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, Packed, Root,
    Tablespace,
};
use lifeboat_repo::lock::{LockKind, RepoLock};
use lifeboat_repo::{ClusterIdentity, Repository};

pub use crate::backup_report::BackupReport;
use crate::error::postgres;
use crate::{EngineError, Result};
use chunks::{Copier, Done, Item};
use packer::PackWriter;
use reuse::{known_chunks, split_unchanged};
use scan::PlannedFile;

pub const DEFAULT_BLOCK_SIZE: u32 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The data directory; `None`: the server's `data_directory`.
    pub pgdata: Option<PathBuf>,
    pub conn: ConnSpec,
    /// Worker threads for read/hash/compress/encrypt (default: the number of cores). Uploads in
    /// flight are the store's own setting ([`lifeboat_storage::Capabilities::concurrency`]).
    pub parallel: usize,
    pub block_size: u32,
    /// `pg_backup_start(fast => true)`: an immediate checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// Read every file, even those unchanged since the previous backup.
    pub full_scan: bool,
    /// How long to wait for the backup's WAL to reach the repository.
    pub archive_timeout: Duration,
    pub connect_timeout: Duration,
}

impl BackupOptions {
    pub fn new(conn: ConnSpec) -> Self {
        Self {
            pgdata: None,
            conn,
            parallel: std::thread::available_parallelism().map_or(2, |n| n.get()),
            block_size: DEFAULT_BLOCK_SIZE,
            fast_checkpoint: true,
            full_scan: false,
            archive_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Threads reading and encoding per `--parallel` thread. A reader also waits (page cache misses,
/// the open pack while it is handed to an upload): with one per core, 2 cores at scale 200 were
/// idle about a quarter of the copy (2.2 s, against 1.85 s with two per core, on local disk and
/// on S3 alike); more than two gained nothing.
const READERS_PER_THREAD: usize = 2;

fn encoders(parallel: usize) -> usize {
    parallel.max(1) * READERS_PER_THREAD
}

/// What a running backup tells its caller (the CLI draws a progress bar from it).
#[derive(Debug, Clone)]
pub enum BackupEvent {
    Started { label: String, start_lsn: Lsn },
    Planned { files: u64, bytes: u64 },
    Copied { bytes: u64 },
    Stopping,
    WaitingForWal { from: String, to: String },
}

pub type EventSink = Arc<dyn Fn(BackupEvent) + Send + Sync>;

/// A label for a backup or a dump: the UTC time to the second, `YYYYMMDDTHHMMSSZ`.
pub(crate) fn new_label() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

pub async fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    events: EventSink,
) -> Result<BackupReport> {
    let started = Instant::now();
    let session = Session::connect(&opts.conn, opts.connect_timeout)
        .await
        .map_err(postgres)?;
    let version = session.server_version_num();
    if session.is_in_recovery().await.map_err(postgres)? {
        return Err(EngineError::invalid(
            "the server is a standby (in recovery): lifeboat backs up a primary",
            "point --db at the primary server",
        ));
    }
    crate::check::require_archiving(&session).await?;
    // Held until the manifest is stored: no second backup meanwhile, and no expire deleting the
    // chunks this backup reuses from the previous one (docs/FORMAT.md, "Locks").
    let mut lock = RepoLock::acquire(repo, LockKind::Backup)
        .await
        .map_err(EngineError::from)?;
    let result = backup_locked(repo, opts, events, session, version, started, &lock).await;
    lock.release().await;
    result
}

async fn backup_locked(
    repo: &Repository,
    opts: &BackupOptions,
    events: EventSink,
    session: Session,
    version: u32,
    started: Instant,
    lock: &RepoLock,
) -> Result<BackupReport> {
    let pgdata = match &opts.pgdata {
        Some(p) => p.clone(),
        None => session.data_directory().await.map_err(postgres)?,
    };
    let control = read_control(&pgdata)?;
    let system_identifier = session.system_identifier().await.map_err(postgres)?;
    if control.system_identifier != system_identifier {
        return Err(EngineError::invalid(
            format!(
                "{} belongs to cluster {}, but the server at the connection is cluster {system_identifier}",
                pgdata.display(),
                control.system_identifier
            ),
            "give --pgdata the data directory of the server that --db connects to",
        ));
    }
    let identity = ClusterIdentity {
        system_identifier,
        pg_major: version / 10000,
        wal_segment_size: u64::from(control.wal_segment_size),
    };
    repo.bind_identity(&identity).await?;

    let (previous, unreadable) = repo.readable_manifests().await?;
    for (label, problem) in &unreadable {
        tracing::warn!("backup {label} is unreadable and ignored: {problem}");
    }
    let known = known_chunks(repo, previous.last()).await?;

    let mut label = new_label();
    while previous.iter().any(|m| m.label == label) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        label = new_label();
    }
    let tablespaces = session.tablespaces().await.map_err(postgres)?;
    let config_files = outside_config_files(&session, &pgdata).await?;

    // To the microsecond: a restore compares target times with a backup's stop time, and a
    // whole-second stop time would let a target inside that second pick a backup that ends after it.
    let start_time = lifeboat_repo::timestamp::now_micros();
    let start_lsn = session
        .backup_start(&format!("lifeboat {label}"), opts.fast_checkpoint)
        .await
        .map_err(postgres)?;
    tracing::debug!(
        "backup: started in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    events(BackupEvent::Started {
        label: label.clone(),
        start_lsn,
    });

    let scanned = {
        let pgdata = pgdata.clone();
        let tablespace_dir =
            lifeboat_pg::pgdata::tablespace_version_dir(control.pg_major, control.catalog_version);
        tokio::task::spawn_blocking(move || scan::scan(&pgdata, &tablespace_dir))
            .await
            .map_err(crate::join_error)??
    };
    let mut files = scanned.files;
    files.extend(config_files);
    let (files, reused) = if opts.full_scan {
        (files, Vec::new())
    } else {
        split_unchanged(files, previous.last(), opts.block_size, &known)
    };
    let reused_bytes: u64 = reused.iter().map(|f| f.size).sum();
    if !reused.is_empty() {
        tracing::info!(
            "{} files ({} bytes) unchanged since backup {}: their blocks are reused without reading",
            reused.len(),
            reused_bytes,
            previous.last().map_or("", |m| m.label.as_str())
        );
    }
    let pg_control = scanned.pg_control.ok_or_else(|| {
        EngineError::invalid(
            format!("{} has no global/pg_control", pgdata.display()),
            "give --pgdata the data directory of the running server",
        )
    })?;
    let total_bytes: u64 =
        files.iter().map(|f| f.size).sum::<u64>() + pg_control.size + reused_bytes;
    events(BackupEvent::Planned {
        files: (files.len() + reused.len()) as u64 + 1,
        bytes: total_bytes,
    });
    events(BackupEvent::Copied {
        bytes: reused_bytes,
    });

    let block_size = u64::from(opts.block_size);
    let concurrency = repo.store().capabilities().concurrency.max(1);
    let files = Arc::new(files);
    let storage_packs = if repo.writes_packs() {
        Some(Arc::new(PackWriter::new(repo, concurrency)?))
    } else {
        tracing::info!(
            "the repository at {} is format version 1: backups store loose chunks; `lifeboat upgrade` makes them write packs (far fewer objects)",
            repo.location()
        );
        None
    };
    let copier = Arc::new(Copier {
        repo: repo.clone(),
        files: files.clone(),
        block_size,
        checksums: control.data_checksums(),
        start_lsn,
        known: Arc::new(known),
        claimed: Default::default(),
        bytes_read: Default::default(),
        bytes_stored: Default::default(),
        bad_pages: Default::default(),
        cpu: Arc::new(tokio::sync::Semaphore::new(encoders(opts.parallel))),
        requests: Arc::new(tokio::sync::Semaphore::new(concurrency)),
        storage_packs: storage_packs.clone(),
    });
    let mut results = Results::new(&files);
    let items = chunks::plan_items(&files, block_size);
    // The items being read and encoded while `concurrency` uploads wait on the store: each holds
    // at most one encoded block, so this bounds the memory in flight too.
    let in_flight = encoders(opts.parallel) + concurrency;
    copier
        .run(items, in_flight, |done, _| {
            events(BackupEvent::Copied {
                bytes: done_bytes(&done),
            });
            results.record(done);
        })
        .await?;

    tracing::debug!("backup: copied in {:.2} s", started.elapsed().as_secs_f64());
    // pg_control last: its checkpoint must be no older than the backup's start.
    let control_copier = Arc::new(Copier {
        repo: repo.clone(),
        files: Arc::new(vec![pg_control.clone()]),
        block_size,
        checksums: false,
        start_lsn,
        known: Arc::new(HashSet::new()),
        claimed: Default::default(),
        bytes_read: Default::default(),
        bytes_stored: Default::default(),
        bad_pages: Default::default(),
        cpu: Arc::new(tokio::sync::Semaphore::new(1)),
        requests: Arc::new(tokio::sync::Semaphore::new(1)),
        storage_packs: storage_packs.clone(),
    });
    let mut control_results = Results::new(&control_copier.files);
    control_copier
        .run(vec![Item::Pack { files: vec![0] }], 1, |done, _| {
            control_results.record(done)
        })
        .await?;
    // Every chunk is now in a stored pack or loose object: the last pack and the index naming
    // this backup's packs go before the manifest, which may only name located chunks.
    let packed = match &storage_packs {
        Some(writer) => writer.finish().await?,
        None => Default::default(),
    };
    if packed.packs > 0 {
        tracing::info!(
            "stored {} new chunks in {} packs ({} bytes), named by {} indexes",
            packed.chunks,
            packed.packs,
            packed.pack_bytes,
            packed.indexes.len()
        );
    }

    events(BackupEvent::Stopping);
    // Not pg_backup_stop(wait_for_archive => true): that only learns that *some* archive_command
    // succeeded, polling once a second with no deadline. Below we wait for the WAL to be in this
    // repository, which is what a restore needs, polling often and with a deadline.
    let stopped = session.backup_stop(false).await.map_err(postgres)?;
    let stop_time = lifeboat_repo::timestamp::now_micros();
    tracing::debug!(
        "backup: stopped in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let label_info = BackupLabel::parse(&stopped.backup_label).map_err(|e| {
        EngineError::Internal(format!(
            "cannot read the backup_label PostgreSQL returned: {e}"
        ))
    })?;
    let timeline = label_info.start_timeline;
    let seg_size = identity.wal_segment_size;
    let start_wal = WalSegmentName::from_lsn(timeline, start_lsn, seg_size);
    let stop_wal = WalSegmentName::from_lsn(
        timeline,
        Lsn(stopped.lsn.0.saturating_sub(1).max(start_lsn.0)),
        seg_size,
    );
    events(BackupEvent::WaitingForWal {
        from: start_wal.to_string(),
        to: stop_wal.to_string(),
    });
    crate::walcheck::wait_for_segments(repo, &start_wal, &stop_wal, seg_size, opts.archive_timeout)
        .await?;

    tracing::debug!(
        "backup: WAL archived in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut entries = scanned.entries;
    let mut bad_pages = copier
        .bad_pages
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    bad_pages.sort_by(|a, b| (&a.path, a.block).cmp(&(&b.path, b.block)));
    let mut size = 0;
    for file in results.finish(&files, block_size)? {
        size += file.size;
        entries.push(Entry::File(file));
    }
    for file in control_results.finish(&control_copier.files, block_size)? {
        size += file.size;
        entries.push(Entry::File(file));
    }
    let files_reused = reused.len() as u64;
    for file in reused {
        size += file.size;
        entries.push(Entry::File(file));
    }
    // Walk order for readers of the manifest: directories first (as walked), then files by path.
    entries.sort_by(|a, b| match (a, b) {
        (Entry::File(x), Entry::File(y)) => {
            (x.root == Root::Config, &x.path).cmp(&(y.root == Root::Config, &y.path))
        }
        (Entry::File(_), _) => std::cmp::Ordering::Greater,
        (_, Entry::File(_)) => std::cmp::Ordering::Less,
        _ => std::cmp::Ordering::Equal,
    });
    // Loose chunks' encoded bytes, or the packs' bytes (chunks, trailers, footers).
    let stored_size = copier.bytes_stored.load(Ordering::Relaxed)
        + control_copier.bytes_stored.load(Ordering::Relaxed)
        + packed.pack_bytes;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        label: label.clone(),
        system_identifier,
        pg_version_num: version,
        timeline,
        start_lsn,
        stop_lsn: stopped.lsn,
        start_wal,
        stop_wal,
        start_time,
        stop_time,
        duration_seconds: started.elapsed().as_secs_f64(),
        backup_label: stopped.backup_label,
        tablespace_map: stopped.tablespace_map.filter(|m| !m.trim().is_empty()),
        block_size: opts.block_size,
        data_checksums: control.data_checksums(),
        size,
        stored_size,
        tablespaces: tablespaces
            .into_iter()
            .map(|t| Tablespace {
                oid: t.oid,
                name: t.name,
                location: t.location.to_string_lossy().into_owned(),
            })
            .collect(),
        entries,
        bad_pages,
        bytes_read: copier.bytes_read.load(Ordering::Relaxed)
            + control_copier.bytes_read.load(Ordering::Relaxed),
        files_reused,
    };
    // Publishing a backup whose chunks an expire that took our lock over may be deleting would
    // list a backup that does not restore.
    lock.check_held().await.map_err(EngineError::from)?;
    repo.put_manifest(&manifest).await?;
    Ok(BackupReport::from_manifest(&manifest))
}

fn done_bytes(done: &Done) -> u64 {
    match done {
        Done::Block { len, .. } => *len,
        Done::Pack { files, .. } => files.iter().map(|f| f.2).sum(),
    }
}

fn read_control(pgdata: &Path) -> Result<lifeboat_pg::control::ControlFile> {
    let path = pgdata.join(scan::PG_CONTROL);
    let bytes = std::fs::read(&path)
        .map_err(|e| EngineError::io(format!("cannot read {}", path.display()), e))?;
    lifeboat_pg::control::parse_control_file(&bytes).map_err(|e| {
        EngineError::invalid(
            format!("{} is not a readable pg_control: {e}", path.display()),
            "give --pgdata the data directory of the running server",
        )
    })
}

async fn outside_config_files(session: &Session, pgdata: &Path) -> Result<Vec<PlannedFile>> {
    let mut out = Vec::new();
    for setting in ["config_file", "hba_file", "ident_file"] {
        let path = session.setting(setting).await.map_err(postgres)?;
        if let Some(f) = scan::outside_config_file(pgdata, Path::new(&path))? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Collects the results of the copy into file entries.
struct Results {
    blocks: Vec<Vec<Option<(ChunkId, u64)>>>,
    packed: Vec<Option<(ChunkId, u64, u64, ChunkId)>>,
}

impl Results {
    fn new(files: &[PlannedFile]) -> Self {
        Self {
            blocks: vec![Vec::new(); files.len()],
            packed: vec![None; files.len()],
        }
    }

    fn record(&mut self, done: Done) {
        match done {
            Done::Block {
                file,
                index,
                chunk,
                len,
            } => {
                let slots = &mut self.blocks[file];
                let index = index as usize;
                if slots.len() <= index {
                    slots.resize(index + 1, None);
                }
                slots[index] = Some((chunk, len));
            }
            Done::Pack { chunk, files } => {
                for (file, offset, len, hash) in files {
                    self.packed[file] = Some((chunk, offset, len, hash));
                }
            }
        }
    }

    /// The file entries, in walk order. A file that vanished while we copied it is left out; one
    /// that shrank keeps the blocks read up to its first short one.
    fn finish(self, files: &[PlannedFile], block_size: u64) -> Result<Vec<FileEntry>> {
        let mut out = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let mut entry = FileEntry {
                path: f.rel.clone(),
                root: f.root,
                mode: f.mode,
                size: 0,
                mtime: f.mtime,
                blocks: Vec::new(),
                packed: None,
            };
            if f.size >= block_size {
                for slot in &self.blocks[i] {
                    let Some((chunk, len)) = slot else {
                        return Err(EngineError::Internal(format!(
                            "a block of {} was never copied",
                            f.rel
                        )));
                    };
                    if *len == 0 {
                        break;
                    }
                    entry.blocks.push(*chunk);
                    entry.size += len;
                    if *len < block_size {
                        break;
                    }
                }
                if entry.blocks.is_empty() {
                    continue; // vanished
                }
            } else {
                match self.packed[i] {
                    Some((chunk, offset, len, hash)) => {
                        entry.size = len;
                        if len > 0 {
                            entry.packed = Some(Packed {
                                chunk,
                                offset,
                                hash,
                            });
                        }
                    }
                    None => continue, // vanished
                }
            }
            out.push(entry);
        }
        Ok(out)
    }
}
