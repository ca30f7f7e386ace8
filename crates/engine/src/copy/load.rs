//! What `copy` reads before planning: the source's indexes (which chunks each pack holds), the
//! target's indexes and loose chunks (which chunks it holds), the manifests of both, and the
//! packs an interrupted copy left in the target without an index (indexed at once).

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::pack::{IndexEntry, PackId};
use lifeboat_repo::{RepoError, Repository, keys};
use lifeboat_storage::ObjectMeta;

use super::{Damaged, Run};
use crate::Result;

impl Run<'_> {
    /// Each source pack a readable index names, with its chunks; and whether an index
    /// vanished while being read (a source `expire` consolidating them: read again).
    pub(super) async fn source_packs(
        &mut self,
        listing: &[ObjectMeta],
        concurrency: usize,
    ) -> Result<(HashMap<PackId, Vec<IndexEntry>>, bool)> {
        let source = self.source;
        let index_keys: Vec<&str> = listing
            .iter()
            .filter(|m| keys::parse_index_key(&m.key).is_some())
            .map(|m| m.key.as_str())
            .collect();
        let mut reads = futures::stream::iter(index_keys)
            .map(|key| async move { (key, source.read_index(key).await) })
            .buffer_unordered(concurrency);
        let mut packs: HashMap<PackId, HashMap<ChunkId, IndexEntry>> = HashMap::new();
        let mut vanished = false;
        while let Some((key, result)) = reads.next().await {
            match result {
                Ok(entries) => {
                    for e in entries {
                        packs
                            .entry(e.location.pack)
                            .or_default()
                            .entry(e.chunk)
                            .or_insert(e);
                    }
                }
                Err(e) if e.is_not_found() => vanished = true,
                Err(RepoError::Corrupt { reason, .. }) => {
                    if !self.report.damaged.iter().any(|d| d.key == key) {
                        tracing::error!("source index {key} is damaged ({reason})");
                        self.report.damaged.push(Damaged {
                            key: key.to_string(),
                            reason,
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let packs = packs
            .into_iter()
            .map(|(pack, entries)| (pack, entries.into_values().collect()))
            .collect();
        Ok((packs, vanished))
    }

    /// Fill `target_chunks` from the target's indexes (entries naming a listed pack) and its
    /// loose chunks; the packs its readable indexes name.
    pub(super) async fn target_chunks(
        &mut self,
        listing: &[ObjectMeta],
        concurrency: usize,
    ) -> Result<HashSet<PackId>> {
        let target = self.target;
        let listed: HashSet<PackId> = listing
            .iter()
            .filter_map(|m| PackId::from_key(&m.key))
            .collect();
        let index_keys: Vec<&str> = listing
            .iter()
            .filter(|m| keys::parse_index_key(&m.key).is_some())
            .map(|m| m.key.as_str())
            .collect();
        let mut reads = futures::stream::iter(index_keys)
            .map(|key| async move { (key, target.read_index(key).await) })
            .buffer_unordered(concurrency);
        let mut indexed = HashSet::new();
        while let Some((key, result)) = reads.next().await {
            match result {
                Ok(entries) => {
                    for e in entries {
                        if listed.contains(&e.location.pack) {
                            self.target_chunks.insert(e.chunk);
                            indexed.insert(e.location.pack);
                        }
                    }
                }
                Err(RepoError::Corrupt { reason, .. }) => {
                    let w = format!(
                        "index {key} in the copy is damaged ({reason}): the chunks it locates are copied again; run `lifeboat verify` on the copy"
                    );
                    tracing::warn!("{w}");
                    self.report.warnings.push(w);
                }
                Err(e) => return Err(e.into()),
            }
        }
        for m in listing {
            if let Some(id) = ChunkId::from_key(&m.key) {
                self.target_chunks.insert(id);
            }
        }
        Ok(indexed)
    }

    /// Index the packs an interrupted copy stored in the target without an index (read from
    /// their own trailers), so that their chunks are not copied again.
    pub(super) async fn index_leftovers(
        &mut self,
        target_listing: &[ObjectMeta],
        source_packs: &HashMap<PackId, Vec<IndexEntry>>,
        indexed: &HashSet<PackId>,
    ) -> Result<()> {
        let mut entries = Vec::new();
        for m in target_listing {
            let Some(pack) = PackId::from_key(&m.key) else {
                continue;
            };
            if indexed.contains(&pack) || !source_packs.contains_key(&pack) {
                continue;
            }
            match self.target.read_pack_trailer(pack).await {
                Ok(found) => entries.extend(found),
                Err(RepoError::Corrupt { reason, .. }) => {
                    let w = format!(
                        "pack {} in the copy is unreadable ({reason}); left for the copy's expire",
                        m.key
                    );
                    tracing::warn!("{w}");
                    self.report.warnings.push(w);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.write_index(entries).await
    }

    /// The readable manifests of `repo` named in `listing`, oldest first. A damaged one is
    /// reported (as damage in the source, as a warning in the target); one gone meanwhile is
    /// left out.
    pub(super) async fn manifests(
        &mut self,
        repo: &Repository,
        listing: &[ObjectMeta],
        is_source: bool,
    ) -> Result<Vec<Manifest>> {
        let labels: Vec<String> = listing
            .iter()
            .filter(|m| lifeboat_storage::validate_key(&m.key).is_ok())
            .filter_map(|m| keys::parse_manifest_key(&m.key))
            .collect();
        let mut reads = futures::stream::iter(labels)
            .map(|label| async move {
                let manifest = repo.manifest(&label).await;
                (label, manifest)
            })
            .buffer_unordered(self.concurrency());
        let mut out = Vec::new();
        while let Some((label, result)) = reads.next().await {
            match result {
                Ok(m) => out.push(m),
                Err(e) if e.is_not_found() => {}
                Err(RepoError::Corrupt { key, reason }) if is_source => {
                    tracing::error!("source manifest {key} is damaged ({reason})");
                    self.report.damaged.push(Damaged { key, reason });
                    self.report.backups_not_copied.push(super::NotCopied {
                        label,
                        reason: "its manifest in the source is damaged".into(),
                    });
                }
                Err(RepoError::Corrupt { key, reason }) => {
                    self.report.warnings.push(format!(
                        "manifest {key} in the copy is damaged ({reason}); run `lifeboat verify` on the copy"
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| {
            (a.stop_lsn, &a.stop_time, &a.label).cmp(&(b.stop_lsn, &b.stop_time, &b.label))
        });
        Ok(out)
    }
}
