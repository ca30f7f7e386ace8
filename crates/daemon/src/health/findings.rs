//! Judging a gathered [`Snapshot`] against the configured limits: the findings alerts act on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_repo::records::Outcome;

use super::{Problems, seconds_between};
use crate::config::HealthConfig;
use crate::status::{Finding, Severity, Snapshot};

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
            if last.outcome == Outcome::Failed
                && !((job.job == "drill" || job.job == "dump-drill") && last.exit_code == Some(9))
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
        let job_known = |name: &str| {
            snapshot
                .jobs
                .iter()
                .any(|j| j.job == name && (j.schedule.is_some() || j.history.last_run().is_some()))
        };
        if job_known("copy") {
            match snapshot.copy_age_seconds {
                Some(age) if age > limits.max_copy_age.as_secs_f64() => add(
                    "copy_age".into(),
                    Severity::Warning,
                    format!("the second repository is {} behind", human(age)),
                    format!(
                        "its last successful copy started {} ago; the limit is {} (health.max_copy_age): \
                         check the copy job's last failure, or run `lifeboat copy`",
                        human(age),
                        human(limits.max_copy_age.as_secs_f64())
                    ),
                ),
                None if snapshot.jobs.iter().any(|j| j.job == "copy" && j.history.last_run().is_some()) => add(
                    "copy_age".into(),
                    Severity::Warning,
                    "no copy to the second repository has succeeded yet".into(),
                    "the backups exist in one place only: look at the copy job's failures and run `lifeboat copy`".into(),
                ),
                _ => {}
            }
        }
        if (snapshot.dumps > 0 || job_known("dump"))
            && let Some(age) = snapshot.newest_dump_age_seconds
            && age > limits.max_dump_age.as_secs_f64()
        {
            add(
                "dump_age".into(),
                Severity::Warning,
                format!("the newest logical dump is {} old", human(age)),
                format!(
                    "dump {} is the newest; the limit is {} (health.max_dump_age): check the dump job's last failure, or run `lifeboat dump`",
                    snapshot.newest_dump.as_deref().unwrap_or("?"),
                    human(limits.max_dump_age.as_secs_f64())
                ),
            );
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

fn human(seconds: f64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::JobStatus;
    use lifeboat_repo::records::{JobHistory, JobRun};

    fn job(name: &str, scheduled: bool, runs: &[(&str, Outcome)]) -> JobStatus {
        let mut history = JobHistory {
            job: name.into(),
            ..Default::default()
        };
        for (started, outcome) in runs {
            history.record(JobRun {
                scheduled_for: None,
                started: (*started).into(),
                finished: (*started).into(),
                duration_seconds: 1.0,
                outcome: *outcome,
                message: Some("it failed".into()),
                summary: None,
                host: "h".into(),
                exit_code: Some(if *outcome == Outcome::Succeeded { 0 } else { 5 }),
            });
        }
        JobStatus {
            job: name.into(),
            schedule: scheduled.then(|| "0 * * * *".to_string()),
            next_run: None,
            running_since: None,
            history,
        }
    }

    fn keys(s: &Snapshot) -> Vec<String> {
        findings(s, &Problems::default(), &HealthConfig::default())
            .into_iter()
            .map(|f| f.key)
            .filter(|k| k.starts_with("copy") || k.starts_with("dump"))
            .collect()
    }

    #[test]
    fn a_copy_behind_its_limit_or_never_successful_is_a_finding() {
        let mut s = Snapshot {
            recoverable: true,
            ..Default::default()
        };
        assert!(keys(&s).is_empty(), "no copy job: nothing judged");
        s.jobs = vec![job("copy", true, &[])];
        assert!(keys(&s).is_empty(), "scheduled, never ran: nothing yet");
        s.jobs = vec![job(
            "copy",
            true,
            &[("2026-12-07T10:00:00Z", Outcome::Failed)],
        )];
        assert_eq!(keys(&s), vec!["copy_age"], "ran, never succeeded");
        s.copy_age_seconds = Some(3600.0);
        assert!(keys(&s).is_empty(), "an hour behind is within 26h");
        s.copy_age_seconds = Some(27.0 * 3600.0);
        let all = findings(&s, &Problems::default(), &HealthConfig::default());
        let f = all.iter().find(|f| f.key == "copy_age").expect("copy_age");
        assert!(f.summary.contains("1day 3h"), "{}", f.summary);
        assert!(f.detail.contains("lifeboat copy"), "{}", f.detail);
    }

    #[test]
    fn an_old_dump_is_a_finding_once_dumps_exist_or_are_scheduled() {
        let mut s = Snapshot {
            recoverable: true,
            newest_dump: Some("20261201T020000Z".into()),
            newest_dump_age_seconds: Some(30.0 * 3600.0),
            ..Default::default()
        };
        assert!(keys(&s).is_empty(), "no dump, no schedule: nothing judged");
        s.dumps = 1;
        assert_eq!(keys(&s), vec!["dump_age"]);
        s.newest_dump_age_seconds = Some(3600.0);
        assert!(keys(&s).is_empty());
    }
}
