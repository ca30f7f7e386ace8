//! Expire's part for packs (docs/design/packs.md, item 7): which packs no kept backup needs, which
//! are mostly dead and get repacked, the consolidated index that replaces the old ones, and the
//! order of writes and deletes that keeps every live chunk locatable through some stored index
//! wherever the run stops:
//!
//! 0. the live chunks of sparse packs copied, as they are, into new packs (no index names those
//!    yet: a stop here leaves them to the next run, as an interrupted backup's);
//! 1. one consolidated index: the entries of the packs kept as they are and of the new packs
//!    (duplicates of entries in the old indexes are harmless: same chunk, same content);
//! 2. the old index objects (from here on no index names a dead or repacked pack);
//! 3. the dead and the repacked packs.
//!
//! A pack is dead when no chunk a kept manifest references is located in it by the indexes, which
//! includes a pack no index names at all (an interrupted backup's: no backup runs meanwhile, every
//! lock kind excluding every other). A live pack is sparse, and repacked, when its live chunks
//! are less than half its bytes. If any index cannot be read, no pack is provably dead and this
//! step does nothing.

use std::collections::{HashMap, HashSet};

use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{ChunkLocation, IndexEntry, PackId};
use lifeboat_repo::stored::StoredChunks;
use lifeboat_repo::{RepoError, Repository};
use serde::Serialize;

use super::repack::{self, Repacked, Sparse};
use crate::Result;

/// More index objects than this are consolidated into one even when no pack dies, so that the
/// readers (restore, backup's dedup) load few objects.
pub const MAX_INDEXES: usize = 16;

/// What expire did (or would do) to packs and indexes.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PackRemoval {
    /// Packs deleted: none of their chunks is referenced by a kept backup.
    pub count: u64,
    pub bytes: u64,
    /// Of those, packs in which no index locates any chunk (an interrupted backup's).
    pub unindexed: u64,
    /// Packs that stay as they are: at least half of their bytes are live chunks.
    pub remaining: u64,
    pub remaining_bytes: u64,
    /// Packs less than half of whose bytes are live chunks: their live chunks are copied, as
    /// they are, into new packs, then they are deleted.
    pub repacked: u64,
    pub repacked_bytes: u64,
    /// Bytes of live chunks copied into new packs (counted out of `bytes_freed`).
    pub copied_bytes: u64,
    /// Index objects replaced by one consolidated index (0: the indexes were left as they are).
    pub indexes_replaced: u64,
    /// Why packs and indexes were left untouched this time, if they were.
    pub skipped: Option<String>,
}

/// What the packs step will do: inputs kept so that it can be decided again with more
/// references (a manifest that appeared during the run).
#[derive(Debug, Clone)]
pub struct PackPlan {
    stored: StoredChunks,
    /// Every pack key listed under `packs/`, with its stored size.
    listed: Vec<(String, u64)>,
    /// Keys of the dead packs, sorted.
    pub dead: Vec<String>,
    /// Packs to repack, with the live chunks to copy out of them.
    pub repack: Vec<Sparse>,
    /// The consolidated index's entries (packs kept as they are, sorted), when the indexes are
    /// replaced; the repacked chunks' new entries join them.
    pub consolidated: Option<Vec<IndexEntry>>,
    pub removal: PackRemoval,
}

/// One step of carrying out a [`PackPlan`], in [`PackPlan::operations`] order.
#[derive(Debug, Clone)]
pub enum PackOp {
    WriteIndex(Vec<IndexEntry>),
    DeleteIndex(String),
    DeletePack(String),
}

impl PackPlan {
    /// List `packs/` and decide, from the indexes in `stored` (loaded for `referenced` with
    /// [`ChunkScope::Wanted`](lifeboat_repo::stored::ChunkScope), so that every chunk is located
    /// in a stored pack), which packs `referenced` keeps.
    pub async fn new(
        repo: &Repository,
        stored: StoredChunks,
        referenced: &HashSet<ChunkId>,
    ) -> Result<Self> {
        let mut listed: Vec<(String, u64)> = repo
            .list_packs()
            .await?
            .into_iter()
            .map(|(id, size)| (id.key(), size))
            .collect();
        listed.sort();
        Ok(Self::decide(stored, listed, referenced))
    }

    /// The plan for `referenced`, from the same indexes and listing.
    pub fn decide(
        stored: StoredChunks,
        listed: Vec<(String, u64)>,
        referenced: &HashSet<ChunkId>,
    ) -> Self {
        let mut removal = PackRemoval::default();
        if !stored.unreadable_indexes.is_empty() {
            let names: Vec<String> = stored
                .unreadable_indexes
                .iter()
                .map(|(key, why)| format!("{key} ({why})"))
                .collect();
            removal.skipped = Some(format!(
                "{} unreadable: no pack was deleted and the indexes were left as they are, because \
                 a pack is provably unneeded only when every index is read; run `lifeboat verify` \
                 to see which backups it affects, and put the index back from a copy of the \
                 repository if you have one (until then expire keeps every pack; backups, WAL and \
                 loose chunks expire as usual)",
                if names.len() == 1 {
                    format!("index {} is", names[0])
                } else {
                    format!("indexes {} are", names.join(", "))
                }
            ));
            removal.remaining = listed.len() as u64;
            removal.remaining_bytes = listed.iter().map(|p| p.1).sum();
            return PackPlan {
                stored,
                listed,
                dead: Vec::new(),
                repack: Vec::new(),
                consolidated: None,
                removal,
            };
        }
        // The live chunks of each pack, located as every reader locates them.
        let mut live: HashMap<PackId, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
        for c in referenced {
            if let Some(loc) = stored.packed.locate(c) {
                live.entry(loc.pack).or_default().push((*c, loc));
            }
        }
        let indexed: HashSet<PackId> = stored.packed.entries().map(|e| e.location.pack).collect();
        let mut dead = Vec::new();
        let mut repack = Vec::new();
        for (key, size) in &listed {
            let Some(id) = PackId::from_key(key) else {
                continue;
            };
            match live.remove(&id) {
                Some(mut chunks) => {
                    let live_bytes: u64 = chunks.iter().map(|(_, l)| u64::from(l.length)).sum();
                    if live_bytes * 2 >= *size {
                        removal.remaining += 1;
                        removal.remaining_bytes += size;
                        // Back in the map: its entries go into the consolidated index as they are.
                        live.insert(id, chunks);
                    } else {
                        removal.repacked += 1;
                        removal.repacked_bytes += size;
                        removal.copied_bytes += live_bytes;
                        chunks.sort_by_key(|(_, l)| l.offset);
                        repack.push(Sparse {
                            key: key.clone(),
                            size: *size,
                            live: chunks,
                        });
                    }
                }
                None => {
                    removal.count += 1;
                    removal.bytes += size;
                    removal.unindexed += u64::from(!indexed.contains(&id));
                    dead.push(key.clone());
                }
            }
        }
        // `live` now holds the packs kept as they are. `stored` locates chunks in stored packs
        // only, so entries naming a pack that is gone are not carried over: the chunk is then
        // in no index and verify reports it as missing.
        let consolidate =
            !dead.is_empty() || !repack.is_empty() || stored.index_keys.len() > MAX_INDEXES;
        let consolidated = consolidate.then(|| {
            let mut entries: Vec<IndexEntry> = stored
                .packed
                .entries()
                .filter(|e| live.contains_key(&e.location.pack))
                .collect();
            entries.sort_by_key(|e| (e.location.pack, e.location.offset));
            entries
        });
        if consolidated.is_some() {
            removal.indexes_replaced = stored.index_keys.len() as u64;
        }
        PackPlan {
            stored,
            listed,
            dead,
            repack,
            consolidated,
            removal,
        }
    }

    /// The same plan with `more` chunks kept as well.
    pub fn keeping(self, more: impl IntoIterator<Item = ChunkId>) -> Self {
        // A pack stays live when any chunk located in it is kept, so the chunks of the packs kept
        // as they are, and the live chunks of the sparse ones, stand for the references planned
        // with.
        let gone: HashSet<&str> = self
            .dead
            .iter()
            .chain(self.repack.iter().map(|r| &r.key))
            .map(String::as_str)
            .collect();
        let mut referenced: HashSet<ChunkId> = self
            .stored
            .packed
            .entries()
            .filter(|e| !gone.contains(e.location.pack.key().as_str()))
            .map(|e| e.chunk)
            .collect();
        referenced.extend(
            self.repack
                .iter()
                .flat_map(|r| r.live.iter().map(|(c, _)| *c)),
        );
        referenced.extend(more);
        Self::decide(self.stored, self.listed, &referenced)
    }

    /// The writes and deletes that follow the repacking (`repacked`), in the order that keeps
    /// every live chunk located by a stored index wherever it stops: the consolidated index, the
    /// old indexes, the dead and repacked packs. A sparse pack that could not be read stays, and
    /// so do its entries.
    pub fn operations(&self, repacked: &Repacked) -> Vec<PackOp> {
        let mut ops = Vec::new();
        if let Some(entries) = &self.consolidated {
            let mut all = entries.clone();
            all.extend_from_slice(&repacked.entries);
            if !repacked.unreadable.is_empty() {
                all.extend(
                    self.stored
                        .packed
                        .entries()
                        .filter(|e| repacked.kept(&e.location.pack.key())),
                );
            }
            // No live pack: the old indexes only name dead ones and need no successor.
            if !all.is_empty() {
                ops.push(PackOp::WriteIndex(all));
            }
            ops.extend(
                self.stored
                    .index_keys
                    .iter()
                    .map(|k| PackOp::DeleteIndex(k.clone())),
            );
        }
        ops.extend(
            self.dead
                .iter()
                .chain(
                    self.repack
                        .iter()
                        .map(|r| &r.key)
                        .filter(|k| !repacked.kept(k)),
                )
                .map(|k| PackOp::DeletePack(k.clone())),
        );
        ops
    }
}

/// Carry out `plan`: deletes of one kind go in batches (any order among them is as safe), each
/// kind only after the one before it is complete. A sparse pack that could not be read is kept:
/// `plan.removal` is corrected and a warning returned for each.
pub async fn execute<F, Fut>(
    repo: &Repository,
    plan: &mut PackPlan,
    held: &F,
) -> Result<Vec<String>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    // 0. The live chunks of sparse packs into new packs, which no index names yet: a stop here
    //    leaves them for the next run to delete as unindexed.
    let repacked = repack::repack(repo, &plan.repack, held).await?;
    let mut warnings = Vec::new();
    for (key, why) in &repacked.unreadable {
        if let Some(s) = plan.repack.iter().find(|s| &s.key == key) {
            let r = &mut plan.removal;
            r.repacked -= 1;
            r.repacked_bytes -= s.size;
            r.copied_bytes -= s.live.iter().map(|(_, l)| u64::from(l.length)).sum::<u64>();
            r.remaining += 1;
            r.remaining_bytes += s.size;
        }
        warnings.push(format!(
            "{key} was to be repacked but its chunks could not be read ({why}): it stays as it \
             is; run `lifeboat verify` to see which backups it affects"
        ));
    }
    let ops = plan.operations(&repacked);
    for group in ops.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b)) {
        let keys: Vec<String> = group
            .iter()
            .filter_map(|op| match op {
                PackOp::DeleteIndex(k) | PackOp::DeletePack(k) => Some(k.clone()),
                PackOp::WriteIndex(_) => None,
            })
            .collect();
        if keys.is_empty() {
            for op in group {
                held().await?;
                apply(repo, op).await?;
            }
        } else {
            super::delete_all(repo, &keys, held).await?;
        }
    }
    if let Some(entries) = &plan.consolidated {
        tracing::info!(
            "replaced {} index objects with one of {} entries; deleted {} unneeded packs; repacked {}",
            plan.removal.indexes_replaced,
            entries.len() + repacked.entries.len(),
            plan.removal.count,
            plan.removal.repacked
        );
    } else if plan.removal.count > 0 {
        tracing::info!("deleted {} unneeded packs", plan.removal.count);
    }
    Ok(warnings)
}

/// Carry out one operation (the crash tests stop between any two).
pub async fn apply(repo: &Repository, op: &PackOp) -> Result<()> {
    match op {
        PackOp::WriteIndex(entries) => {
            let key = repo.put_index(entries).await?;
            tracing::debug!("wrote consolidated index {key}");
        }
        PackOp::DeleteIndex(key) | PackOp::DeletePack(key) => {
            repo.store().delete(key).await.map_err(RepoError::from)?
        }
    }
    Ok(())
}
