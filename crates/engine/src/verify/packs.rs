//! The packs behind the chunks (docs/design/packs.md): one listing of `packs/` and one pass over
//! the readable indexes, to find where each chunk can really be read (an index entry whose pack
//! is gone does not count when the chunk lies elsewhere), the packs an index names that are gone,
//! and the packs no index names.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{ChunkLocation, PackId};
use lifeboat_repo::stored::{ChunkPlace, StoredChunks};
use lifeboat_repo::{RepoError, Repository};

use crate::Result;

/// What the listing of `packs/` and the indexes say about the packs.
#[derive(Debug, Default)]
pub(super) struct PackView {
    /// Every pack listed, with its stored size.
    pub(super) sizes: HashMap<PackId, u64>,
    /// Packs a readable index names that are not stored.
    pub(super) lost: BTreeMap<PackId, LostPack>,
    /// Packs listed that no readable index names, with their size.
    pub(super) unindexed: Vec<(PackId, u64)>,
    /// For chunks the merged index places in a lost pack: a location in a stored pack that
    /// another index gives.
    elsewhere: HashMap<ChunkId, ChunkLocation>,
}

/// A pack indexes name and the store does not hold.
#[derive(Debug, Default)]
pub(super) struct LostPack {
    /// The indexes naming it.
    pub(super) indexes: BTreeSet<String>,
    /// The chunks they place in it.
    pub(super) chunks: HashSet<ChunkId>,
}

/// Where a chunk can be read, or why it cannot.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resolved {
    At(ChunkPlace),
    /// Its only index entries name this pack, which is gone.
    InLostPack(PackId),
    /// In no index and no loose key.
    Missing,
}

impl PackView {
    /// Where `id` can be read: its packed location if the pack is stored, else another index's
    /// location in a stored pack, else its loose key.
    pub(super) fn resolve(&self, stored: &StoredChunks, id: &ChunkId) -> Resolved {
        let loose = stored
            .loose
            .get(id)
            .map(|&size| Resolved::At(ChunkPlace::Loose { size }));
        match stored.packed.locate(id) {
            Some(loc) if self.sizes.contains_key(&loc.pack) => {
                Resolved::At(ChunkPlace::Packed(loc))
            }
            Some(loc) => self
                .elsewhere
                .get(id)
                .map(|alt| Resolved::At(ChunkPlace::Packed(*alt)))
                .or(loose)
                .unwrap_or(Resolved::InLostPack(loc.pack)),
            None => loose.unwrap_or(Resolved::Missing),
        }
    }

    /// Where `id` can be read, if it can.
    pub(super) fn place(&self, stored: &StoredChunks, id: &ChunkId) -> Option<ChunkPlace> {
        match self.resolve(stored, id) {
            Resolved::At(place) => Some(place),
            _ => None,
        }
    }
}

/// List `packs/` once and read the readable indexes of `stored` again, entry by entry (the
/// merged index keeps one location per chunk; this pass sees every entry).
pub(super) async fn survey(repo: &Repository, stored: &StoredChunks) -> Result<PackView> {
    let sizes = repo.list_packs().await?;
    let mut view = PackView {
        sizes,
        ..PackView::default()
    };
    let unreadable: HashSet<&str> = stored
        .unreadable_indexes
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    let readable: Vec<String> = stored
        .index_keys
        .iter()
        .filter(|k| !unreadable.contains(k.as_str()))
        .cloned()
        .collect();
    let mut reads = futures::stream::iter(readable)
        .map(|key| async move {
            let entries = repo.read_index(&key).await;
            (key, entries)
        })
        .buffer_unordered(repo.store().capabilities().concurrency.max(1));
    let mut named: HashSet<PackId> = HashSet::new();
    while let Some((key, entries)) = reads.next().await {
        let entries = match entries {
            Ok(entries) => entries,
            // Replaced since it was read first (expire consolidates indexes): what it named is
            // in the index that replaced it, which the first reading saw or the pack listing
            // will show unindexed.
            Err(e) if e.is_not_found() => continue,
            // Read intact a moment ago: damaged since, a finding on the next run.
            Err(RepoError::Corrupt { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let pack = e.location.pack;
            named.insert(pack);
            if !view.sizes.contains_key(&pack) {
                let lost = view.lost.entry(pack).or_default();
                lost.indexes.insert(key.clone());
                lost.chunks.insert(e.chunk);
            } else if stored
                .packed
                .locate(&e.chunk)
                .is_some_and(|first| !view.sizes.contains_key(&first.pack))
            {
                view.elsewhere.entry(e.chunk).or_insert(e.location);
            }
        }
    }
    let mut unindexed: Vec<(PackId, u64)> = view
        .sizes
        .iter()
        .filter(|(id, _)| !named.contains(id))
        .map(|(id, size)| (*id, *size))
        .collect();
    unindexed.sort();
    view.unindexed = unindexed;
    Ok(view)
}
