//! Packs: many encoded chunks in one stored object, and the indexes that say where each chunk
//! lies (docs/design/packs.md). A pack is the chunks' ordinary encoded objects one after another,
//! then an encoded trailer listing them, then a fixed footer; so every chunk decodes and verifies
//! alone from a byte range, and a pack describes itself. An index maps chunk ids to
//! (pack, offset, length) for many packs. This module writes and reads both and plans the range
//! reads that fetch a set of chunks in few requests; which chunks go into which pack, and when
//! indexes are written, is the engine's business.
//!
//! Not yet used by backup or restore: the first step of the packs work of issue 18.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use lifeboat_storage::{ErrorKind, PutMode};

use crate::backup::ChunkId;
use crate::codec::ContentHash;
use crate::{RepoError, Repository, Result, crypto, keys};

/// Bytes of encoded chunks after which a pack is closed (it ends with the chunk that crossed
/// it): backups and expire's repacking write packs of this size.
pub const PACK_SIZE: usize = 8 << 20;

/// The last bytes of a pack: the encoded trailer's length (u32, little-endian), then this magic.
const FOOTER_MAGIC: &[u8; 4] = b"LBPK";
const FOOTER_LEN: usize = 8;
/// Plaintext of a trailer: magic, version (u8), three zero bytes, count (u64), then records of
/// chunk id (32), offset (u64), length (u32).
const TRAILER_MAGIC: &[u8; 4] = b"LBPT";
const TRAILER_RECORD: usize = 32 + 8 + 4;
/// Plaintext of an index: magic, version (u8), three zero bytes, count (u64), then records of
/// chunk id (32), pack id (16), offset (u64), length (u32).
const INDEX_MAGIC: &[u8; 4] = b"LBIX";
const INDEX_RECORD: usize = 32 + 16 + 8 + 4;
const RECORDS_VERSION: u8 = 1;
const RECORDS_HEADER: usize = 16;

/// A pack's name: 16 random bytes, written as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub fn random() -> Result<Self> {
        crypto::random_bytes::<16>()
            .map(PackId)
            .map_err(|e| RepoError::Invalid(format!("cannot name a new pack: {e}")))
    }

    pub fn key(&self) -> String {
        keys::pack(&self.to_string())
    }

    /// The pack a key names, if it is a pack key.
    pub fn from_key(key: &str) -> Option<Self> {
        let hex_id = keys::parse_pack_key(key)?;
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(hex_id, &mut bytes).ok()?;
        Some(PackId(bytes))
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Where a chunk's encoded object lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub offset: u64,
    pub length: u32,
}

impl ChunkLocation {
    fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }
}

/// One chunk in one pack: a record of a trailer or an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub chunk: ChunkId,
    pub location: ChunkLocation,
}

/// A pack being filled: encoded chunks appended in memory until it reaches its target size.
#[derive(Debug)]
pub struct PackBuilder {
    id: PackId,
    bytes: Vec<u8>,
    entries: Vec<IndexEntry>,
    target: usize,
}

impl PackBuilder {
    /// An empty pack that counts as full once it holds `target` bytes of chunks.
    pub fn new(target: usize) -> Result<Self> {
        Ok(PackBuilder {
            id: PackId::random()?,
            bytes: Vec::with_capacity(target.min(64 << 20)),
            entries: Vec::new(),
            target,
        })
    }

    pub fn id(&self) -> PackId {
        self.id
    }

    /// Append a chunk's encoded object (as [`crate::Codec::encode`] made it).
    pub fn push(&mut self, chunk: ChunkId, encoded: &[u8]) -> Result<ChunkLocation> {
        let length = u32::try_from(encoded.len()).map_err(|_| {
            RepoError::Invalid(format!(
                "chunk {chunk} is {} bytes encoded, more than a pack entry can hold (4 GiB)",
                encoded.len()
            ))
        })?;
        let location = ChunkLocation {
            pack: self.id,
            offset: self.bytes.len() as u64,
            length,
        };
        self.bytes.extend_from_slice(encoded);
        self.entries.push(IndexEntry { chunk, location });
        Ok(location)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of chunks so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= self.target
    }

    /// Close the pack: append the encoded trailer and the footer.
    pub fn seal(self, repo: &Repository) -> Result<SealedPack> {
        let PackBuilder {
            id,
            mut bytes,
            entries,
            ..
        } = self;
        let mut plain = records_header(TRAILER_MAGIC, entries.len());
        for e in &entries {
            plain.extend_from_slice(&e.chunk.0.0);
            plain.extend_from_slice(&e.location.offset.to_le_bytes());
            plain.extend_from_slice(&e.location.length.to_le_bytes());
        }
        let key = id.key();
        let (_, trailer) = repo.encode(&key, &plain)?;
        let trailer_len = u32::try_from(trailer.len()).map_err(|_| {
            RepoError::Invalid(format!("the trailer of {key} is larger than 4 GiB"))
        })?;
        bytes.extend_from_slice(&trailer);
        bytes.extend_from_slice(&trailer_len.to_le_bytes());
        bytes.extend_from_slice(FOOTER_MAGIC);
        Ok(SealedPack {
            id,
            bytes: Bytes::from(bytes),
            entries,
        })
    }
}

/// A complete pack, ready to store.
#[derive(Debug, Clone)]
pub struct SealedPack {
    pub id: PackId,
    pub bytes: Bytes,
    pub entries: Vec<IndexEntry>,
}

fn records_header(magic: &[u8; 4], count: usize) -> Vec<u8> {
    let mut plain = Vec::with_capacity(RECORDS_HEADER + count * INDEX_RECORD);
    plain.extend_from_slice(magic);
    plain.extend_from_slice(&[RECORDS_VERSION, 0, 0, 0]);
    plain.extend_from_slice(&(count as u64).to_le_bytes());
    plain
}

/// The records of a trailer or index plaintext, after checking its header and length.
fn records<'a>(
    plain: &'a [u8],
    magic: &[u8; 4],
    record: usize,
) -> std::result::Result<std::slice::ChunksExact<'a, u8>, String> {
    if plain.len() < RECORDS_HEADER || &plain[..4] != magic {
        return Err("it does not start with the expected magic".into());
    }
    if plain[4] != RECORDS_VERSION {
        return Err(format!(
            "its record version is {}, this lifeboat reads {RECORDS_VERSION}",
            plain[4]
        ));
    }
    let count = u64::from_le_bytes(le8(&plain[8..16]));
    let body = &plain[RECORDS_HEADER..];
    if !body.len().is_multiple_of(record) || (body.len() / record) as u64 != count {
        return Err(format!(
            "it says {count} records but holds {} bytes of them",
            body.len()
        ));
    }
    Ok(body.chunks_exact(record))
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&b[..4]);
    out
}

fn chunk_id(b: &[u8]) -> ChunkId {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[..32]);
    ChunkId(ContentHash(hash))
}

/// Where every chunk of a set of packs lies; built from index objects (or pack trailers).
#[derive(Debug, Default, Clone)]
pub struct ChunkIndex {
    locations: HashMap<ChunkId, ChunkLocation>,
}

impl ChunkIndex {
    /// Add entries; a chunk already located keeps its first location (any copy has the same
    /// content, by its name).
    pub fn extend(&mut self, entries: impl IntoIterator<Item = IndexEntry>) {
        for e in entries {
            self.locations.entry(e.chunk).or_insert(e.location);
        }
    }

    pub fn locate(&self, chunk: &ChunkId) -> Option<ChunkLocation> {
        self.locations.get(chunk).copied()
    }

    pub fn len(&self) -> usize {
        self.locations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// Keep only the chunks `keep` says are needed (a restore keeps its backup's).
    pub fn retain(&mut self, mut keep: impl FnMut(&ChunkId) -> bool) {
        self.locations.retain(|id, _| keep(id));
    }

    /// Every chunk and its (first) location, in no particular order (expire writes the live
    /// ones into a consolidated index).
    pub fn entries(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        self.locations
            .iter()
            .map(|(&chunk, &location)| IndexEntry { chunk, location })
    }

    /// Every chunk located, in no particular order.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.locations.keys()
    }
}

/// One ranged GET of a pack and the chunks it brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRead {
    pub pack: PackId,
    pub start: u64,
    pub end: u64,
    /// Each chunk and its location, in pack order.
    pub chunks: Vec<(ChunkId, ChunkLocation)>,
}

impl RangeRead {
    /// The encoded bytes of the `i`th chunk within the bytes this read fetched.
    pub fn chunk_bytes<'a>(&self, fetched: &'a [u8], i: usize) -> Option<&'a [u8]> {
        let (_, loc) = self.chunks.get(i)?;
        let from = usize::try_from(loc.offset.checked_sub(self.start)?).ok()?;
        fetched.get(from..from.checked_add(loc.length as usize)?)
    }
}

/// Group located chunks into ranged reads: chunks of one pack in offset order, merged into one
/// read while the gap between them is at most `max_gap` bytes and the read stays within
/// `max_read` bytes (a single chunk larger than that is read alone). Memory per read in flight
/// is at most `max_read` or one chunk.
pub fn plan_range_reads(
    chunks: impl IntoIterator<Item = (ChunkId, ChunkLocation)>,
    max_gap: u64,
    max_read: u64,
) -> Vec<RangeRead> {
    let mut by_pack: HashMap<PackId, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
    for (id, loc) in chunks {
        by_pack.entry(loc.pack).or_default().push((id, loc));
    }
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_by_key(|(pack, _)| *pack);
    let mut reads = Vec::new();
    for (pack, mut list) in packs {
        list.sort_by_key(|(_, loc)| loc.offset);
        list.dedup_by_key(|(_, loc)| loc.offset);
        let mut current: Option<RangeRead> = None;
        for (id, loc) in list {
            if let Some(read) = current.as_mut() {
                let gap = loc.offset.saturating_sub(read.end);
                if gap <= max_gap && loc.end().max(read.end) - read.start <= max_read {
                    read.end = read.end.max(loc.end());
                    read.chunks.push((id, loc));
                    continue;
                }
            }
            reads.extend(current.take());
            current = Some(RangeRead {
                pack,
                start: loc.offset,
                end: loc.end(),
                chunks: vec![(id, loc)],
            });
        }
        reads.extend(current);
    }
    reads
}

/// Where the trailer of a pack of `size` bytes starts, from its `footer` (the last
/// [`FOOTER_LEN`] bytes).
fn trailer_start(key: &str, size: u64, footer: &[u8]) -> Result<u64> {
    let corrupt = |reason: String| RepoError::Corrupt {
        key: key.to_string(),
        reason,
    };
    if footer.len() != FOOTER_LEN || &footer[4..] != FOOTER_MAGIC {
        return Err(corrupt("it does not end with a pack footer".into()));
    }
    let trailer_len = u64::from(u32::from_le_bytes(le4(&footer[..4])));
    (size - FOOTER_LEN as u64)
        .checked_sub(trailer_len)
        .ok_or_else(|| {
            corrupt(format!(
                "its footer names a {trailer_len}-byte trailer, longer than the pack"
            ))
        })
}

impl Repository {
    /// Store a sealed pack, create-only, under its random name.
    pub async fn put_pack(&self, pack: &SealedPack) -> Result<u64> {
        let key = pack.id.key();
        match self
            .store()
            .put(&key, pack.bytes.clone(), PutMode::Create)
            .await
        {
            Ok(()) => Ok(pack.bytes.len() as u64),
            // The name is 128 random bits: an object under it is this put's own, landed before
            // an attempt failed in transit, unless its size says otherwise.
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                if self.store().head(&key).await?.size == pack.bytes.len() as u64 {
                    Ok(pack.bytes.len() as u64)
                } else {
                    Err(RepoError::Invalid(format!(
                        "{key} already exists with other content: a new pack got the name of a stored one; run the command again"
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Store an index of `entries` under a new random name; returns its key.
    pub async fn put_index(&self, entries: &[IndexEntry]) -> Result<String> {
        let mut plain = records_header(INDEX_MAGIC, entries.len());
        for e in entries {
            plain.extend_from_slice(&e.chunk.0.0);
            plain.extend_from_slice(&e.location.pack.0);
            plain.extend_from_slice(&e.location.offset.to_le_bytes());
            plain.extend_from_slice(&e.location.length.to_le_bytes());
        }
        let key = keys::index(&PackId::random()?.to_string());
        self.put_object(&key, &plain, PutMode::Create).await?;
        Ok(key)
    }

    /// The entries of one stored index.
    pub async fn read_index(&self, key: &str) -> Result<Vec<IndexEntry>> {
        let (_, plain) = self.get_object(key).await?;
        let corrupt = |reason: String| RepoError::Corrupt {
            key: key.to_string(),
            reason: format!("not a readable index: {reason}"),
        };
        records(&plain, INDEX_MAGIC, INDEX_RECORD)
            .map_err(corrupt)?
            .map(|r| {
                let mut pack = [0u8; 16];
                pack.copy_from_slice(&r[32..48]);
                Ok(IndexEntry {
                    chunk: chunk_id(r),
                    location: ChunkLocation {
                        pack: PackId(pack),
                        offset: u64::from_le_bytes(le8(&r[48..56])),
                        length: u32::from_le_bytes(le4(&r[56..60])),
                    },
                })
            })
            .collect()
    }

    /// Every stored index merged into one map.
    pub async fn load_chunk_index(&self) -> Result<ChunkIndex> {
        let mut keys: Vec<String> = self
            .store()
            .list(keys::INDEX_PREFIX)
            .await?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| !k.contains(".tmp"))
            .collect();
        keys.sort();
        let mut index = ChunkIndex::default();
        for key in keys {
            index.extend(self.read_index(&key).await?);
        }
        Ok(index)
    }

    /// A pack's own list of its chunks, read from its tail: two range reads, and a HEAD for
    /// its size.
    pub async fn read_pack_trailer(&self, pack: PackId) -> Result<Vec<IndexEntry>> {
        let key = pack.key();
        let size = self.store().head(&key).await?.size;
        if size < FOOTER_LEN as u64 {
            return Err(RepoError::Corrupt {
                key,
                reason: format!("{size} bytes is too short for a pack"),
            });
        }
        let footer = self
            .store()
            .get_range(&key, size - FOOTER_LEN as u64, size)
            .await?;
        let trailer_start = trailer_start(&key, size, &footer)?;
        let raw = self
            .store()
            .get_range(&key, trailer_start, size - FOOTER_LEN as u64)
            .await?;
        self.trailer_entries(pack, &raw, trailer_start)
    }

    /// The chunks of a whole pack held in memory (`copy` reads packs whole): its footer and
    /// trailer checked and decoded, as [`read_pack_trailer`](Self::read_pack_trailer) does. The
    /// chunks themselves are not decoded here.
    pub fn pack_entries(&self, pack: PackId, bytes: &[u8]) -> Result<Vec<IndexEntry>> {
        let key = pack.key();
        let size = bytes.len() as u64;
        if size < FOOTER_LEN as u64 {
            return Err(RepoError::Corrupt {
                key,
                reason: format!("{size} bytes is too short for a pack"),
            });
        }
        let footer_at = bytes.len() - FOOTER_LEN;
        let start = trailer_start(&key, size, &bytes[footer_at..])?;
        let from = usize::try_from(start).map_err(|_| RepoError::Corrupt {
            key: key.clone(),
            reason: "its trailer offset does not fit in memory".into(),
        })?;
        self.trailer_entries(pack, &bytes[from..footer_at], start)
    }

    /// The records of a pack's encoded trailer `raw`, which starts at `trailer_start`.
    fn trailer_entries(
        &self,
        pack: PackId,
        raw: &[u8],
        trailer_start: u64,
    ) -> Result<Vec<IndexEntry>> {
        let key = pack.key();
        let corrupt = |reason: String| RepoError::Corrupt {
            key: key.clone(),
            reason,
        };
        let (_, plain) = self.decode(&key, raw)?;
        records(&plain, TRAILER_MAGIC, TRAILER_RECORD)
            .map_err(|r| corrupt(format!("not a readable pack trailer: {r}")))?
            .map(|r| {
                let entry = IndexEntry {
                    chunk: chunk_id(r),
                    location: ChunkLocation {
                        pack,
                        offset: u64::from_le_bytes(le8(&r[32..40])),
                        length: u32::from_le_bytes(le4(&r[40..44])),
                    },
                };
                if entry.location.end() > trailer_start {
                    return Err(corrupt(format!(
                        "its trailer places chunk {} past the chunks' end",
                        entry.chunk
                    )));
                }
                Ok(entry)
            })
            .collect()
    }

    /// Fetch the bytes of one planned read; take each chunk out with
    /// [`RangeRead::chunk_bytes`] and decode it with
    /// [`decode_chunk_aligned`](Self::decode_chunk_aligned), which checks it is the chunk named.
    pub async fn fetch_range(&self, read: &RangeRead) -> Result<Bytes> {
        let key = read.pack.key();
        let bytes = self.store().get_range(&key, read.start, read.end).await?;
        if (bytes.len() as u64) < read.end - read.start {
            return Err(RepoError::Corrupt {
                key,
                reason: format!(
                    "bytes {}..{} were asked for and only {} came back: the pack is shorter than its index says",
                    read.start,
                    read.end,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests;
