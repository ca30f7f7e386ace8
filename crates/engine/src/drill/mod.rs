//! `drill`: prove a backup restores, and measure what an outage would cost.
//!
//! A drill picks a backup and a recovery target, restores the backup into a scratch directory with
//! the ordinary restore, starts PostgreSQL on it (on a free 127.0.0.1 port, its socket inside the
//! scratch directory, authentication limited to that socket), waits until recovery has ended, runs
//! `pg_amcheck` and the operator's check queries, then stops the server and removes the directory,
//! also when something failed. The result is a [`DrillRecord`]: which step failed and why, the
//! restore and replay times, and the data-loss window. A drill that finds a problem is not an
//! error: it is a record with `passed = false`. Errors ([`EngineError`]) are kept for what stops a
//! drill from starting at all (an unreadable repository, bad options).
//!
//! Nothing here prints. The caller stores the record (`Repository::put_drill`) and renders it.
//!
//! A dump drill ([`DumpChoice`]) proves a logical dump instead: it makes a fresh cluster with
//! `initdb` in the scratch directory, starts it the same way, restores the dump's databases into
//! it through the dump restore (every chunk verified), and runs the same checks (`dump`).
//!
//! Parts: `run` (the steps, each raced against cancellation and the deadline), `choose` (which
//! backup and target), `scratch` (the scratch directory, its owner marker, the sweep of
//! abandoned ones, cleanup), `server` (which server programs, the copy's settings), `checks`
//! (pg_amcheck, check queries).

mod checks;
mod choice;
mod choose;
mod dump;
mod run;
mod scratch;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use lifeboat_repo::Repository;
use lifeboat_repo::records::{DrillKind, DrillRecord};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use tokio::sync::watch;

pub use choice::{BackupChoice, DrillTarget};

use crate::{EngineError, Result};
use run::{Halt, Run};
use scratch::Scratch;

/// The `[drill]` section of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {
    /// `latest`, `random` (any retained backup) or a label. Default latest.
    #[serde(deserialize_with = "choice::backup_key")]
    pub backup: BackupChoice,
    /// `latest` (end of the archive) or `random` (a random point in the backup's window). Default latest.
    #[serde(deserialize_with = "choice::target_key")]
    pub target: DrillTarget,
    /// Where scratch clusters are made. Default: the system's temporary directory.
    pub scratch_dir: Option<PathBuf>,
    /// Database the check queries run in. Default `postgres`.
    pub database: String,
    /// Queries that must each return one value that is true or a number greater than zero, e.g.
    /// "select count(*) from orders where created_at > now() - '1 day'::interval".
    pub checks: Vec<String>,
    /// Run pg_amcheck on every database. Default true.
    pub amcheck: bool,
    /// The whole drill (restore, replay, checks) must finish within this. Default 1h.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The directory holding `postgres` and `pg_ctl` of the backup's PostgreSQL major. Default:
    /// found by the backup's major (`/usr/lib/postgresql/<major>/bin`, `/usr/pgsql-<major>/bin`,
    /// `pg_config --bindir`, `PATH`).
    pub bindir: Option<PathBuf>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            backup: BackupChoice::Latest,
            target: DrillTarget::Latest,
            scratch_dir: None,
            database: "postgres".into(),
            checks: Vec::new(),
            amcheck: true,
            timeout: Duration::from_secs(3600),
            bindir: None,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"90s\", \"5m\" or \"1h\": {e}"
        ))
    })
}

/// The steps a drill can fail at, as recorded in [`DrillRecord::failed_step`].
pub mod step {
    pub const CHOOSE: &str = "choose";
    pub const RESTORE: &str = "restore";
    /// Also when the backup's PostgreSQL major is not installed: found before the restore.
    pub const START: &str = "start";
    pub const RECOVER: &str = "recover";
    pub const AMCHECK: &str = "amcheck";
    pub const CHECK: &str = "check";
}

/// What one drill does: the configuration plus what only the caller knows.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub backup: BackupChoice,
    pub target: DrillTarget,
    /// The scratch directory `lifeboat-drill-<id>` is made under it.
    pub scratch_dir: PathBuf,
    pub database: String,
    pub checks: Vec<String>,
    pub amcheck: bool,
    pub timeout: Duration,
    /// Leave the scratch directory (server stopped) to look at.
    pub keep: bool,
    /// `manual` or `schedule`, as recorded.
    pub trigger: String,
    /// The `restore_command` the scratch server fetches WAL with.
    pub restore_command: String,
    /// Parallel downloads and writes of the restore.
    pub parallel: usize,
    /// The server programs to run the copy with (`[drill] bindir`); `None`: those of the
    /// backup's major, wherever they are installed.
    pub bindir: Option<PathBuf>,
    /// Drill a logical dump instead of a backup (`backup` and `target` are then unused).
    pub dump: Option<DumpChoice>,
}

/// Which dump a dump drill restores, and which of its databases.
#[derive(Debug, Clone, Default)]
pub struct DumpChoice {
    /// `None`: the newest dump (holding every database in `databases`).
    pub label: Option<String>,
    /// Empty: every database of the dump.
    pub databases: Vec<String>,
}

impl DrillOptions {
    pub fn new(config: &DrillConfig, restore_command: String) -> Self {
        Self {
            backup: config.backup.clone(),
            target: config.target,
            scratch_dir: config
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            database: config.database.clone(),
            checks: config.checks.clone(),
            amcheck: config.amcheck,
            timeout: config.timeout,
            keep: false,
            trigger: "manual".into(),
            restore_command,
            parallel: std::thread::available_parallelism().map_or(2, |n| n.get()),
            bindir: config.bindir.clone(),
            dump: None,
        }
    }
}

/// A drill that ran to its end, passed or failed.
#[derive(Debug, Clone)]
pub struct DrillReport {
    /// Store it with `Repository::put_drill`.
    pub record: DrillRecord,
    /// What to do about the failure, when it failed.
    pub hint: Option<String>,
    /// The scratch directory, when it was kept (`keep`).
    pub kept: Option<PathBuf>,
    /// What could not be cleaned up (a server that would not stop, a directory that would not
    /// go), each with what to do.
    pub cleanup_problems: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum DrillOutcome {
    Finished(Box<DrillReport>),
    /// Cancelled before it finished: the server was stopped and the scratch directory removed
    /// (unless kept); nothing is to be recorded, since an interrupted drill proved nothing.
    Interrupted {
        cleanup_problems: Vec<String>,
    },
}

/// Run one drill. `cancel` turning true (a signal, a daemon shutting down) stops it: the server is
/// stopped, the scratch directory removed, and [`DrillOutcome::Interrupted`] returned.
pub async fn drill(
    repo: &Repository,
    opts: &DrillOptions,
    mut cancel: watch::Receiver<bool>,
) -> Result<DrillOutcome> {
    validate(opts)?;
    let started = OffsetDateTime::now_utc();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let id = drill_id(started);
    let mut record = DrillRecord {
        kind: if opts.dump.is_some() {
            DrillKind::Dump
        } else {
            DrillKind::Backup
        },
        id: id.clone(),
        host: lifeboat_repo::lock::this_host(),
        trigger: opts.trigger.clone(),
        started: started.replace_nanosecond(0).unwrap_or(started),
        // Set when it ends.
        finished: started,
        backup: None,
        databases: Vec::new(),
        backup_choice: match &opts.dump {
            Some(d) => d.label.clone().unwrap_or_else(|| "latest".into()),
            None => opts.backup.to_string(),
        },
        target: if opts.dump.is_some() {
            "dump".into()
        } else {
            opts.target.to_string()
        },
        passed: false,
        failed_step: None,
        failure: None,
        restore_seconds: None,
        replay_seconds: None,
        recovery_seconds: None,
        newest_commit: None,
        data_loss_seconds: None,
        bytes_restored: 0,
        checks: Vec::new(),
    };
    let scratch_dir = std::path::absolute(&opts.scratch_dir).map_err(|e| {
        EngineError::io(
            format!("cannot make {} absolute", opts.scratch_dir.display()),
            e,
        )
    })?;
    let mut scratch = Scratch::new(scratch_dir.join(format!("lifeboat-drill-{id}")), opts.keep);
    let mut run = Run {
        repo,
        opts,
        started,
        deadline,
        cancel: &mut cancel,
        scratch: &mut scratch,
        record: &mut record,
    };
    let halted = match &opts.dump {
        Some(choice) => run.dump_steps(choice).await,
        None => run.steps().await,
    };
    let cleanup_problems = scratch.finish().await;
    let kept = (opts.keep && scratch.created).then(|| scratch.dir.clone());
    let hint = match halted {
        Ok(()) => {
            record.passed = true;
            None
        }
        Err(Halt::Error(e)) => return Err(e),
        Err(Halt::Interrupted) => return Ok(DrillOutcome::Interrupted { cleanup_problems }),
        Err(Halt::Failed {
            step,
            failure,
            hint,
        }) => {
            record.failed_step = Some(step.to_string());
            record.failure = Some(failure);
            Some(hint)
        }
    };
    record.finished = lifeboat_repo::timestamp::now_seconds();
    Ok(DrillOutcome::Finished(Box::new(DrillReport {
        record,
        hint,
        kept,
        cleanup_problems,
    })))
}

/// Options a drill cannot start with; the message says which value and what is accepted.
fn validate(opts: &DrillOptions) -> Result<()> {
    if matches!(&opts.backup, BackupChoice::Label(label) if label.trim().is_empty()) {
        return Err(EngineError::invalid(
            "the drill's backup choice is empty",
            "give --backup latest, random or a label (lifeboat list), or set drill.backup",
        ));
    }
    if opts.timeout.is_zero() {
        return Err(EngineError::invalid(
            "drill.timeout is zero: no drill can finish in no time",
            "set drill.timeout to e.g. \"1h\"",
        ));
    }
    Ok(())
}

/// `<start as YYYYMMDDTHHMMSSZ>-<8 random hex digits>`: sortable by start, unique enough.
fn drill_id(started: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:08x}",
        started.year(),
        u8::from(started.month()),
        started.day(),
        started.hour(),
        started.minute(),
        started.second(),
        rand::random::<u32>()
    )
}

fn seconds(d: Duration) -> f64 {
    round_ms(d.as_secs_f64())
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_start() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_432_502).unwrap();
        let id = drill_id(t);
        assert!(id.starts_with("20261123T"), "{id}");
        assert_eq!(id.len(), "20261123T101502Z-0123abcd".len());
    }
}
