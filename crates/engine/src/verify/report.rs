//! The verdict: the report types a run returns (findings, per-backup verdicts, counters, the
//! state and rotation summaries), the text of each finding (what happened, what to do), and the
//! findings about chunks, packs, indexes and damaged WAL files. Gaps in the WAL are found in
//! `continuity`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::PackId;
use lifeboat_repo::stored::{ChunkPlace, StoredChunks};
use lifeboat_repo::{Repository, keys};
use serde::Serialize;

use super::packs::{PackView, Resolved};
use super::{BackupInfo, Windows, segment_name};

/// Segments of one gap named in the JSON report; a longer gap is named by its ends and count.
pub const GAP_NAMED_MAX: usize = 1000;

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
    /// An index cannot be read: the chunks only it locates are missing.
    DamagedIndex,
    /// A pack an index names is not in the repository: its chunks are missing unless stored
    /// elsewhere.
    MissingPack,
    /// A warning, not a problem: a pack no index names (left by an interrupted backup).
    UnindexedPack,
    /// Streamed WAL (`wal-stream`'s pieces) that cannot be used: a restore to the end stops
    /// before it.
    DamagedStreamedWal,
    /// A dump (docs/FORMAT.md, "Dumps") whose manifest cannot be read, or a database in it with
    /// a missing or damaged chunk: `dump restore` of it fails.
    DamagedDump,
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
    /// Requests that fetched them: one per loose chunk, one per ranged read of a pack (chunks
    /// less than 256 KiB apart in a pack come in one read of up to 4 MiB).
    pub chunk_requests: u64,
    /// Chunks present and verified by an earlier run, so not read again.
    pub chunks_skipped: u64,
    /// Of `chunks_read`: chunks verified by an earlier run, read again in their turn of the
    /// rotation (`reread_percent`).
    pub chunks_reread: u64,
    pub chunks_missing: u64,
    pub chunks_damaged: u64,
    /// Packs stored, and indexes read (docs/design/packs.md).
    pub packs: u64,
    pub indexes: u64,
    /// Indexes that could not be read, packs an index names that are gone, packs no index names.
    pub indexes_damaged: u64,
    pub packs_missing: u64,
    pub packs_unindexed: u64,
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
    /// Streamed pieces (of segments not yet complete) read back, and those found unusable.
    pub streamed_pieces_read: u64,
    pub streamed_pieces_damaged: u64,
    /// Dump manifests read, and dumps with a finding (unreadable, or a chunk missing or damaged).
    pub dumps_checked: u64,
    pub dumps_damaged: u64,
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
    pub(super) fn new(percent: u8, runs_before: u64, runs_since: Option<u64>, now: u64) -> Self {
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

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub location: String,
    pub full: bool,
    /// No findings.
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// What deserves a look but damages nothing (packs no index names); not counted in `ok`.
    pub warnings: Vec<Finding>,
    pub backups: Vec<BackupVerdict>,
    pub counters: Counters,
    pub state: StateSummary,
    pub reread: RereadSummary,
}

pub(super) fn finding_order(kind: FindingKind) -> u8 {
    match kind {
        FindingKind::DamagedIdentity => 0,
        FindingKind::DamagedManifest => 1,
        FindingKind::DamagedIndex => 2,
        FindingKind::MissingPack => 3,
        FindingKind::MissingChunk => 4,
        FindingKind::DamagedChunk => 5,
        FindingKind::BackupWalMissing => 6,
        FindingKind::DamagedWal => 7,
        FindingKind::WalGap => 8,
        FindingKind::DamagedStreamedWal => 9,
        FindingKind::UnindexedPack => 10,
        FindingKind::DamagedDump => 11,
    }
}

pub(super) fn damaged_manifest(label: &str, key: &str, reason: &str) -> Finding {
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

/// What to do about a damaged chunk in a pack: the pack holds other chunks, so it stays.
fn packed_chunk_action(pack: &PackId) -> String {
    format!(
        "the backups named cannot be restored in full: restore from another backup, and keep the intact backups (hold off `lifeboat expire`): new backups reuse this copy of the chunk while the block is unchanged, because repairing a chunk inside a pack is not available yet; do not delete {} to get rid of the damage, it also holds intact chunks",
        pack.key()
    )
}

/// Where the chunks are kept: the indexes and the packs they name.
#[derive(Clone, Copy)]
pub(super) struct Places<'a> {
    pub(super) stored: &'a StoredChunks,
    pub(super) packs: &'a PackView,
}

/// Which backups each missing or damaged chunk affects (a second pass over the manifests, only
/// when there is such a chunk), as findings; and per backup, its missing and damaged chunks.
/// Chunks missing because the one pack their index names is gone make one finding per pack.
pub(super) async fn chunk_findings(
    repo: &Repository,
    backups: &[BackupInfo],
    missing_chunks: &BTreeSet<ChunkId>,
    damaged_chunks: &BTreeMap<ChunkId, String>,
    places: Places<'_>,
    counters: &mut Counters,
    findings: &mut Vec<Finding>,
) -> HashMap<String, (u64, u64)> {
    let mut verdict_counts: HashMap<String, (u64, u64)> = HashMap::new();
    if missing_chunks.is_empty() && damaged_chunks.is_empty() {
        findings.extend(lost_pack_findings(places, &BTreeMap::new(), counters));
        return verdict_counts;
    }
    let mut affected: BTreeMap<ChunkId, Vec<String>> = BTreeMap::new();
    for b in backups {
        let Ok(manifest) = repo.manifest(&b.label).await else {
            continue;
        };
        let mut seen = HashSet::new();
        for id in manifest.chunks() {
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
    let unreadable = &places.stored.unreadable_indexes;
    let mut in_lost: BTreeMap<PackId, (u64, BTreeSet<String>)> = BTreeMap::new();
    for id in missing_chunks {
        let Some(labels) = affected.remove(id) else {
            continue; // only backups removed meanwhile referenced it
        };
        counters.chunks_missing += 1;
        if let Resolved::InLostPack(pack) = places.packs.resolve(places.stored, id) {
            let lost = in_lost.entry(pack).or_default();
            lost.0 += 1;
            lost.1.extend(labels);
            continue;
        }
        let why = match unreadable.len() {
            0 => String::new(),
            1 => format!(" (the unreadable index {} may name it)", unreadable[0].0),
            n => format!(" ({n} unreadable indexes may name it)"),
        };
        findings.push(Finding {
            kind: FindingKind::MissingChunk,
            object: id.key(),
            what: format!("chunk {} is missing from the repository{why}", id.key()),
            action: chunk_action(false),
            backups: labels,
            gap: None,
        });
    }
    findings.extend(lost_pack_findings(places, &in_lost, counters));
    for (id, reason) in damaged_chunks {
        let labels = affected.remove(id).unwrap_or_default();
        counters.chunks_damaged += 1;
        let (object, what, action) = match places.packs.place(places.stored, id) {
            Some(ChunkPlace::Packed(loc)) => (
                loc.pack.key(),
                format!(
                    "chunk {} in pack {} (bytes {}..{}) is damaged: {reason}",
                    id,
                    loc.pack.key(),
                    loc.offset,
                    loc.offset + u64::from(loc.length)
                ),
                packed_chunk_action(&loc.pack),
            ),
            _ => (
                id.key(),
                format!("chunk {} is damaged: {reason}", id.key()),
                chunk_action(true),
            ),
        };
        findings.push(Finding {
            kind: FindingKind::DamagedChunk,
            object,
            what,
            action,
            backups: labels,
            gap: None,
        });
    }
    verdict_counts
}

/// One finding per pack an index names that is gone, with the chunks only it held: `in_lost`
/// counts, per pack, the referenced ones and the backups that need them. A lost pack whose every
/// chunk is stored elsewhere is no finding (an index entry left behind, ignored by readers).
fn lost_pack_findings(
    places: Places<'_>,
    in_lost: &BTreeMap<PackId, (u64, BTreeSet<String>)>,
    counters: &mut Counters,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (pack, lost) in &places.packs.lost {
        let referenced = in_lost.get(pack);
        let (needed, labels) = referenced.map_or((0, Vec::new()), |(n, l)| {
            (*n, l.iter().cloned().collect::<Vec<_>>())
        });
        let only_there = lost
            .chunks
            .iter()
            .filter(|id| !matches!(places.packs.resolve(places.stored, id), Resolved::At(_)))
            .count();
        if only_there == 0 {
            continue;
        }
        counters.packs_missing += 1;
        let indexes: Vec<&str> = lost.indexes.iter().map(String::as_str).collect();
        findings.push(Finding {
            kind: FindingKind::MissingPack,
            object: pack.key(),
            what: format!(
                "pack {} is missing from the repository: index {} names it, and {only_there} chunk{} placed in it {} stored nowhere else ({needed} of them needed by the backups checked)",
                pack.key(),
                indexes.join(", "),
                if only_there == 1 { "" } else { "s" },
                if only_there == 1 { "is" } else { "are" },
            ),
            backups: labels,
            action: chunk_action(false),
            gap: None,
        });
    }
    findings
}

/// A finding per index that could not be read, and a warning per pack no index names.
pub(super) fn index_findings(
    stored: &StoredChunks,
    packs: &PackView,
    counters: &mut Counters,
) -> (Vec<Finding>, Vec<Finding>) {
    let mut findings = Vec::new();
    for (key, reason) in &stored.unreadable_indexes {
        counters.indexes_damaged += 1;
        findings.push(Finding {
            kind: FindingKind::DamagedIndex,
            object: key.clone(),
            what: format!(
                "index {key} cannot be read ({reason}): the chunks only it locates count as missing, and the packs only it names show as named by no index"
            ),
            backups: Vec::new(),
            action: "run `lifeboat backup` to store the current data's chunks again, then `lifeboat verify` to see which backups are intact, and restore from one of those; leave the packs in place: rebuilding an index from the packs' own lists of chunks is not available yet".into(),
            gap: None,
        });
    }
    let mut warnings = Vec::new();
    for (pack, size) in &packs.unindexed {
        counters.packs_unindexed += 1;
        let (what, action) = if stored.unreadable_indexes.is_empty() {
            (
                format!(
                    "pack {} ({size} bytes) is named by no index: left by an interrupted backup (or written by one running now)",
                    pack.key()
                ),
                "nothing to do: no finished backup uses it, and the next `lifeboat expire` deletes it"
                    .to_string(),
            )
        } else {
            (
                format!(
                    "pack {} ({size} bytes) is named by no readable index: left by an interrupted backup, or named by an unreadable index",
                    pack.key()
                ),
                "leave it in place while an index is unreadable: it may hold chunks backups need"
                    .to_string(),
            )
        };
        warnings.push(Finding {
            kind: FindingKind::UnindexedPack,
            object: pack.key(),
            what,
            backups: Vec::new(),
            action,
            gap: None,
        });
    }
    (findings, warnings)
}

/// One finding per damaged WAL file, in name order, naming the backups whose WAL it is part of.
pub(super) fn damaged_wal_findings(
    damaged_wal: &HashMap<WalFileName, String>,
    backups: &[BackupInfo],
    seg_size: u64,
    counters: &mut Counters,
) -> Vec<Finding> {
    let mut findings = Vec::new();
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
    findings
}

/// The verdicts, in the order the backups were listed (`selected`): a backup removed during the
/// run has none.
pub(super) fn verdicts(
    selected: &[String],
    damaged_manifests: &[String],
    backups: &[BackupInfo],
    verdict_counts: &HashMap<String, (u64, u64)>,
    windows: &Windows,
    seg_size: u64,
) -> Vec<BackupVerdict> {
    let mut verdicts = Vec::new();
    for label in selected {
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
            stop_time: Some(lifeboat_repo::timestamp::text(b.stop_time)),
            chunks: b.chunks,
            chunks_missing,
            chunks_damaged,
            wal_complete,
            restorable: wal_complete && chunks_missing == 0 && chunks_damaged == 0,
            restores_to: end.map(|n| segment_name(b.timeline, n, seg_size)),
        });
    }
    verdicts
}
