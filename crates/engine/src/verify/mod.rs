//! `verify`: prove that what a restore needs is in the repository and intact.
//!
//! This module owns the verification run and its stored state (docs/FORMAT.md, "Verification").
//! A run reads every selected backup's manifest, reads back every chunk the manifests reference
//! (decryption, length, content hash, hash equals name), reads every WAL object (hash, then the
//! page header against its name and the repository's cluster), and checks that the WAL of each
//! backup's timeline runs without a gap from its start segment through its stop segment and on to
//! the end of the archive, naming every missing segment and the restore window that remains.
//!
//! What was read and found intact is recorded in `verify/state` (and `verify/state.copy`) with
//! its stored size, so the next run reads what is new, what changed size, and a rotating share of
//! the rest (`reread_percent`): each object falls in one of 100 buckets by its hash (segments by
//! number), and run `r` re-reads the buckets `r*p .. r*p+p` (mod 100), so that everything verified
//! is read again within `ceil(100/p)` runs; `full` reads everything again. Presence is never taken
//! from the state: every run reads the indexes and lists `packs/`, `data/` and `wal/`, so an
//! object deleted after it was verified is found on the next run, and one listed shorter than an
//! object header (or a packed chunk past its pack's end) is damaged unread. Chunks in packs are
//! read with ranged reads of neighbours and checked one by one as loose chunks are; an index that
//! cannot be read, a pack an index names that is gone (one finding naming its chunks' backups)
//! are findings, and a pack no index names is a warning (an interrupted backup's).
//!
//! Findings are data, not errors: a damaged manifest, chunk or segment is reported and the run goes
//! on with the rest. Only a store that cannot be read at all (after retries) ends the run early.
//!
//! Dumps' chunks are read with the backups' (`dumps`: a dump with a chunk missing or damaged is a
//! finding).
//!
//! Parts: `select` (what this run reads), `dumps`, `packs` (the packs behind the indexes), `read` (the
//! read-back loops for chunks and WAL), `streamed` (`wal-stream`'s pieces, read whole every
//! run), `continuity` (WAL continuity and gaps), `report` (the
//! report types and the text of each finding), `state` (the stored verification state and its
//! format).

mod continuity;
mod dumps;
mod packs;
mod read;
mod report;
mod select;
mod state;
mod streamed;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};
use lifeboat_repo::stored::ChunkPlace;
use lifeboat_repo::{RepoError, Repository};

use crate::Result;
use read::{in_flight, read_all_chunks, read_back, read_wal};
use report::finding_order;
pub use report::{
    BackupVerdict, BackupWindow, Counters, Finding, FindingKind, GAP_NAMED_MAX, GapDetail,
    RereadSummary, StateSummary, VerifyReport,
};
use select::{ChunkPlan, Rotation, Selection, WalPlan};
use state::{ChunkRecord, State, rfc3339, unix_now};
pub use state::{STATE_COPY_KEY, STATE_KEY};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Check only this backup (and the WAL its timeline holds from its start on).
    pub backup: Option<String>,
    /// Read everything again, ignoring what earlier runs verified.
    pub full: bool,
    /// Objects read at once; `None`: the store's request concurrency
    /// ([`lifeboat_storage::Capabilities::concurrency`]). Fewer when objects are large (see
    /// `read::in_flight`).
    pub concurrency: Option<usize>,
    /// Share (0-100 %) of the objects verified by earlier runs that this run reads again, in a
    /// rotation that reads every one within `ceil(100 / reread_percent)` runs.
    pub reread_percent: u8,
}

/// Default of [`VerifyOptions::reread_percent`]: everything is read again every 20 runs.
pub const DEFAULT_REREAD_PERCENT: u8 = 5;

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            backup: None,
            full: false,
            concurrency: None,
            reread_percent: DEFAULT_REREAD_PERCENT,
        }
    }
}

/// What a running verification tells its caller (the CLI draws a progress bar from it).
#[derive(Debug, Clone)]
pub enum VerifyEvent {
    /// Objects and stored bytes this run will read.
    Planned { objects: u64, bytes: u64 },
    /// One object read (intact or not).
    Read { bytes: u64 },
}

pub type EventSink = Arc<dyn Fn(VerifyEvent) + Send + Sync>;

/// What reading the WAL found, completed by the continuity check's second look at recent holes.
struct WalFound {
    /// Read and found damaged (or damaged unread), with why.
    damaged: HashMap<WalFileName, String>,
    /// Deleted since the listing.
    vanished: HashSet<WalFileName>,
    /// Read intact, with the stored size.
    verified: Vec<(WalFileName, u64)>,
}

/// What a run keeps of a readable manifest (the manifest itself is dropped, so memory does not
/// grow with the number of backups times their size).
#[derive(Debug, Clone)]
struct BackupInfo {
    label: String,
    timeline: TimelineId,
    start: WalSegmentName,
    stop: WalSegmentName,
    start_segno: u64,
    stop_segno: u64,
    stop_time: time::OffsetDateTime,
    chunks: u64,
}

/// Per backup label: whether its WAL from start through stop segment is complete, and if so the
/// last segment its recovery can replay without meeting a gap.
type Windows = HashMap<String, (bool, Option<u64>)>;

/// The stored bytes of a chunk where it lies.
fn place_size(place: &ChunkPlace) -> u64 {
    match place {
        ChunkPlace::Loose { size } => *size,
        ChunkPlace::Packed(loc) => u64::from(loc.length),
    }
}

/// A segment's file name, or where it has none (a number beyond the name's range) what it is.
fn segment_name(timeline: TimelineId, segno: u64, seg_size: u64) -> String {
    WalSegmentName::checked_from_segno(timeline, segno, seg_size)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| format!("segment {segno} of timeline {}", timeline.get()))
}

pub async fn verify(
    repo: &Repository,
    opts: &VerifyOptions,
    events: EventSink,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let run_at = unix_now();
    let mut findings = Vec::new();
    let mut counters = Counters::default();

    let identity = match repo.identity().await {
        Ok(identity) => identity,
        Err(RepoError::Corrupt { key, reason }) => {
            findings.push(Finding {
                kind: FindingKind::DamagedIdentity,
                object: key.clone(),
                what: format!("the cluster identity {key} is damaged ({reason}); WAL headers were checked without the system identifier"),
                backups: Vec::new(),
                action: "the repository cannot take WAL or backups until it is readable: restore the object from a copy of the repository, or start a new repository".into(),
                gap: None,
            });
            None
        }
        Err(e) => return Err(e.into()),
    };
    let identity = identity.as_ref();
    let seg_size = identity.map_or(DEFAULT_WAL_SEGMENT_SIZE, |c| c.wal_segment_size);
    let (old_state, mut state_note) = State::load(repo, seg_size).await?;
    let previous_update = old_state.updated.clone();

    // What to read.
    let Selection {
        selected,
        mut backups,
        mut damaged_manifests,
        mut referenced,
        mut max_block,
    } = select::backups(repo, opts, seg_size, &mut counters, &mut findings).await?;
    // Dumps are checked by runs that check everything.
    let dump_selection = match opts.backup {
        Some(_) => None,
        None => {
            let sel = dumps::select(repo, &mut referenced, &mut counters, &mut findings).await?;
            max_block = max_block.max(sel.max_chunk);
            counters.chunks_referenced = referenced.len() as u64;
            Some(sel)
        }
    };
    let rotation = Rotation::new(opts.reread_percent, old_state.runs);
    let mut plan: ChunkPlan = select::chunks(
        repo,
        referenced,
        &old_state,
        rotation,
        opts.full,
        &mut counters,
    )
    .await?;
    let to_read = std::mem::take(&mut plan.to_read);
    let mut missing_chunks = std::mem::take(&mut plan.missing);
    let mut damaged_chunks = std::mem::take(&mut plan.damaged);
    counters.packs = plan.packs.sizes.len() as u64;
    counters.indexes = plan.stored.index_keys.len() as u64;
    let (index_findings, warnings) =
        report::index_findings(&plan.stored, &plan.packs, &mut counters);
    findings.extend(index_findings);
    let WalPlan {
        all: all_wal,
        listed: listed_wal,
        damaged: damaged_wal,
        to_read: wal_to_read,
    } = select::wal(
        repo,
        opts,
        &backups,
        &old_state,
        rotation,
        seg_size,
        &mut counters,
    )
    .await?;
    events(VerifyEvent::Planned {
        objects: (to_read.len() + wal_to_read.len()) as u64,
        bytes: to_read.iter().map(|c| place_size(&c.1)).sum::<u64>()
            + wal_to_read.iter().map(|w| w.1).sum::<u64>(),
    });

    // Read chunks, then WAL.
    let concurrency = opts
        .concurrency
        .unwrap_or_else(|| repo.store().capabilities().concurrency)
        .max(1);
    // Reads wait on the store; decoding is CPU work: one thread per core.
    let cpu = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let chunks = read_all_chunks(repo, to_read, max_block, concurrency, &events, cpu).await?;
    counters.chunks_read += chunks.read;
    counters.chunk_requests += chunks.requests;
    counters.bytes_read += chunks.bytes;
    damaged_chunks.extend(chunks.damaged.into_iter().map(|((id, _), why)| (id, why)));
    missing_chunks.extend(chunks.gone.into_iter().map(|(id, _)| id));
    let verified_chunks = chunks.intact;
    let wal_reads = read_back(
        wal_to_read,
        in_flight(concurrency, seg_size),
        &events,
        |name| {
            let repo = repo.clone();
            async move { read_wal(&repo, &name, identity).await }
        },
    )
    .await?;
    counters.wal_read += wal_reads.read;
    counters.bytes_read += wal_reads.bytes;
    let mut wal = WalFound {
        damaged: damaged_wal,
        vanished: wal_reads.gone.into_iter().collect(),
        verified: wal_reads.intact,
    };
    wal.damaged.extend(wal_reads.damaged);

    // A backup removed while we read (expire) is not a backup any more: what it alone referenced,
    // chunks and WAL before the oldest kept backup, may be gone, and that is no finding. Listed
    // after every read, so that whatever expire deleted before our listings is covered.
    let still: HashSet<String> = repo.backup_listing().await?.0.into_iter().collect();
    backups.retain(|b| still.contains(&b.label));
    findings.retain(|f| {
        f.kind != FindingKind::DamagedManifest || f.backups.iter().any(|l| still.contains(l))
    });
    damaged_manifests.retain(|l| still.contains(l));

    // Findings and verdicts.
    let verdict_counts = report::chunk_findings(
        repo,
        &backups,
        &missing_chunks,
        &damaged_chunks,
        report::Places {
            stored: &plan.stored,
            packs: &plan.packs,
        },
        &mut counters,
        &mut findings,
    )
    .await;
    if let Some(sel) = &dump_selection {
        let found =
            dumps::findings(repo, sel, &missing_chunks, &damaged_chunks, &mut counters).await?;
        findings.extend(found);
    }
    let (windows, gaps) = continuity::check(
        repo,
        identity,
        &backups,
        &listed_wal,
        &mut wal,
        seg_size,
        &mut counters,
    )
    .await?;
    findings.extend(gaps);
    findings.extend(report::damaged_wal_findings(
        &wal.damaged,
        &backups,
        seg_size,
        &mut counters,
    ));
    findings.extend(streamed::check(repo, seg_size, &mut counters).await?);
    let verdicts = report::verdicts(
        &selected,
        &damaged_manifests,
        &backups,
        &verdict_counts,
        &windows,
        seg_size,
    );

    // The state: what is verified and still there, plus what this run verified.
    let mut state = old_state.clone();
    state.retain_present(|id| plan.place(id), &all_wal, &wal.vanished, seg_size);
    for id in damaged_chunks.keys() {
        state.chunks.remove(id);
    }
    for name in wal.damaged.keys() {
        state.remove_wal(name, seg_size);
    }
    let stamp = u32::try_from(run_at).unwrap_or(u32::MAX);
    for ((id, place), _) in &verified_chunks {
        state.chunks.insert(*id, ChunkRecord::new(place, stamp));
    }
    for (name, size) in &wal.verified {
        state.add_wal(name, run_at, Some(*size), seg_size);
    }
    // The rotation counts unscoped runs only: its promise (everything read again within
    // `cycle_runs` runs) is about runs that look at everything.
    let reread = RereadSummary::new(
        opts.reread_percent,
        old_state.runs,
        old_state.runs_since,
        run_at,
    );
    if opts.reread_percent > 0 && opts.backup.is_none() {
        if state.runs == 0 {
            state.runs_since = Some(run_at);
        }
        state.runs += 1;
    }
    let mut saved = false;
    if state != old_state || state_note.is_some() {
        state.updated = Some(rfc3339(run_at));
        match state.save(repo, seg_size).await {
            Ok(()) => saved = true,
            Err(e) => {
                state_note = Some(format!(
                    "the verification state could not be saved ({e}); the next run reads again what this one read"
                ));
            }
        }
    }

    counters.duration_seconds = started.elapsed().as_secs_f64();
    findings.sort_by_key(|f| finding_order(f.kind));
    Ok(VerifyReport {
        location: repo.location(),
        full: opts.full,
        ok: findings.is_empty(),
        findings,
        warnings,
        backups: verdicts,
        counters,
        state: StateSummary {
            previous_update,
            saved,
            chunks_verified: state.chunks.len() as u64,
            wal_verified: state.wal_count(),
            note: state_note,
        },
        reread,
    })
}
