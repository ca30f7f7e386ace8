//! Repacking: the live chunks of sparse packs (less than half live) copied into new packs, their
//! encoded bytes as they are (nothing is decrypted; only the new trailers are encoded), fetched
//! in ranged reads as restore fetches them. The new packs are stored but not indexed: the
//! consolidated index that names them is written next ([`super::packs`]).

use futures::StreamExt;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{ChunkLocation, IndexEntry, PackBuilder, plan_range_reads};
use lifeboat_repo::{RepoError, Repository};

use crate::Result;

/// New packs close at this many bytes of chunks, as a backup's do.
pub const REPACK_SIZE: usize = 8 << 20;
/// Ranged reads: neighbours closer than this are fetched together, up to `MAX_READ` per read.
const MAX_GAP: u64 = 256 << 10;
const MAX_READ: u64 = 4 << 20;
/// Reads in flight: with `MAX_READ` each and the open pack, memory stays under ~24 MiB.
const READS_IN_FLIGHT: usize = 4;

/// A pack to repack.
#[derive(Debug, Clone)]
pub struct Sparse {
    pub key: String,
    /// Its live chunks, in pack order.
    pub live: Vec<(ChunkId, ChunkLocation)>,
}

/// Copy the live chunks of the `sparse` packs into new packs and store them; returns the new
/// packs' entries (empty when nothing is sparse).
pub async fn repack<F, Fut>(
    repo: &Repository,
    sparse: &[Sparse],
    held: &F,
) -> Result<Vec<IndexEntry>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    if sparse.is_empty() {
        return Ok(Vec::new());
    }
    let chunks = sparse.iter().flat_map(|s| s.live.iter().copied());
    let reads = plan_range_reads(chunks, MAX_GAP, MAX_READ);
    let in_flight = repo
        .store()
        .capabilities()
        .concurrency
        .clamp(1, READS_IN_FLIGHT);
    let mut fetched = futures::stream::iter(reads)
        .map(|read| async move {
            let bytes = repo.fetch_range(&read).await;
            (read, bytes)
        })
        .buffered(in_flight);
    let mut entries = Vec::new();
    let mut open = PackBuilder::new(REPACK_SIZE)?;
    while let Some((read, bytes)) = fetched.next().await {
        let bytes = bytes?;
        for (i, (chunk, _)) in read.chunks.iter().enumerate() {
            let raw = read.chunk_bytes(&bytes, i).ok_or_else(|| RepoError::Corrupt {
                key: read.pack.key(),
                reason: format!(
                    "chunk {chunk} lies outside the bytes read for it: the index and the pack disagree"
                ),
            })?;
            open.push(*chunk, raw)?;
            if open.is_full() {
                let full = std::mem::replace(&mut open, PackBuilder::new(REPACK_SIZE)?);
                entries.extend(store(repo, full, held).await?);
            }
        }
    }
    if !open.is_empty() {
        entries.extend(store(repo, open, held).await?);
    }
    tracing::info!(
        "repacked {} chunks of {} sparse packs",
        entries.len(),
        sparse.len()
    );
    Ok(entries)
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
