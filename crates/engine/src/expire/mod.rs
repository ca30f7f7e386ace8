//! `expire`: keep what the retention policy says, delete the rest, in an order that a crash at any
//! moment cannot turn into a listed backup that does not restore.
//!
//! Order (docs/FORMAT.md, "Retention and garbage collection"), under the repository lock, so no
//! backup runs meanwhile:
//! 1. the manifests of the expired backups, oldest first: from then on they are not backups;
//! 2. WAL before the earliest start segment of the kept backups, oldest first (history files stay);
//! 3. loose chunks that no manifest still in the repository references;
//! 4. packs in which no such chunk lies, and packs less than half live once their live chunks
//!    are copied into new packs, after one consolidated index has replaced the old ones
//!    ([`packs`] says in which order and why).
//!
//! Each step deletes only what no backup still listed needs once the steps before it are done,
//! so stopping anywhere leaves every listed backup restorable; running `expire` again finishes
//! the job (steps 2 to 4 always run, whether or not a backup expires this time). Dump manifests
//! reference chunks too: [`dumps`] keeps theirs, and deletes expired dumps' manifests in step 1.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::lock::{LockKind, RepoLock};
use lifeboat_repo::stored::ChunkScope;
use lifeboat_repo::{RepoError, Repository, keys};
use serde::Serialize;
use time::OffsetDateTime;

use crate::list::Window;
use crate::{EngineError, Result};

pub mod dumps;
pub mod packs;
pub(crate) mod repack;

pub use dumps::{DumpFates, DumpRetention};
pub use packs::PackRemoval;

/// Deletes between two checks that the lock is still ours.
const DELETE_BATCH: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct ExpireOptions {
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    /// Keep what is needed to restore to any moment of the last D days.
    pub keep_days: Option<u32>,
    /// Report what would go; change nothing.
    pub dry_run: bool,
    /// Which dumps to keep (`dump expire`); `None`: all of them. Without a backup policy, every
    /// backup is kept and no WAL is deleted.
    pub dumps: Option<DumpRetention>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    pub dry_run: bool,
    pub policy: Policy,
    /// Newest last, with the reason each is kept.
    pub kept: Vec<BackupFate>,
    /// Oldest first.
    pub expired: Vec<BackupFate>,
    pub manifest_bytes: u64,
    pub wal: WalRemoval,
    /// Loose chunks (`data/` objects).
    pub chunks: ChunkRemoval,
    pub packs: PackRemoval,
    /// Dumps kept and expired; their chunks count as referenced.
    pub dumps: DumpFates,
    /// Every byte deleted (or, with `dry_run`, that would be).
    pub bytes_freed: u64,
    pub window_before: Window,
    pub window_after: Window,
    /// Things worth knowing that did not stop the run (e.g. a lock seen during a dry run).
    pub warnings: Vec<String>,
    pub duration_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_days: Option<u32>,
    /// The rule in words, as the report prints it.
    pub rule: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupFate {
    pub label: String,
    pub stop_time: String,
    pub stop_lsn: String,
    pub timeline: u32,
    /// Why it is kept; empty for an expired backup.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct WalRemoval {
    /// Complete segments.
    pub segments: u64,
    /// `.partial` and `.backup` files.
    pub other_files: u64,
    /// Pieces `wal-stream` stored of segments before the boundary (docs/FORMAT.md, "Streamed WAL").
    pub streamed_pieces: u64,
    pub bytes: u64,
    /// The first and last file deleted, by position (then timeline).
    pub first: Option<String>,
    pub last: Option<String>,
    /// WAL from this segment on is kept (the earliest start of a kept backup), on every timeline.
    pub kept_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChunkRemoval {
    pub count: u64,
    pub bytes: u64,
    /// Chunks still referenced, which stay.
    pub remaining: u64,
    pub remaining_bytes: u64,
}

pub async fn expire(repo: &Repository, opts: &ExpireOptions) -> Result<ExpireReport> {
    let started = Instant::now();
    let policy = check_policy(opts)?;
    if opts.dry_run {
        // A dry run writes nothing, not even a lock; it says when its plan may be moving.
        let now = OffsetDateTime::now_utc();
        let stale_after = lifeboat_repo::lock::LockSettings::default().stale_after;
        let warnings = repo
            .locks()
            .await?
            .into_iter()
            .filter_map(|l| match l.record {
                Ok(r) if r.stale_reason(now, stale_after).is_none() => Some(format!(
                    "the repository is locked ({}): a real run would be refused now",
                    r.describe(now)
                )),
                _ => None,
            })
            .collect();
        let plan = plan(repo, opts, policy).await?;
        return Ok(plan.into_report(true, warnings, started));
    }

    let mut lock = RepoLock::acquire(repo, LockKind::Expire)
        .await
        .map_err(EngineError::from)?;
    let result = match plan(repo, opts, policy).await {
        Ok(plan) => execute(repo, &lock, plan, started).await,
        Err(e) => Err(e),
    };
    lock.release().await;
    result
}

fn check_policy(opts: &ExpireOptions) -> Result<Policy> {
    let hint = "pass --keep-last N and/or --keep-days D, or set keep_last / keep_days in the \
                [retention] section of the config file";
    if opts.keep_last.is_none() && opts.keep_days.is_none() {
        if opts.dumps.is_some() {
            return Ok(Policy {
                keep_last: None,
                keep_days: None,
                rule: "keep every backup (a dump retention only)".into(),
            });
        }
        return Err(EngineError::invalid(
            "no retention policy: refusing to guess what to keep",
            hint,
        ));
    }
    if opts.keep_last == Some(0) || opts.keep_days == Some(0) {
        return Err(EngineError::invalid(
            "a retention of 0 backups or 0 days keeps nothing (the newest backup is always kept)",
            hint,
        ));
    }
    let rule = match (opts.keep_last, opts.keep_days) {
        (Some(1), None) => "keep the newest backup".to_string(),
        (Some(n), None) => format!("keep the newest {n} backups"),
        (None, Some(d)) => format!(
            "keep what restores to any moment of the last {d} days (the backups that ended \
             within them and the last one that ended before)"
        ),
        (Some(n), Some(d)) => format!(
            "keep a backup if either rule keeps it: the newest {n}, or what restores to any \
             moment of the last {d} days"
        ),
        (None, None) => String::new(),
    };
    Ok(Policy {
        keep_last: opts.keep_last,
        keep_days: opts.keep_days,
        rule,
    })
}

/// Which backups stay, and why. `manifests` is oldest first (by stop LSN, then stop time).
/// Returns one entry per manifest: `Some(reason)` to keep it, `None` to expire it.
pub fn choose(
    manifests: &[Manifest],
    keep_last: Option<u32>,
    keep_days: Option<u32>,
    now: OffsetDateTime,
) -> Vec<Option<String>> {
    let n = manifests.len();
    let mut fate: Vec<Option<String>> = vec![None; n];
    if n == 0 {
        return fate;
    }
    let mut keep = |i: usize, why: String| {
        if fate[i].is_none() {
            fate[i] = Some(why);
        }
    };
    keep(n - 1, "the newest backup".into());
    if let Some(last) = keep_last {
        let last = usize::try_from(last).unwrap_or(usize::MAX).min(n);
        for i in n - last..n {
            keep(i, format!("among the newest {last}"));
        }
    }
    if let Some(days) = keep_days {
        let boundary = now - time::Duration::days(i64::from(days));
        // Walking from the newest back: every backup that ended after the boundary, then the
        // first one that ended at or before it, which is what restores the boundary moment.
        for i in (0..n).rev() {
            if manifests[i].stop_time > boundary {
                keep(i, format!("ended within {days} days"));
            } else {
                keep(
                    i,
                    format!(
                        "the last to end before the {days}-day boundary: it restores to the start of that window"
                    ),
                );
                break;
            }
        }
    }
    fate
}

struct Plan {
    policy: Policy,
    kept: Vec<Manifest>,
    expired: Vec<Manifest>,
    kept_reasons: Vec<String>,
    manifest_sizes: BTreeMap<String, u64>,
    /// Oldest first.
    wal: Vec<(WalFileName, u64, u64)>,
    /// Streamed pieces of segments before the same boundary.
    stream_pieces: Vec<lifeboat_repo::wal::StreamPiece>,
    wal_kept_from: Option<String>,
    /// Chunk keys no kept manifest references, with their sizes.
    chunks: Vec<(String, u64)>,
    chunks_remaining: (u64, u64),
    /// `None` when there is no backup or dump to keep packs for.
    packs: Option<packs::PackPlan>,
    dumps: dumps::DumpPlan,
    window_before: Window,
    window_after: Window,
}

async fn plan(repo: &Repository, opts: &ExpireOptions, policy: Policy) -> Result<Plan> {
    let manifests = repo.manifests().await?;
    let backup_policy = opts.keep_last.is_some() || opts.keep_days.is_some();
    let fates = if backup_policy {
        let now = OffsetDateTime::now_utc();
        choose(&manifests, opts.keep_last, opts.keep_days, now)
    } else {
        vec![Some("no backup retention given".to_string()); manifests.len()]
    };
    let dump_plan = dumps::plan(repo, opts.dumps).await?;
    let mut kept = Vec::new();
    let mut kept_reasons = Vec::new();
    let mut expired = Vec::new();
    for (m, fate) in manifests.iter().zip(fates) {
        match fate {
            Some(why) => {
                kept.push(m.clone());
                kept_reasons.push(why);
            }
            None => expired.push(m.clone()),
        }
    }
    let manifest_sizes: BTreeMap<String, u64> = repo
        .store()
        .list(keys::BACKUP_PREFIX)
        .await
        .map_err(RepoError::from)?
        .into_iter()
        .filter_map(|o| keys::parse_manifest_key(&o.key).map(|label| (label, o.size)))
        .collect();

    let identity = repo.identity().await?;
    let listed_wal = repo.list_wal().await?;
    let mut wal = Vec::new();
    let mut stream_pieces = Vec::new();
    let mut wal_kept_from = None;
    let mut latest_wal = None;
    if let (Some(identity), false, true) = (identity, kept.is_empty(), backup_policy) {
        let seg_size = identity.wal_segment_size;
        // The earliest start among the kept backups (normally the oldest one's): no kept backup
        // reads WAL before its own start, on any timeline.
        let mut cutoff: Option<(u64, WalSegmentName)> = None;
        for m in &kept {
            let start = m.start_wal;
            let segno = start.segno(seg_size).map_err(|e| {
                EngineError::Internal(format!("backup {}: bad start_wal: {e}", m.label))
            })?;
            if cutoff.is_none_or(|(c, _)| segno < c) {
                cutoff = Some((segno, start));
            }
        }
        let max_timeline = kept.iter().map(|m| m.timeline).max();
        if let (Some((cutoff, cut_name)), Some(max_timeline)) = (cutoff, max_timeline) {
            wal_kept_from = Some(cut_name.to_string());
            for stored in &listed_wal {
                let Some(seg) = stored.name.segment() else {
                    continue; // timeline history files are always kept
                };
                let Ok(segno) = seg.segno(seg_size) else {
                    continue;
                };
                if seg.timeline <= max_timeline && segno < cutoff {
                    wal.push((stored.name, segno, stored.stored_size));
                }
            }
            wal.sort_by_key(|(name, segno, _)| (*segno, name.timeline(), name.to_string()));
            stream_pieces = repo
                .list_stream_pieces(None)
                .await?
                .into_iter()
                .filter(|p| {
                    p.segment.timeline <= max_timeline
                        && p.segment.segno(seg_size).is_ok_and(|n| n < cutoff)
                })
                .collect();
        }
        if let Some(newest) = kept.last() {
            latest_wal = Some(
                crate::list::contiguous_end(repo, &newest.stop_wal, seg_size)
                    .await?
                    .to_string(),
            );
        }
    }

    // Chunks: everything under data/ that no kept manifest names. With no backup at all there is
    // nothing to keep chunks for, but also nothing to expire: leave the chunks for the next
    // backup to reuse.
    let mut chunks = Vec::new();
    let mut chunks_remaining = (0, 0);
    let mut pack_plan = None;
    if !kept.is_empty() || !dump_plan.referenced.is_empty() {
        let mut referenced: HashSet<ChunkId> = kept.iter().flat_map(Manifest::chunks).collect();
        referenced.extend(dump_plan.referenced.iter().copied());
        // Located as a restore locates them: in stored packs only. An entry naming a pack that
        // is gone must not hide another entry of the same chunk (an index keeps a chunk's first
        // location), or the pack actually holding it would look dead.
        let mut stored = repo.stored_chunks(ChunkScope::Wanted(&referenced)).await?;
        // The loose chunks, all of them: `Wanted` listed them only if a referenced chunk is in no
        // stored pack (and then all of them).
        let listed = referenced.iter().any(|c| stored.packed.locate(c).is_none());
        let loose = if listed {
            std::mem::take(&mut stored.loose)
        } else {
            repo.list_chunks(referenced.len())
                .await?
                .into_iter()
                .collect()
        };
        // Only chunk keys are listed: anything else under data/ is not ours to judge.
        for (id, size) in loose {
            if referenced.contains(&id) {
                chunks_remaining.0 += 1;
                chunks_remaining.1 += size;
            } else {
                chunks.push((id.key(), size));
            }
        }
        chunks.sort();
        pack_plan = Some(packs::PackPlan::new(repo, stored, &referenced).await?);
    }

    let window = |ms: &[Manifest]| Window::of(ms, latest_wal.clone());
    Ok(Plan {
        policy,
        window_before: window(&manifests),
        window_after: window(&kept),
        kept,
        expired,
        kept_reasons,
        manifest_sizes,
        wal,
        stream_pieces,
        wal_kept_from,
        chunks,
        chunks_remaining,
        packs: pack_plan,
        dumps: dump_plan,
    })
}

impl Plan {
    fn into_report(
        self,
        dry_run: bool,
        mut warnings: Vec<String>,
        started: Instant,
    ) -> ExpireReport {
        let fate = |m: &Manifest, reason: String| BackupFate {
            label: m.label.clone(),
            stop_time: lifeboat_repo::timestamp::text(m.stop_time),
            stop_lsn: m.stop_lsn.to_string(),
            timeline: m.timeline.get(),
            reason,
        };
        let manifest_bytes: u64 = self
            .expired
            .iter()
            .filter_map(|m| self.manifest_sizes.get(&m.label))
            .sum();
        let mut wal = WalRemoval {
            kept_from: self.wal_kept_from.clone(),
            ..Default::default()
        };
        for (name, _, size) in &self.wal {
            match name {
                WalFileName::Segment(_) => wal.segments += 1,
                _ => wal.other_files += 1,
            }
            wal.bytes += size;
        }
        wal.streamed_pieces = self.stream_pieces.len() as u64;
        wal.bytes += self
            .stream_pieces
            .iter()
            .map(|p| p.stored_size)
            .sum::<u64>();
        wal.first = self.wal.first().map(|w| w.0.to_string());
        wal.last = self.wal.last().map(|w| w.0.to_string());
        let chunks = ChunkRemoval {
            count: self.chunks.len() as u64,
            bytes: self.chunks.iter().map(|c| c.1).sum(),
            remaining: self.chunks_remaining.0,
            remaining_bytes: self.chunks_remaining.1,
        };
        let packs = self.packs.map(|p| p.removal).unwrap_or_default();
        let dumps = self.dumps.fates;
        warnings.extend(packs.skipped.clone());
        ExpireReport {
            dry_run,
            policy: self.policy,
            kept: self
                .kept
                .iter()
                .zip(self.kept_reasons)
                .map(|(m, why)| fate(m, why))
                .collect(),
            expired: self
                .expired
                .iter()
                .map(|m| fate(m, String::new()))
                .collect(),
            manifest_bytes,
            bytes_freed: (manifest_bytes
                + dumps.manifest_bytes
                + wal.bytes
                + chunks.bytes
                + packs.bytes
                + packs.repacked_bytes)
                .saturating_sub(packs.copied_bytes),
            wal,
            chunks,
            packs,
            dumps,
            window_before: self.window_before,
            window_after: self.window_after,
            warnings,
            duration_seconds: started.elapsed().as_secs_f64(),
        }
    }
}

async fn execute(
    repo: &Repository,
    lock: &RepoLock,
    mut plan: Plan,
    started: Instant,
) -> Result<ExpireReport> {
    let held = || async { lock.check_held().await.map_err(EngineError::from) };

    // 1. Manifests, oldest first: each delete is the moment that backup stops existing. Nothing
    //    it needs is gone yet, so a crash here leaves it listed and still restorable.
    for m in &plan.expired {
        held().await?;
        repo.store()
            .delete(&keys::manifest(&m.label))
            .await
            .map_err(RepoError::from)?;
        tracing::info!(
            "expired backup {} (ended {})",
            m.label,
            lifeboat_repo::timestamp::text(m.stop_time)
        );
    }

    held().await?;
    dumps::delete_expired(repo, &plan.dumps).await?;

    // 2. WAL before every kept backup's start, oldest first, so that what remains after a crash
    //    is still one unbroken run.
    let wal_keys: Vec<String> = plan.wal.iter().map(|(n, _, _)| keys::wal(n)).collect();
    delete_all(repo, &wal_keys, &held).await?;
    let piece_keys: Vec<String> = plan.stream_pieces.iter().map(|p| p.key()).collect();
    delete_all(repo, &piece_keys, &held).await?;

    // 3. Chunks. The references are re-read from what is in the repository now, so that a
    //    manifest we did not plan with (there should be none: backups wait for our lock) is
    //    respected all the same.
    let kept_labels: HashSet<&str> = plan.kept.iter().map(|m| m.label.as_str()).collect();
    let mut extra = Vec::new();
    for label in repo.backup_listing().await?.0 {
        if !kept_labels.contains(label.as_str()) {
            tracing::warn!("backup {label} appeared during expire: its chunks are kept");
            extra.push(repo.manifest(&label).await?);
        }
    }
    let extra: Vec<ChunkId> = extra
        .iter()
        .flat_map(Manifest::chunks)
        .chain(dumps::appeared(repo, &plan.dumps).await?)
        .collect();
    if !extra.is_empty() {
        let also: HashSet<String> = extra.iter().map(|c| c.key()).collect();
        plan.chunks.retain(|(key, _)| !also.contains(key));
        plan.packs = plan.packs.map(|p| p.keeping(extra.iter().copied()));
    }
    let chunk_keys: Vec<String> = plan.chunks.iter().map(|(k, _)| k.clone()).collect();
    delete_all(repo, &chunk_keys, &held).await?;

    // 4. Packs: sparse ones repacked, a consolidated index, the old indexes, the dead packs.
    let mut warnings = Vec::new();
    if let Some(pack_plan) = plan.packs.as_mut() {
        if let Some(why) = &pack_plan.removal.skipped {
            tracing::warn!("{why}");
        }
        warnings = packs::execute(repo, pack_plan, &held).await?;
    }

    Ok(plan.into_report(false, warnings, started))
}

/// Delete `keys` in order, a batch at a time (each batch after a check that the lock is ours),
/// the store's request concurrency in flight within a batch.
async fn delete_all<F, Fut>(repo: &Repository, keys: &[String], held: &F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let in_flight = repo.store().capabilities().concurrency.max(1);
    for batch in keys.chunks(DELETE_BATCH) {
        held().await?;
        let mut deletes = futures::stream::iter(batch)
            .map(|key| async move { repo.store().delete(key).await })
            .buffered(in_flight);
        while let Some(result) = deletes.next().await {
            result.map_err(RepoError::from)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
