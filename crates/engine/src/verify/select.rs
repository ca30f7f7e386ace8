//! What a run reads: the backups (all, or the one `--backup` names) and what their manifests
//! reference, then of the chunks (loose, or located through the indexes) and WAL objects listed
//! in the repository, which are damaged unread (shorter than an object header, or past the end
//! of their pack), which are read (new, changed size, `--full`, or in
//! this run's share of the re-read rotation) and which are skipped as verified before.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::stored::{ChunkPlace, ChunkScope, StoredChunks};
use lifeboat_repo::{RepoError, Repository, keys};

use super::packs::{self, PackView, Resolved};
use super::report::{Counters, Finding, damaged_manifest};
use super::state::State;
use super::{BackupInfo, VerifyOptions};
use crate::{EngineError, Result};

/// The backups a run checks, and what their readable manifests reference.
pub(super) struct Selection {
    /// Labels in the order the repository lists them (the verdicts keep it).
    pub(super) selected: Vec<String>,
    /// The backups whose manifest could be read and follows the rules.
    pub(super) backups: Vec<BackupInfo>,
    /// Labels of the backups whose manifest could not be read or breaks the rules.
    pub(super) damaged_manifests: Vec<String>,
    /// Distinct chunks the readable manifests reference.
    pub(super) referenced: HashSet<ChunkId>,
    /// The largest block size among them (the size of the largest chunk to read).
    pub(super) max_block: u64,
}

/// Which backups (all, or the one `opts.backup` names), and their manifests, one at a time: a
/// damaged one is a finding and the others are still checked.
pub(super) async fn backups(
    repo: &Repository,
    opts: &VerifyOptions,
    seg_size: u64,
    counters: &mut Counters,
    findings: &mut Vec<Finding>,
) -> Result<Selection> {
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
                for id in manifest.chunks() {
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
    Ok(Selection {
        selected,
        backups,
        damaged_manifests,
        referenced,
        max_block,
    })
}

/// The chunks: presence from the indexes, one listing of `packs/` and one of `data/`; content
/// from reading back what is not known good.
pub(super) struct ChunkPlan {
    /// Where the repository keeps its chunks (indexes and loose ones).
    pub(super) stored: StoredChunks,
    /// The packs behind them.
    pub(super) packs: PackView,
    /// Referenced and in no index and no loose key, or only in a lost pack.
    pub(super) missing: BTreeSet<ChunkId>,
    /// Damaged unread (shorter than an object header, or beyond the end of their pack), with why.
    pub(super) damaged: BTreeMap<ChunkId, String>,
    /// With where they lie.
    pub(super) to_read: Vec<(ChunkId, ChunkPlace)>,
}

impl ChunkPlan {
    /// Where a chunk can be read now, if it can.
    pub(super) fn place(&self, id: &ChunkId) -> Option<ChunkPlace> {
        self.packs.place(&self.stored, id)
    }
}

pub(super) async fn chunks(
    repo: &Repository,
    referenced: HashSet<ChunkId>,
    old_state: &State,
    rotation: Rotation,
    full: bool,
    counters: &mut Counters,
) -> Result<ChunkPlan> {
    let scope = ChunkScope::All {
        expected: referenced.len(),
    };
    let mut stored = repo.stored_chunks(scope).await?;
    let mut packs = packs::survey(repo, &stored).await?;
    if !packs.lost.is_empty() {
        // A pack an index names is gone: look once more, in case an expire replaced the index
        // and deleted the pack between our listing of the indexes and that of the packs.
        stored = repo.stored_chunks(scope).await?;
        packs = packs::survey(repo, &stored).await?;
    }
    let mut referenced: Vec<ChunkId> = referenced.into_iter().collect();
    referenced.sort_unstable();
    let mut missing_chunks: BTreeSet<ChunkId> = BTreeSet::new();
    let mut damaged_chunks: BTreeMap<ChunkId, String> = BTreeMap::new();
    let mut to_read: Vec<(ChunkId, ChunkPlace)> = Vec::new();
    for id in referenced {
        let place = match packs.resolve(&stored, &id) {
            Resolved::At(place) => place,
            Resolved::InLostPack(_) | Resolved::Missing => {
                missing_chunks.insert(id);
                continue;
            }
        };
        if let Some(reason) = unreadable(&place, &packs) {
            damaged_chunks.insert(id, reason);
        } else if !full && old_state.chunk_verified(&id, &place) {
            if rotation.picks(chunk_bucket(&id, &place)) {
                counters.chunks_reread += 1;
                to_read.push((id, place));
            } else {
                counters.chunks_skipped += 1;
            }
        } else {
            to_read.push((id, place));
        }
    }
    Ok(ChunkPlan {
        stored,
        packs,
        missing: missing_chunks,
        damaged: damaged_chunks,
        to_read,
    })
}

/// Why a chunk cannot be intact without reading it: shorter than an object header, or (packed)
/// lying past the end of its pack.
fn unreadable(place: &ChunkPlace, packs: &PackView) -> Option<String> {
    match place {
        ChunkPlace::Loose { size } => short_object(*size),
        ChunkPlace::Packed(loc) => {
            let end = loc.offset + u64::from(loc.length);
            match packs.sizes.get(&loc.pack) {
                Some(&size) if size < end => Some(format!(
                    "the pack is {size} bytes, shorter than its index says: it was cut short"
                )),
                _ => short_object(u64::from(loc.length))
                    .map(|r| format!("its index entry gives it {} bytes: {r}", loc.length)),
            }
        }
    }
}

/// The WAL: every object in scope, read unless verified before.
pub(super) struct WalPlan {
    /// Every WAL object listed, in scope or not, with its stored size.
    pub(super) all: Vec<(WalFileName, u64)>,
    /// Those in scope: all, or with `--backup` those of its timeline from its start segment on
    /// (and history files).
    pub(super) listed: Vec<(WalFileName, u64)>,
    /// Damaged unread (listed shorter than an object header), with why.
    pub(super) damaged: HashMap<WalFileName, String>,
    /// With their stored size.
    pub(super) to_read: Vec<(WalFileName, u64)>,
}

pub(super) async fn wal(
    repo: &Repository,
    opts: &VerifyOptions,
    backups: &[BackupInfo],
    old_state: &State,
    rotation: Rotation,
    seg_size: u64,
    counters: &mut Counters,
) -> Result<WalPlan> {
    let scope: Option<(TimelineId, u64)> = match &opts.backup {
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
    Ok(WalPlan {
        all: all_wal,
        listed: listed_wal,
        damaged: damaged_wal,
        to_read: wal_to_read,
    })
}

/// Which of the 100 buckets this run reads again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rotation {
    start: u64,
    width: u64,
}

impl Rotation {
    pub(super) fn new(percent: u8, run: u64) -> Self {
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

/// A loose chunk by its id; a packed one by its pack's id, so that a run re-reads whole packs
/// (a few ranged reads each) rather than scattered chunks of every pack (a request each).
fn chunk_bucket(id: &ChunkId, place: &ChunkPlace) -> u64 {
    let bytes: &[u8] = match place {
        ChunkPlace::Loose { .. } => &id.0.0,
        ChunkPlace::Packed(loc) => &loc.pack.0,
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
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

fn backup_info(m: &Manifest, seg_size: u64) -> std::result::Result<BackupInfo, String> {
    let (start, stop) = (m.start_wal, m.stop_wal);
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
        stop_time: m.stop_time,
        chunks: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::report::RereadSummary;
    use super::*;

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
}
