//! `check`: is the cluster set up so that backups and archiving work, end to end? Every problem
//! found comes with its fix; the last step forces a WAL switch and waits for that segment to
//! arrive in the repository, which proves the whole archive path.

use std::time::{Duration, Instant};

use lifeboat_pg::session::{ConnSpec, Session};
use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::{Repository, keys};
use serde::Serialize;

use crate::error::postgres;
use crate::{EngineError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub server_version: u32,
    pub system_identifier: u64,
    pub problems: Vec<Problem>,
    /// Advice that does not stop backups: streaming and synchronous replication choices.
    pub notes: Vec<Problem>,
    /// The segment switched out and waited for, when the settings allowed the test.
    pub switched_segment: Option<String>,
    pub archive_seconds: Option<f64>,
}

/// The archiving settings' problems, each with its fix.
async fn archiving_problems(session: &Session) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let wal_level = session.setting("wal_level").await.map_err(postgres)?;
    if wal_level == "minimal" {
        problems.push(Problem {
            what: "wal_level is minimal: the WAL cannot rebuild a base backup".into(),
            fix: "set wal_level = replica in postgresql.conf and restart the server".into(),
        });
    }
    let archive_mode = session.setting("archive_mode").await.map_err(postgres)?;
    if archive_mode == "off" {
        problems.push(Problem {
            what: "archive_mode is off: no WAL is archived".into(),
            fix: "set archive_mode = on in postgresql.conf and restart the server".into(),
        });
    }
    let command = session.setting("archive_command").await.map_err(postgres)?;
    let library = if session.server_version_num() >= 150000 {
        session.setting("archive_library").await.map_err(postgres)?
    } else {
        String::new()
    };
    if !library.is_empty() {
        problems.push(Problem {
            what: format!("archive_library is set ({library}): archive_command is ignored"),
            fix:
                "set archive_library = '' and archive_command = 'lifeboat wal-push %p', then reload"
                    .into(),
        });
    } else if command.trim().is_empty() || command == "(disabled)" {
        problems.push(Problem {
            what: "archive_command is empty: WAL is not archived".into(),
            fix: "set archive_command = 'lifeboat wal-push %p' (with --config FILE if the repository is not in /etc/lifeboat/lifeboat.toml), then reload".into(),
        });
    } else if !command.contains("wal-push") {
        problems.push(Problem {
            what: format!("archive_command ({command}) does not run lifeboat wal-push"),
            fix: "set archive_command = 'lifeboat wal-push %p' so that WAL reaches this repository, then reload".into(),
        });
    }
    Ok(problems)
}

/// Refuse a backup that could never complete: archiving off or not configured.
pub(crate) async fn require_archiving(session: &Session) -> Result<()> {
    let problems = archiving_problems(session).await?;
    let fatal: Vec<&Problem> = problems
        .iter()
        .filter(|p| !p.what.contains("does not run lifeboat"))
        .collect();
    if let Some(first) = fatal.first() {
        return Err(EngineError::invalid(
            format!("cannot take a backup: {}", first.what),
            format!("{}; `lifeboat check` lists every problem", first.fix),
        ));
    }
    for p in problems {
        tracing::warn!(
            "{}; if this is intended, make sure it pushes to this repository",
            p.what
        );
    }
    Ok(())
}

/// The receiver `wal-stream` runs as, when streaming is set up.
#[derive(Debug, Clone)]
pub struct StreamSetup {
    pub application_name: String,
    pub slot: String,
}

/// What the server's synchronous replication and slot settings mean for the receiver: problems
/// (commits that would wait forever or wait now) and notes (choices to make knowingly).
async fn streaming_findings(
    session: &Session,
    stream: &StreamSetup,
) -> Result<(Vec<Problem>, Vec<Problem>)> {
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    let names = session
        .setting("synchronous_standby_names")
        .await
        .map_err(postgres)?;
    let (required, listed) = synchronous_names(&names);
    let me = stream.application_name.to_lowercase();
    if listed.contains(&me) {
        let commit = session
            .setting("synchronous_commit")
            .await
            .map_err(postgres)?;
        if commit == "remote_apply" {
            problems.push(Problem {
                what: format!("synchronous_commit = remote_apply with {me} in synchronous_standby_names: a WAL receiver never applies WAL, so commits would wait for it forever"),
                fix: "set synchronous_commit = on (the receiver reports what the repository holds as flushed), then reload".into(),
            });
        }
        if listed.len() <= required {
            notes.push(Problem {
                what: format!("synchronous_standby_names = '{names}' needs the receiver {me} for every commit: zero data loss, and commits wait whenever the receiver or its repository is unreachable"),
                fix: format!("to keep commits flowing while either a replica or the receiver is up, list both: synchronous_standby_names = 'ANY 1 (replica1, {me})'"),
            });
        }
        if session
            .replication_client_state(&me)
            .await
            .map_err(postgres)?
            .is_none()
        {
            problems.push(Problem {
                what: format!("{me} is in synchronous_standby_names but no receiver of that name is connected: commits wait now"),
                fix: "start `lifeboat wal-stream --synchronous` (or `lifeboat serve` with [stream]), or remove it from synchronous_standby_names and reload".into(),
            });
        }
    }
    if session
        .slot_state(&stream.slot)
        .await
        .map_err(postgres)?
        .is_some()
        && session
            .setting("max_slot_wal_keep_size")
            .await
            .map_err(postgres)?
            == "-1"
    {
        notes.push(Problem {
            what: format!("the replication slot {} keeps WAL on this server without limit (max_slot_wal_keep_size = -1): a receiver that stays down can fill the disk of pg_wal", stream.slot),
            fix: "set max_slot_wal_keep_size (e.g. '10GB', less than pg_wal's free space) and reload: past it the server drops the WAL, the receiver reports the gap and archive_command still stores every segment".into(),
        });
    }
    Ok((problems, notes))
}

/// How many synchronous standbys `synchronous_standby_names` requires, and the names it lists
/// (lower-cased unless quoted): `a, b`, `FIRST 2 (a, b)`, `ANY 1 (a, "B")`, `2 (a, b)`.
fn synchronous_names(setting: &str) -> (usize, Vec<String>) {
    let text = setting.trim();
    if text.is_empty() {
        return (0, Vec::new());
    }
    let (required, list) = match text.split_once('(') {
        Some((head, rest)) => {
            let count = head
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            (count, rest.trim_end().trim_end_matches(')'))
        }
        None => (1, text),
    };
    let names = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(
            |n| match n.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => quoted.to_string(),
                None => n.to_lowercase(),
            },
        )
        .collect();
    (required, names)
}

pub async fn check(
    repo: &Repository,
    conn: &ConnSpec,
    timeout: Duration,
    stream: &StreamSetup,
) -> Result<CheckReport> {
    let session = Session::connect(conn, Duration::from_secs(30))
        .await
        .map_err(postgres)?;
    let server_version = session.server_version_num();
    let system_identifier = session.system_identifier().await.map_err(postgres)?;
    let mut problems = archiving_problems(&session).await?;
    let (stream_problems, notes) = streaming_findings(&session, stream).await?;
    problems.extend(stream_problems);
    if let Some(bound) = repo.identity().await?
        && bound.system_identifier != system_identifier
    {
        problems.push(Problem {
            what: format!(
                "the repository belongs to cluster {}, this server is cluster {system_identifier}",
                bound.system_identifier
            ),
            fix: "use a repository of this cluster (or a new one: lifeboat init)".into(),
        });
    }
    let mut report = CheckReport {
        server_version,
        system_identifier,
        problems,
        notes,
        switched_segment: None,
        archive_seconds: None,
    };
    if !report.problems.is_empty() {
        return Ok(report);
    }
    if session.is_in_recovery().await.map_err(postgres)? {
        report.problems.push(Problem {
            what: "the server is a standby: a WAL switch cannot be forced here".into(),
            fix: "run lifeboat check against the primary".into(),
        });
        return Ok(report);
    }
    // A restore point writes a WAL record, so the switch always happens.
    session
        .create_restore_point("lifeboat check")
        .await
        .map_err(postgres)?;
    let (_, segment) = session.switch_wal().await.map_err(postgres)?;
    let name = segment.to_string();
    let key = keys::wal(&WalFileName::Segment(segment));
    let began = Instant::now();
    loop {
        match repo.store().head(&key).await {
            Ok(_) => break,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(lifeboat_repo::RepoError::from(e).into()),
        }
        if began.elapsed() >= timeout {
            report.problems.push(Problem {
                what: format!(
                    "segment {name} did not reach the repository within {} s of the switch",
                    timeout.as_secs()
                ),
                fix: "look at pg_stat_archiver (last_failed_wal) and the server log for archive_command errors; run the archive_command by hand as the postgres user".into(),
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.switched_segment = Some(name);
    if report.problems.is_empty() {
        report.archive_seconds = Some(began.elapsed().as_secs_f64());
    }
    Ok(report)
}

/// What automatic failover (`[ha]`) needs of the server, each problem with its fix: pg_rewind
/// (data checksums or `wal_log_hints`, else every rejoin is a re-clone), `hot_standby`, and a WAL
/// sender and a slot per other member (`members` in all), plus one for the receiver.
pub async fn failover_problems(conn: &ConnSpec, members: usize) -> Result<Vec<Problem>> {
    let session = Session::connect(conn, Duration::from_secs(30))
        .await
        .map_err(postgres)?;
    let setting = |name: &'static str| {
        let session = &session;
        async move { session.setting(name).await.map_err(postgres) }
    };
    let mut problems = Vec::new();
    if setting("data_checksums").await? != "on" && setting("wal_log_hints").await? != "on" {
        problems.push(Problem {
            what: "neither data checksums nor wal_log_hints are on: pg_rewind cannot rewind an \
                   old primary, so every rejoin after a failover re-clones it from the repository"
                .into(),
            fix: "set wal_log_hints = on in postgresql.conf and restart the server".into(),
        });
    }
    if setting("hot_standby").await? != "on" {
        problems.push(Problem {
            what: "hot_standby is off: a standby answers no query, and the agent cannot observe it"
                .into(),
            fix: "set hot_standby = on in postgresql.conf".into(),
        });
    }
    let needed = members.max(2);
    for name in ["max_wal_senders", "max_replication_slots"] {
        let value: usize = setting(name).await?.parse().unwrap_or(0);
        if value < needed {
            problems.push(Problem {
                what: format!(
                    "{name} = {value}: the leader needs one per other member ({}) and one for \
                     the WAL receiver",
                    members.saturating_sub(1)
                ),
                fix: format!(
                    "set {name} = {} or more in postgresql.conf and restart the server",
                    needed + 2
                ),
            });
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::synchronous_names;

    #[test]
    fn synchronous_standby_names_as_postgresql_reads_them() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(synchronous_names(""), (0, vec![]));
        assert_eq!(synchronous_names("lifeboat"), (1, names(&["lifeboat"])));
        assert_eq!(
            synchronous_names("ANY 1 (replica1, Lifeboat)"),
            (1, names(&["replica1", "lifeboat"]))
        );
        assert_eq!(
            synchronous_names("FIRST 2 (a, \"B\")"),
            (2, names(&["a", "B"]))
        );
        assert_eq!(synchronous_names("2 (a,b)"), (2, names(&["a", "b"])));
    }
}
