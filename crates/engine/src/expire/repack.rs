//! Repacking: the live chunks of sparse packs (less than half live) copied into new packs, their
//! encoded bytes as they are (nothing is decrypted; only the new trailers are encoded), fetched
//! in ranged reads as restore fetches them. The new packs are stored but not indexed: the
//! consolidated index that names them is written next ([`super::packs`]).

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{ChunkLocation, IndexEntry, PackBuilder, plan_range_reads};
use lifeboat_repo::{RepoError, Repository};

use crate::Result;

/// New packs close at this many bytes of chunks, as a backup's do.
pub use lifeboat_repo::pack::PACK_SIZE as REPACK_SIZE;
/// Ranged reads: neighbours closer than this are fetched together, up to `MAX_READ` per read.
const MAX_GAP: u64 = 256 << 10;
const MAX_READ: u64 = 4 << 20;
/// Reads in flight: with `MAX_READ` each and the open pack, memory stays under ~24 MiB.
const READS_IN_FLIGHT: usize = 4;

/// A pack to repack.
#[derive(Debug, Clone)]
pub struct Sparse {
    pub key: String,
    /// Its stored size.
    pub size: u64,
    /// Its live chunks, in pack order.
    pub live: Vec<(ChunkId, ChunkLocation)>,
}

/// What repacking did.
#[derive(Debug, Clone, Default)]
pub struct Repacked {
    /// The new packs' entries.
    pub entries: Vec<IndexEntry>,
    /// Sparse packs whose live chunks could not be read (key, problem): they stay as they are,
    /// named by the consolidated index, for verify to examine.
    pub unreadable: Vec<(String, String)>,
}

impl Repacked {
    pub fn kept(&self, key: &str) -> bool {
        self.unreadable.iter().any(|(k, _)| k == key)
    }
}

/// Copy the live chunks of the `sparse` packs into new packs and store them. A pack whose chunks
/// cannot be read whole (damaged, shorter than its index says) is left out, not fatal: expire
/// must not stop collecting the rest because of one pack.
pub async fn repack<F, Fut>(repo: &Repository, sparse: &[Sparse], held: &F) -> Result<Repacked>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut done = Repacked::default();
    if sparse.is_empty() {
        return Ok(done);
    }
    let in_flight = repo
        .store()
        .capabilities()
        .concurrency
        .clamp(1, READS_IN_FLIGHT);
    // One pack's live chunks at a time per read in flight: under half a pack each.
    let mut fetched = futures::stream::iter(sparse)
        .map(|s| async move { (s, live_chunks(repo, s).await) })
        .buffered(in_flight);
    let mut open = PackBuilder::new(REPACK_SIZE)?;
    while let Some((s, chunks)) = fetched.next().await {
        let chunks = match chunks {
            Ok(chunks) => chunks,
            Err(RepoError::Corrupt { reason, .. }) => {
                tracing::warn!("{} is not repacked: {reason}", s.key);
                done.unreadable.push((s.key.clone(), reason));
                continue;
            }
            Err(RepoError::Storage(e)) if e.is_not_found() => {
                done.unreadable
                    .push((s.key.clone(), "it vanished from the repository".into()));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for (chunk, raw) in chunks {
            open.push(chunk, &raw)?;
            if open.is_full() {
                let full = std::mem::replace(&mut open, PackBuilder::new(REPACK_SIZE)?);
                done.entries.extend(store(repo, full, held).await?);
            }
        }
    }
    if !open.is_empty() {
        done.entries.extend(store(repo, open, held).await?);
    }
    tracing::info!(
        "repacked {} chunks of {} sparse packs",
        done.entries.len(),
        sparse.len() - done.unreadable.len()
    );
    Ok(done)
}

/// The encoded bytes of a sparse pack's live chunks, in pack order.
async fn live_chunks(
    repo: &Repository,
    sparse: &Sparse,
) -> lifeboat_repo::Result<Vec<(ChunkId, Bytes)>> {
    let mut out = Vec::with_capacity(sparse.live.len());
    for read in plan_range_reads(sparse.live.iter().copied(), MAX_GAP, MAX_READ) {
        let bytes = repo.fetch_range(&read).await?;
        for (i, (chunk, _)) in read.chunks.iter().enumerate() {
            let raw = read.chunk_bytes(&bytes, i).ok_or_else(|| RepoError::Corrupt {
                key: read.pack.key(),
                reason: format!(
                    "chunk {chunk} lies outside the bytes read for it: the index and the pack disagree"
                ),
            })?;
            out.push((*chunk, bytes.slice_ref(raw)));
        }
    }
    Ok(out)
}

async fn store<F, Fut>(repo: &Repository, pack: PackBuilder, held: &F) -> Result<Vec<IndexEntry>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    held().await?;
    let sealed = pack.seal(repo)?;
    repo.put_pack(&sealed).await?;
    Ok(sealed.entries)
}
