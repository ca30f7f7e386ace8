//! `copy`: bring a second repository up to date with this one, so that backups survive the
//! loss of their store (docs/FORMAT.md, "Copies").
//!
//! Objects travel as stored (same data key on both sides: the target is created from the
//! source's `lifeboat.json`), each verified on the way ([`transfer`]). What travels is decided
//! by [`plan`] from one listing of each side and the indexes and manifests of both; it is written
//! in an order that keeps the target a valid repository at every moment: `cluster.json`, WAL
//! (history, segments, streamed pieces), loose chunks, packs, the index naming them, then each
//! backup's manifest (oldest first) once everything it needs is in the target, then each dump's
//! manifest the same way ([`dumps`]). The
//! target is locked (`copy`) so that no `expire` runs there meanwhile; the source is not locked,
//! and objects that vanish from it are skipped for this run.

mod dumps;
pub mod plan;
mod report;
pub mod target;
mod transfer;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::lock::{LockKind, RepoLock};
use lifeboat_repo::pack::IndexEntry;
use lifeboat_repo::{Passphrase, RepoError, Repository, keys};
use lifeboat_storage::{ObjectMeta, Store};

pub use report::{Copied, CopyEvent, CopyReport, Counts, Damaged, Lag, NotCopied};

use crate::Result;
use plan::{Plan, PlanInput};
use transfer::{Check, Fetched};

/// Receives progress events.
pub type Events = Arc<dyn Fn(CopyEvent) + Send + Sync>;

/// Packs are held whole (about 8 MiB, plus a chunk's plaintext while checking): at most this
/// many at once, whatever the store's concurrency.
const MAX_PACKS_IN_FLIGHT: usize = 8;
/// WAL segments (up to 16 MiB and their plaintext) fetched ahead of the one being written.
const MAX_WAL_AHEAD: usize = 4;
/// An index is written after this many copied packs (a killed run's packs are then found
/// indexed by the next one; those it missed are indexed at its start).
const PACKS_PER_INDEX: usize = 64;

/// Copy `source` to the repository at `target_store`, opened with `passphrase`.
pub async fn copy(
    source: &Repository,
    target_store: Arc<dyn Store>,
    passphrase: Option<&Passphrase>,
    events: Events,
) -> Result<CopyReport> {
    let began = Instant::now();
    let target = target::open(source, target_store, passphrase).await?;
    let mut lock = RepoLock::acquire(&target.repo, LockKind::Copy).await?;
    let mut run = Run {
        source,
        target: &target.repo,
        lock: &lock,
        events,
        report: CopyReport {
            source: source.location(),
            target: target.repo.location(),
            target_created: target.created,
            ..CopyReport::default()
        },
        target_chunks: HashSet::new(),
        target_segments: HashSet::new(),
        damaged_chunks: HashMap::new(),
        vanished_chunks: HashSet::new(),
    };
    let result = run.run().await;
    let mut report = std::mem::take(&mut run.report);
    drop(run);
    lock.release().await;
    result?;
    report.duration_seconds = began.elapsed().as_secs_f64();
    report.ok = report.damaged.is_empty();
    Ok(report)
}

/// Why a backup cannot be copied yet.
struct Missing {
    what: String,
    /// Damage in the source (as opposed to something that vanished during the run).
    damaged: bool,
    /// An object the source lacks (rather than one found damaged), to report as damaged.
    absent: Option<String>,
}

struct Run<'a> {
    source: &'a Repository,
    target: &'a Repository,
    lock: &'a RepoLock,
    events: Events,
    report: CopyReport,
    /// Chunks the target holds (located by its indexes, or loose), growing as packs land.
    target_chunks: HashSet<ChunkId>,
    /// WAL segments the target holds, growing as they land.
    target_segments: HashSet<WalSegmentName>,
    /// Chunks of damaged source objects, and the damaged object's key.
    damaged_chunks: HashMap<ChunkId, String>,
    vanished_chunks: HashSet<ChunkId>,
}

impl Run<'_> {
    async fn run(&mut self) -> Result<()> {
        let concurrency = self.concurrency();
        let mut source_listing = self
            .source
            .store()
            .list("")
            .await
            .map_err(RepoError::from)?;
        let target_listing = self
            .target
            .store()
            .list("")
            .await
            .map_err(RepoError::from)?;
        let mut source_packs = self.source_packs(&source_listing, concurrency).await?;
        // Packs expire wrote under new names while the indexes were read.
        if source_packs.1 {
            source_listing = self
                .source
                .store()
                .list("")
                .await
                .map_err(RepoError::from)?;
            source_packs = self.source_packs(&source_listing, concurrency).await?;
        }
        let source_packs = source_packs.0;
        let indexed = self.target_chunks(&target_listing, concurrency).await?;
        self.index_leftovers(&target_listing, &source_packs, &indexed)
            .await?;
        for m in &target_listing {
            if let Some(WalFileName::Segment(s)) = keys::parse_wal_key(&m.key) {
                self.target_segments.insert(s);
            }
        }
        let source_backups = self.manifests(self.source, &source_listing, true).await?;
        let target_backups = self.manifests(self.target, &target_listing, false).await?;
        // A manifest damaged in the source that the copy already holds stays reported as
        // damage, but that backup is not missing from the copy.
        self.report.backups_not_copied.retain(|b| {
            !target_listing
                .iter()
                .any(|m| m.key == keys::manifest(&b.label))
        });
        let source_dumps = self
            .dump_manifests(&source_listing, &target_listing)
            .await?;
        let mut input = PlanInput {
            source_listing,
            target_listing,
            source_packs,
            target_chunks: std::mem::take(&mut self.target_chunks),
            source_backups,
            target_backups,
            source_dumps,
        };
        let plan = plan::plan(&input);
        self.target_chunks = std::mem::take(&mut input.target_chunks);
        self.report.skipped = Counts {
            objects: plan.skipped_objects,
            bytes: plan.skipped_bytes,
        };
        self.report.copied.wal_below_copy_start = plan.wal_below_boundary;
        self.report.backups_older_than_copy = plan.older_than_target.clone();
        self.report.dumps_older_than_copy = plan.dumps_older_than_target.clone();
        (self.events)(CopyEvent::Planned {
            bytes: plan.bytes(),
        });
        self.execute(&plan, &input, concurrency).await?;
        self.lag(&input, &plan);
        Ok(())
    }

    fn concurrency(&self) -> usize {
        self.source
            .store()
            .capabilities()
            .concurrency
            .min(self.target.store().capabilities().concurrency)
            .max(1)
    }

    async fn execute(&mut self, plan: &Plan, input: &PlanInput, concurrency: usize) -> Result<()> {
        let mut ordered: Vec<ObjectMeta> = plan.identity.iter().cloned().collect();
        ordered.extend(plan.wal.iter().cloned());
        let wal_count = ordered.len();
        ordered.extend(plan.stream.iter().cloned());
        let done = self
            .copy_in_order(&ordered, concurrency.min(MAX_WAL_AHEAD))
            .await?;
        for (i, m) in ordered.iter().enumerate() {
            if !done.contains(&m.key) {
                continue;
            }
            if i < wal_count {
                if m.key != keys::IDENTITY {
                    self.report.copied.wal_files += 1;
                }
                if let Some(WalFileName::Segment(s)) = keys::parse_wal_key(&m.key) {
                    self.target_segments.insert(s);
                }
            } else {
                self.report.copied.stream_pieces += 1;
            }
        }
        self.copy_loose_chunks(plan, concurrency).await?;
        self.copy_packs(plan, input, concurrency).await?;
        let by_label: HashMap<&str, &Manifest> = input
            .source_backups
            .iter()
            .map(|m| (m.label.as_str(), m))
            .collect();
        let seg_size = match self.source.identity().await? {
            Some(identity) => identity.wal_segment_size,
            None => 0,
        };
        for label in &plan.backups {
            if let Some(manifest) = by_label.get(label.as_str()) {
                self.copy_backup(manifest, seg_size).await?;
            }
        }
        self.copy_dumps(plan, input).await
    }

    /// Copy `objects` one after another in this order (WAL: a kill leaves no hole behind the
    /// last copied file), fetching and checking up to `ahead` at once; the keys written.
    async fn copy_in_order(
        &mut self,
        objects: &[ObjectMeta],
        ahead: usize,
    ) -> Result<HashSet<String>> {
        let source = self.source;
        let mut fetched = futures::stream::iter(objects.iter())
            .map(|m| async move { (m, transfer::fetch(source, &m.key, Check::Object).await) })
            .buffered(ahead.max(1));
        let mut done = HashSet::new();
        while let Some((m, result)) = fetched.next().await {
            if let Some(bytes) = self.outcome(&m.key, result?, &[]) {
                transfer::put(self.target, &m.key, bytes).await?;
                self.count(m.size);
                done.insert(m.key.clone());
            }
            (self.events)(CopyEvent::Done { bytes: m.size });
        }
        Ok(done)
    }

    /// Record a damaged or vanished object (and the chunks it holds); the bytes of a sound one.
    fn outcome(&mut self, key: &str, fetched: Fetched, chunks: &[ChunkId]) -> Option<bytes::Bytes> {
        match fetched {
            Fetched::Sound(bytes, _) => Some(bytes),
            Fetched::Damaged(reason) => {
                tracing::error!("{key} in the source is damaged ({reason}): not copied");
                for c in chunks {
                    self.damaged_chunks.insert(*c, key.to_string());
                }
                self.report.damaged.push(Damaged {
                    key: key.to_string(),
                    reason,
                });
                None
            }
            Fetched::Vanished => {
                tracing::warn!("{key} vanished from the source during the copy: skipped");
                self.vanished_chunks.extend(chunks.iter().copied());
                self.report.vanished.push(key.to_string());
                None
            }
        }
    }

    fn count(&mut self, bytes: u64) {
        self.report.copied.objects += 1;
        self.report.copied.bytes += bytes;
    }

    async fn copy_loose_chunks(&mut self, plan: &Plan, concurrency: usize) -> Result<()> {
        let (source, target) = (self.source, self.target);
        let mut results = futures::stream::iter(plan.loose_chunks.iter())
            .map(|(id, m)| async move {
                let fetched = transfer::fetch(source, &m.key, Check::Chunk(*id)).await?;
                if let Fetched::Sound(bytes, _) = &fetched {
                    transfer::put(target, &m.key, bytes.clone()).await?;
                }
                Ok::<_, crate::EngineError>((id, m, fetched))
            })
            .buffer_unordered(concurrency);
        while let Some(result) = results.next().await {
            let (id, m, fetched) = result?;
            if self.outcome(&m.key, fetched, &[*id]).is_some() {
                self.count(m.size);
                self.report.copied.loose_chunks += 1;
                self.target_chunks.insert(*id);
            }
            (self.events)(CopyEvent::Done { bytes: m.size });
        }
        Ok(())
    }

    /// Copy the planned packs, a few at a time, writing an index of those stored after every
    /// [`PACKS_PER_INDEX`] and at the end: a pack's chunks count as in the target only once an
    /// index names it.
    async fn copy_packs(
        &mut self,
        plan: &Plan,
        input: &PlanInput,
        concurrency: usize,
    ) -> Result<()> {
        let (source, target) = (self.source, self.target);
        let mut results = futures::stream::iter(plan.packs.iter())
            .map(|(pack, m)| async move {
                let fetched = transfer::fetch(source, &m.key, Check::Pack(*pack)).await?;
                if let Fetched::Sound(bytes, _) = &fetched {
                    transfer::put(target, &m.key, bytes.clone()).await?;
                }
                Ok::<_, crate::EngineError>((pack, m, fetched))
            })
            .buffer_unordered(concurrency.min(MAX_PACKS_IN_FLIGHT));
        let mut pending: Vec<IndexEntry> = Vec::new();
        let mut pending_packs = 0;
        while let Some(result) = results.next().await {
            let (pack, m, fetched) = result?;
            let listed: Vec<ChunkId> = input
                .source_packs
                .get(pack)
                .map(|v| v.iter().map(|e| e.chunk).collect())
                .unwrap_or_default();
            let entries = match &fetched {
                Fetched::Sound(_, entries) => entries.clone(),
                _ => Vec::new(),
            };
            if self.outcome(&m.key, fetched, &listed).is_some() {
                self.count(m.size);
                self.report.copied.packs += 1;
                pending.extend(entries);
                pending_packs += 1;
                if pending_packs >= PACKS_PER_INDEX {
                    self.write_index(std::mem::take(&mut pending)).await?;
                    pending_packs = 0;
                }
            }
            (self.events)(CopyEvent::Done { bytes: m.size });
        }
        self.write_index(pending).await
    }

    async fn write_index(&mut self, entries: Vec<IndexEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.lock.check_held().await?;
        self.target.put_index(&entries).await?;
        self.report.copied.indexes += 1;
        self.report.copied.objects += 1;
        self.target_chunks.extend(entries.iter().map(|e| e.chunk));
        Ok(())
    }

    /// Write a backup's manifest once every chunk and WAL segment it needs is in the target;
    /// otherwise say why not.
    async fn copy_backup(&mut self, manifest: &Manifest, seg_size: u64) -> Result<()> {
        let label = manifest.label.clone();
        if let Some(missing) = self.missing_for(manifest, seg_size) {
            let not_copied = self.not_copied("backup", &label, missing);
            self.report.backups_not_copied.push(not_copied);
            return Ok(());
        }
        let key = keys::manifest(&label);
        let fetched = transfer::fetch(self.source, &key, Check::Manifest(label.clone())).await?;
        let Some(bytes) = self.outcome(&key, fetched, &[]) else {
            self.report.backups_not_copied.push(NotCopied {
                label,
                reason: format!("its manifest {key} could not be copied (see damaged/vanished)"),
            });
            return Ok(());
        };
        let size = bytes.len() as u64;
        self.lock.check_held().await?;
        transfer::put(self.target, &key, bytes).await?;
        self.count(size);
        self.report.copied.manifests += 1;
        self.report.backups_copied.push(label);
        Ok(())
    }

    /// Log and record why `what` (`backup` or `dump`) `label` is not copied; an object the
    /// source should hold and does not is reported as damage (exit 6).
    fn not_copied(&mut self, what: &str, label: &str, missing: Missing) -> NotCopied {
        let Missing {
            what: why,
            damaged,
            absent,
        } = missing;
        if damaged {
            tracing::error!("{what} {label} not copied: {why}");
        } else {
            tracing::warn!("{what} {label} not copied this run: {why}");
            self.report
                .warnings
                .push(format!("{what} {label} not copied this run: {why}"));
        }
        if let Some(key) = absent
            && !self.report.damaged.iter().any(|d| d.key == key)
        {
            self.report.damaged.push(Damaged {
                key,
                reason: format!("missing from the source, needed by {what} {label}"),
            });
        }
        NotCopied {
            label: label.to_string(),
            reason: why,
        }
    }

    /// Why `manifest` cannot be written to the target yet, if it cannot.
    fn missing_for(&self, manifest: &Manifest, seg_size: u64) -> Option<Missing> {
        if let Some(missing) = self.missing_chunks(manifest.chunks()) {
            return Some(missing);
        }
        if seg_size == 0 {
            return Some(Missing {
                what: "the source holds no cluster.json".into(),
                damaged: true,
                absent: Some(keys::IDENTITY.into()),
            });
        }
        let mut segment = manifest.start_wal;
        loop {
            if !self.target_segments.contains(&segment) {
                let key = keys::wal(&WalFileName::Segment(segment));
                let vanished = self.report.vanished.contains(&key);
                let damaged = self.report.damaged.iter().any(|d| d.key == key);
                return Some(Missing {
                    what: format!("WAL segment {segment} it needs did not reach the copy"),
                    damaged: !vanished,
                    absent: (!vanished && !damaged).then_some(key),
                });
            }
            if segment >= manifest.stop_wal {
                return None;
            }
            match segment.next(seg_size) {
                Ok(next) => segment = next,
                Err(e) => {
                    return Some(Missing {
                        what: e.to_string(),
                        damaged: true,
                        absent: None,
                    });
                }
            }
        }
    }

    /// Which of `chunks` the target does not hold yet, and why, if any.
    fn missing_chunks(&self, chunks: impl Iterator<Item = ChunkId>) -> Option<Missing> {
        let mut missing: Vec<ChunkId> =
            chunks.filter(|c| !self.target_chunks.contains(c)).collect();
        missing.sort_by_key(|c| c.0.0);
        missing.dedup();
        if let Some(first) = missing.first() {
            let count = missing.len();
            let damaged = missing.iter().find_map(|c| self.damaged_chunks.get(c));
            Some(match damaged {
                Some(key) => Missing {
                    what: format!("{count} chunk(s) it needs are in damaged source object {key}"),
                    damaged: true,
                    absent: None,
                },
                None if missing.iter().all(|c| self.vanished_chunks.contains(c)) => Missing {
                    what: format!(
                        "{count} chunk(s) it needs vanished from the source during the copy (a source expire repacked them?); the next copy takes them"
                    ),
                    damaged: false,
                    absent: None,
                },
                None => Missing {
                    what: format!(
                        "{count} chunk(s) it needs (e.g. {first}) are nowhere in the source"
                    ),
                    damaged: true,
                    absent: Some(first.key()),
                },
            })
        } else {
            None
        }
    }

    fn lag(&mut self, input: &PlanInput, plan: &Plan) {
        let newest = |listing: &[ObjectMeta]| {
            listing
                .iter()
                .filter_map(|m| match keys::parse_wal_key(&m.key) {
                    Some(WalFileName::Segment(s)) => Some(s),
                    _ => None,
                })
                .max()
        };
        let copied: HashSet<&str> = self
            .report
            .backups_copied
            .iter()
            .map(String::as_str)
            .collect();
        let not_copied: Vec<String> = plan
            .backups
            .iter()
            .filter(|l| !copied.contains(l.as_str()))
            .cloned()
            .collect();
        let dumps_copied: HashSet<&str> = self
            .report
            .dumps_copied
            .iter()
            .map(String::as_str)
            .collect();
        let dumps_not_copied: Vec<String> = plan
            .dumps
            .iter()
            .filter(|l| !dumps_copied.contains(l.as_str()))
            .chain(self.report.dumps_not_copied.iter().map(|d| &d.label))
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        self.report.lag = Lag {
            backups: not_copied.len() as u64,
            backup_labels: not_copied,
            dumps: dumps_not_copied.len() as u64,
            dump_labels: dumps_not_copied,
            source_newest_wal: newest(&input.source_listing).map(|s| s.to_string()),
            copy_newest_wal: self.target_segments.iter().max().map(|s| s.to_string()),
            wal_files: (plan.wal.len() + plan.stream.len()) as u64
                - self.report.copied.wal_files
                - self.report.copied.stream_pieces,
        };
    }
}

mod load;
