//! Expire's part for packs (docs/design/packs.md, item 7): which packs no kept backup needs, the
//! consolidated index that replaces the old ones, and the order of writes and deletes that keeps
//! every live chunk locatable through some stored index wherever the run stops:
//!
//! 1. one consolidated index holding the entries of the live packs (duplicates of entries in the
//!    old indexes are harmless: same chunk, same place);
//! 2. the old index objects (from here on no index names a dead pack);
//! 3. the dead packs.
//!
//! A pack is dead when no chunk a kept manifest references is located in it by the indexes, which
//! includes a pack no index names at all (an interrupted backup's: no backup runs meanwhile, every
//! lock kind excluding every other). If any index cannot be read, no pack is provably dead and
//! this step does nothing. Partly live packs are kept whole (no repacking yet).

use std::collections::HashSet;

use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{IndexEntry, PackId};
use lifeboat_repo::stored::StoredChunks;
use lifeboat_repo::{RepoError, Repository, keys};
use serde::Serialize;

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
    /// Packs that stay, in whole (a pack with one live chunk is kept).
    pub remaining: u64,
    pub remaining_bytes: u64,
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
    /// The consolidated index's entries (live packs only, sorted), when the indexes are replaced.
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
    /// List `packs/` and decide, from the indexes in `stored`, which packs `referenced` keeps.
    pub async fn new(
        repo: &Repository,
        stored: StoredChunks,
        referenced: &HashSet<ChunkId>,
    ) -> Result<Self> {
        let mut listed: Vec<(String, u64)> = repo
            .store()
            .list(keys::PACK_PREFIX)
            .await
            .map_err(RepoError::from)?
            .into_iter()
            // Only pack keys: anything else under packs/ is not ours to judge.
            .filter(|o| PackId::from_key(&o.key).is_some())
            .map(|o| (o.key, o.size))
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
                consolidated: None,
                removal,
            };
        }
        let live: HashSet<PackId> = referenced
            .iter()
            .filter_map(|c| stored.packed.locate(c))
            .map(|l| l.pack)
            .collect();
        let indexed: HashSet<PackId> = stored.packed.entries().map(|e| e.location.pack).collect();
        let mut dead = Vec::new();
        for (key, size) in &listed {
            let Some(id) = PackId::from_key(key) else {
                continue;
            };
            if live.contains(&id) {
                removal.remaining += 1;
                removal.remaining_bytes += size;
            } else {
                removal.count += 1;
                removal.bytes += size;
                removal.unindexed += u64::from(!indexed.contains(&id));
                dead.push(key.clone());
            }
        }
        let consolidated = (!dead.is_empty() || stored.index_keys.len() > MAX_INDEXES).then(|| {
            let mut entries: Vec<IndexEntry> = stored
                .packed
                .entries()
                .filter(|e| live.contains(&e.location.pack))
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
            consolidated,
            removal,
        }
    }

    /// The same plan with `more` chunks kept as well.
    pub fn keeping(self, more: impl IntoIterator<Item = ChunkId>) -> Self {
        // A pack stays live when any chunk located in it is kept, so the chunks of the live packs
        // stand for the references planned with.
        let dead: HashSet<&str> = self.dead.iter().map(String::as_str).collect();
        let mut referenced: HashSet<ChunkId> = self
            .stored
            .packed
            .entries()
            .filter(|e| !dead.contains(e.location.pack.key().as_str()))
            .map(|e| e.chunk)
            .collect();
        referenced.extend(more);
        Self::decide(self.stored, self.listed, &referenced)
    }

    /// The writes and deletes, in the order that keeps every live chunk located by a stored index
    /// wherever it stops: the consolidated index, the old indexes, the dead packs.
    pub fn operations(&self) -> Vec<PackOp> {
        let mut ops = Vec::new();
        if let Some(entries) = &self.consolidated {
            // No live pack: the old indexes only name dead ones and need no successor.
            if !entries.is_empty() {
                ops.push(PackOp::WriteIndex(entries.clone()));
            }
            ops.extend(
                self.stored
                    .index_keys
                    .iter()
                    .map(|k| PackOp::DeleteIndex(k.clone())),
            );
        }
        ops.extend(self.dead.iter().map(|k| PackOp::DeletePack(k.clone())));
        ops
    }
}

/// Carry out `plan`: deletes of one kind go in batches (any order among them is as safe), each
/// kind only after the one before it is complete.
pub async fn execute<F, Fut>(repo: &Repository, plan: &PackPlan, held: &F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let ops = plan.operations();
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
            "replaced {} index objects with one of {} entries; deleted {} unneeded packs",
            plan.removal.indexes_replaced,
            entries.len(),
            plan.removal.count
        );
    } else if plan.removal.count > 0 {
        tracing::info!("deleted {} unneeded packs", plan.removal.count);
    }
    Ok(())
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
