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
    /// `drill_failed`, `repository_unreachable`, `database_unreachable`, `stream_down`,
    /// `stream_lag`, `slot_retained`, `slot_lost`, `slot_unlimited`, `copy_age`, `dump_age`.
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

/// The WAL receiver (`lifeboat wal-stream`) the daemon runs when `[stream]` is configured: its
/// process, and what the server says of it (the truth: a receiver can run and store nothing).
/// Server-side values are None when unknown (the server could not be asked, or has no walsender
/// for the receiver).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamStatus {
    pub slot: String,
    pub application_name: String,
    pub receiver: ReceiverProcess,
    /// Whether `pg_stat_replication` shows the receiver in state `streaming` or `catchup` (None:
    /// the server could not be asked).
    pub streaming: Option<bool>,
    /// Since when it has not been streaming (RFC 3339); None while it streams.
    pub down_since: Option<String>,
    /// From `pg_stat_replication`: `state`, `sent_lsn`, `flush_lsn`, the server's position minus
    /// `flush_lsn`, seconds since `reply_time`, `sync_state`.
    pub state: Option<String>,
    pub sent_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub reply_age_seconds: Option<f64>,
    pub sync_state: Option<String>,
    /// `flush_lag`: what a crash of the server now would lose, in time (0 when caught up).
    pub exposure_seconds: Option<f64>,
    /// From `pg_replication_slots`: whether the slot exists and is in use, its `restart_lsn`,
    /// the WAL it keeps on the server (position minus `restart_lsn`), `wal_status`
    /// (reserved, extended, unreserved, lost) and `safe_wal_size`.
    pub slot_exists: Option<bool>,
    pub slot_active: Option<bool>,
    pub restart_lsn: Option<String>,
    pub retained_bytes: Option<u64>,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    /// The server's `max_slot_wal_keep_size` in MB; -1 is unlimited.
    pub max_slot_wal_keep_size_mb: Option<i64>,
    /// `synchronous_standby_names` names the receiver (or is `*`): commits wait for it.
    pub synchronous_standby: Option<bool>,
}

/// The receiver child process, as the daemon's supervisor sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReceiverProcess {
    /// Process id while it runs.
    pub pid: Option<u32>,
    pub running_since: Option<String>,
    /// How many times it was started since the daemon started.
    pub starts: u64,
    pub last_exit: Option<String>,
    /// Exit code of the last exit (None: killed by a signal, or not exited yet).
    pub last_exit_code: Option<i32>,
    /// The end of what it last printed as an error or warning (it also reconnects on its own,
    /// saying why, without exiting).
    pub last_error: Option<String>,
    /// When it is started again, while waiting after an exit.
    pub restart_at: Option<String>,
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
    /// Logical dumps in the repository (`lifeboat dump`).
    pub dumps: u64,
    /// The newest dump's label (its UTC start time) and the seconds since.
    pub newest_dump: Option<String>,
    pub newest_dump_age_seconds: Option<f64>,
    /// Seconds since the last successful `copy` job started: how far behind the second
    /// repository may be (None: no successful copy recorded).
    pub copy_age_seconds: Option<f64>,
    pub wal: WalStatus,
    /// None: no `[stream]` in the config, the daemon runs no receiver.
    pub stream: Option<StreamStatus>,
    /// None: no `[ha]` in the config. The failover agent's last pass.
    pub ha: Option<HaStatus>,
    /// Every standby and receiver connected to the server (`pg_stat_replication`), with its lag.
    pub replicas: Vec<lifeboat_pg::session::ReplicationClient>,
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

/// What the failover agent saw and concluded on its last pass (`[ha]`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HaStatus {
    /// This member's name.
    pub name: String,
    /// primary, replica, stopped or rejoining.
    pub role: String,
    /// The member holding the leader key, as etcd said on the last pass.
    pub leader: Option<String>,
    /// This member holds the key and is before its fencing deadline.
    pub holds_leader: bool,
    /// Milliseconds left before the fencing deadline (leader only).
    pub fencing_in_ms: Option<u64>,
    /// etcd answered on the last pass.
    pub etcd_reachable: bool,
    pub paused: bool,
    pub timeline: Option<u32>,
    /// Standby: bytes behind the leader's published position.
    pub lag_bytes: Option<u64>,
    /// The decision of the last pass, in words.
    pub summary: String,
    /// Every member's published record (name, role, timeline, position, api_url).
    pub members: Vec<lifeboat_ha::state::MemberRecord>,
    /// When the last pass ended (RFC 3339).
    pub observed_at: String,
}
