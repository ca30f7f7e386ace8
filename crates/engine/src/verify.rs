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
//! from the state: every run lists `data/` and `wal/`, so an object deleted after it was verified
//! is found on the next run, and one listed shorter than an object header is damaged unread.
//!
//! Findings are data, not errors: a damaged manifest, chunk or segment is reported and the run goes
//! on with the rest. Only a store that cannot be read at all (after retries) ends the run early.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use lifeboat_pg::history::TimelineHistory;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walheader;
use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::{ClusterIdentity, ContentHash, RepoError, Repository, keys};
use lifeboat_storage::PutMode;
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// The verification state, rewritten after a run that changed it (docs/FORMAT.md,
/// "Verification"). Spelled here rather than in `lifeboat_repo::keys` only because this module is
/// its sole reader and writer.
pub const STATE_KEY: &str = "verify/state";
/// The second copy, written after [`STATE_KEY`]; read when the first is missing or unreadable.
pub const STATE_COPY_KEY: &str = "verify/state.copy";

const STATE_FORMAT: &str = "lifeboat-verify-state";
const STATE_VERSION: u32 = 1;
/// Bytes per chunk record in the state: id (32), stored size (u32 LE), verified at (u32 LE, Unix
/// seconds).
const CHUNK_RECORD_LEN: usize = 40;

/// A segment missing among the newest [`RECENT_SEGMENTS`] of its timeline may be on its way
/// (`wal-push` stores up to `archive.push_parallel` segments at once, default 8): it is looked
/// for again after [`RECENT_HOLE_WAIT`] before it is reported.
const RECENT_SEGMENTS: u64 = 16;
const RECENT_HOLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Memory for objects being read and decoded at once: each read holds the stored object and its
/// plaintext, so a 16 MiB WAL segment costs about 32 MiB. Fewer reads run at once when objects are
/// large, so a repository of 1 GiB segments or 16 MiB blocks stays within this on any machine.
const READ_MEMORY_BUDGET: u64 = 512 * 1024 * 1024;

/// Segments of one gap named in the JSON report; a longer gap is named by its ends and count.
pub const GAP_NAMED_MAX: usize = 1000;

/// Segments a stored state may record: far more than any archive holds (2^24 segments of 16 MiB
/// are 256 TiB), so a state claiming more is damaged or crafted and is not expanded in memory.
const STATE_SEGMENTS_MAX: u64 = 1 << 24;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Check only this backup (and the WAL its timeline holds from its start on).
    pub backup: Option<String>,
    /// Read everything again, ignoring what earlier runs verified.
    pub full: bool,
    /// Objects read at once (default: twice the cores, since reads mostly wait on the store).
    pub parallel: usize,
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
            parallel: std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A chunk a backup references is not in the repository.
    MissingChunk,
    /// A chunk failed verification (decryption, length, hash, or stored under another name).
    DamagedChunk,
    /// A backup's manifest cannot be read (damaged, unsupported, or names another backup).
    DamagedManifest,
    /// WAL a backup needs to become consistent (its start through its stop segment) is missing or
    /// damaged: the backup cannot be restored.
    BackupWalMissing,
    /// Segments missing or damaged after a backup's stop segment: restores from it end before them.
    WalGap,
    /// A WAL object failed verification, or is not the WAL its name says.
    DamagedWal,
    /// The cluster identity (`cluster.json`) cannot be read.
    DamagedIdentity,
}

/// One problem, with what it affects and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The object concerned (a repository key), or for WAL gaps the missing segments as
    /// `FIRST..LAST`.
    pub object: String,
    /// What happened.
    pub what: String,
    /// Labels of the backups affected.
    pub backups: Vec<String>,
    /// What to do about it.
    pub action: String,
    /// For WAL gaps: the exact missing segments and the windows that remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<GapDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapDetail {
    pub timeline: u32,
    pub first_missing: String,
    pub last_missing: String,
    pub count: u64,
    /// The missing (or damaged) segments, in order: every one, up to the first
    /// [`GAP_NAMED_MAX`] (`count` says how many there are).
    pub missing: Vec<String>,
    /// Backups that cannot be restored at all because they need these segments.
    pub unrestorable: Vec<String>,
    /// For each other backup affected: the last segment its recovery can replay.
    pub restores_to: Vec<BackupWindow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupWindow {
    pub backup: String,
    pub wal_end: String,
}

/// One backup's result.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerdict {
    pub label: String,
    /// Whether the manifest could be read; when not, nothing else is known.
    pub manifest_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_wal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_wal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<String>,
    /// Distinct chunks the manifest references.
    pub chunks: u64,
    pub chunks_missing: u64,
    pub chunks_damaged: u64,
    /// Whether every segment from `start_wal` through `stop_wal` is present and intact.
    pub wal_complete: bool,
    /// Manifest, every chunk and the WAL to consistency are there and intact.
    pub restorable: bool,
    /// The last segment recovery from this backup can replay without meeting a gap: a restore
    /// reaches any moment up to the end of this segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restores_to: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub backups_checked: u64,
    pub manifests_damaged: u64,
    /// Distinct chunks the checked backups reference.
    pub chunks_referenced: u64,
    /// Chunks read back this run.
    pub chunks_read: u64,
    /// Chunks present and verified by an earlier run, so not read again.
    pub chunks_skipped: u64,
    /// Of `chunks_read`: chunks verified by an earlier run, read again in their turn of the
    /// rotation (`reread_percent`).
    pub chunks_reread: u64,
    pub chunks_missing: u64,
    pub chunks_damaged: u64,
    /// Stored bytes read (chunks and WAL).
    pub bytes_read: u64,
    /// WAL objects in scope (segments, .partial, .backup and history files).
    pub wal_files: u64,
    pub wal_read: u64,
    pub wal_skipped: u64,
    /// Of `wal_read`: WAL files verified by an earlier run, read again in their turn.
    pub wal_reread: u64,
    pub wal_damaged: u64,
    /// Segments missing where a backup needs them or between archived segments after one.
    pub wal_missing: u64,
    pub duration_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StateSummary {
    /// When the stored state was last written before this run (none on a first run).
    pub previous_update: Option<String>,
    /// Whether this run wrote the state (it does when anything changed).
    pub saved: bool,
    /// Chunks and WAL files recorded as verified after this run.
    pub chunks_verified: u64,
    pub wal_verified: u64,
    /// Something worth telling about the state itself (unreadable, could not be saved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The rotation that reads again what earlier runs verified.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RereadSummary {
    /// Share of the verified objects each run reads again.
    pub percent: u8,
    /// Runs within which every verified object is read again (none when `percent` is 0).
    pub cycle_runs: Option<u64>,
    /// Days such a cycle takes at the pace of the runs recorded so far (none before an hour of
    /// runs is recorded, or when `percent` is 0).
    pub cycle_days: Option<f64>,
    /// Runs counted by the rotation before this one.
    pub runs_before: u64,
}

impl RereadSummary {
    fn new(percent: u8, runs_before: u64, runs_since: Option<u64>, now: u64) -> Self {
        let cycle_runs = (percent > 0).then(|| 100u64.div_ceil(u64::from(percent)));
        let cycle_days = match (cycle_runs, runs_since) {
            (Some(cycle), Some(since)) if runs_before > 0 && now >= since + 3600 => {
                let per_run_days = (now - since) as f64 / runs_before as f64 / 86_400.0;
                Some((cycle as f64 * per_run_days * 10.0).round() / 10.0)
            }
            _ => None,
        };
        Self {
            percent,
            cycle_runs,
            cycle_days,
            runs_before,
        }
    }
}

/// Which of the 100 buckets this run reads again.
#[derive(Debug, Clone, Copy)]
struct Rotation {
    start: u64,
    width: u64,
}

impl Rotation {
    fn new(percent: u8, run: u64) -> Self {
        let width = u64::from(percent.min(100));
        Self {
            start: run.wrapping_mul(width) % 100,
            width,
        }
    }

    fn picks(&self, bucket: u64) -> bool {
        (bucket % 100 + 100 - self.start) % 100 < self.width
    }
}

fn chunk_bucket(id: &ChunkId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0.0[..8]);
    u64::from_le_bytes(b) % 100
}

/// Segments by number (consecutive segments fall in consecutive buckets), other files by a hash
/// of the name (FNV-1a: stable across versions and machines).
fn wal_bucket(name: &WalFileName, seg_size: u64) -> u64 {
    if let WalFileName::Segment(seg) = name
        && let Ok(n) = seg.segno(seg_size)
    {
        return n % 100;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 100
}

/// An object listed shorter than an object header cannot be intact: damaged without reading it.
fn short_object(size: u64) -> Option<String> {
    (size < lifeboat_repo::codec::HEADER_LEN as u64).then(|| {
        format!(
            "the stored object is {size} bytes, shorter than an object header ({} bytes): it was truncated",
            lifeboat_repo::codec::HEADER_LEN
        )
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub location: String,
    pub full: bool,
    /// No findings.
    pub ok: bool,
    pub findings: Vec<Finding>,
    pub backups: Vec<BackupVerdict>,
    pub counters: Counters,
    pub state: StateSummary,
    pub reread: RereadSummary,
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

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
    stop_time: String,
    chunks: u64,
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
    let seg_size = identity.map_or(DEFAULT_WAL_SEGMENT_SIZE, |c| c.wal_segment_size);
    let (old_state, mut state_note) = State::load(repo, seg_size).await?;
    let previous_update = old_state.updated.clone();

    // Which backups.
    let labels = repo.backup_labels().await?;
    let selected: Vec<String> = match &opts.backup {
        Some(label) if labels.contains(label) => vec![label.clone()],
        Some(label) => {
            return Err(EngineError::invalid(
                format!("no backup labelled {label} in {}", repo.location()),
                "`lifeboat list` shows the backups; run `lifeboat verify` without --backup to check them all",
            ));
        }
        None => labels,
    };

    // Manifests, one at a time: a damaged one is a finding and the others are still checked.
    let mut backups: Vec<BackupInfo> = Vec::new();
    let mut damaged_manifests: Vec<String> = Vec::new();
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    let mut max_block: u64 = 0;
    for label in &selected {
        let manifest = match repo.manifest(label).await {
            Ok(m) => m,
            // Removed since the listing (by expire): not a backup any more.
            Err(e) if e.is_not_found() => continue,
            Err(RepoError::Corrupt { key, reason }) => {
                counters.backups_checked += 1;
                findings.push(damaged_manifest(label, &key, &reason));
                damaged_manifests.push(label.clone());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        counters.backups_checked += 1;
        // The rules restore enforces (paths inside the target, no link where restore writes):
        // a manifest that breaks them cannot be restored, so it is damaged.
        let problems = manifest.check_rules();
        let info = if problems.is_empty() {
            backup_info(&manifest, seg_size)
        } else {
            Err(format!(
                "it breaks the rules that keep a restore inside its target: {}",
                problems.join("; ")
            ))
        };
        match info {
            Ok(info) => {
                let before = referenced.len();
                let mut own: HashSet<ChunkId> = HashSet::new();
                for id in crate::backup::referenced_chunks(&manifest) {
                    own.insert(id);
                    referenced.insert(id);
                }
                tracing::debug!(
                    "backup {label}: {} chunks, {} not referenced by an earlier backup checked",
                    own.len(),
                    referenced.len() - before
                );
                max_block = max_block.max(u64::from(manifest.block_size));
                backups.push(BackupInfo {
                    chunks: own.len() as u64,
                    ..info
                });
            }
            Err(reason) => {
                let key = keys::manifest(label);
                findings.push(damaged_manifest(label, &key, &reason));
                damaged_manifests.push(label.clone());
            }
        }
    }
    counters.manifests_damaged = damaged_manifests.len() as u64;
    counters.chunks_referenced = referenced.len() as u64;

    // Chunks: presence from one listing, content from reading back what is not known good.
    let present_chunks = list_chunks(repo).await?;
    let mut referenced: Vec<ChunkId> = referenced.into_iter().collect();
    referenced.sort_unstable();
    let mut missing_chunks: BTreeSet<ChunkId> = BTreeSet::new();
    let mut damaged_chunks: BTreeMap<ChunkId, String> = BTreeMap::new();
    let mut to_read: Vec<(ChunkId, u64)> = Vec::new();
    let rotation = Rotation::new(opts.reread_percent, old_state.runs);
    for id in referenced {
        match present_chunks.get(&id) {
            None => {
                missing_chunks.insert(id);
            }
            Some(&size) if short_object(size).is_some() => {
                damaged_chunks.insert(id, short_object(size).unwrap_or_default());
            }
            Some(&size) if !opts.full && old_state.chunk_verified(&id, size) => {
                if rotation.picks(chunk_bucket(&id)) {
                    counters.chunks_reread += 1;
                    to_read.push((id, size));
                } else {
                    counters.chunks_skipped += 1;
                }
            }
            Some(&size) => to_read.push((id, size)),
        }
    }

    // WAL: every object in scope, read unless verified before.
    let scope = match &opts.backup {
        Some(_) => backups.first().map(|b| (b.timeline, b.start_segno)),
        None => None,
    };
    let in_scope = |name: &WalFileName| -> bool {
        let Some((timeline, from)) = scope else {
            return true;
        };
        match name {
            WalFileName::History(_) => true,
            _ => {
                name.timeline() == timeline
                    && name
                        .segment()
                        .and_then(|s| s.segno(seg_size).ok())
                        .is_some_and(|n| n >= from)
            }
        }
    };
    let all_wal: Vec<(WalFileName, u64)> = repo
        .list_wal()
        .await?
        .into_iter()
        .map(|w| (w.name, w.stored_size))
        .collect();
    let listed_wal: Vec<(WalFileName, u64)> = if opts.backup.is_some() && backups.is_empty() {
        // The one backup asked for has no readable manifest: there is no WAL range to speak of.
        Vec::new()
    } else {
        all_wal.iter().filter(|w| in_scope(&w.0)).copied().collect()
    };
    counters.wal_files = listed_wal.len() as u64;
    let mut wal_to_read: Vec<(WalFileName, u64)> = Vec::new();
    let mut damaged_wal: HashMap<WalFileName, String> = HashMap::new();
    for (name, size) in &listed_wal {
        if let Some(reason) = short_object(*size) {
            damaged_wal.insert(*name, reason);
        } else if !opts.full && old_state.wal_verified(name, *size, seg_size) {
            if rotation.picks(wal_bucket(name, seg_size)) {
                counters.wal_reread += 1;
                wal_to_read.push((*name, *size));
            } else {
                counters.wal_skipped += 1;
            }
        } else {
            wal_to_read.push((*name, *size));
        }
    }

    events(VerifyEvent::Planned {
        objects: (to_read.len() + wal_to_read.len()) as u64,
        bytes: to_read.iter().map(|c| c.1).sum::<u64>()
            + wal_to_read.iter().map(|w| w.1).sum::<u64>(),
    });

    // Read chunks.
    let parallel = opts.parallel.max(1);
    let chunk_in_flight = in_flight(parallel, max_block.max(1));
    let mut verified_chunks: Vec<(ChunkId, u64)> = Vec::new();
    {
        let mut reads = futures::stream::iter(to_read)
            .map(|(id, size)| {
                let repo = repo.clone();
                async move { (id, size, repo.get_chunk(&id).await.map(|_| ())) }
            })
            .buffer_unordered(chunk_in_flight);
        while let Some((id, size, result)) = reads.next().await {
            events(VerifyEvent::Read { bytes: size });
            match result {
                Ok(()) => {
                    counters.chunks_read += 1;
                    counters.bytes_read += size;
                    verified_chunks.push((id, size));
                }
                Err(RepoError::Corrupt { reason, .. }) => {
                    counters.chunks_read += 1;
                    counters.bytes_read += size;
                    damaged_chunks.insert(id, reason);
                }
                Err(e) if e.is_not_found() => {
                    missing_chunks.insert(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    // Read WAL.
    let wal_in_flight = in_flight(parallel, seg_size);
    let mut vanished_wal: HashSet<WalFileName> = HashSet::new();
    let mut verified_wal: Vec<(WalFileName, u64)> = Vec::new();
    {
        let mut reads = futures::stream::iter(wal_to_read)
            .map(|(name, size)| {
                let repo = repo.clone();
                async move { (name, size, read_wal(&repo, &name, identity.as_ref()).await) }
            })
            .buffer_unordered(wal_in_flight);
        while let Some((name, size, result)) = reads.next().await {
            events(VerifyEvent::Read { bytes: size });
            match result? {
                WalCheck::Intact => {
                    counters.wal_read += 1;
                    counters.bytes_read += size;
                    verified_wal.push((name, size));
                }
                WalCheck::Damaged(reason) => {
                    counters.wal_read += 1;
                    counters.bytes_read += size;
                    damaged_wal.insert(name, reason);
                }
                WalCheck::Gone => {
                    vanished_wal.insert(name);
                }
            }
        }
    }

    // A backup removed while we read (expire) is not a backup any more: what it alone referenced,
    // chunks and WAL before the oldest kept backup, may be gone, and that is no finding. Listed
    // after every read, so that whatever expire deleted before our listings is covered.
    let still: HashSet<String> = repo.backup_listing().await?.0.into_iter().collect();
    backups.retain(|b| still.contains(&b.label));
    findings.retain(|f| {
        f.kind != FindingKind::DamagedManifest || f.backups.iter().any(|l| still.contains(l))
    });
    damaged_manifests.retain(|l| still.contains(l));

    // Which backups each bad chunk affects: a second pass over the manifests, only when needed.
    let mut verdict_counts: HashMap<String, (u64, u64)> = HashMap::new();
    if !missing_chunks.is_empty() || !damaged_chunks.is_empty() {
        let mut affected: BTreeMap<ChunkId, Vec<String>> = BTreeMap::new();
        for b in &backups {
            let Ok(manifest) = repo.manifest(&b.label).await else {
                continue;
            };
            let mut seen = HashSet::new();
            for id in crate::backup::referenced_chunks(&manifest) {
                if !seen.insert(id) {
                    continue;
                }
                let missing = missing_chunks.contains(&id);
                let damaged = damaged_chunks.contains_key(&id);
                if missing || damaged {
                    affected.entry(id).or_default().push(b.label.clone());
                    let counts = verdict_counts.entry(b.label.clone()).or_default();
                    if missing {
                        counts.0 += 1;
                    } else {
                        counts.1 += 1;
                    }
                }
            }
        }
        for id in &missing_chunks {
            let Some(labels) = affected.remove(id) else {
                continue; // only backups removed meanwhile referenced it
            };
            counters.chunks_missing += 1;
            findings.push(Finding {
                kind: FindingKind::MissingChunk,
                object: id.key(),
                what: format!("chunk {} is missing from the repository", id.key()),
                action: chunk_action(false),
                backups: labels,
                gap: None,
            });
        }
        for (id, reason) in &damaged_chunks {
            let labels = affected.remove(id).unwrap_or_default();
            counters.chunks_damaged += 1;
            findings.push(Finding {
                kind: FindingKind::DamagedChunk,
                object: id.key(),
                what: format!("chunk {} is damaged: {reason}", id.key()),
                action: chunk_action(true),
                backups: labels,
                gap: None,
            });
        }
    }

    // WAL continuity per timeline.
    let mut present_segments: BTreeMap<TimelineId, BTreeSet<u64>> = BTreeMap::new();
    let mut usable_segments: BTreeMap<TimelineId, BTreeSet<u64>> = BTreeMap::new();
    for (name, _) in &listed_wal {
        if let WalFileName::Segment(seg) = name
            && !vanished_wal.contains(name)
            && let Ok(n) = seg.segno(seg_size)
        {
            present_segments.entry(seg.timeline).or_default().insert(n);
            if !damaged_wal.contains_key(name) {
                usable_segments.entry(seg.timeline).or_default().insert(n);
            }
        }
    }
    // `wal-push` stores the segments PostgreSQL has ready in parallel, so while archiving runs
    // a segment among the newest can be missing for a moment with later ones already there.
    // Look again once, after a pause, before calling such a hole a gap.
    let suspects = recent_holes(&backups, &present_segments, seg_size);
    if !suspects.is_empty() {
        tracing::info!(
            "{} recent segments missing ({}); looking again in {} s in case they are being archived",
            suspects.len(),
            suspects[0],
            RECENT_HOLE_WAIT.as_secs()
        );
        tokio::time::sleep(RECENT_HOLE_WAIT).await;
        for seg in suspects {
            let name = WalFileName::Segment(seg);
            let Ok(n) = seg.segno(seg_size) else {
                continue;
            };
            match read_wal(repo, &name, identity.as_ref()).await? {
                WalCheck::Gone => continue,
                WalCheck::Intact => {
                    // Recorded with its stored size; unknown (head failed), it is read again next run.
                    if let Ok(meta) = repo.store().head(&keys::wal(&name)).await {
                        verified_wal.push((name, meta.size));
                    }
                    usable_segments.entry(seg.timeline).or_default().insert(n);
                }
                WalCheck::Damaged(reason) => {
                    damaged_wal.insert(name, reason);
                }
            }
            counters.wal_files += 1;
            counters.wal_read += 1;
            present_segments.entry(seg.timeline).or_default().insert(n);
        }
    }
    let empty = BTreeSet::new();
    let mut windows: HashMap<String, (bool, Option<u64>)> = HashMap::new();
    for b in &backups {
        let usable = usable_segments.get(&b.timeline).unwrap_or(&empty);
        let complete = (b.start_segno..=b.stop_segno).all(|n| usable.contains(&n));
        let end = complete.then(|| {
            let mut end = b.stop_segno;
            while usable.contains(&(end + 1)) {
                end += 1;
            }
            end
        });
        windows.insert(b.label.clone(), (complete, end));
    }
    let timelines: BTreeSet<TimelineId> = backups.iter().map(|b| b.timeline).collect();
    for timeline in timelines {
        let usable = usable_segments.get(&timeline).unwrap_or(&empty);
        let present = present_segments.get(&timeline).unwrap_or(&empty);
        let on_timeline: Vec<&BackupInfo> =
            backups.iter().filter(|b| b.timeline == timeline).collect();
        let Some(from) = on_timeline.iter().map(|b| b.start_segno).min() else {
            continue;
        };
        // Everything a backup on this timeline could need: through the last segment archived, and
        // at least through every backup's stop segment.
        let last_needed = on_timeline
            .iter()
            .map(|b| b.stop_segno)
            .max()
            .unwrap_or(from);
        let to = present
            .iter()
            .next_back()
            .copied()
            .unwrap_or(from)
            .max(last_needed);
        for (first, last) in missing_runs(usable, from, to) {
            let name = |n: u64| segment_name(timeline, n, seg_size);
            // Named one by one up to a bound: a stray segment far ahead (or a crafted name)
            // must not make a gap of 2^40 segments allocate them all.
            let missing: Vec<String> = (first..=last).take(GAP_NAMED_MAX).map(name).collect();
            let present_in_run = present.range(first..=last).count() as u64;
            let damaged_in_run = present_in_run > 0;
            let mut unrestorable = Vec::new();
            let mut restores_to = Vec::new();
            let mut affected = Vec::new();
            for b in &on_timeline {
                if b.start_segno > last {
                    continue;
                }
                affected.push(b.label.clone());
                if b.stop_segno >= first {
                    unrestorable.push(b.label.clone());
                } else if let Some((_, Some(end))) = windows.get(&b.label) {
                    restores_to.push(BackupWindow {
                        backup: b.label.clone(),
                        wal_end: name(*end),
                    });
                }
            }
            if affected.is_empty() {
                continue;
            }
            let count = last - first + 1;
            counters.wal_missing += count - present_in_run;
            let what_missing = if damaged_in_run {
                "missing or damaged"
            } else {
                "missing"
            };
            let mut what = format!(
                "WAL on timeline {} {what_missing}: {} ({count} segment{})",
                timeline.get(),
                segment_list(&missing, &name(last), count),
                if count == 1 { "" } else { "s" }
            );
            for label in &unrestorable {
                what.push_str(&format!(
                    "; backup {label} cannot be restored (it needs these segments to become consistent)"
                ));
            }
            for w in &restores_to {
                what.push_str(&format!(
                    "; backup {} restores to any moment up to the end of segment {}",
                    w.backup, w.wal_end
                ));
            }
            let kind = if unrestorable.is_empty() {
                FindingKind::WalGap
            } else {
                FindingKind::BackupWalMissing
            };
            findings.push(Finding {
                kind,
                object: if count == 1 {
                    name(first)
                } else {
                    format!("{}..{}", name(first), name(last))
                },
                what,
                backups: affected,
                action: if unrestorable.is_empty() {
                    "if these segments are still in the cluster's pg_wal (or another copy of the archive), push them with `lifeboat wal-push PATH`; otherwise take a new backup (`lifeboat backup`) so that moments after the gap can be restored".into()
                } else {
                    "restore from another backup; if these segments are still in the cluster's pg_wal (or another copy of the archive), push them with `lifeboat wal-push PATH`; otherwise take a new backup (`lifeboat backup`)".into()
                },
                gap: Some(GapDetail {
                    timeline: timeline.get(),
                    first_missing: name(first),
                    last_missing: name(last),
                    count,
                    missing,
                    unrestorable,
                    restores_to,
                }),
            });
        }
    }
    let mut damaged_wal_sorted: Vec<(&WalFileName, &String)> = damaged_wal.iter().collect();
    damaged_wal_sorted.sort_by_cached_key(|(name, _)| name.to_string());
    for (name, reason) in damaged_wal_sorted {
        counters.wal_damaged += 1;
        let affected: Vec<String> = match name {
            WalFileName::Segment(seg) | WalFileName::Partial(seg) => {
                let n = seg.segno(seg_size).unwrap_or(u64::MAX);
                backups
                    .iter()
                    .filter(|b| b.timeline == seg.timeline && b.start_segno <= n)
                    .map(|b| b.label.clone())
                    .collect()
            }
            _ => Vec::new(),
        };
        findings.push(Finding {
            kind: FindingKind::DamagedWal,
            object: keys::wal(name),
            what: format!("WAL file {name} ({}) is damaged: {reason}", keys::wal(name)),
            backups: affected,
            action: "if the file is still in the cluster's pg_wal (or another copy of the archive), remove the damaged object and push the file again with `lifeboat wal-push PATH`; otherwise take a new backup (`lifeboat backup`)".into(),
            gap: None,
        });
    }

    // Verdicts, in the order the backups were listed.
    let mut verdicts = Vec::new();
    for label in &selected {
        if damaged_manifests.contains(label) {
            verdicts.push(BackupVerdict {
                label: label.clone(),
                manifest_ok: false,
                timeline: None,
                start_wal: None,
                stop_wal: None,
                stop_time: None,
                chunks: 0,
                chunks_missing: 0,
                chunks_damaged: 0,
                wal_complete: false,
                restorable: false,
                restores_to: None,
            });
            continue;
        }
        let Some(b) = backups.iter().find(|b| &b.label == label) else {
            continue;
        };
        let (chunks_missing, chunks_damaged) =
            verdict_counts.get(label).copied().unwrap_or_default();
        let (wal_complete, end) = windows.get(label).copied().unwrap_or((false, None));
        verdicts.push(BackupVerdict {
            label: label.clone(),
            manifest_ok: true,
            timeline: Some(b.timeline.get()),
            start_wal: Some(b.start.to_string()),
            stop_wal: Some(b.stop.to_string()),
            stop_time: Some(b.stop_time.clone()),
            chunks: b.chunks,
            chunks_missing,
            chunks_damaged,
            wal_complete,
            restorable: wal_complete && chunks_missing == 0 && chunks_damaged == 0,
            restores_to: end.map(|n| segment_name(b.timeline, n, seg_size)),
        });
    }

    // The state: what is verified and still there, plus what this run verified.
    let mut state = old_state.clone();
    state.retain_present(&present_chunks, &all_wal, &vanished_wal, seg_size);
    for id in damaged_chunks.keys() {
        state.chunks.remove(id);
    }
    for name in damaged_wal.keys() {
        state.remove_wal(name, seg_size);
    }
    let stamp = u32::try_from(run_at).unwrap_or(u32::MAX);
    for (id, size) in &verified_chunks {
        state.chunks.insert(
            *id,
            ChunkRecord {
                stored_size: u32::try_from(*size).unwrap_or(u32::MAX),
                verified_at: stamp,
            },
        );
    }
    for (name, size) in &verified_wal {
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

fn finding_order(kind: FindingKind) -> u8 {
    match kind {
        FindingKind::DamagedIdentity => 0,
        FindingKind::DamagedManifest => 1,
        FindingKind::MissingChunk => 2,
        FindingKind::DamagedChunk => 3,
        FindingKind::BackupWalMissing => 4,
        FindingKind::DamagedWal => 5,
        FindingKind::WalGap => 6,
    }
}

fn damaged_manifest(label: &str, key: &str, reason: &str) -> Finding {
    Finding {
        kind: FindingKind::DamagedManifest,
        object: key.to_string(),
        what: format!("the manifest of backup {label} ({key}) cannot be read: {reason}"),
        backups: vec![label.to_string()],
        action: format!(
            "backup {label} cannot be restored: restore from another backup and take a new one (`lifeboat backup`); move backups/{label}/ out of the repository once you no longer need it for investigation"
        ),
        gap: None,
    }
}

fn chunk_action(damaged: bool) -> String {
    let first = if damaged {
        "remove the damaged object so the content can be stored again; "
    } else {
        ""
    };
    format!(
        "the backups named cannot be restored in full: restore from another backup; {first}take a new backup (`lifeboat backup`) and run `lifeboat verify` again, which must show the new backup intact"
    )
}

/// Reads allowed at once: `parallel`, fewer when objects are so large that many of them at once
/// would exceed [`READ_MEMORY_BUDGET`] (each read holds the stored object and its plaintext).
fn in_flight(parallel: usize, object_size: u64) -> usize {
    let by_memory = READ_MEMORY_BUDGET / (2 * object_size.max(1));
    parallel
        .min(usize::try_from(by_memory).unwrap_or(usize::MAX))
        .max(1)
}

fn backup_info(m: &Manifest, seg_size: u64) -> std::result::Result<BackupInfo, String> {
    let start: WalSegmentName = m
        .start_wal
        .parse()
        .map_err(|e| format!("bad start_wal: {e}"))?;
    let stop: WalSegmentName = m
        .stop_wal
        .parse()
        .map_err(|e| format!("bad stop_wal: {e}"))?;
    let start_segno = start
        .segno(seg_size)
        .map_err(|e| format!("bad start_wal: {e}"))?;
    let stop_segno = stop
        .segno(seg_size)
        .map_err(|e| format!("bad stop_wal: {e}"))?;
    if start.timeline != m.timeline || stop.timeline != m.timeline || stop_segno < start_segno {
        return Err(format!(
            "its WAL range {} .. {} does not fit its timeline {}",
            m.start_wal,
            m.stop_wal,
            m.timeline.get()
        ));
    }
    Ok(BackupInfo {
        label: m.label.clone(),
        timeline: m.timeline,
        start,
        stop,
        start_segno,
        stop_segno,
        stop_time: m.stop_time.clone(),
        chunks: 0,
    })
}

/// Every chunk object with its stored size.
async fn list_chunks(repo: &Repository) -> Result<HashMap<ChunkId, u64>> {
    Ok(repo
        .store()
        .list(keys::CHUNK_PREFIX)
        .await
        .map_err(RepoError::from)?
        .into_iter()
        .filter_map(|o| parse_chunk_key(&o.key).map(|id| (id, o.size)))
        .collect())
}

fn parse_chunk_key(key: &str) -> Option<ChunkId> {
    let (_, hex_name) = key.strip_prefix(keys::CHUNK_PREFIX)?.split_once('/')?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_name, &mut bytes).ok()?;
    let id = ChunkId(ContentHash(bytes));
    (id.key() == key).then_some(id)
}

enum WalCheck {
    Intact,
    Damaged(String),
    /// Deleted since the listing.
    Gone,
}

/// Read one WAL object back: decode (hash, length, tag), then check that it is what its name
/// says, as `wal-fetch` would before handing it to PostgreSQL.
async fn read_wal(
    repo: &Repository,
    name: &WalFileName,
    identity: Option<&ClusterIdentity>,
) -> Result<WalCheck> {
    let plain = match repo.get_wal(name).await {
        Ok(Some(plain)) => plain,
        Ok(None) => return Ok(WalCheck::Gone),
        Err(RepoError::Corrupt { reason, .. }) => return Ok(WalCheck::Damaged(reason)),
        Err(e) => return Err(e.into()),
    };
    let header = match name {
        WalFileName::Segment(seg) => walheader::validate_segment(&plain, seg).map(Some),
        WalFileName::Partial(seg) => walheader::validate_partial(&plain, seg).map(Some),
        WalFileName::History(tli) => {
            return Ok(match std::str::from_utf8(&plain) {
                Ok(text) => match TimelineHistory::parse(*tli, text) {
                    Ok(_) => WalCheck::Intact,
                    Err(e) => WalCheck::Damaged(e.to_string()),
                },
                Err(e) => WalCheck::Damaged(format!("not text: {e}")),
            });
        }
        WalFileName::Backup { .. } => {
            return Ok(if plain.is_empty() {
                WalCheck::Damaged("empty".into())
            } else {
                WalCheck::Intact
            });
        }
    };
    match header {
        Err(e) => Ok(WalCheck::Damaged(format!(
            "decodes intact but is not the WAL its name says: {e}"
        ))),
        Ok(Some(h)) => match identity {
            Some(id) if id.system_identifier != h.system_identifier => {
                Ok(WalCheck::Damaged(format!(
                    "written by cluster {}, the repository belongs to cluster {}",
                    h.system_identifier, id.system_identifier
                )))
            }
            _ => Ok(WalCheck::Intact),
        },
        Ok(None) => Ok(WalCheck::Intact),
    }
}

/// Segments missing, on a timeline some backup is on, after the oldest such backup's start and
/// among the newest [`RECENT_SEGMENTS`] archived on it.
fn recent_holes(
    backups: &[BackupInfo],
    present: &BTreeMap<TimelineId, BTreeSet<u64>>,
    seg_size: u64,
) -> Vec<WalSegmentName> {
    let mut out = Vec::new();
    for (timeline, segs) in present {
        let Some(from) = backups
            .iter()
            .filter(|b| b.timeline == *timeline)
            .map(|b| b.start_segno)
            .min()
        else {
            continue;
        };
        let Some(&newest) = segs.iter().next_back() else {
            continue;
        };
        let lowest = from.max(newest.saturating_sub(RECENT_SEGMENTS));
        for n in lowest..newest {
            if !segs.contains(&n)
                && let Ok(name) = WalSegmentName::checked_from_segno(*timeline, n, seg_size)
            {
                out.push(name);
            }
        }
    }
    out
}

/// Runs of segment numbers in `from..=to` that `usable` lacks, as (first, last).
fn missing_runs(usable: &BTreeSet<u64>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut expect = from;
    for &n in usable.range(from..=to) {
        if n > expect {
            runs.push((expect, n - 1));
        }
        expect = n + 1;
    }
    if expect <= to {
        runs.push((expect, to));
    }
    runs
}

fn segment_name(timeline: TimelineId, segno: u64, seg_size: u64) -> String {
    WalSegmentName::checked_from_segno(timeline, segno, seg_size)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| format!("segment {segno} of timeline {}", timeline.get()))
}

/// Every name when there are a few; the first, the last and the count otherwise (the JSON report
/// lists them all).
fn segment_list(names: &[String], last: &str, count: u64) -> String {
    match names {
        [] => String::new(),
        _ if count <= 6 && names.len() as u64 == count => names.join(", "),
        [first, ..] => format!("{first} .. {last} (every segment between them)"),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The stored state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkRecord {
    /// The stored object's size when it was read: a listing showing another size means the object
    /// changed, and it is read again.
    stored_size: u32,
    /// Unix seconds.
    verified_at: u32,
}

/// What earlier runs verified. Segments are kept per timeline as segment number → time of the
/// run that verified it, and written as ranges of consecutive segments verified by the same run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    updated: Option<String>,
    chunks: BTreeMap<ChunkId, ChunkRecord>,
    segments: BTreeMap<TimelineId, BTreeMap<u64, WalRecord>>,
    /// `.partial`, `.backup` and history files, by name.
    other_wal: BTreeMap<String, WalRecord>,
    /// Runs the re-read rotation counted (its position), and when the first of them ran.
    runs: u64,
    runs_since: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalRecord {
    /// Unix seconds.
    verified_at: u64,
    /// The stored object's size when it was read; none in a state written before sizes were
    /// recorded, and such a record counts as not verified (read again, then recorded with it).
    stored_size: Option<u64>,
}

/// The JSON line that starts the state object; chunk records follow it.
#[derive(Debug, Serialize, Deserialize)]
struct StateHeader {
    format: String,
    version: u32,
    updated: String,
    chunk_record_len: usize,
    chunks: u64,
    wal_segments: Vec<SegmentRange>,
    wal_files: Vec<WalFileRecord>,
    /// Runs counted by the re-read rotation, and the Unix time of the first (absent in states
    /// written before the rotation: 0 and none).
    #[serde(default, skip_serializing_if = "is_zero")]
    runs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runs_since: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize, Deserialize)]
struct SegmentRange {
    first: String,
    last: String,
    verified_at: u64,
    /// The stored size of each segment of the range, in order (absent in older states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_sizes: Option<Vec<u64>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WalFileRecord {
    name: String,
    verified_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_size: Option<u64>,
}

impl State {
    /// The stored state: the first copy, else the second; empty (with a note) when neither reads.
    async fn load(repo: &Repository, seg_size: u64) -> Result<(Self, Option<String>)> {
        let mut problems = Vec::new();
        for key in [STATE_KEY, STATE_COPY_KEY] {
            match repo.get_object(key).await {
                Ok((_, plain)) => match Self::parse(&plain, seg_size) {
                    Ok(state) => {
                        let note = (!problems.is_empty()).then(|| {
                            format!(
                                "{}; the other copy was used and both are rewritten",
                                problems.join("; ")
                            )
                        });
                        return Ok((state, note));
                    }
                    Err(reason) => problems.push(format!("{key} is unreadable: {reason}")),
                },
                Err(e) if e.is_not_found() => {}
                Err(RepoError::Corrupt { reason, .. }) => {
                    problems.push(format!("{key} is damaged: {reason}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let note = (!problems.is_empty()).then(|| {
            format!(
                "{}; everything was read as on a first run and the state rewritten",
                problems.join("; ")
            )
        });
        Ok((Self::default(), note))
    }

    fn parse(plain: &[u8], seg_size: u64) -> std::result::Result<Self, String> {
        let newline = plain
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no header line")?;
        let header: StateHeader =
            serde_json::from_slice(&plain[..newline]).map_err(|e| format!("bad header: {e}"))?;
        if header.format != STATE_FORMAT || header.version != STATE_VERSION {
            return Err(format!(
                "format {} version {} is not {STATE_FORMAT} {STATE_VERSION}",
                header.format, header.version
            ));
        }
        if header.chunk_record_len != CHUNK_RECORD_LEN {
            return Err(format!(
                "chunk records of {} bytes, expected {CHUNK_RECORD_LEN}",
                header.chunk_record_len
            ));
        }
        let records = &plain[newline + 1..];
        if records.len() as u64 != header.chunks * CHUNK_RECORD_LEN as u64 {
            return Err(format!(
                "{} bytes of chunk records for {} chunks",
                records.len(),
                header.chunks
            ));
        }
        let mut chunks = BTreeMap::new();
        for record in records.chunks_exact(CHUNK_RECORD_LEN) {
            let (id, rest) = record.split_at(32);
            let (size, at) = rest.split_at(4);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(id);
            let size: [u8; 4] = size.try_into().map_err(|_| "short record")?;
            let at: [u8; 4] = at.try_into().map_err(|_| "short record")?;
            chunks.insert(
                ChunkId(ContentHash(hash)),
                ChunkRecord {
                    stored_size: u32::from_le_bytes(size),
                    verified_at: u32::from_le_bytes(at),
                },
            );
        }
        let mut segments: BTreeMap<TimelineId, BTreeMap<u64, WalRecord>> = BTreeMap::new();
        let mut recorded: u64 = 0;
        for range in &header.wal_segments {
            let first: WalSegmentName = range.first.parse().map_err(|e| format!("{e}"))?;
            let last: WalSegmentName = range.last.parse().map_err(|e| format!("{e}"))?;
            let (a, b) = (
                first.segno(seg_size).map_err(|e| e.to_string())?,
                last.segno(seg_size).map_err(|e| e.to_string())?,
            );
            if first.timeline != last.timeline || b < a {
                return Err(format!("bad range {} .. {}", range.first, range.last));
            }
            recorded = recorded.saturating_add(b - a + 1);
            if recorded > STATE_SEGMENTS_MAX {
                return Err(format!(
                    "it records more than {STATE_SEGMENTS_MAX} verified segments"
                ));
            }
            if let Some(sizes) = &range.stored_sizes
                && sizes.len() as u64 != b - a + 1
            {
                return Err(format!(
                    "{} stored sizes for the range {} .. {}",
                    sizes.len(),
                    range.first,
                    range.last
                ));
            }
            let timeline = segments.entry(first.timeline).or_default();
            for (i, n) in (a..=b).enumerate() {
                timeline.insert(
                    n,
                    WalRecord {
                        verified_at: range.verified_at,
                        stored_size: range.stored_sizes.as_ref().and_then(|s| s.get(i).copied()),
                    },
                );
            }
        }
        let other_wal = header
            .wal_files
            .into_iter()
            .map(|f| {
                (
                    f.name,
                    WalRecord {
                        verified_at: f.verified_at,
                        stored_size: f.stored_size,
                    },
                )
            })
            .collect();
        Ok(Self {
            updated: Some(header.updated),
            chunks,
            segments,
            other_wal,
            runs: header.runs,
            runs_since: header.runs_since,
        })
    }

    fn to_bytes(&self, seg_size: u64) -> std::result::Result<Vec<u8>, String> {
        // Consecutive segments verified by the same run, their sizes all known or all unknown.
        // (timeline, first, last, verified_at, stored sizes)
        type Range = (TimelineId, u64, u64, u64, Option<Vec<u64>>);
        let mut ranges: Vec<Range> = Vec::new();
        for (timeline, segs) in &self.segments {
            for (&n, r) in segs {
                match ranges.last_mut() {
                    Some((tli, _, last, at, sizes))
                        if tli == timeline
                            && n == *last + 1
                            && *at == r.verified_at
                            && sizes.is_some() == r.stored_size.is_some() =>
                    {
                        *last = n;
                        if let (Some(v), Some(size)) = (sizes.as_mut(), r.stored_size) {
                            v.push(size);
                        }
                    }
                    _ => ranges.push((
                        *timeline,
                        n,
                        n,
                        r.verified_at,
                        r.stored_size.map(|size| vec![size]),
                    )),
                }
            }
        }
        let header = StateHeader {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            updated: self.updated.clone().unwrap_or_default(),
            chunk_record_len: CHUNK_RECORD_LEN,
            chunks: self.chunks.len() as u64,
            wal_segments: ranges
                .into_iter()
                .map(
                    |(timeline, first, last, verified_at, stored_sizes)| SegmentRange {
                        first: segment_name(timeline, first, seg_size),
                        last: segment_name(timeline, last, seg_size),
                        verified_at,
                        stored_sizes,
                    },
                )
                .collect(),
            wal_files: self
                .other_wal
                .iter()
                .map(|(name, r)| WalFileRecord {
                    name: name.clone(),
                    verified_at: r.verified_at,
                    stored_size: r.stored_size,
                })
                .collect(),
            runs: self.runs,
            runs_since: self.runs_since,
        };
        let mut out = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        out.push(b'\n');
        out.reserve(self.chunks.len() * CHUNK_RECORD_LEN);
        // BTreeMap order: the records are sorted by id, as the format says.
        for (id, record) in &self.chunks {
            out.extend_from_slice(&id.0.0);
            out.extend_from_slice(&record.stored_size.to_le_bytes());
            out.extend_from_slice(&record.verified_at.to_le_bytes());
        }
        Ok(out)
    }

    /// Write both copies, the first then the second: a crash between them leaves two valid states.
    async fn save(&self, repo: &Repository, seg_size: u64) -> Result<()> {
        let bytes = self.to_bytes(seg_size).map_err(|e| {
            EngineError::Internal(format!("cannot serialise the verification state: {e}"))
        })?;
        for key in [STATE_KEY, STATE_COPY_KEY] {
            repo.put_object(key, &bytes, PutMode::Overwrite).await?;
        }
        Ok(())
    }

    fn chunk_verified(&self, id: &ChunkId, stored_size: u64) -> bool {
        self.chunks
            .get(id)
            .is_some_and(|r| u64::from(r.stored_size) == stored_size)
    }

    /// Verified before at this stored size (a record without a size does not count).
    fn wal_verified(&self, name: &WalFileName, stored_size: u64, seg_size: u64) -> bool {
        let record = match name {
            WalFileName::Segment(seg) => seg
                .segno(seg_size)
                .ok()
                .and_then(|n| self.segments.get(&seg.timeline).and_then(|s| s.get(&n))),
            other => self.other_wal.get(&other.to_string()),
        };
        record.is_some_and(|r| r.stored_size == Some(stored_size))
    }

    fn add_wal(&mut self, name: &WalFileName, at: u64, stored_size: Option<u64>, seg_size: u64) {
        let record = WalRecord {
            verified_at: at,
            stored_size,
        };
        match name {
            WalFileName::Segment(seg) => {
                if let Ok(n) = seg.segno(seg_size) {
                    self.segments
                        .entry(seg.timeline)
                        .or_default()
                        .insert(n, record);
                }
            }
            other => {
                self.other_wal.insert(other.to_string(), record);
            }
        }
    }

    fn remove_wal(&mut self, name: &WalFileName, seg_size: u64) {
        match name {
            WalFileName::Segment(seg) => {
                if let (Ok(n), Some(s)) =
                    (seg.segno(seg_size), self.segments.get_mut(&seg.timeline))
                {
                    s.remove(&n);
                }
            }
            other => {
                self.other_wal.remove(&other.to_string());
            }
        }
    }

    /// Forget what is no longer in the repository (or changed size): the state only ever says
    /// "this object, as it is now, was read intact".
    fn retain_present(
        &mut self,
        chunks: &HashMap<ChunkId, u64>,
        wal: &[(WalFileName, u64)],
        vanished: &HashSet<WalFileName>,
        seg_size: u64,
    ) {
        self.chunks
            .retain(|id, r| chunks.get(id) == Some(&u64::from(r.stored_size)));
        let mut listed_segments: BTreeMap<TimelineId, HashMap<u64, u64>> = BTreeMap::new();
        let mut listed_other: HashMap<String, u64> = HashMap::new();
        for (name, size) in wal {
            if vanished.contains(name) {
                continue;
            }
            match name {
                WalFileName::Segment(seg) => {
                    if let Ok(n) = seg.segno(seg_size) {
                        listed_segments
                            .entry(seg.timeline)
                            .or_default()
                            .insert(n, *size);
                    }
                }
                other => {
                    listed_other.insert(other.to_string(), *size);
                }
            }
        }
        // Gone, or listed at another size than it was read at: forgotten. A record without a
        // size (older state) is kept until this run reads the object again.
        let same = |r: &WalRecord, listed: Option<&u64>| {
            listed.is_some_and(|l| r.stored_size.is_none_or(|s| s == *l))
        };
        for (timeline, segs) in &mut self.segments {
            let listed = listed_segments.get(timeline);
            segs.retain(|n, r| same(r, listed.and_then(|l| l.get(n))));
        }
        self.segments.retain(|_, s| !s.is_empty());
        self.other_wal
            .retain(|name, r| same(r, listed_other.get(name)));
    }

    fn wal_count(&self) -> u64 {
        self.segments.values().map(|s| s.len() as u64).sum::<u64>() + self.other_wal.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ChunkId {
        ChunkId(ContentHash([b; 32]))
    }

    const SEG: u64 = DEFAULT_WAL_SEGMENT_SIZE;

    #[test]
    fn missing_runs_are_exact() {
        let usable: BTreeSet<u64> = [2, 3, 5, 9].into_iter().collect();
        assert_eq!(missing_runs(&usable, 2, 9), vec![(4, 4), (6, 8)]);
        assert_eq!(
            missing_runs(&usable, 1, 11),
            vec![(1, 1), (4, 4), (6, 8), (10, 11)]
        );
        assert_eq!(missing_runs(&usable, 2, 3), vec![]);
    }

    #[test]
    fn only_recent_holes_after_a_backup_are_looked_at_again() {
        let seg = |n| WalSegmentName::from_segno(TimelineId::ONE, n, SEG);
        let backup = BackupInfo {
            label: "b".into(),
            timeline: TimelineId::ONE,
            start: seg(10),
            stop: seg(10),
            start_segno: 10,
            stop_segno: 10,
            stop_time: String::new(),
            chunks: 0,
        };
        let present: BTreeMap<TimelineId, BTreeSet<u64>> = [(
            TimelineId::ONE,
            [3, 10, 11, 13, 40, 50, 52].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        // 12 and 14..39 are older than the newest 16 (52 - 16 = 36): reported at once.
        let holes = recent_holes(&[backup], &present, SEG);
        let expected: Vec<WalSegmentName> =
            [36, 37, 38, 39, 41, 42, 43, 44, 45, 46, 47, 48, 49, 51]
                .into_iter()
                .map(seg)
                .collect();
        assert_eq!(holes, expected);
    }

    #[test]
    fn state_round_trips_and_stays_compact() {
        let mut state = State {
            updated: Some("2026-11-23T10:15:00Z".into()),
            ..State::default()
        };
        for b in [9u8, 1, 5] {
            state.chunks.insert(
                id(b),
                ChunkRecord {
                    stored_size: 1000 + u32::from(b),
                    verified_at: 7,
                },
            );
        }
        for n in 2..=200 {
            let name = WalFileName::Segment(WalSegmentName::from_segno(TimelineId::ONE, n, SEG));
            state.add_wal(&name, if n < 100 { 10 } else { 20 }, Some(1000 + n), SEG);
        }
        state.add_wal(
            &WalFileName::parse("00000002.history").unwrap(),
            20,
            Some(40),
            SEG,
        );
        state.runs = 3;
        state.runs_since = Some(5);
        let bytes = state.to_bytes(SEG).unwrap();
        let newline = bytes.iter().position(|&b| b == b'\n').unwrap();
        assert_eq!(bytes.len() - newline - 1, 3 * CHUNK_RECORD_LEN);
        let header: serde_json::Value = serde_json::from_slice(&bytes[..newline]).unwrap();
        // 199 segments verified by two runs: two ranges.
        assert_eq!(
            header["wal_segments"].as_array().unwrap().len(),
            2,
            "{header}"
        );
        // Records sorted by id.
        assert_eq!(bytes[newline + 1], 1);
        assert_eq!(bytes[newline + 1 + CHUNK_RECORD_LEN], 5);
        let back = State::parse(&bytes, SEG).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn state_forgets_what_is_gone_or_changed() {
        let mut state = State::default();
        for b in [1u8, 2, 3] {
            state.chunks.insert(
                id(b),
                ChunkRecord {
                    stored_size: 100,
                    verified_at: 1,
                },
            );
        }
        let seg = |n| WalFileName::Segment(WalSegmentName::from_segno(TimelineId::ONE, n, SEG));
        for n in 1..=5 {
            state.add_wal(&seg(n), 1, Some(10), SEG);
        }
        let present: HashMap<ChunkId, u64> = [(id(1), 100), (id(2), 99)].into_iter().collect();
        let wal = vec![(seg(1), 10), (seg(2), 10), (seg(4), 10), (seg(5), 0)];
        let vanished: HashSet<WalFileName> = [seg(4)].into_iter().collect();
        state.retain_present(&present, &wal, &vanished, SEG);
        assert!(state.chunk_verified(&id(1), 100));
        assert!(!state.chunk_verified(&id(2), 99), "changed size");
        assert!(!state.chunk_verified(&id(3), 100), "deleted");
        assert!(state.wal_verified(&seg(1), 10, SEG));
        assert!(
            !state.wal_verified(&seg(1), 11, SEG),
            "listed at another size"
        );
        assert!(!state.wal_verified(&seg(3), 10, SEG), "deleted");
        assert!(!state.wal_verified(&seg(4), 10, SEG), "vanished while read");
        assert!(!state.wal_verified(&seg(5), 0, SEG), "changed size");
        assert!(!state.wal_verified(&seg(5), 10, SEG), "forgotten");
    }

    /// A state written before stored sizes and the rotation were recorded still reads: its chunk
    /// records stand, its WAL records count as not verified (read again, then recorded with
    /// their size), and the rotation starts at run 0.
    #[test]
    fn a_state_without_sizes_still_reads() {
        let header = serde_json::json!({
            "format": STATE_FORMAT, "version": 1, "updated": "2026-11-23T10:15:00Z",
            "chunk_record_len": 40, "chunks": 1,
            "wal_segments": [{"first": "000000010000000000000002", "last": "000000010000000000000004", "verified_at": 7}],
            "wal_files": [{"name": "00000002.history", "verified_at": 7}]
        });
        let mut bytes = serde_json::to_vec(&header).unwrap();
        bytes.push(b'\n');
        bytes.extend_from_slice(&[3u8; 32]);
        bytes.extend_from_slice(&500u32.to_le_bytes());
        bytes.extend_from_slice(&7u32.to_le_bytes());
        let state = State::parse(&bytes, SEG).unwrap();
        assert!(state.chunk_verified(&id(3), 500));
        assert_eq!(state.wal_count(), 4);
        let seg = WalFileName::Segment(WalSegmentName::from_segno(TimelineId::ONE, 3, SEG));
        assert!(!state.wal_verified(&seg, 100, SEG));
        assert_eq!((state.runs, state.runs_since), (0, None));
        // Written again with what it holds, it reads back the same.
        let again = State::parse(&state.to_bytes(SEG).unwrap(), SEG).unwrap();
        assert_eq!(again, state);
    }

    /// Every bucket is picked within ceil(100/p) consecutive runs, whatever run the cycle starts
    /// at, and each run picks about p of them.
    #[test]
    fn the_rotation_reads_everything_within_its_cycle() {
        for p in [1u8, 3, 5, 7, 33, 50, 99, 100] {
            let cycle = 100u64.div_ceil(u64::from(p));
            for start in [0u64, 1, 19, 1000] {
                let mut seen = [false; 100];
                for run in start..start + cycle {
                    let r = Rotation::new(p, run);
                    let picked = (0..100).filter(|b| r.picks(*b)).count();
                    assert_eq!(picked, usize::from(p), "p {p} run {run}");
                    for b in 0..100 {
                        if r.picks(b) {
                            seen[b as usize] = true;
                        }
                    }
                }
                assert!(seen.iter().all(|s| *s), "p {p} from run {start}");
            }
        }
        assert!((0..100).all(|b| !Rotation::new(0, 4).picks(b)));
        let s = RereadSummary::new(5, 4, Some(1_000_000), 1_000_000 + 4 * 86_400);
        assert_eq!((s.cycle_runs, s.cycle_days), (Some(20), Some(20.0)));
        assert_eq!(RereadSummary::new(0, 4, Some(1), 100).cycle_runs, None);
    }

    /// A state that claims more segments than any archive holds is refused, not expanded.
    #[test]
    fn a_state_claiming_every_segment_is_refused() {
        let header = serde_json::json!({
            "format": STATE_FORMAT, "version": 1, "updated": "x",
            "chunk_record_len": 40, "chunks": 0,
            "wal_segments": [{"first": "000000010000000000000000", "last": "00000001FFFFFFFF000000FF", "verified_at": 7}],
            "wal_files": []
        });
        let mut bytes = serde_json::to_vec(&header).unwrap();
        bytes.push(b'\n');
        assert!(State::parse(&bytes, SEG).is_err());
    }

    #[test]
    fn damaged_state_is_refused() {
        assert!(State::parse(b"not json\n", SEG).is_err());
        let mut state = State::default();
        state.chunks.insert(
            id(1),
            ChunkRecord {
                stored_size: 1,
                verified_at: 1,
            },
        );
        let mut bytes = state.to_bytes(SEG).unwrap();
        bytes.pop();
        assert!(State::parse(&bytes, SEG).is_err());
    }

    #[test]
    fn chunk_keys_parse_only_as_written() {
        let key = id(0xab).key();
        assert_eq!(parse_chunk_key(&key), Some(id(0xab)));
        assert_eq!(parse_chunk_key(&key.to_uppercase()), None);
        assert_eq!(parse_chunk_key("data/ab/xyz"), None);
        assert_eq!(parse_chunk_key(&key.replace("data/ab", "data/cd")), None);
    }

    #[test]
    fn reads_in_flight_respect_memory() {
        assert_eq!(in_flight(4, 1 << 20), 4);
        assert_eq!(in_flight(64, 16 << 20), 16);
        assert_eq!(in_flight(64, 1 << 30), 1);
    }
}
