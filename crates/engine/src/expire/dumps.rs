//! Dumps in `expire` (docs/FORMAT.md, "Dumps"): their manifests reference chunks, so the garbage
//! collection of steps 3 and 4 counts every kept dump's chunks as referenced; and the dump
//! retention (`lifeboat dump expire --keep-last N | --keep-days D`) deletes the manifests of the
//! dumps it does not keep, in step 1, after the expired backups' manifests. Without a dump
//! retention every dump is kept. An unreadable dump manifest stops the run: its chunks cannot be
//! told apart from garbage.

use std::collections::HashSet;

use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::dump::DumpManifest;
use lifeboat_repo::{RepoError, Repository, keys};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{EngineError, Result};

/// Which dumps to keep; with neither, only the newest (the policy must say something).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpRetention {
    pub keep_last: Option<u32>,
    pub keep_days: Option<u32>,
}

impl DumpRetention {
    pub(super) fn check(&self) -> Result<String> {
        let hint = "pass `lifeboat dump expire --keep-last N` and/or `--keep-days D`, or set `keep_last`/`keep_days` in the config file's `[dump]` section";
        match (self.keep_last, self.keep_days) {
            (None, None) => Err(EngineError::invalid(
                "no dump retention policy: refusing to guess which dumps to keep",
                hint,
            )),
            (Some(0), _) | (_, Some(0)) => Err(EngineError::invalid(
                "a retention of 0 dumps or 0 days keeps nothing (the newest dump is always kept)",
                hint,
            )),
            (Some(n), None) => Ok(format!("keep the newest {n} dumps")),
            (None, Some(d)) => Ok(format!("keep the dumps of the last {d} days")),
            (Some(n), Some(d)) => Ok(format!(
                "keep a dump if either rule keeps it: the newest {n}, or those of the last {d} days"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DumpFates {
    /// The dump retention in words; `None`: every dump is kept.
    pub policy: Option<String>,
    /// Newest last.
    pub kept: Vec<DumpFate>,
    /// Oldest first.
    pub expired: Vec<DumpFate>,
    /// Bytes of the expired dumps' manifests.
    pub manifest_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DumpFate {
    pub label: String,
    pub stop_time: String,
    /// Why it is kept; empty for an expired dump.
    pub reason: String,
}

pub(super) struct DumpPlan {
    pub(super) fates: DumpFates,
    /// Distinct chunks of the kept dumps.
    pub(super) referenced: HashSet<ChunkId>,
}

/// Which dumps stay. `manifests` oldest first (labels are UTC start times).
pub fn choose(
    manifests: &[DumpManifest],
    retention: DumpRetention,
    now: OffsetDateTime,
) -> Vec<Option<String>> {
    let n = manifests.len();
    let mut fate: Vec<Option<String>> = vec![None; n];
    if n == 0 {
        return fate;
    }
    fate[n - 1] = Some("the newest dump".into());
    if let Some(last) = retention.keep_last {
        let last = usize::try_from(last).unwrap_or(usize::MAX).min(n);
        for f in &mut fate[n - last..] {
            f.get_or_insert_with(|| format!("among the newest {last}"));
        }
    }
    if let Some(days) = retention.keep_days {
        let boundary = now - time::Duration::days(i64::from(days));
        for (f, m) in fate.iter_mut().zip(manifests) {
            if m.stop_time > boundary {
                f.get_or_insert_with(|| format!("ended within {days} days"));
            }
        }
    }
    fate
}

pub(super) async fn plan(repo: &Repository, retention: Option<DumpRetention>) -> Result<DumpPlan> {
    let policy = retention.map(|r| r.check()).transpose()?;
    let sizes = repo.dump_labels().await?;
    let manifests = repo.dump_manifests().await?;
    let fates = match retention {
        Some(r) => choose(&manifests, r, OffsetDateTime::now_utc()),
        None => vec![Some("no dump retention given".to_string()); manifests.len()],
    };
    let mut out = DumpFates {
        policy,
        ..Default::default()
    };
    let mut referenced = HashSet::new();
    for (m, fate) in manifests.iter().zip(fates) {
        let entry = |reason: String| DumpFate {
            label: m.label.clone(),
            stop_time: lifeboat_repo::timestamp::text(m.stop_time),
            reason,
        };
        match fate {
            Some(why) => {
                referenced.extend(m.chunks());
                out.kept.push(entry(why));
            }
            None => {
                out.manifest_bytes += sizes
                    .iter()
                    .find(|(l, _)| *l == m.label)
                    .map_or(0, |(_, s)| *s);
                out.expired.push(entry(String::new()));
            }
        }
    }
    Ok(DumpPlan {
        fates: out,
        referenced,
    })
}

/// Step 1 for dumps: the expired dumps' manifests, oldest first.
pub(super) async fn delete_expired(repo: &Repository, plan: &DumpPlan) -> Result<()> {
    for d in &plan.fates.expired {
        repo.store()
            .delete(&keys::dump_manifest(&d.label))
            .await
            .map_err(RepoError::from)?;
        tracing::info!("expired dump {} (ended {})", d.label, d.stop_time);
    }
    Ok(())
}

/// The chunks of dumps listed now that the plan did not keep (none should appear: a dump waits
/// for expire's lock), so that step 3 respects them all the same.
pub(super) async fn appeared(repo: &Repository, plan: &DumpPlan) -> Result<Vec<ChunkId>> {
    let kept: HashSet<&str> = plan.fates.kept.iter().map(|d| d.label.as_str()).collect();
    let mut extra = Vec::new();
    for (label, _) in repo.dump_labels().await? {
        if !kept.contains(label.as_str()) && !plan.fates.expired.iter().any(|d| d.label == label) {
            tracing::warn!("dump {label} appeared during expire: its chunks are kept");
            extra.extend(repo.dump_manifest(&label).await?.chunks());
        }
    }
    Ok(extra)
}
