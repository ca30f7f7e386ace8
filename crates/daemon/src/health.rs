//! Health: gathers what the daemon watches into the [`Snapshot`] and judges it against the
//! configured limits, as [`Finding`]s the alerts act on.
//!
//! Watched: the repository (backups, the restore window, WAL continuity, job and drill records),
//! PostgreSQL's archiver (`pg_stat_archiver`), the `.ready` backlog in `pg_wal/archive_status`
//! and its age (the WAL an outage now would lose), and free space on the volumes of `pg_wal` and
//! the data directory, the disk-full outage that once took the monitoring down with it; with
//! `[stream]`, the receiver's walsender and slot (`stream_watch`, on the same session). Each
//! source can fail on its own; a failure is itself a finding, never a reason to stop watching.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use lifeboat_engine::LazyRepo;
use lifeboat_pg::session::{ArchiverStats, ConnSpec, ReceiverServerStatus, Session};
use lifeboat_repo::records::Outcome;

use crate::config::{HealthConfig, StreamWatch};
use crate::receiver::SharedReceiver;
use crate::schedule::{parse_rfc3339, rfc3339};
use crate::status::{Finding, Severity, Snapshot, Volume};

/// Deadline of the connection to PostgreSQL for one check.
const DB_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the facts come from.
#[derive(Debug)]
pub struct Sources {
    pub repo: std::sync::Arc<LazyRepo>,
    /// libpq connection string of the cluster (None: the PG* environment).
    pub db: Option<String>,
    /// The data directory (None: asked from the server).
    pub pgdata: Option<PathBuf>,
    /// The WAL receiver the daemon runs, to ask the server about (None: no `[stream]`).
    pub stream: Option<(StreamWatch, SharedReceiver)>,
}

/// What one gathering found beyond the snapshot's fields: the failures of its sources.
#[derive(Debug, Default)]
pub struct Problems {
    pub repository: Option<String>,
    pub database: Option<String>,
    pub pg_wal: Option<String>,
}

/// Fill the repository and cluster facts of `snapshot` (jobs and alerts are the caller's).
pub async fn gather(sources: &Sources, snapshot: &mut Snapshot) -> Problems {
    let mut problems = Problems::default();
    let now = Utc::now();
    snapshot.generated_at = Some(rfc3339(now));
    if let Err(e) = gather_repository(sources, snapshot, now).await {
        problems.repository = Some(e);
    }
    let mut pgdata = sources.pgdata.clone();
    let watch = sources.stream.as_ref().map(|(w, _)| w);
    let mut stream_server = Err("the server could not be reached".to_string());
    match archiver(sources.db.as_deref(), pgdata.is_none(), watch).await {
        Ok((stats, dir, stream, replicas)) => {
            if let Some(stream) = stream {
                stream_server = stream;
            }
            snapshot.replicas = replicas;
            let wal = &mut snapshot.wal;
            wal.last_archived_wal = stats.last_archived_wal;
            wal.last_archived_time = stats.last_archived_time;
            wal.last_failed_wal = stats.last_failed_wal;
            wal.last_failed_time = stats.last_failed_time;
            wal.failed_count = Some(stats.failed_count);
            pgdata = pgdata.or(dir);
        }
        Err(e) => problems.database = Some(e),
    }
    if let Some((watch, receiver)) = &sources.stream {
        let process = receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Err(e) = &stream_server {
            tracing::debug!("cannot read the receiver's status from the server: {e}");
        }
        let status = snapshot.stream.get_or_insert_with(Default::default);
        crate::stream_watch::update(status, watch, process, stream_server);
    }
    snapshot.volumes.clear();
    snapshot.wal.ready_segments = None;
    snapshot.wal.archive_lag_seconds = None;
    if let Some(dir) = pgdata {
        let (backlog, volumes) = local_facts(dir).await;
        match backlog {
            Ok((count, oldest)) => {
                snapshot.wal.ready_segments = Some(count);
                snapshot.wal.archive_lag_seconds =
                    Some(oldest.map_or(0.0, |age| age.as_secs_f64()));
            }
            Err(e) => problems.pg_wal = Some(e),
        }
        snapshot.volumes = volumes;
    }
    problems
}

/// The `.ready` backlog and the free space of the `pg_wal` and data volumes, read on a blocking
/// thread: `read_dir` and `statvfs` on a hung mount (NFS) must not stall a runtime worker, which
/// also serves the pages and runs the timers.
async fn local_facts(dir: PathBuf) -> (Result<(u64, Option<Duration>), String>, Vec<Volume>) {
    let task = tokio::task::spawn_blocking(move || {
        let backlog = ready_backlog(&dir.join("pg_wal").join("archive_status"));
        let volumes = [("pg_wal", dir.join("pg_wal")), ("data", dir.clone())]
            .into_iter()
            .filter_map(|(name, path)| volume(name, &path))
            .collect();
        (backlog, volumes)
    });
    match task.await {
        Ok(facts) => facts,
        Err(e) => (Err(format!("cannot read pg_wal: {e}")), Vec::new()),
    }
}

async fn gather_repository(
    sources: &Sources,
    snapshot: &mut Snapshot,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let repo = sources.repo.get().await.map_err(|e| e.to_string())?;
    snapshot.repository = repo.location();
    let listing = lifeboat_engine::list::list(repo)
        .await
        .map_err(|e| e.to_string())?;
    let info = lifeboat_engine::info::info(repo)
        .await
        .map_err(|e| e.to_string())?;
    snapshot.newest_backup_age_seconds = listing
        .backups
        .last()
        .and_then(|b| parse_rfc3339(&b.stop_time))
        .map(|t| seconds_between(t, now));
    snapshot.recoverable = !listing.backups.is_empty();
    snapshot.recoverable_reason = (!snapshot.recoverable).then(|| {
        "the repository holds no complete backup: take one with `lifeboat backup`".to_string()
    });
    snapshot.backups = listing.backups;
    snapshot.window = listing.window;
    snapshot.wal.timelines = info.timelines;
    snapshot.wal.wal_files = info.wal_files;
    snapshot.wal.wal_stored_bytes = info.wal_stored_bytes;
    let histories = repo.job_histories().await.map_err(|e| e.to_string())?;
    for history in histories {
        match snapshot.jobs.iter_mut().find(|j| j.job == history.job) {
            Some(job) => job.history = history,
            None => snapshot.jobs.push(crate::status::JobStatus {
                job: history.job.clone(),
                schedule: None,
                next_run: None,
                running_since: None,
                history,
            }),
        }
    }
    snapshot.drills = repo.recent_drills(50).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// What the server's answer on the receiver was, when one is watched.
type StreamAnswer = Option<Result<ReceiverServerStatus, String>>;

/// `pg_stat_archiver`, the data directory when asked for, and the receiver's walsender and slot.
async fn archiver(
    db: Option<&str>,
    want_datadir: bool,
    stream: Option<&StreamWatch>,
) -> Result<
    (
        ArchiverStats,
        Option<PathBuf>,
        StreamAnswer,
        Vec<lifeboat_pg::session::ReplicationClient>,
    ),
    String,
> {
    let spec = ConnSpec::new(db).map_err(|e| e.to_string())?;
    let session = Session::connect(&spec, DB_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let stats = session.archiver_stats().await.map_err(|e| e.to_string())?;
    let dir = if want_datadir {
        session.data_directory().await.ok()
    } else {
        None
    };
    let stream = match stream {
        Some(watch) => Some(crate::stream_watch::ask_server(&session, watch).await),
        None => None,
    };
    // Standbys and receivers as the server sees them; a role without pg_monitor sees fewer
    // columns, which only leaves values unknown.
    let replicas = session.replication_clients().await.unwrap_or_default();
    Ok((stats, dir, stream, replicas))
}

/// Segments marked `.ready`, and how long the oldest has waited.
fn ready_backlog(status_dir: &Path) -> Result<(u64, Option<Duration>), String> {
    let entries = std::fs::read_dir(status_dir).map_err(|e| {
        format!(
            "cannot read {}: {e}; run the daemon as the cluster's owner (postgres), or set pgdata",
            status_dir.display()
        )
    })?;
    let now = SystemTime::now();
    let mut count = 0;
    let mut oldest: Option<Duration> = None;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".ready") {
            continue;
        }
        count += 1;
        // A file archived (renamed to .done) between the listing and this look is not waiting.
        if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
            let age = now.duration_since(modified).unwrap_or_default();
            oldest = Some(oldest.map_or(age, |o| o.max(age)));
        }
    }
    Ok((count, oldest))
}

fn volume(name: &str, path: &Path) -> Option<Volume> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = stat.fragment_size();
    Some(Volume {
        name: name.to_string(),
        path: path.display().to_string(),
        total_bytes: (stat.blocks() as u64).saturating_mul(unit),
        free_bytes: (stat.blocks_available() as u64).saturating_mul(unit),
    })
}

fn seconds_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> f64 {
    ((later - earlier).num_milliseconds() as f64 / 1000.0).max(0.0)
}

fn human(seconds: f64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

/// Judge a gathered snapshot against the limits.
pub fn findings(snapshot: &Snapshot, problems: &Problems, limits: &HealthConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |key: String, severity, summary: String, detail: String| {
        out.push(Finding {
            key,
            severity,
            summary,
            detail,
        });
    };
    if let Some(e) = &problems.repository {
        add(
            "repository_unreachable".into(),
            Severity::Critical,
            "the repository cannot be read".into(),
            format!(
                "{e}. Backups and WAL archiving into it fail too: check the store, its credentials and the network"
            ),
        );
    } else {
        if !snapshot.recoverable {
            add(
                "not_recoverable".into(),
                Severity::Critical,
                "the database cannot be restored: no complete backup".into(),
                snapshot.recoverable_reason.clone().unwrap_or_default(),
            );
        }
        if let Some(age) = snapshot.newest_backup_age_seconds
            && age > limits.max_backup_age.as_secs_f64()
        {
            add(
                "backup_age".into(),
                Severity::Critical,
                format!("the newest backup is {} old", human(age)),
                format!(
                    "the limit is {} (health.max_backup_age): check the backup job's last failure",
                    human(limits.max_backup_age.as_secs_f64())
                ),
            );
        }
        if let (Some(latest), Some(newest)) = (&snapshot.window.latest_wal, snapshot.backups.last())
            && let Some(tl) = snapshot
                .wal
                .timelines
                .iter()
                .find(|t| t.timeline == newest.timeline)
            && tl.last_segment.as_str() > latest.as_str()
        {
            add(
                "wal_gap".into(),
                Severity::Critical,
                format!("WAL is missing after {latest}: restores cannot go past it"),
                format!(
                    "segments up to {} are archived but not every one after {latest}; run `lifeboat info` \
                     for the gap and take a new backup so later moments can be restored",
                    tl.last_segment
                ),
            );
        }
        for job in &snapshot.jobs {
            let Some(last) = job.history.last_run() else {
                continue;
            };
            // A drill that ran and failed (exit 9) is reported by `drill_failed`, with its reason.
            if last.outcome == Outcome::Failed && !(job.job == "drill" && last.exit_code == Some(9))
            {
                add(
                    format!("job_failed:{}", job.job),
                    if job.job.starts_with("backup") {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    format!("the {} job failed", job.job),
                    last.message.clone().unwrap_or_default(),
                );
            }
        }
        if let Some(drill) = snapshot.drills.first()
            && !drill.passed
        {
            add(
                "drill_failed".into(),
                Severity::Critical,
                format!(
                    "the restore drill of backup {} failed at step {}",
                    drill.backup.as_deref().unwrap_or("(none)"),
                    drill.failed_step.as_deref().unwrap_or("?")
                ),
                drill.failure.clone().unwrap_or_default(),
            );
        }
    }
    if let Some(e) = &problems.database {
        add(
            "database_unreachable".into(),
            Severity::Warning,
            "PostgreSQL cannot be reached to read its archiver status".into(),
            format!("{e}; check `db` in the config file and that the server runs"),
        );
    }
    if let Some(e) = &problems.pg_wal {
        add(
            "pg_wal_unreadable".into(),
            Severity::Warning,
            "the WAL archive backlog cannot be read".into(),
            e.clone(),
        );
    }
    if let Some(lag) = snapshot.wal.archive_lag_seconds
        && lag > limits.max_wal_lag.as_secs_f64()
    {
        let failing = snapshot
            .wal
            .last_failed_wal
            .as_deref()
            .map(|w| {
                format!(
                    "; the archiver last failed on {w} at {}",
                    snapshot.wal.last_failed_time.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        add(
            "wal_archive_lag".into(),
            Severity::Critical,
            format!(
                "WAL archiving is {} behind: {} segments wait in pg_wal",
                human(lag),
                snapshot.wal.ready_segments.unwrap_or(0)
            ),
            format!(
                "an outage now would lose that much (limit {}, health.max_wal_lag){failing}. \
                 Check archive_command and the server log; pg_wal fills until it is fixed",
                human(limits.max_wal_lag.as_secs_f64())
            ),
        );
    }
    if let Some(ready) = snapshot.wal.ready_segments
        && ready > limits.max_ready_segments
    {
        add(
            "wal_backlog".into(),
            Severity::Warning,
            format!("{ready} WAL segments wait to be archived"),
            format!(
                "the limit is {} (health.max_ready_segments): archiving does not keep up, or fails",
                limits.max_ready_segments
            ),
        );
    }
    for v in &snapshot.volumes {
        if v.total_bytes == 0 {
            continue;
        }
        let free = v.free_bytes as f64 * 100.0 / v.total_bytes as f64;
        if free < limits.min_free_percent {
            add(
                format!("disk_free:{}", v.name),
                Severity::Critical,
                format!("only {free:.1}% free on the {} volume ({})", v.name, v.path),
                format!(
                    "the limit is {}% (health.min_free_percent); when {} fills, PostgreSQL stops",
                    limits.min_free_percent, v.name
                ),
            );
        }
    }
    if let Some(max) = limits.max_drill_age {
        let newest = snapshot.drills.first().and_then(|d| {
            DateTime::from_timestamp(d.finished.unix_timestamp(), d.finished.nanosecond())
        });
        let too_old = newest.is_none_or(|t| seconds_between(t, Utc::now()) > max.as_secs_f64());
        if too_old {
            add(
                "drill_age".into(),
                Severity::Warning,
                "no recent restore drill".into(),
                format!(
                    "the newest drill must be at most {} old (health.max_drill_age): schedule `drill`",
                    human(max.as_secs_f64())
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_backlog_and_disk_limits() {
        let limits = HealthConfig {
            max_wal_lag: Duration::from_secs(60),
            max_ready_segments: 10,
            min_free_percent: 10.0,
            ..HealthConfig::default()
        };
        let mut s = Snapshot {
            recoverable: true,
            ..Snapshot::default()
        };
        s.wal.archive_lag_seconds = Some(30.0);
        s.wal.ready_segments = Some(3);
        assert!(findings(&s, &Problems::default(), &limits).is_empty());
        s.wal.archive_lag_seconds = Some(120.0);
        s.wal.ready_segments = Some(11);
        s.volumes.push(Volume {
            name: "pg_wal".into(),
            path: "/x".into(),
            total_bytes: 100,
            free_bytes: 5,
        });
        let keys: Vec<String> = findings(&s, &Problems::default(), &limits)
            .into_iter()
            .map(|f| f.key)
            .collect();
        assert_eq!(keys, ["wal_archive_lag", "wal_backlog", "disk_free:pg_wal"]);
    }

    #[test]
    fn an_unreachable_repository_is_one_finding_not_many() {
        let problems = Problems {
            repository: Some("connection refused".into()),
            ..Problems::default()
        };
        let f = findings(&Snapshot::default(), &problems, &HealthConfig::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, "repository_unreachable");
        assert!(f[0].detail.contains("connection refused"));
    }
}
