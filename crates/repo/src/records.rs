//! Operational records kept in the repository (docs/FORMAT.md, "Records"): job history, drill
//! results, alert state and repository size samples.
//!
//! They live beside the data they describe, so they survive a restart of the daemon and any host
//! that can open the repository can read them. Each is one encoded object (encrypted when the
//! repository is), rewritten whole with an atomic overwrite; a damaged record is reported and
//! replaced, never allowed to stop a backup. Nothing here is needed to restore.

use std::collections::BTreeMap;

use lifeboat_storage::PutMode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{RepoError, Repository, Result, keys};

/// Runs kept per job: enough for a dashboard's history, small enough to rewrite each time.
pub const JOB_RUNS_KEPT: usize = 100;
/// Drill records kept; older ones are deleted when a new one is written.
pub const DRILLS_KEPT: usize = 200;
/// Size samples kept (one a sampling interval; at one an hour, about two months).
pub const SIZE_SAMPLES_KEPT: usize = 1500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The daemon stopped it (shutdown) before it finished; nothing half-recorded.
    Interrupted,
}

/// One run of a scheduled (or on-demand) job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    /// The scheduled moment this run was for (RFC 3339), when it came from a schedule.
    pub scheduled_for: Option<String>,
    pub started: String,
    pub finished: String,
    pub duration_seconds: f64,
    pub outcome: Outcome,
    /// Why it failed or was interrupted: the command's own error and hint.
    pub message: Option<String>,
    /// The command's JSON summary (e.g. the backup's label and sizes), when it printed one.
    #[serde(default)]
    pub summary: Option<serde_json::Value>,
    /// The host that ran it.
    #[serde(default)]
    pub host: String,
    /// The command's exit code (docs/EXIT_CODES.md), when it exited by itself.
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// History of one job, e.g. `backup` or `drill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    pub job: String,
    pub last_success: Option<JobRun>,
    pub last_failure: Option<JobRun>,
    /// Newest last, at most [`JOB_RUNS_KEPT`].
    pub runs: Vec<JobRun>,
}

impl JobHistory {
    pub fn record(&mut self, run: JobRun) {
        match run.outcome {
            Outcome::Succeeded => self.last_success = Some(run.clone()),
            Outcome::Failed => self.last_failure = Some(run.clone()),
            Outcome::Interrupted => {}
        }
        self.runs.push(run);
        let excess = self.runs.len().saturating_sub(JOB_RUNS_KEPT);
        self.runs.drain(..excess);
    }

    pub fn last_run(&self) -> Option<&JobRun> {
        self.runs.last()
    }
}

/// One check of a drill: `pg_amcheck`, or one of the operator's queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillCheck {
    /// `pg_amcheck`, or the query text.
    pub name: String,
    pub passed: bool,
    /// What the query returned, or the tool's complaint.
    pub detail: String,
}

/// What a drill restored: a base backup (with WAL replay) or a logical dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillKind {
    /// A base backup restored into a scratch directory and recovered (records before dump
    /// drills existed have no `kind` and are these).
    #[default]
    Backup,
    /// A logical dump restored with `pg_restore` into a fresh scratch cluster.
    Dump,
}

/// The result of one restore drill (`lifeboat drill`, or the daemon's schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// `backup` or `dump`; absent in records written before dump drills (then `backup`).
    #[serde(default)]
    pub kind: DrillKind,
    /// Unique, sortable: `<start as YYYYMMDDTHHMMSSZ>-<random>`.
    pub id: String,
    pub host: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// RFC 3339, UTC, to the second (see [`crate::timestamp`]).
    #[serde(with = "crate::timestamp")]
    pub started: OffsetDateTime,
    #[serde(with = "crate::timestamp")]
    pub finished: OffsetDateTime,
    /// The backup restored, or for a dump drill the dump's label (None when none could be chosen).
    pub backup: Option<String>,
    /// Dump drills: the databases restored from the dump (empty for a backup drill).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// How the backup (or dump) was picked: `latest`, `random` or the label given.
    pub backup_choice: String,
    /// The recovery target: `latest` (end of the archive) or the target set, e.g. `lsn 0/5A000028`;
    /// `dump` for a dump drill (a dump has one point in time: its snapshot).
    pub target: String,
    pub passed: bool,
    /// The step that failed (`choose`, `restore`, `start`, `recover`, `amcheck`, `check`), if any.
    pub failed_step: Option<String>,
    /// Why it failed, in words an operator can act on.
    pub failure: Option<String>,
    /// Fetching and writing the backup; for a dump drill, fetching, verifying and `pg_restore` of
    /// every database restored.
    pub restore_seconds: Option<f64>,
    /// Starting PostgreSQL until recovery ended and it accepted connections.
    pub replay_seconds: Option<f64>,
    /// Restore plus replay: the recovery time an outage would have taken.
    pub recovery_seconds: Option<f64>,
    /// Commit time of the newest transaction the restored cluster holds (RFC 3339).
    pub newest_commit: Option<String>,
    /// How much was lost: the target (for `latest`, the moment the drill started) minus the
    /// newest commit reached; for a dump drill, the drill's start minus the oldest snapshot of the
    /// databases restored. None when it cannot be known.
    pub data_loss_seconds: Option<f64>,
    pub bytes_restored: u64,
    pub checks: Vec<DrillCheck>,
}

/// An alert that is firing: what is wrong since when, and when it was last sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    /// Stable key, e.g. `wal_archive_lag` or `job_failed:backup`.
    pub key: String,
    pub summary: String,
    pub detail: String,
    #[serde(with = "crate::timestamp")]
    pub since: OffsetDateTime,
    #[serde(default, with = "crate::timestamp::option")]
    pub last_notified: Option<OffsetDateTime>,
    pub notifications: u32,
}

/// What the daemon has alerted about: survives restarts, so a persisting problem is not announced
/// again by every start, and a problem fixed while the daemon was down still gets its "resolved".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub active: BTreeMap<String, ActiveAlert>,
    /// Messages sent, newest last (at most 100), for the dashboard.
    #[serde(default)]
    pub sent: Vec<SentAlert>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentAlert {
    #[serde(with = "crate::timestamp")]
    pub time: OffsetDateTime,
    pub key: String,
    /// `firing`, `resolved` or `test`.
    pub kind: String,
    pub summary: String,
    /// Channels that took it, and the ones that failed with why.
    pub delivered: Vec<String>,
    pub failed: Vec<String>,
}

/// The repository's total stored size at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SizeSample {
    /// Unix seconds.
    pub time: i64,
    pub bytes: u64,
}

impl Repository {
    async fn get_record<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_object(key).await {
            Ok((_, plain)) => {
                serde_json::from_slice(&plain)
                    .map(Some)
                    .map_err(|e| RepoError::Corrupt {
                        key: key.to_string(),
                        reason: format!("not a valid record: {e}"),
                    })
            }
            Err(RepoError::Storage(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_record<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let plain = serde_json::to_vec(value)
            .map_err(|e| RepoError::Invalid(format!("cannot serialise {key}: {e}")))?;
        self.put_object(key, &plain, PutMode::Overwrite).await?;
        Ok(())
    }

    pub async fn job_history(&self, job: &str) -> Result<Option<JobHistory>> {
        self.get_record(&keys::job_history(job)).await
    }

    pub async fn put_job_history(&self, history: &JobHistory) -> Result<()> {
        self.put_record(&keys::job_history(&history.job), history)
            .await
    }

    /// Every job's history, by job name.
    pub async fn job_histories(&self) -> Result<Vec<JobHistory>> {
        let mut out = Vec::new();
        for meta in self.store().list(keys::JOBS_PREFIX).await? {
            if let Some(job) = keys::parse_job_history_key(&meta.key)
                && let Some(history) = self.job_history(&job).await?
            {
                out.push(history);
            }
        }
        out.sort_by(|a, b| a.job.cmp(&b.job));
        Ok(out)
    }

    /// Store a drill's record and delete the oldest beyond [`DRILLS_KEPT`].
    pub async fn put_drill(&self, record: &DrillRecord) -> Result<()> {
        self.put_record(&keys::drill(&record.id), record).await?;
        let mut ids = self.drill_ids().await?;
        let excess = ids.len().saturating_sub(DRILLS_KEPT);
        for id in ids.drain(..excess) {
            self.store().delete(&keys::drill(&id)).await?;
        }
        Ok(())
    }

    /// Drill ids, oldest first.
    pub async fn drill_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .store()
            .list(keys::DRILLS_PREFIX)
            .await?
            .iter()
            .filter_map(|m| keys::parse_drill_key(&m.key))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The newest `limit` drills, newest first. Unreadable records are skipped with a warning.
    pub async fn recent_drills(&self, limit: usize) -> Result<Vec<DrillRecord>> {
        let ids = self.drill_ids().await?;
        let mut out = Vec::new();
        for id in ids.iter().rev().take(limit) {
            match self.get_record::<DrillRecord>(&keys::drill(id)).await {
                Ok(Some(record)) => out.push(record),
                Ok(None) => {}
                Err(RepoError::Corrupt { key, reason }) => {
                    tracing::warn!("drill record {key} is unreadable: {reason}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub async fn alert_state(&self) -> Result<AlertState> {
        Ok(self
            .get_record(keys::ALERT_STATE)
            .await?
            .unwrap_or_default())
    }

    pub async fn put_alert_state(&self, state: &AlertState) -> Result<()> {
        self.put_record(keys::ALERT_STATE, state).await
    }

    pub async fn size_history(&self) -> Result<Vec<SizeSample>> {
        Ok(self
            .get_record(keys::SIZE_HISTORY)
            .await?
            .unwrap_or_default())
    }

    /// Append a sample, keeping the newest [`SIZE_SAMPLES_KEPT`].
    pub async fn add_size_sample(&self, sample: SizeSample) -> Result<Vec<SizeSample>> {
        let mut samples = match self.size_history().await {
            Ok(s) => s,
            Err(RepoError::Corrupt { key, reason }) => {
                tracing::warn!("{key} is unreadable ({reason}); starting the size history anew");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        samples.push(sample);
        let excess = samples.len().saturating_sub(SIZE_SAMPLES_KEPT);
        samples.drain(..excess);
        self.put_record(keys::SIZE_HISTORY, &samples).await?;
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: Outcome, n: usize) -> JobRun {
        JobRun {
            scheduled_for: None,
            started: format!("s{n}"),
            finished: format!("f{n}"),
            duration_seconds: 1.0,
            outcome,
            message: None,
            summary: None,
            host: "h".into(),
            exit_code: None,
        }
    }

    #[test]
    fn history_keeps_last_success_and_failure_and_caps_runs() {
        let mut h = JobHistory {
            job: "backup".into(),
            ..Default::default()
        };
        h.record(run(Outcome::Failed, 0));
        for n in 1..=JOB_RUNS_KEPT + 5 {
            h.record(run(Outcome::Succeeded, n));
        }
        h.record(run(Outcome::Interrupted, 999));
        assert_eq!(h.runs.len(), JOB_RUNS_KEPT);
        assert_eq!(
            h.last_failure.as_ref().map(|r| r.started.as_str()),
            Some("s0")
        );
        assert_eq!(
            h.last_success.as_ref().map(|r| r.started.clone()),
            Some(format!("s{}", JOB_RUNS_KEPT + 5))
        );
        assert_eq!(h.last_run().map(|r| r.outcome), Some(Outcome::Interrupted));
    }

    /// Records written before dump drills (no `kind`, no `databases`) read as backup drills.
    #[test]
    fn an_old_drill_record_reads_as_a_backup_drill() {
        let old = r#"{"id":"20260102T060000Z-ab","host":"db1","trigger":"manual",
            "started":"2026-01-02T10:30:00Z","finished":"2026-01-02T10:31:00Z",
            "backup":"20260102T100000Z","backup_choice":"latest","target":"latest","passed":true,
            "failed_step":null,"failure":null,"restore_seconds":1.0,"replay_seconds":1.0,
            "recovery_seconds":2.0,"newest_commit":null,"data_loss_seconds":null,
            "bytes_restored":1,"checks":[]}"#;
        let record: DrillRecord = serde_json::from_str(old).expect("an old record reads");
        assert_eq!(record.kind, DrillKind::Backup);
        assert!(record.databases.is_empty());
        let text = serde_json::to_string(&DrillRecord {
            kind: DrillKind::Dump,
            databases: vec!["app".into()],
            ..record
        })
        .expect("serialize");
        assert!(text.contains(r#""kind":"dump""#) && text.contains(r#""databases":["app"]"#));
    }
}
