//! Getting a restore's chunks out of the repository: proving first that every one is there
//! (indexes, then loose keys; nothing is written otherwise), then fetching each once (a loose
//! chunk with one GET, packed chunks with ranged GETs that bring many neighbours at a time) and
//! writing it wherever it goes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::pack::{RangeRead, plan_range_reads};
use lifeboat_repo::stored::{ChunkPlace, ChunkScope, StoredChunks};
use lifeboat_repo::{RepoError, Repository};
use tokio::sync::Semaphore;

use super::write::{FileProgress, PLAIN_BUFFER, write_chunk};
use super::{Placement, Target, direct};
use crate::{EngineError, Result, join_error};

/// Threads decoding and writing chunks per `--parallel` thread: direct writes wait on the disk in
/// the writing thread, so more writers than cores keep the cores busy (with one per thread a
/// local restore took 30 % longer).
const WRITERS_PER_THREAD: usize = 4;
/// Neighbouring packed chunks are fetched in one ranged read while the bytes between them that
/// nobody needs stay under this: a read costs a round trip, skipped bytes only bandwidth.
const MAX_GAP: u64 = 256 << 10;
/// The largest ranged read: an 8 MiB pack of a full restore comes in two.
const MAX_READ: u64 = 4 << 20;
/// Fetched bytes held at once (being fetched, or waiting to be decoded and written): this, not
/// the size of the backup, bounds the restore's memory for fetched data.
const FETCHED_BUDGET: usize = 64 << 20;
/// Chunks decoded and written by one writer at a time, out of one fetch's: a few, so that a
/// fetch's hundred are spread over every writer and the last fetches of a restore do not leave
/// all but one writer idle (at scale 200, 32 fetches on 8 writers, no difference measured).
const WRITE_GROUP: usize = 8;

/// Every chunk the restore will fetch must be in the repository, or nothing is written: a
/// missing chunk is corruption, named with the backups that need it. Returns where each lies.
pub(super) async fn check_chunks(
    repo: &Repository,
    manifests: &[Manifest],
    manifest: &Manifest,
    needed: impl Iterator<Item = &ChunkId>,
) -> Result<StoredChunks> {
    let needed: HashSet<ChunkId> = needed.copied().collect();
    if needed.is_empty() {
        return Ok(StoredChunks::default());
    }
    let stored = repo.stored_chunks(ChunkScope::Wanted(&needed)).await?;
    let mut missing: Vec<ChunkId> = needed.into_iter().filter(|c| !stored.contains(c)).collect();
    if missing.is_empty() {
        return Ok(stored);
    }
    missing.sort();
    let gone: HashSet<ChunkId> = missing.iter().copied().collect();
    let mut needing: Vec<String> = manifests
        .iter()
        .filter(|m| m.chunks().any(|c| gone.contains(&c)))
        .map(|m| m.label.clone())
        .collect();
    if !needing.contains(&manifest.label) {
        needing.push(manifest.label.clone());
    }
    const SHOWN: usize = 10;
    let mut names: Vec<String> = missing.iter().take(SHOWN).map(ChunkId::key).collect();
    if missing.len() > SHOWN {
        names.push(format!("and {} more", missing.len() - SHOWN));
    }
    let damaged_indexes = if stored.unreadable_indexes.is_empty() {
        String::new()
    } else {
        let keys: Vec<&str> = stored
            .unreadable_indexes
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        format!(
            "; these indexes are unreadable and may be what located them: {}",
            keys.join(", ")
        )
    };
    Err(EngineError::Corrupt {
        message: format!(
            "backup {} cannot be restored: {} chunk(s) it needs are missing from the repository: {}; backups that need them: {}{damaged_indexes}",
            manifest.label,
            missing.len(),
            names.join(", "),
            needing.join(", ")
        ),
        hint: "nothing was written; restore a backup that does not need these chunks (`lifeboat verify` names every affected backup), and find out what removed objects from the repository".into(),
    })
}

/// What one request brings: a whole loose chunk, or a ranged read of a pack.
enum Fetch {
    Loose(ChunkId, u64),
    Range(RangeRead),
}

impl Fetch {
    /// This fetch's object was gone: its key and the chunks it was to bring.
    fn gone(&self) -> Fetched {
        match self {
            Fetch::Loose(chunk, _) => Fetched::Gone(chunk.key(), vec![*chunk]),
            Fetch::Range(read) => Fetched::Gone(
                read.pack.key(),
                read.chunks.iter().map(|(c, _)| *c).collect(),
            ),
        }
    }

    fn key(&self) -> FetchKey {
        match self {
            Fetch::Loose(..) => FetchKey::Loose,
            Fetch::Range(read) => FetchKey::Pack(read.pack.key()),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Fetch::Loose(_, size) => *size,
            Fetch::Range(read) => read.end - read.start,
        }
    }
}

/// Where the fetched chunks go, shared by every fetch.
pub(super) struct Sink {
    pub(super) targets: Arc<Vec<Target>>,
    pub(super) progress: Arc<FileProgress>,
    pub(super) writer: Arc<direct::PieceWriter>,
    pub(super) label: String,
    pub(super) parallel: usize,
}

/// Fetch every chunk of `placements` once and write it to each of its places; `on_written`
/// sees the bytes written as each chunk lands. Returns the requests made.
///
/// `expire` may repack while a restore runs (restore takes no lock): a pack that is gone when
/// it is read has had its live chunks copied into new packs first, so the chunks it was to
/// bring are located again once, through the indexes as they are now, and fetched from there.
pub(super) async fn fetch_and_write(
    repo: &Repository,
    stored: &StoredChunks,
    placements: HashMap<ChunkId, Vec<Placement>>,
    sink: Sink,
    mut on_written: impl FnMut(u64),
) -> Result<u64> {
    let placements = Arc::new(placements);
    let sink = Arc::new(sink);
    let fetches = plan_fetches(stored, placements.keys())?;
    let mut requests_made = fetches.len() as u64;
    let gone = run_fetches(repo, fetches, &placements, &sink, &mut on_written).await?;
    if gone.is_empty() {
        return Ok(requests_made);
    }
    let wanted: HashSet<ChunkId> = gone
        .iter()
        .flat_map(|(_, chunks)| chunks)
        .copied()
        .collect();
    tracing::info!(
        "{} object(s) vanished during the restore (an expire repacking?): locating their {} chunk(s) again",
        gone.len(),
        wanted.len()
    );
    let now = repo.stored_chunks(ChunkScope::Wanted(&wanted)).await?;
    if let Some(lost) = wanted.iter().find(|c| !now.contains(c)) {
        let key = gone
            .iter()
            .find(|(_, chunks)| chunks.contains(lost))
            .map_or_else(|| lost.key(), |(key, _)| key.clone());
        return Err(vanished(
            lifeboat_storage::StorageError::not_found(&key),
            &key,
            &sink.label,
        ));
    }
    let fetches = plan_fetches(&now, wanted.iter())?;
    requests_made += fetches.len() as u64;
    let still_gone = run_fetches(repo, fetches, &placements, &sink, &mut on_written).await?;
    if let Some((key, _)) = still_gone.first() {
        return Err(vanished(
            lifeboat_storage::StorageError::not_found(key),
            key,
            &sink.label,
        ));
    }
    Ok(requests_made)
}

/// The requests that bring `chunks`: a GET per loose chunk, ranged reads for packed ones.
fn plan_fetches<'a>(
    stored: &StoredChunks,
    chunks: impl Iterator<Item = &'a ChunkId>,
) -> Result<Vec<Fetch>> {
    let mut packed = Vec::new();
    let mut fetches = Vec::new();
    for chunk in chunks {
        match stored.locate(chunk) {
            Some(ChunkPlace::Packed(location)) => packed.push((*chunk, location)),
            Some(ChunkPlace::Loose { size }) => fetches.push(Fetch::Loose(*chunk, size)),
            // check_chunks proved every chunk present; one absent now is a bug, not damage.
            None => {
                return Err(EngineError::Internal(format!(
                    "chunk {chunk} was located before the restore and is not now"
                )));
            }
        }
    }
    fetches.extend(
        plan_range_reads(packed, MAX_GAP, MAX_READ)
            .into_iter()
            .map(Fetch::Range),
    );
    Ok(fetches)
}

/// What one fetch came to: bytes written, or the object it read was gone (its key and the
/// chunks it was to bring; nothing of them was written).
enum Fetched {
    Written(u64),
    Gone(String, Vec<ChunkId>),
}

/// Run `fetches`, writing what they bring; returns the ones whose object was gone.
async fn run_fetches(
    repo: &Repository,
    fetches: Vec<Fetch>,
    placements: &Arc<HashMap<ChunkId, Vec<Placement>>>,
    sink: &Arc<Sink>,
    on_written: &mut impl FnMut(u64),
) -> Result<Vec<(String, Vec<ChunkId>)>> {
    let concurrency = repo.store().capabilities().concurrency.max(1);
    let requests = Arc::new(Semaphore::new(concurrency));
    let writers = Arc::new(Semaphore::new(sink.parallel.max(1) * WRITERS_PER_THREAD));
    // Permits are KiB of fetched data; a fetch larger than the budget takes all of it.
    let budget_kib = FETCHED_BUDGET >> 10;
    let budget = Arc::new(Semaphore::new(budget_kib));
    let in_flight = concurrency + sink.parallel.max(1) * WRITERS_PER_THREAD;
    let mut writes = futures::stream::iter(fetches)
        .map(|fetch| {
            let repo = repo.clone();
            let placements = placements.clone();
            let sink = sink.clone();
            let requests = requests.clone();
            let writers = writers.clone();
            let budget = budget.clone();
            async move {
                let kib = (fetch.bytes().div_ceil(1024) as usize).clamp(1, budget_kib);
                let _held = budget
                    .acquire_many_owned(kib as u32)
                    .await
                    .map_err(pool_closed)?;
                let chunks = {
                    let _request = requests.acquire().await.map_err(pool_closed)?;
                    match fetch_chunks(&repo, &fetch).await? {
                        Some(chunks) => chunks,
                        None => return Ok(fetch.gone()),
                    }
                };
                // One ranged read brings about a hundred chunks (4 MiB of 40 KiB objects that
                // decode to 1 MiB each): decoding and writing them in groups on several writers,
                // not all on one, keeps every writer busy to the end of the restore.
                let mut groups = Vec::new();
                let mut chunks = chunks.into_iter().peekable();
                while chunks.peek().is_some() {
                    let group: Vec<(ChunkId, Bytes)> = chunks.by_ref().take(WRITE_GROUP).collect();
                    let worker = writers.clone().acquire_owned().await.map_err(pool_closed)?;
                    let repo = repo.clone();
                    let placements = placements.clone();
                    let sink = sink.clone();
                    let key = fetch.key();
                    groups.push(tokio::task::spawn_blocking(move || {
                        let written = write_group(&repo, group, &placements, &sink, &key);
                        drop(worker);
                        written
                    }));
                }
                let mut written = 0;
                for group in groups {
                    written += group.await.map_err(join_error)??;
                }
                Ok::<Fetched, EngineError>(Fetched::Written(written))
            }
        })
        .buffer_unordered(in_flight);
    let mut gone = Vec::new();
    while let Some(fetched) = writes.next().await {
        match fetched? {
            Fetched::Written(bytes) => on_written(bytes),
            Fetched::Gone(key, chunks) => gone.push((key, chunks)),
        }
    }
    Ok(gone)
}

/// Decode and write a group of fetched chunks on this (blocking) thread.
fn write_group(
    repo: &Repository,
    group: Vec<(ChunkId, Bytes)>,
    placements: &HashMap<ChunkId, Vec<Placement>>,
    sink: &Sink,
    key: &FetchKey,
) -> Result<u64> {
    let mut written = 0;
    for (chunk, raw) in group {
        let places = placements
            .get(&chunk)
            .ok_or_else(|| EngineError::Internal(format!("chunk {chunk} was fetched unasked")))?;
        written += PLAIN_BUFFER.with_borrow_mut(|buf| {
            let plain = repo
                .decode_chunk_aligned(&chunk, &raw, buf, direct::ALIGN)
                .map_err(|e| key.damaged(e, &chunk))?;
            write_chunk(plain, places, &sink.targets, &sink.progress, &sink.writer)
        })?;
    }
    Ok(written)
}

/// The chunks one fetch brings, each as its stored (encoded) bytes; `None` when the object is
/// gone.
async fn fetch_chunks(repo: &Repository, fetch: &Fetch) -> Result<Option<Vec<(ChunkId, Bytes)>>> {
    match fetch {
        Fetch::Loose(chunk, _) => match repo.store().get(&chunk.key()).await {
            Ok(raw) => Ok(Some(vec![(*chunk, raw)])),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(RepoError::from(e).into()),
        },
        Fetch::Range(read) => {
            let fetched = match repo.fetch_range(read).await {
                Ok(bytes) => bytes,
                Err(RepoError::Storage(e)) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            (0..read.chunks.len())
                .map(|i| {
                    let (chunk, _) = read.chunks[i];
                    let range = read.chunk_bytes(&fetched, i).ok_or_else(|| {
                        EngineError::Internal(format!(
                            "chunk {chunk} lies outside the bytes read of pack {}",
                            read.pack
                        ))
                    })?;
                    Ok((chunk, fetched.slice_ref(range)))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)
        }
    }
}

/// What a fetch read, to name in an error: a pack (a person can look at it), or a loose chunk.
enum FetchKey {
    Pack(String),
    Loose,
}

impl FetchKey {
    /// A chunk that fails its check: in a pack, name the pack.
    fn damaged(&self, e: RepoError, chunk: &ChunkId) -> EngineError {
        match (e, self) {
            (RepoError::Corrupt { reason, .. }, FetchKey::Pack(key)) => RepoError::Corrupt {
                key: key.clone(),
                reason: format!("chunk {chunk} in it: {reason}"),
            }
            .into(),
            (e, _) => e.into(),
        }
    }
}

fn pool_closed(e: tokio::sync::AcquireError) -> EngineError {
    EngineError::Internal(format!("restore worker pool closed: {e}"))
}

/// An object the check found is gone when it is fetched: the repository lost it under us.
pub(super) fn vanished(e: lifeboat_storage::StorageError, key: &str, label: &str) -> EngineError {
    if e.is_not_found() {
        EngineError::Corrupt {
            message: format!(
                "{key}, needed by backup {label}, vanished from the repository during the restore; the target directory is incomplete"
            ),
            hint: "something removed objects from the repository (an expire of another repository copy, a lifecycle rule, a person): run `lifeboat verify`, then restore again into an empty directory".into(),
        }
    } else {
        lifeboat_repo::RepoError::from(e).into()
    }
}
