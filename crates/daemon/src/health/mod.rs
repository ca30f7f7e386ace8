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

use crate::config::StreamWatch;
use crate::receiver::SharedReceiver;
use crate::schedule::{parse_rfc3339, rfc3339};
use crate::status::{Snapshot, Volume};

mod findings;
pub use findings::findings;

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
    snapshot.copy_age_seconds = snapshot
        .jobs
        .iter()
        .find(|j| j.job == "copy")
        .and_then(|j| j.history.last_success.as_ref())
        .and_then(|run| parse_rfc3339(&run.started))
        .map(|t| seconds_between(t, now));
    let dumps = repo.dump_labels().await.map_err(|e| e.to_string())?;
    snapshot.dumps = dumps.len() as u64;
    snapshot.newest_dump = dumps.last().map(|(label, _)| label.clone());
    snapshot.newest_dump_age_seconds = snapshot
        .newest_dump
        .as_deref()
        .and_then(label_time)
        .map(|t| seconds_between(t, now));
    snapshot.drills = repo.recent_drills(50).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The moment a dump label names (`YYYYMMDDTHHMMSSZ`, UTC).
fn label_time(label: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(label, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
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

pub(crate) fn seconds_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> f64 {
    ((later - earlier).num_milliseconds() as f64 / 1000.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthConfig;

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
