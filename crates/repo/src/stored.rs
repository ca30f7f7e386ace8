//! Where the repository keeps each chunk: in a pack (found through the indexes) or as a loose
//! `data/` object (every version 1 repository, and chunks written before `lifeboat upgrade`).
//! Every reader of chunks (backup's dedup, restore, verify, expire) asks this module, so that
//! the two layouts are one set of chunks to them. Lookup order: indexes first, then loose keys
//! (docs/design/packs.md).

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use crate::backup::ChunkId;
use crate::pack::{ChunkIndex, ChunkLocation, PackId};
use crate::{RepoError, Repository, Result, keys};

/// Which chunks a caller needs to know about.
#[derive(Debug, Clone, Copy)]
pub enum ChunkScope<'a> {
    /// Every chunk, loose ones listed whatever the indexes hold (verify, expire). `expected` is
    /// the caller's estimate of the loose chunks' number, as for
    /// [`Repository::list_chunks`].
    All { expected: usize },
    /// Only these: loose chunks are listed only when some of them is in no index, so a
    /// repository of packs costs no listing of `data/` at all (backup, restore). `packs/` is
    /// listed, and an index entry whose pack is not there does not count: a backup stores such
    /// a chunk again and a restore refuses before writing, instead of failing half-way.
    Wanted(&'a HashSet<ChunkId>),
}

/// Where one chunk lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPlace {
    /// A whole `data/<hh>/<id>` object of this stored size.
    Loose {
        size: u64,
    },
    Packed(ChunkLocation),
}

/// The chunks a repository holds, by place.
#[derive(Debug, Default, Clone)]
pub struct StoredChunks {
    pub packed: ChunkIndex,
    /// Loose chunks listed (all of them for [`ChunkScope::All`], else only when needed).
    pub loose: HashMap<ChunkId, u64>,
    /// Index objects that could not be read (key, problem): their chunks count as absent unless
    /// another index or a loose key holds them, and the caller says so when it matters.
    pub unreadable_indexes: Vec<(String, String)>,
    /// The index objects read.
    pub index_keys: Vec<String>,
}

impl StoredChunks {
    /// Where `chunk` lies: its packed location first, then its loose key.
    pub fn locate(&self, chunk: &ChunkId) -> Option<ChunkPlace> {
        if let Some(location) = self.packed.locate(chunk) {
            return Some(ChunkPlace::Packed(location));
        }
        self.loose
            .get(chunk)
            .map(|&size| ChunkPlace::Loose { size })
    }

    pub fn contains(&self, chunk: &ChunkId) -> bool {
        self.locate(chunk).is_some()
    }
}

impl Repository {
    /// Load the indexes and, as `scope` asks, list the loose chunks.
    ///
    /// An `expire` may replace indexes and packs meanwhile (readers take no lock): an index gone
    /// between its listing and its read, or a wanted chunk placed only in packs that were not
    /// listed, makes the indexes and packs be read once more.
    pub async fn stored_chunks(&self, scope: ChunkScope<'_>) -> Result<StoredChunks> {
        let mut again = false;
        let mut stored = loop {
            let listed_packs = match scope {
                ChunkScope::All { .. } => None,
                ChunkScope::Wanted(_) => Some(self.list_packs().await?),
            };
            match self.read_all_indexes(listed_packs.as_ref()).await {
                Err(e) if e.is_not_found() && !again => {}
                Err(e) => return Err(e),
                Ok((stored, dropped)) => {
                    let short = match scope {
                        ChunkScope::Wanted(wanted) => wanted.iter().any(|c| dropped.contains(c)),
                        ChunkScope::All { .. } => false,
                    };
                    if !short || again {
                        break stored;
                    }
                }
            }
            tracing::debug!("indexes or packs changed while they were read: reading them again");
            again = true;
        };
        let loose_expected = match scope {
            ChunkScope::All { expected } => Some(expected),
            ChunkScope::Wanted(wanted) => {
                let unplaced = wanted
                    .iter()
                    .filter(|c| stored.packed.locate(c).is_none())
                    .count();
                (unplaced > 0).then_some(unplaced)
            }
        };
        if let Some(expected) = loose_expected {
            stored.loose = self.list_chunks(expected).await?.into_iter().collect();
        }
        Ok(stored)
    }

    /// Every index object, read as many at a time as the store's request concurrency; an index
    /// that is damaged is set aside (named in `unreadable_indexes`), one the store fails to
    /// deliver fails the call. With `listed_packs`, entries naming other packs are left out;
    /// the chunks they named come back too.
    async fn read_all_indexes(
        &self,
        listed_packs: Option<&HashMap<PackId, u64>>,
    ) -> Result<(StoredChunks, HashSet<ChunkId>)> {
        let mut index_keys: Vec<String> = self
            .store()
            .list(keys::INDEX_PREFIX)
            .await?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| keys::parse_index_key(k).is_some())
            .collect();
        index_keys.sort();
        let mut reads = futures::stream::iter(index_keys.clone())
            .map(|key| async move {
                let entries = self.read_index(&key).await;
                (key, entries)
            })
            .buffered(self.store().capabilities().concurrency.max(1));
        let mut stored = StoredChunks {
            index_keys,
            ..Default::default()
        };
        let mut dropped = HashSet::new();
        while let Some((key, entries)) = reads.next().await {
            match entries {
                Ok(entries) => match listed_packs {
                    Some(listed) => {
                        let (kept, unlisted): (Vec<_>, Vec<_>) = entries
                            .into_iter()
                            .partition(|e| listed.contains_key(&e.location.pack));
                        dropped.extend(unlisted.into_iter().map(|e| e.chunk));
                        stored.packed.extend(kept);
                    }
                    None => stored.packed.extend(entries),
                },
                Err(RepoError::Corrupt { reason, .. }) => {
                    tracing::warn!("index {key} is unreadable and ignored: {reason}");
                    stored.unreadable_indexes.push((key, reason));
                }
                Err(e) => return Err(e),
            }
        }
        dropped.retain(|c| stored.packed.locate(c).is_none());
        Ok((stored, dropped))
    }

    /// The packs stored, with their sizes: one listing of `packs/` (keys that are not pack keys
    /// are left out: nothing else under `packs/` is ours to judge).
    pub async fn list_packs(&self) -> Result<HashMap<PackId, u64>> {
        Ok(self
            .store()
            .list(keys::PACK_PREFIX)
            .await?
            .into_iter()
            .filter_map(|m| PackId::from_key(&m.key).map(|id| (id, m.size)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackBuilder;

    fn id(n: u8) -> ChunkId {
        ChunkId(crate::codec::ContentHash([n; 32]))
    }

    #[tokio::test]
    async fn packed_chunks_are_found_before_loose_ones_and_wanted_scope_skips_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::test_repository(dir.path(), Some("pw")).await;
        let mut pack = PackBuilder::new(1 << 20).unwrap();
        let (_, encoded) = repo.encode("x", b"packed").unwrap();
        pack.push(id(1), &encoded).unwrap();
        let sealed = pack.seal(&repo).unwrap();
        repo.put_pack(&sealed).await.unwrap();
        repo.put_index(&sealed.entries).await.unwrap();
        repo.store()
            .put(
                &id(2).key(),
                bytes::Bytes::from_static(b"loose"),
                lifeboat_storage::PutMode::Create,
            )
            .await
            .unwrap();

        let only_packed: HashSet<ChunkId> = [id(1)].into();
        let stored = repo
            .stored_chunks(ChunkScope::Wanted(&only_packed))
            .await
            .unwrap();
        assert!(matches!(stored.locate(&id(1)), Some(ChunkPlace::Packed(_))));
        assert!(
            stored.loose.is_empty(),
            "no listing when the indexes hold all"
        );

        let both: HashSet<ChunkId> = [id(1), id(2), id(3)].into();
        let stored = repo.stored_chunks(ChunkScope::Wanted(&both)).await.unwrap();
        assert_eq!(stored.locate(&id(2)), Some(ChunkPlace::Loose { size: 5 }));
        assert!(!stored.contains(&id(3)));

        let all = repo
            .stored_chunks(ChunkScope::All { expected: 2 })
            .await
            .unwrap();
        assert_eq!(all.packed.len(), 1);
        assert_eq!(all.loose.len(), 1);
        assert_eq!(all.index_keys.len(), 1);

        // A pack that is gone: what a backup or restore wants is not located in it any more;
        // verify (All) still sees the entry, to report the pack.
        repo.store().delete(&sealed.id.key()).await.unwrap();
        let stored = repo
            .stored_chunks(ChunkScope::Wanted(&only_packed))
            .await
            .unwrap();
        assert!(!stored.contains(&id(1)));
        let all = repo
            .stored_chunks(ChunkScope::All { expected: 2 })
            .await
            .unwrap();
        assert!(all.contains(&id(1)));
    }

    #[tokio::test]
    async fn a_damaged_index_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::test_repository(dir.path(), None).await;
        let key = keys::index(&"ab".repeat(16));
        repo.store()
            .put(
                &key,
                bytes::Bytes::from_static(b"not an index"),
                lifeboat_storage::PutMode::Create,
            )
            .await
            .unwrap();
        let stored = repo
            .stored_chunks(ChunkScope::All { expected: 0 })
            .await
            .unwrap();
        assert_eq!(stored.unreadable_indexes.len(), 1);
        assert_eq!(stored.unreadable_indexes[0].0, key);
    }
}
