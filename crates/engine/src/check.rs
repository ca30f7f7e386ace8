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

pub async fn check(repo: &Repository, conn: &ConnSpec, timeout: Duration) -> Result<CheckReport> {
    let session = Session::connect(conn, Duration::from_secs(30))
        .await
        .map_err(postgres)?;
    let server_version = session.server_version_num();
    let system_identifier = session.system_identifier().await.map_err(postgres)?;
    let mut problems = archiving_problems(&session).await?;
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
