//! Storage packs of a backup (docs/design/packs.md, items 3 and 6): in a repository that
//! [writes packs](lifeboat_repo::Repository::writes_packs), each new encoded chunk is appended to
//! an open pack; a full pack is sealed and uploaded while the next one fills, and indexes name
//! the stored packs before the manifest is written. Order: packs → index naming them → manifest.
//!
//! A "storage pack" here is many chunks in one stored object; not to be confused with
//! [`Item::Pack`](super::chunks::Item::Pack), small files packed into one chunk.

use std::sync::Arc;
use std::sync::Mutex;

use lifeboat_repo::Repository;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{IndexEntry, PackBuilder, SealedPack};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{EngineError, Result};

pub use lifeboat_repo::pack::PACK_SIZE;
/// Sealed packs uploading at once, at most (fewer when the store's concurrency is lower): an
/// 8 MiB PUT moves enough bytes that a few in flight keep the link busy, and each one is held in
/// memory until it is stored.
pub const PACK_UPLOADS: usize = 4;
/// Packs after which a checkpoint index is written during the backup, so that an interrupted
/// backup's packs are found (and their chunks known) by the next one.
pub const CHECKPOINT_PACKS: usize = 64;

/// Appends a backup's new chunks to packs and stores them.
///
/// Memory: the open pack plus at most `uploads` sealed packs being stored, each about
/// `pack_size` (plus one chunk and its trailer): `pack_size × (uploads + 1)`, by default
/// 8 MiB × 5. A pack fills while others upload; when the open pack is full and every upload slot
/// is taken, chunks wait (and with them the copy pipeline) until an upload finishes.
pub struct PackWriter {
    repo: Repository,
    pack_size: usize,
    checkpoint_packs: usize,
    open: tokio::sync::Mutex<PackBuilder>,
    uploads: Arc<Semaphore>,
    done: Mutex<Progress>,
}

/// What the writer has stored so far.
#[derive(Debug, Default)]
struct Progress {
    /// Entries of stored packs that no index names yet.
    unindexed: Vec<IndexEntry>,
    unindexed_packs: usize,
    packs: u64,
    pack_bytes: u64,
    chunks: u64,
    indexes: Vec<String>,
}

/// What a backup's packs came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackSummary {
    pub packs: u64,
    /// Bytes of the stored packs (chunks, trailers and footers), without the indexes.
    pub pack_bytes: u64,
    pub chunks: u64,
    /// The indexes written, in order: checkpoints, then the last one.
    pub indexes: Vec<String>,
}

impl PackWriter {
    /// A writer with the default pack size and checkpoint interval, uploading at most
    /// `min(concurrency, PACK_UPLOADS)` packs at once.
    pub fn new(repo: &Repository, concurrency: usize) -> Result<Self> {
        Self::with_sizes(
            repo,
            PACK_SIZE,
            concurrency.clamp(1, PACK_UPLOADS),
            CHECKPOINT_PACKS,
        )
    }

    pub fn with_sizes(
        repo: &Repository,
        pack_size: usize,
        uploads: usize,
        checkpoint_packs: usize,
    ) -> Result<Self> {
        Ok(PackWriter {
            repo: repo.clone(),
            pack_size,
            checkpoint_packs: checkpoint_packs.max(1),
            open: tokio::sync::Mutex::new(PackBuilder::new(pack_size)?),
            uploads: Arc::new(Semaphore::new(uploads.max(1))),
            done: Mutex::new(Progress::default()),
        })
    }

    /// Append one encoded chunk; when that fills the open pack, store it (the caller waits for
    /// that upload, while other callers fill the next pack).
    pub async fn add(&self, chunk: ChunkId, encoded: &[u8]) -> Result<()> {
        let (full, permit) = {
            let mut open = self.open.lock().await;
            open.push(chunk, encoded)?;
            if !open.is_full() {
                return Ok(());
            }
            // Wait for an upload slot while holding the full pack: other chunks wait on the lock,
            // so no more than `uploads` sealed packs and this one are ever in memory.
            let permit = self.upload_slot().await?;
            let next = PackBuilder::new(self.pack_size)?;
            (std::mem::replace(&mut *open, next), permit)
        };
        self.store(full, permit).await
    }

    /// Store the last, partly filled pack and an index of every stored pack no checkpoint named.
    /// Call once every [`add`](Self::add) has returned; afterwards every chunk added is in a
    /// stored pack named by a stored index.
    pub async fn finish(&self) -> Result<PackSummary> {
        let last = {
            let mut open = self.open.lock().await;
            if open.is_empty() {
                None
            } else {
                let next = PackBuilder::new(self.pack_size)?;
                Some(std::mem::replace(&mut *open, next))
            }
        };
        if let Some(last) = last {
            let permit = self.upload_slot().await?;
            self.store(last, permit).await?;
        }
        if let Some(entries) = self.take_unindexed(true)? {
            self.write_index(&entries).await?;
        }
        let done = self.progress()?;
        Ok(PackSummary {
            packs: done.packs,
            pack_bytes: done.pack_bytes,
            chunks: done.chunks,
            indexes: done.indexes.clone(),
        })
    }

    async fn upload_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.uploads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| EngineError::Internal(format!("pack upload pool closed: {e}")))
    }

    /// Seal and store one pack, then record its entries; every `checkpoint_packs` stored packs,
    /// write an index of them. The upload slot is held until both are stored.
    async fn store(&self, pack: PackBuilder, _slot: OwnedSemaphorePermit) -> Result<()> {
        let sealed: SealedPack = pack.seal(&self.repo)?;
        let bytes = self.repo.put_pack(&sealed).await?;
        {
            let mut done = self.progress()?;
            done.packs += 1;
            done.pack_bytes += bytes;
            done.chunks += sealed.entries.len() as u64;
            done.unindexed_packs += 1;
            done.unindexed.extend(sealed.entries);
        }
        if let Some(entries) = self.take_unindexed(false)? {
            self.write_index(&entries).await?;
        }
        Ok(())
    }

    /// The entries to index now: all of them when `all`, else those of a full checkpoint.
    fn take_unindexed(&self, all: bool) -> Result<Option<Vec<IndexEntry>>> {
        let mut done = self.progress()?;
        if done.unindexed.is_empty() || !(all || done.unindexed_packs >= self.checkpoint_packs) {
            return Ok(None);
        }
        done.unindexed_packs = 0;
        Ok(Some(std::mem::take(&mut done.unindexed)))
    }

    /// Store an index of `entries` (packs already stored): each index names its own packs only,
    /// so a backup's indexes never repeat an entry.
    async fn write_index(&self, entries: &[IndexEntry]) -> Result<()> {
        let key = self.repo.put_index(entries).await?;
        tracing::debug!("backup: index {key} names {} chunks", entries.len());
        self.progress()?.indexes.push(key);
        Ok(())
    }

    fn progress(&self) -> Result<std::sync::MutexGuard<'_, Progress>> {
        self.done.lock().map_err(|_| {
            EngineError::Internal(
                "a thread failed while recording stored packs; run the backup again".into(),
            )
        })
    }
}
