//! Reading back: one loop ([`read_back`]) reads a list of objects a bounded number at a time
//! (fewer when they are large, [`in_flight`]), tells the caller's progress sink about each, and
//! sorts them into intact, damaged (with why) and gone; [`read_chunk`] and [`read_wal`] read one
//! chunk or one WAL object and say which. Chunks in packs are read with ranged reads of several
//! neighbours at once ([`plan_chunk_reads`], [`read_chunks`]), each chunk checked as a loose one.

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use lifeboat_pg::history::TimelineHistory;
use lifeboat_pg::walheader;
use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{RangeRead, plan_range_reads};
use lifeboat_repo::stored::{ChunkPlace, ChunkScope};
use lifeboat_repo::{ClusterIdentity, RepoError, Repository};

use super::{EventSink, VerifyEvent};
use tokio::sync::Semaphore;

use crate::{EngineError, Result, join_error};

/// Memory for objects being read and decoded at once: each read holds the stored object and its
/// plaintext, so a 16 MiB WAL segment costs about 32 MiB. Fewer reads run at once when objects are
/// large, so a repository of 1 GiB segments or 16 MiB blocks stays within this on any machine.
/// 128 MiB: 32 reads of 1 MiB blocks (the object-store default concurrency) but 4 of 16 MiB
/// segments, as many as two cores read before reads had their own setting; a segment read is
/// long enough that a few at once keep the link busy.
const READ_MEMORY_BUDGET: u64 = 128 * 1024 * 1024;

/// Reads allowed at once: `concurrency`, fewer when objects are so large that many of them at once
/// would exceed [`READ_MEMORY_BUDGET`] (each read holds the stored object and its plaintext).
pub(super) fn in_flight(concurrency: usize, object_size: u64) -> usize {
    let by_memory = READ_MEMORY_BUDGET / (2 * object_size.max(1));
    concurrency
        .min(usize::try_from(by_memory).unwrap_or(usize::MAX))
        .max(1)
}

/// Packed chunks closer than this in a pack are fetched by one read (the gap read and dropped).
const MERGE_GAP: u64 = 256 * 1024;
/// The largest ranged read of a pack (a chunk larger than that is read alone): what one read in
/// flight holds, so [`in_flight`] counts reads of packs at this size.
const READ_SIZE: u64 = 4 * 1024 * 1024;

/// One request of chunk bytes: a loose chunk, or a range of a pack holding one or more chunks.
enum ChunkRead {
    Loose(ChunkId, u64),
    Range(RangeRead),
}

impl ChunkRead {
    /// Stored bytes this read holds at once.
    fn size(&self) -> u64 {
        match self {
            ChunkRead::Loose(_, size) => *size,
            ChunkRead::Range(r) => r.end - r.start,
        }
    }
}

/// The requests that read `chunks`: one per loose chunk, packed ones grouped by pack into
/// ranged reads of neighbours.
fn plan_chunk_reads(chunks: Vec<(ChunkId, ChunkPlace)>) -> Vec<ChunkRead> {
    let mut reads = Vec::new();
    let mut packed = Vec::new();
    for (id, place) in chunks {
        match place {
            ChunkPlace::Loose { size } => reads.push(ChunkRead::Loose(id, size)),
            ChunkPlace::Packed(loc) => packed.push((id, loc)),
        }
    }
    reads.extend(
        plan_range_reads(packed, MERGE_GAP, READ_SIZE)
            .into_iter()
            .map(ChunkRead::Range),
    );
    reads
}

/// What [`read_back`] found.
pub(super) struct ReadBack<K> {
    /// Read intact, with the stored size.
    pub(super) intact: Vec<(K, u64)>,
    /// Read and found damaged, with why.
    pub(super) damaged: Vec<(K, String)>,
    /// Deleted since the listing.
    pub(super) gone: Vec<K>,
    /// Objects read (intact or damaged), and their stored bytes.
    pub(super) read: u64,
    pub(super) bytes: u64,
    /// Requests made for chunks ([`read_chunks`]: one per loose chunk or ranged read of a pack).
    pub(super) requests: u64,
}

/// Read each of `objects` (with its listed stored size) with `read`, `in_flight` at a time,
/// telling `events` about each as it ends. An error reading one (a store that cannot be read)
/// ends the loop and is returned; a damaged or vanished object is a result.
pub(super) async fn read_back<K, F, Fut>(
    objects: Vec<(K, u64)>,
    in_flight: usize,
    events: &EventSink,
    read: F,
) -> Result<ReadBack<K>>
where
    K: Copy,
    F: Fn(K) -> Fut,
    Fut: Future<Output = Result<Outcome>>,
{
    let mut found = ReadBack::default();
    let mut reads = futures::stream::iter(objects)
        .map(|(key, size)| {
            let reading = read(key);
            async move { (key, size, reading.await) }
        })
        .buffer_unordered(in_flight);
    while let Some((key, size, result)) = reads.next().await {
        found.record(key, size, result?, events);
    }
    Ok(found)
}

impl<K> Default for ReadBack<K> {
    fn default() -> Self {
        Self {
            intact: Vec::new(),
            damaged: Vec::new(),
            gone: Vec::new(),
            read: 0,
            bytes: 0,
            requests: 0,
        }
    }
}

impl<K> ReadBack<K> {
    /// Count one object's outcome and tell `events` it was read.
    fn record(&mut self, key: K, size: u64, outcome: Outcome, events: &EventSink) {
        events(VerifyEvent::Read { bytes: size });
        match outcome {
            Outcome::Intact => {
                self.read += 1;
                self.bytes += size;
                self.intact.push((key, size));
            }
            Outcome::Damaged(reason) => {
                self.read += 1;
                self.bytes += size;
                self.damaged.push((key, reason));
            }
            Outcome::Gone => self.gone.push(key),
        }
    }

    fn absorb(&mut self, other: ReadBack<K>) {
        self.intact.extend(other.intact);
        self.damaged.extend(other.damaged);
        self.gone.extend(other.gone);
        self.read += other.read;
        self.bytes += other.bytes;
        self.requests += other.requests;
    }
}

/// Read back `chunks` where they lie, loose ones one request each, packed ones by ranged reads,
/// as many requests at once as `concurrency` and memory allow (a ranged read counts as an object
/// of its size, a loose chunk as one of `max_block`, its plaintext). A chunk whose pack is gone
/// by the time it is read (repacked by a concurrent expire) is located again, once, and read
/// where it lies now; what is still gone is returned as gone.
pub(super) async fn read_all_chunks(
    repo: &Repository,
    chunks: Vec<(ChunkId, ChunkPlace)>,
    max_block: u64,
    concurrency: usize,
    events: &EventSink,
    cpu: Arc<Semaphore>,
) -> Result<ReadBack<(ChunkId, ChunkPlace)>> {
    let mut found = ReadBack::default();
    let mut pending = chunks;
    for pass in 0..2 {
        let reads = plan_chunk_reads(pending);
        let largest = reads.iter().map(ChunkRead::size).max().unwrap_or(0);
        let limit = in_flight(concurrency, max_block.max(largest).max(1));
        let mut this = read_chunks(repo, reads, limit, events, cpu.clone()).await?;
        let gone = std::mem::take(&mut this.gone);
        found.absorb(this);
        let packed_gone = gone.iter().any(|(_, p)| matches!(p, ChunkPlace::Packed(_)));
        if pass == 1 || !packed_gone {
            found.gone.extend(gone);
            break;
        }
        let ids: HashSet<ChunkId> = gone.iter().map(|(id, _)| *id).collect();
        let now = repo.stored_chunks(ChunkScope::Wanted(&ids)).await?;
        pending = Vec::new();
        for (id, was) in gone {
            match now.locate(&id).filter(|p| *p != was) {
                Some(place) => pending.push((id, place)),
                None => found.gone.push((id, was)),
            }
        }
    }
    Ok(found)
}

/// Read every chunk of `reads`, `in_flight` requests at a time, telling `events` about each chunk
/// as its request ends; sorted as [`read_back`] does, each chunk with where it was read.
async fn read_chunks(
    repo: &Repository,
    reads: Vec<ChunkRead>,
    in_flight: usize,
    events: &EventSink,
    cpu: Arc<Semaphore>,
) -> Result<ReadBack<(ChunkId, ChunkPlace)>> {
    let mut found = ReadBack {
        requests: reads.len() as u64,
        ..ReadBack::default()
    };
    let mut requests = futures::stream::iter(reads)
        .map(|read| {
            let cpu = cpu.clone();
            async move {
                match read {
                    ChunkRead::Loose(id, size) => {
                        let outcome = read_chunk(repo, &id, cpu).await?;
                        Ok(vec![((id, ChunkPlace::Loose { size }), size, outcome)])
                    }
                    ChunkRead::Range(range) => read_range(repo, range, cpu).await,
                }
            }
        })
        .buffer_unordered(in_flight);
    while let Some(result) = requests.next().await {
        let chunks: Vec<((ChunkId, ChunkPlace), u64, Outcome)> = result?;
        for (key, size, outcome) in chunks {
            found.record(key, size, outcome, events);
        }
    }
    Ok(found)
}

/// Fetch one range of a pack and check each chunk in it as a loose chunk is checked: a chunk's
/// damage is its own, its neighbours are judged on their bytes.
async fn read_range(
    repo: &Repository,
    range: RangeRead,
    cpu: Arc<Semaphore>,
) -> Result<Vec<((ChunkId, ChunkPlace), u64, Outcome)>> {
    let each = |range: &RangeRead, outcome: &dyn Fn() -> Outcome| {
        range
            .chunks
            .iter()
            .map(|(id, loc)| {
                (
                    (*id, ChunkPlace::Packed(*loc)),
                    u64::from(loc.length),
                    outcome(),
                )
            })
            .collect::<Vec<_>>()
    };
    let fetched = match repo.fetch_range(&range).await {
        Ok(fetched) => fetched,
        Err(e) if e.is_not_found() => return Ok(each(&range, &|| Outcome::Gone)),
        Err(RepoError::Corrupt { reason, .. }) => {
            return Ok(each(&range, &|| Outcome::Damaged(reason.clone())));
        }
        Err(e) => return Err(e.into()),
    };
    let permit = cpu
        .acquire_owned()
        .await
        .map_err(|e| EngineError::Internal(format!("verify worker pool closed: {e}")))?;
    let repo = repo.clone();
    tokio::task::spawn_blocking(move || {
        let checked = PLAIN.with_borrow_mut(|buf| {
            let mut out = Vec::with_capacity(range.chunks.len());
            for (i, (id, loc)) in range.chunks.iter().enumerate() {
                let outcome = match range.chunk_bytes(&fetched, i) {
                    None => Outcome::Damaged(format!(
                        "the read of {} bytes {}..{} did not hold it",
                        range.pack.key(),
                        range.start,
                        range.end
                    )),
                    Some(raw) => match repo.decode_chunk_aligned(id, raw, buf, 1) {
                        Ok(_) => Outcome::Intact,
                        Err(RepoError::Corrupt { reason, .. }) => Outcome::Damaged(reason),
                        Err(e) => return Err(e),
                    },
                };
                out.push((
                    (*id, ChunkPlace::Packed(*loc)),
                    u64::from(loc.length),
                    outcome,
                ));
            }
            Ok(out)
        });
        drop(permit);
        checked
    })
    .await
    .map_err(join_error)?
    .map_err(Into::into)
}

thread_local! {
    /// Plaintext of the chunk being checked, reused from chunk to chunk by each thread.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Read one chunk back: decryption, length, content hash, hash equals name. The fetch waits on
/// the store; decoding takes one of `cpu`'s permits, so that many reads in flight decode on no
/// more threads than there are cores (each decoding thread keeps a 1 MiB buffer).
pub(super) async fn read_chunk(
    repo: &Repository,
    id: &ChunkId,
    cpu: Arc<Semaphore>,
) -> Result<Outcome> {
    let raw = match repo.store().get(&id.key()).await {
        Ok(raw) => raw,
        Err(e) if e.is_not_found() => return Ok(Outcome::Gone),
        Err(e) => return Err(RepoError::from(e).into()),
    };
    let permit = cpu
        .acquire_owned()
        .await
        .map_err(|e| EngineError::Internal(format!("verify worker pool closed: {e}")))?;
    let (repo, id) = (repo.clone(), *id);
    let decoded = tokio::task::spawn_blocking(move || {
        let result =
            PLAIN.with_borrow_mut(|buf| repo.decode_chunk_aligned(&id, &raw, buf, 1).map(drop));
        drop(permit);
        result
    })
    .await
    .map_err(join_error)?;
    match decoded {
        Ok(()) => Ok(Outcome::Intact),
        Err(RepoError::Corrupt { reason, .. }) => Ok(Outcome::Damaged(reason)),
        Err(e) => Err(e.into()),
    }
}

/// How reading one object back ended.
pub(super) enum Outcome {
    Intact,
    Damaged(String),
    /// Deleted since the listing.
    Gone,
}

/// Read one WAL object back: decode (hash, length, tag), then check that it is what its name
/// says, as `wal-fetch` would before handing it to PostgreSQL.
pub(super) async fn read_wal(
    repo: &Repository,
    name: &WalFileName,
    identity: Option<&ClusterIdentity>,
) -> Result<Outcome> {
    let plain = match repo.get_wal(name).await {
        Ok(Some(plain)) => plain,
        Ok(None) => return Ok(Outcome::Gone),
        Err(RepoError::Corrupt { reason, .. }) => return Ok(Outcome::Damaged(reason)),
        Err(e) => return Err(e.into()),
    };
    let header = match name {
        WalFileName::Segment(seg) => walheader::validate_segment(&plain, seg).map(Some),
        WalFileName::Partial(seg) => walheader::validate_partial(&plain, seg).map(Some),
        WalFileName::History(tli) => {
            return Ok(match std::str::from_utf8(&plain) {
                Ok(text) => match TimelineHistory::parse(*tli, text) {
                    Ok(_) => Outcome::Intact,
                    Err(e) => Outcome::Damaged(e.to_string()),
                },
                Err(e) => Outcome::Damaged(format!("not text: {e}")),
            });
        }
        WalFileName::Backup { .. } => {
            return Ok(if plain.is_empty() {
                Outcome::Damaged("empty".into())
            } else {
                Outcome::Intact
            });
        }
    };
    match header {
        Err(e) => Ok(Outcome::Damaged(format!(
            "decodes intact but is not the WAL its name says: {e}"
        ))),
        Ok(Some(h)) => match identity {
            Some(id) if id.system_identifier != h.system_identifier => {
                Ok(Outcome::Damaged(format!(
                    "written by cluster {}, the repository belongs to cluster {}",
                    h.system_identifier, id.system_identifier
                )))
            }
            _ => Ok(Outcome::Intact),
        },
        Ok(None) => Ok(Outcome::Intact),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_flight_respect_memory() {
        assert_eq!(in_flight(4, 1 << 20), 4);
        assert_eq!(in_flight(32, 1 << 20), 32);
        assert_eq!(in_flight(64, 16 << 20), 4);
        assert_eq!(in_flight(64, 1 << 30), 1);
    }
}
