//! Schedules: which jobs exist, their cron lines, when each runs next, and whether a run was
//! missed while the daemon was down.
//!
//! Cron lines have 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first,
//! and are read in UTC. A missed run is one whose scheduled moment has passed without a finished
//! run for it: the latest such moment runs once at start-up (older ones collapse into it), since
//! its window, up to the next scheduled moment, is still open.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use lifeboat_repo::records::{JobHistory, Outcome};

use crate::config::ScheduleConfig;

/// What a job runs: the `lifeboat` arguments after the global options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Backup,
    BackupFull,
    Expire,
    Verify,
    Drill,
    /// `lifeboat copy`: bring the second repository (`[copy] to`) up to date.
    Copy,
    /// `lifeboat dump`: logical dumps of the databases into the repository.
    Dump,
    /// `lifeboat dump expire`: the dumps' retention.
    DumpExpire,
    /// `lifeboat drill --dump`: the newest logical dump restored into a scratch cluster.
    DumpDrill,
}

impl JobKind {
    pub const ALL: [JobKind; 9] = [
        JobKind::Backup,
        JobKind::BackupFull,
        JobKind::Expire,
        JobKind::Verify,
        JobKind::Drill,
        JobKind::Copy,
        JobKind::Dump,
        JobKind::DumpExpire,
        JobKind::DumpDrill,
    ];

    /// The job's name: in the config (`[schedule]` key, with `_`), the records and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::BackupFull => "backup-full",
            JobKind::Expire => "expire",
            JobKind::Verify => "verify",
            JobKind::Drill => "drill",
            JobKind::Copy => "copy",
            JobKind::Dump => "dump",
            JobKind::DumpExpire => "dump-expire",
            JobKind::DumpDrill => "dump-drill",
        }
    }

    /// Arguments of the child `lifeboat` process. Each prints its result as JSON on stdout.
    pub fn args(self) -> Vec<&'static str> {
        match self {
            JobKind::Backup => vec!["backup", "--json"],
            JobKind::BackupFull => vec!["backup", "--full-scan", "--json"],
            JobKind::Expire => vec!["expire", "--json"],
            JobKind::Verify => vec!["verify", "--json"],
            JobKind::Drill => vec!["drill", "--trigger", "schedule", "--json"],
            JobKind::Copy => vec!["copy", "--json"],
            JobKind::Dump => vec!["dump", "--json"],
            JobKind::DumpExpire => vec!["dump", "expire", "--json"],
            JobKind::DumpDrill => vec!["drill", "--dump", "--trigger", "schedule", "--json"],
        }
    }

    fn pattern(self, config: &ScheduleConfig) -> Option<&str> {
        match self {
            JobKind::Backup => config.backup.as_deref(),
            JobKind::BackupFull => config.backup_full.as_deref(),
            JobKind::Expire => config.expire.as_deref(),
            JobKind::Verify => config.verify.as_deref(),
            JobKind::Drill => config.drill.as_deref(),
            JobKind::Copy => config.copy.as_deref(),
            JobKind::Dump => config.dump.as_deref(),
            JobKind::DumpExpire => config.dump_expire.as_deref(),
            JobKind::DumpDrill => config.dump_drill.as_deref(),
        }
    }

    fn config_key(self) -> &'static str {
        match self {
            JobKind::BackupFull => "backup_full",
            JobKind::DumpExpire => "dump_expire",
            JobKind::DumpDrill => "dump_drill",
            other => other.name(),
        }
    }
}

/// A job with its parsed schedule.
#[derive(Debug, Clone)]
pub struct ScheduledJob {
    pub kind: JobKind,
    /// The cron line as written.
    pub pattern: String,
    cron: Cron,
}

impl ScheduledJob {
    pub fn new(kind: JobKind, pattern: &str) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern.trim())
            .map_err(|e| {
                format!(
                    "[schedule] {} = {pattern:?} is not a cron line: {e}; write 5 fields \
                     (minute hour day-of-month month day-of-week, UTC), e.g. \"0 * * * *\" for hourly",
                    kind.config_key()
                )
            })?;
        Ok(Self {
            kind,
            pattern: pattern.trim().to_string(),
            cron,
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The first scheduled moment strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The latest scheduled moment at or before `at`.
    pub fn previous(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at, true).ok()
    }

    /// The moment to run at start-up, if a run was missed: the latest scheduled moment before
    /// `now` that no finished run (succeeded or failed) covers. A job that never ran has nothing
    /// missed: a new schedule starts at its next moment. An interrupted run does not count as
    /// finished, so a backup abandoned by a shutdown runs again at the next start.
    pub fn missed(
        &self,
        history: Option<&JobHistory>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let history = history.filter(|h| !h.runs.is_empty())?;
        let due = self.previous(now)?;
        let covered = history.runs.iter().any(|run| {
            run.outcome != Outcome::Interrupted
                && run
                    .scheduled_for
                    .as_deref()
                    .or(Some(run.started.as_str()))
                    .and_then(parse_rfc3339)
                    .is_some_and(|t| t >= due)
        });
        (!covered).then_some(due)
    }
}

/// The scheduled jobs of a configuration, or every cron line that does not parse.
pub fn jobs(config: &ScheduleConfig) -> Result<Vec<ScheduledJob>, Vec<String>> {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for kind in JobKind::ALL {
        if let Some(pattern) = kind.pattern(config) {
            match ScheduledJob::new(kind, pattern) {
                Ok(job) => jobs.push(job),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_repo::records::JobRun;

    fn at(text: &str) -> DateTime<Utc> {
        parse_rfc3339(text).expect("test time")
    }

    fn run(scheduled_for: &str, outcome: Outcome) -> JobRun {
        JobRun {
            scheduled_for: Some(scheduled_for.into()),
            started: scheduled_for.into(),
            finished: scheduled_for.into(),
            duration_seconds: 1.0,
            outcome,
            message: None,
            summary: None,
            host: "h".into(),
            exit_code: Some(0),
        }
    }

    #[test]
    fn next_and_previous_in_utc() {
        let job = ScheduledJob::new(JobKind::Backup, "0 * * * *").expect("parses");
        let now = at("2026-11-23T10:20:00Z");
        assert_eq!(job.next_after(now), Some(at("2026-11-23T11:00:00Z")));
        assert_eq!(job.previous(now), Some(at("2026-11-23T10:00:00Z")));
        let secs = ScheduledJob::new(JobKind::Drill, "*/20 * * * * *").expect("seconds field");
        assert_eq!(secs.next_after(now), Some(at("2026-11-23T10:20:20Z")));
    }

    #[test]
    fn a_bad_line_names_the_key_and_the_fix() {
        let e = ScheduledJob::new(JobKind::BackupFull, "every hour").expect_err("refused");
        assert!(e.contains("backup_full"), "{e}");
        assert!(e.contains("0 * * * *"), "{e}");
    }

    #[test]
    fn missed_runs_collapse_into_the_latest_and_interrupted_ones_count_as_missed() {
        let job = ScheduledJob::new(JobKind::Backup, "0 * * * *").expect("parses");
        let now = at("2026-11-23T13:20:00Z");
        let mut h = JobHistory {
            job: "backup".into(),
            ..Default::default()
        };
        assert_eq!(job.missed(Some(&h), now), None, "never ran: nothing missed");
        h.record(run("2026-11-23T10:00:00.000Z", Outcome::Succeeded));
        assert_eq!(job.missed(Some(&h), now), Some(at("2026-11-23T13:00:00Z")));
        h.record(run("2026-11-23T13:00:00.000Z", Outcome::Interrupted));
        assert_eq!(job.missed(Some(&h), now), Some(at("2026-11-23T13:00:00Z")));
        h.record(run("2026-11-23T13:00:00.000Z", Outcome::Failed));
        assert_eq!(
            job.missed(Some(&h), now),
            None,
            "a failed run is a finished run"
        );
    }
}
