//! The status snapshot: everything the dashboard, `/metrics` and the JSON API show, gathered by the
//! main loop every check interval. Pages are rendered from the latest snapshot and never touch
//! the repository or PostgreSQL themselves, so a slow store cannot make the dashboard hang.

use std::sync::Arc;

use lifeboat_engine::backup::BackupReport;
use lifeboat_engine::info::TimelineInfo;
use lifeboat_engine::list::Window;
use lifeboat_repo::records::{ActiveAlert, DrillRecord, JobHistory, SentAlert, SizeSample};
use serde::Serialize;
use tokio::sync::RwLock;

/// Shared between the main loop (writer) and the HTTP handlers (readers).
pub type SharedSnapshot = Arc<RwLock<Snapshot>>;

/// Problem severities: `critical` means a restore may not be possible or data is at risk now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// One problem health found. `key` is stable across checks (it is what alerts de-duplicate on).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// e.g. `wal_archive_lag`, `backup_age`, `wal_backlog`, `disk_free:pg_wal`, `job_failed:backup`,
    /// `drill_failed`, `repository_unreachable`, `database_unreachable`.
    pub key: String,
    pub severity: Severity,
    /// One line: what is wrong.
    pub summary: String,
    /// Why it matters and what to do.
    pub detail: String,
}

/// Free space on one volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume {
    /// `pg_wal` or `data`.
    pub name: String,
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// WAL archiving as seen from the data directory and the repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WalStatus {
    /// Segments PostgreSQL has marked `.ready` and not yet archived (None: pg_wal not readable).
    pub ready_segments: Option<u64>,
    /// Age of the oldest `.ready` segment: the span of WAL not yet in the repository.
    pub archive_lag_seconds: Option<f64>,
    /// From `pg_stat_archiver`: the last archived file and when, the last failure and when.
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    pub failed_count: Option<u64>,
    /// Per timeline: the archived segments and every gap.
    pub timelines: Vec<TimelineInfo>,
    pub wal_files: u64,
    pub wal_stored_bytes: u64,
}

/// A scheduled job: its cron line, next run, whether it runs now, and its recorded history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub schedule: Option<String>,
    pub next_run: Option<String>,
    pub running_since: Option<String>,
    pub history: JobHistory,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When this snapshot was gathered (RFC 3339); None before the first one.
    pub generated_at: Option<String>,
    pub host: String,
    pub repository: String,
    pub version: String,
    /// Can the database be restored right now: a complete backup exists and the WAL after it has
    /// no gap. `recoverable_reason` says why not.
    pub recoverable: bool,
    pub recoverable_reason: Option<String>,
    pub window: Window,
    /// Complete backups, oldest first.
    pub backups: Vec<BackupReport>,
    /// Seconds since the newest backup's stop time.
    pub newest_backup_age_seconds: Option<f64>,
    pub wal: WalStatus,
    pub volumes: Vec<Volume>,
    pub jobs: Vec<JobStatus>,
    /// Newest first.
    pub drills: Vec<DrillRecord>,
    /// Problems found by the last check.
    pub findings: Vec<Finding>,
    pub active_alerts: Vec<ActiveAlert>,
    /// Newest last.
    pub sent_alerts: Vec<SentAlert>,
    /// Bytes of every object in the repository, at the last measurement.
    pub repository_bytes: Option<u64>,
    pub size_history: Vec<SizeSample>,
}

impl Snapshot {
    pub fn shared() -> SharedSnapshot {
        Arc::new(RwLock::new(Snapshot::default()))
    }
}
