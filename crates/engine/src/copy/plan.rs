//! What `copy` transfers and in what order, decided from one listing of each side, the source's
//! indexes and manifests and the target's indexes and manifests. Pure: no I/O, so the rules are
//! unit-tested here.
//!
//! The rules (docs/FORMAT.md, "Copies"):
//! - WAL, streamed pieces, loose chunks: by key, what the target lacks.
//! - Packs: by content. A source pack is copied when it holds a wanted chunk that no target
//!   index locates in a listed target pack (nor a loose target chunk); so a target whose
//!   `expire` repacked its packs under new names does not receive the same chunks again.
//! - Backups: the source's manifests the target lacks, oldest first, except those older than
//!   the target's oldest backup (the target's own retention removed them: copying them again
//!   would undo it). WAL below the earliest start of the backups the target will hold, on their
//!   timelines, is not copied either (the target's `expire` would delete it).
//! - Dumps: like backups, by manifest (the source's the target lacks, oldest first, except those
//!   older than the target's oldest dump); their chunks are wanted like a backup's.

use std::collections::{HashMap, HashSet};

use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::dump::DumpManifest;
use lifeboat_repo::keys;
use lifeboat_repo::pack::{IndexEntry, PackId};
use lifeboat_storage::ObjectMeta;

/// What the planner is given.
#[derive(Debug, Default)]
pub struct PlanInput {
    pub source_listing: Vec<ObjectMeta>,
    pub target_listing: Vec<ObjectMeta>,
    /// Each source pack named by a readable source index, with its chunks.
    pub source_packs: HashMap<PackId, Vec<IndexEntry>>,
    /// Chunks a readable target index places in a listed target pack (and those of an
    /// interrupted copy's packs, indexed before planning), and loose target chunks.
    pub target_chunks: HashSet<ChunkId>,
    /// The source's readable manifests, oldest first (stop LSN, stop time, label).
    pub source_backups: Vec<Manifest>,
    /// The target's readable manifests, oldest first.
    pub target_backups: Vec<Manifest>,
    /// The source's readable dump manifests, oldest first (by label: UTC start time).
    pub source_dumps: Vec<DumpManifest>,
}

/// What to do, in the order to do it.
#[derive(Debug, Default)]
pub struct Plan {
    pub identity: Option<ObjectMeta>,
    /// History files, then segment files by name (timeline, position).
    pub wal: Vec<ObjectMeta>,
    /// By segment, then offset.
    pub stream: Vec<ObjectMeta>,
    pub loose_chunks: Vec<(ChunkId, ObjectMeta)>,
    pub packs: Vec<(PackId, ObjectMeta)>,
    /// Labels of the backups to copy, oldest first.
    pub backups: Vec<String>,
    /// Labels of the dumps to copy, oldest first (after the backups).
    pub dumps: Vec<String>,
    /// Source backups not copied because they are older than the target's oldest backup.
    pub older_than_target: Vec<String>,
    /// Source dumps not copied because they are older than the target's oldest dump.
    pub dumps_older_than_target: Vec<String>,
    /// Source objects the target already holds (or holds the content of), and their bytes.
    pub skipped_objects: u64,
    pub skipped_bytes: u64,
    /// WAL files below the target's boundary, left out.
    pub wal_below_boundary: u64,
}

impl Plan {
    pub fn objects(&self) -> u64 {
        (usize::from(self.identity.is_some())
            + self.wal.len()
            + self.stream.len()
            + self.loose_chunks.len()
            + self.packs.len()
            + self.backups.len()
            + self.dumps.len()) as u64
    }

    /// Bytes of the objects copied as stored (manifests counted when read).
    pub fn bytes(&self) -> u64 {
        let sum = |v: &[ObjectMeta]| v.iter().map(|m| m.size).sum::<u64>();
        self.identity.as_ref().map_or(0, |m| m.size)
            + sum(&self.wal)
            + sum(&self.stream)
            + self.loose_chunks.iter().map(|(_, m)| m.size).sum::<u64>()
            + self.packs.iter().map(|(_, m)| m.size).sum::<u64>()
    }
}

/// Decide what to copy.
pub fn plan(input: &PlanInput) -> Plan {
    let mut plan = Plan::default();
    let target_keys: HashSet<&str> = input
        .target_listing
        .iter()
        .map(|m| m.key.as_str())
        .collect();
    let has = |key: &str| target_keys.contains(key);
    let skip = |plan: &mut Plan, m: &ObjectMeta| {
        plan.skipped_objects += 1;
        plan.skipped_bytes += m.size;
    };

    // Backups first (they decide the wanted chunks and the WAL boundary).
    let target_labels: HashSet<&str> = input
        .target_backups
        .iter()
        .map(|m| m.label.as_str())
        .collect();
    let target_oldest = input
        .target_backups
        .first()
        .map(|m| (m.stop_lsn, m.stop_time));
    let mut copied: Vec<&Manifest> = Vec::new();
    for m in &input.source_backups {
        if target_labels.contains(m.label.as_str()) {
            continue;
        }
        if target_oldest.is_some_and(|oldest| (m.stop_lsn, m.stop_time) < oldest) {
            plan.older_than_target.push(m.label.clone());
            continue;
        }
        plan.backups.push(m.label.clone());
        copied.push(m);
    }
    // Dumps the same way, by label (labels are UTC start times: oldest first).
    let target_dumps: Vec<String> = input
        .target_listing
        .iter()
        .filter_map(|m| keys::parse_dump_manifest_key(&m.key))
        .collect();
    let target_oldest_dump = target_dumps.iter().min();
    let mut copied_dumps: Vec<&DumpManifest> = Vec::new();
    for d in &input.source_dumps {
        if target_dumps.contains(&d.label) {
            continue;
        }
        if target_oldest_dump.is_some_and(|oldest| d.label < *oldest) {
            plan.dumps_older_than_target.push(d.label.clone());
            continue;
        }
        plan.dumps.push(d.label.clone());
        copied_dumps.push(d);
    }
    // The chunks the copied backups and dumps need.
    let wanted: HashSet<ChunkId> = copied
        .iter()
        .flat_map(|m| m.chunks())
        .chain(copied_dumps.iter().flat_map(|d| d.chunks()))
        .collect();
    let is_wanted = |c: &ChunkId| wanted.contains(c);

    // The WAL boundary: the earliest start among the backups the target will hold.
    let held = input.target_backups.iter().chain(copied.iter().copied());
    let boundary = held
        .clone()
        .map(|m| m.start_wal)
        .min_by_key(|s| (s.log, s.seg));
    let top_timeline = held.map(|m| m.timeline).max();
    let below = |segment: &WalSegmentName| match (boundary, top_timeline) {
        (Some(b), Some(t)) => segment.timeline <= t && (segment.log, segment.seg) < (b.log, b.seg),
        _ => false,
    };

    let mut wal = Vec::new();
    let mut streamed = Vec::new();
    let mut target_wal_segments: HashSet<WalSegmentName> = HashSet::new();
    for m in &input.target_listing {
        if let Some(WalFileName::Segment(s)) = keys::parse_wal_key(&m.key) {
            target_wal_segments.insert(s);
        }
    }
    for m in &input.source_listing {
        let key = m.key.as_str();
        if key == keys::IDENTITY {
            if has(key) {
                skip(&mut plan, m);
            } else {
                plan.identity = Some(m.clone());
            }
        } else if let Some(name) = keys::parse_wal_key(key) {
            if has(key) {
                skip(&mut plan, m);
            } else if name.segment().is_some_and(&below) {
                plan.wal_below_boundary += 1;
            } else {
                if let WalFileName::Segment(s) = name {
                    target_wal_segments.insert(s);
                }
                wal.push((name.segment().is_some(), m.clone()));
            }
        } else if let Some((segment, start, end)) = keys::parse_stream_piece_key(key) {
            if has(key) {
                skip(&mut plan, m);
            } else if !below(&segment) {
                streamed.push(((segment, start, end), m.clone()));
            }
        } else if let Some(hex) = keys::parse_chunk_key(key) {
            let Some(id) = ChunkId::from_key(&keys::chunk(hex)) else {
                continue;
            };
            if has(key) || input.target_chunks.contains(&id) {
                skip(&mut plan, m);
            } else if is_wanted(&id) {
                plan.loose_chunks.push((id, m.clone()));
            }
        } else if let Some(pack) = PackId::from_key(key) {
            let Some(entries) = input.source_packs.get(&pack) else {
                // No readable index names it: an interrupted backup's, or expire's unfinished
                // work. It holds nothing a backup needs.
                continue;
            };
            if has(key) {
                skip(&mut plan, m);
            } else if entries
                .iter()
                .any(|e| is_wanted(&e.chunk) && !input.target_chunks.contains(&e.chunk))
            {
                plan.packs.push((pack, m.clone()));
            } else {
                skip(&mut plan, m);
            }
        } else if (keys::parse_manifest_key(key).is_some()
            || keys::parse_dump_manifest_key(key).is_some())
            && has(key)
        {
            skip(&mut plan, m);
        }
    }
    // A segment streamed in the source and complete in the target needs no pieces.
    streamed.retain(|((segment, _, _), _)| !target_wal_segments.contains(segment));
    streamed.sort_by_key(|(k, _)| *k);
    plan.stream = streamed.into_iter().map(|(_, m)| m).collect();
    wal.sort_by(|(a_seg, a), (b_seg, b)| (a_seg, &a.key).cmp(&(b_seg, &b.key)));
    plan.wal = wal.into_iter().map(|(_, m)| m).collect();
    plan.loose_chunks.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    plan.packs.sort_by_key(|(p, _)| *p);
    plan
}

#[cfg(test)]
mod tests;
