//! The stored verification state (docs/FORMAT.md, "Verification"): what earlier runs read intact,
//! at which stored size and when, and the position of the re-read rotation. Two copies,
//! `verify/state` then `verify/state.copy`; each is one JSON header line followed by fixed-size
//! binary chunk records sorted by id. This module owns that format.
//!
//! A chunk's record says where the copy that was read lies: its stored size (a loose object's
//! size, or a packed chunk's length) and, for a chunk read from a pack, the first 8 bytes of the
//! pack's id. A chunk that moves (a repack, or stored again elsewhere) is a copy never read, so
//! its record no longer matches and it is read again. Records with a pack take 48 bytes (state
//! version 2); a state with none is written as version 1 (40-byte records), as before packs, so
//! a repository without packs keeps a state older versions of Lifeboat read.

use std::collections::{BTreeMap, HashMap, HashSet};

use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::PackId;
use lifeboat_repo::stored::ChunkPlace;
use lifeboat_repo::{ContentHash, RepoError, Repository};
use lifeboat_storage::PutMode;
use serde::{Deserialize, Serialize};

use super::segment_name;
use crate::{EngineError, Result};

/// The verification state, rewritten after a run that changed it (docs/FORMAT.md,
/// "Verification"), and its second copy, written after it and read when the first is missing or
/// unreadable.
pub use lifeboat_repo::keys::{VERIFY_STATE as STATE_KEY, VERIFY_STATE_COPY as STATE_COPY_KEY};

const STATE_FORMAT: &str = "lifeboat-verify-state";
/// Version 1: chunk records of [`CHUNK_RECORD_LEN`] bytes (loose chunks only); version 2: of
/// [`PACKED_RECORD_LEN`] bytes.
const STATE_VERSION: u32 = 1;
const STATE_VERSION_PACKS: u32 = 2;
/// Bytes per chunk record in a version 1 state: id (32), stored size (u32 LE), verified at (u32
/// LE, Unix seconds).
pub(super) const CHUNK_RECORD_LEN: usize = 40;
/// Bytes per chunk record in a version 2 state: a version 1 record, then the first 8 bytes of the
/// id of the pack the chunk was read from (all zero for a loose chunk).
pub(super) const PACKED_RECORD_LEN: usize = 48;

/// Segments a stored state may record: far more than any archive holds (2^24 segments of 16 MiB
/// are 256 TiB), so a state claiming more is damaged or crafted and is not expanded in memory.
const STATE_SEGMENTS_MAX: u64 = 1 << 24;

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChunkRecord {
    /// The stored object's size (a packed chunk's length) when it was read: a listing or index
    /// showing another size means the object changed, and it is read again.
    pub(super) stored_size: u32,
    /// Unix seconds.
    pub(super) verified_at: u32,
    /// The first 8 bytes of the id of the pack it was read from (little-endian); 0 for a loose
    /// chunk.
    pub(super) pack: u64,
}

impl ChunkRecord {
    pub(super) fn new(place: &ChunkPlace, verified_at: u32) -> Self {
        let (size, pack) = place_key(place);
        Self {
            stored_size: u32::try_from(size).unwrap_or(u32::MAX),
            verified_at,
            pack,
        }
    }

    fn matches(&self, place: &ChunkPlace) -> bool {
        let (size, pack) = place_key(place);
        u64::from(self.stored_size) == size && self.pack == pack
    }
}

/// What a record compares of a chunk's place: its stored size and its pack's tag.
fn place_key(place: &ChunkPlace) -> (u64, u64) {
    match place {
        ChunkPlace::Loose { size } => (*size, 0),
        ChunkPlace::Packed(loc) => (u64::from(loc.length), pack_tag(&loc.pack)),
    }
}

/// The first 8 bytes of a pack's id: enough to tell two packs apart (ids are random).
fn pack_tag(pack: &PackId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&pack.0[..8]);
    u64::from_le_bytes(b)
}

/// What earlier runs verified. Segments are kept per timeline as segment number → time of the
/// run that verified it, and written as ranges of consecutive segments verified by the same run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct State {
    pub(super) updated: Option<String>,
    pub(super) chunks: BTreeMap<ChunkId, ChunkRecord>,
    segments: BTreeMap<TimelineId, BTreeMap<u64, WalRecord>>,
    /// `.partial`, `.backup` and history files, by name.
    other_wal: BTreeMap<String, WalRecord>,
    /// Runs the re-read rotation counted (its position), and when the first of them ran.
    pub(super) runs: u64,
    pub(super) runs_since: Option<u64>,
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
    pub(super) async fn load(repo: &Repository, seg_size: u64) -> Result<(Self, Option<String>)> {
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
        let record_len = match (header.format == STATE_FORMAT, header.version) {
            (true, STATE_VERSION) => CHUNK_RECORD_LEN,
            (true, STATE_VERSION_PACKS) => PACKED_RECORD_LEN,
            _ => {
                return Err(format!(
                    "format {} version {} is not {STATE_FORMAT} {STATE_VERSION} or {STATE_VERSION_PACKS}",
                    header.format, header.version
                ));
            }
        };
        if header.chunk_record_len != record_len {
            return Err(format!(
                "chunk records of {} bytes, expected {record_len} in version {}",
                header.chunk_record_len, header.version
            ));
        }
        let records = &plain[newline + 1..];
        if records.len() as u64 != header.chunks * record_len as u64 {
            return Err(format!(
                "{} bytes of chunk records for {} chunks",
                records.len(),
                header.chunks
            ));
        }
        let mut chunks = BTreeMap::new();
        for record in records.chunks_exact(record_len) {
            let (id, rest) = record.split_at(32);
            let (size, rest) = rest.split_at(4);
            let (at, pack) = rest.split_at(4);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(id);
            let size: [u8; 4] = size.try_into().map_err(|_| "short record")?;
            let at: [u8; 4] = at.try_into().map_err(|_| "short record")?;
            let pack = match pack.len() {
                0 => 0,
                _ => u64::from_le_bytes(pack.try_into().map_err(|_| "short record")?),
            };
            chunks.insert(
                ChunkId(ContentHash(hash)),
                ChunkRecord {
                    stored_size: u32::from_le_bytes(size),
                    verified_at: u32::from_le_bytes(at),
                    pack,
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
        // Version 1 while no record names a pack: what Lifeboat wrote before packs, and reads.
        let packed = self.chunks.values().any(|r| r.pack != 0);
        let (version, record_len) = if packed {
            (STATE_VERSION_PACKS, PACKED_RECORD_LEN)
        } else {
            (STATE_VERSION, CHUNK_RECORD_LEN)
        };
        let header = StateHeader {
            format: STATE_FORMAT.into(),
            version,
            updated: self.updated.clone().unwrap_or_default(),
            chunk_record_len: record_len,
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
        out.reserve(self.chunks.len() * record_len);
        // BTreeMap order: the records are sorted by id, as the format says.
        for (id, record) in &self.chunks {
            out.extend_from_slice(&id.0.0);
            out.extend_from_slice(&record.stored_size.to_le_bytes());
            out.extend_from_slice(&record.verified_at.to_le_bytes());
            if packed {
                out.extend_from_slice(&record.pack.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Write both copies, the first then the second: a crash between them leaves two valid states.
    pub(super) async fn save(&self, repo: &Repository, seg_size: u64) -> Result<()> {
        let bytes = self.to_bytes(seg_size).map_err(|e| {
            EngineError::Internal(format!("cannot serialise the verification state: {e}"))
        })?;
        for key in [STATE_KEY, STATE_COPY_KEY] {
            repo.put_object(key, &bytes, PutMode::Overwrite).await?;
        }
        Ok(())
    }

    /// Read intact before where it lies now.
    pub(super) fn chunk_verified(&self, id: &ChunkId, place: &ChunkPlace) -> bool {
        self.chunks.get(id).is_some_and(|r| r.matches(place))
    }

    /// Verified before at this stored size (a record without a size does not count).
    pub(super) fn wal_verified(&self, name: &WalFileName, stored_size: u64, seg_size: u64) -> bool {
        let record = match name {
            WalFileName::Segment(seg) => seg
                .segno(seg_size)
                .ok()
                .and_then(|n| self.segments.get(&seg.timeline).and_then(|s| s.get(&n))),
            other => self.other_wal.get(&other.to_string()),
        };
        record.is_some_and(|r| r.stored_size == Some(stored_size))
    }

    pub(super) fn add_wal(
        &mut self,
        name: &WalFileName,
        at: u64,
        stored_size: Option<u64>,
        seg_size: u64,
    ) {
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

    pub(super) fn remove_wal(&mut self, name: &WalFileName, seg_size: u64) {
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
    pub(super) fn retain_present(
        &mut self,
        chunks: impl Fn(&ChunkId) -> Option<ChunkPlace>,
        wal: &[(WalFileName, u64)],
        vanished: &HashSet<WalFileName>,
        seg_size: u64,
    ) {
        self.chunks
            .retain(|id, r| chunks(id).is_some_and(|place| r.matches(&place)));
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

    pub(super) fn wal_count(&self) -> u64 {
        self.segments.values().map(|s| s.len() as u64).sum::<u64>() + self.other_wal.len() as u64
    }
}

#[cfg(test)]
mod tests;
