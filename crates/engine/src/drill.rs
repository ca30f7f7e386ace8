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

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::{self as pgc, LocalCluster, StopMode};
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline, quote_conf_value};
use lifeboat_pg::walname::WalSegmentName;
use lifeboat_repo::Repository;
use lifeboat_repo::backup::Manifest;
use lifeboat_repo::lock::this_pid_scope;
use lifeboat_repo::records::{DrillCheck, DrillRecord};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::restore::{RestoreOptions, RestoreReport};
use crate::{EngineError, Result, join_error};

/// The `[drill]` section of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {
    /// `latest` or `random` (any retained backup). Default latest.
    pub backup: String,
    /// `latest` (end of the archive) or `random` (a random point in the backup's window). Default latest.
    pub target: String,
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
            backup: "latest".into(),
            target: "latest".into(),
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
    /// `latest`, `random`, or a backup label.
    pub backup: String,
    /// `latest` (the end of the archive) or `random` (an LSN between the backup's end and the
    /// last archived segment of the unbroken run after it).
    pub target: String,
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
}

impl DrillOptions {
    pub fn new(config: &DrillConfig, restore_command: String) -> Self {
        Self {
            backup: config.backup.clone(),
            target: config.target.clone(),
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
        id: id.clone(),
        host: lifeboat_repo::lock::this_host(),
        trigger: opts.trigger.clone(),
        started: rfc3339(started),
        finished: String::new(),
        backup: None,
        backup_choice: opts.backup.clone(),
        target: opts.target.clone(),
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
    let halted = run.steps().await;
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
    record.finished = rfc3339(OffsetDateTime::now_utc());
    Ok(DrillOutcome::Finished(Box::new(DrillReport {
        record,
        hint,
        kept,
        cleanup_problems,
    })))
}

/// Options a drill cannot start with; the message says which value and what is accepted.
fn validate(opts: &DrillOptions) -> Result<()> {
    if !matches!(opts.target.as_str(), "latest" | "random") {
        return Err(EngineError::invalid(
            format!("drill target {:?} is not `latest` or `random`", opts.target),
            "give --target latest (the end of the archive) or random, or set drill.target",
        ));
    }
    if opts.backup.trim().is_empty() {
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

/// Why the steps stopped early.
enum Halt {
    /// The drill found a problem: it is recorded.
    Failed {
        step: &'static str,
        failure: String,
        hint: String,
    },
    /// Cancelled: nothing is recorded.
    Interrupted,
    /// The drill could not run at all.
    Error(EngineError),
}

impl From<EngineError> for Halt {
    fn from(e: EngineError) -> Self {
        Halt::Error(e)
    }
}

fn failed(step: &'static str, failure: impl Into<String>, hint: impl Into<String>) -> Halt {
    Halt::Failed {
        step,
        failure: failure.into(),
        hint: hint.into(),
    }
}

/// How a raced piece of work ended.
enum Raced<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

struct Run<'a> {
    repo: &'a Repository,
    opts: &'a DrillOptions,
    started: OffsetDateTime,
    deadline: tokio::time::Instant,
    cancel: &'a mut watch::Receiver<bool>,
    scratch: &'a mut Scratch,
    record: &'a mut DrillRecord,
}

/// Pieces of the log tail quoted in a failure.
const LOG_LINES: usize = 20;
/// How often the server is asked whether recovery has ended.
const POLL: Duration = Duration::from_millis(100);

impl Run<'_> {
    async fn steps(&mut self) -> Result<(), Halt> {
        let manifest = self.choose_backup().await?;
        let server = self.server_programs(&manifest).await?;
        let target = self.choose_target(&manifest).await?;
        self.restore(&manifest, &target).await?;
        let cluster = self.start(server.bindir).await?;
        self.recover(&cluster).await?;
        self.newest_commit(&cluster, &target).await?;
        self.checks(&cluster, server.major).await
    }

    /// Wait for `fut` until it is done, the drill's deadline passes, or the drill is cancelled.
    async fn race<F: Future>(&mut self, fut: F) -> Raced<F::Output> {
        let cancel = &mut *self.cancel;
        tokio::select! {
            biased;
            () = cancelled(cancel) => Raced::Cancelled,
            r = tokio::time::timeout_at(self.deadline, fut) => match r {
                Ok(v) => Raced::Done(v),
                Err(_) => Raced::TimedOut,
            },
        }
    }

    /// Run blocking `work` on a blocking thread and race it. A task that is given up on keeps
    /// running: cleanup waits for it after stopping the server it talks to.
    async fn blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Raced<Result<T, EngineError>> {
        let mut handle: JoinHandle<T> = tokio::task::spawn_blocking(work);
        match self.race(&mut handle).await {
            Raced::Done(r) => Raced::Done(r.map_err(join_error)),
            Raced::TimedOut => {
                self.scratch
                    .pending
                    .push(Box::new(move || handle.is_finished()));
                Raced::TimedOut
            }
            Raced::Cancelled => {
                self.scratch
                    .pending
                    .push(Box::new(move || handle.is_finished()));
                Raced::Cancelled
            }
        }
    }

    fn timed_out(&self, step: &'static str, what: &str) -> Halt {
        failed(
            step,
            format!(
                "{what} did not finish within the drill's timeout of {}",
                humantime::format_duration(self.opts.timeout)
            ),
            "raise drill.timeout if the backup is simply large; otherwise run the drill with --keep and read postgres.log in the scratch directory",
        )
    }

    async fn choose_backup(&mut self) -> Result<Manifest, Halt> {
        let listing = match self.race(self.repo.readable_manifests()).await {
            Raced::Done(r) => r.map_err(EngineError::from)?,
            Raced::TimedOut => return Err(self.timed_out(step::CHOOSE, "listing the backups")),
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        let (manifests, unreadable) = listing;
        let pick = |n: usize| rand::random_range(0..n);
        let manifest = choose(&manifests, &unreadable, &self.opts.backup, pick)
            .map_err(|(why, hint)| failed(step::CHOOSE, why, hint))?
            .clone();
        self.record.backup = Some(manifest.label.clone());
        Ok(manifest)
    }

    /// The server programs of the backup's PostgreSQL major (`[drill] bindir`, or found by the
    /// major), before anything is restored: a copy can only be started by its own major, and
    /// finding that out after restoring a large backup would waste the restore.
    async fn server_programs(&mut self, manifest: &Manifest) -> Result<ServerPrograms, Halt> {
        let major = pgc::major_of_version_num(manifest.pg_version_num);
        let configured = self.opts.bindir.clone();
        let found = match self
            .blocking(move || server_bindir(major, configured.as_deref()))
            .await
        {
            Raced::Done(r) => r?,
            Raced::TimedOut => {
                return Err(self.timed_out(step::START, "finding the server programs"));
            }
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        let bindir = found.map_err(|(why, hint)| failed(step::START, why, hint))?;
        Ok(ServerPrograms { bindir, major })
    }

    async fn choose_target(&mut self, manifest: &Manifest) -> Result<RecoveryTarget, Halt> {
        if self.opts.target == "latest" {
            self.record.target = "latest".into();
            return Ok(RecoveryTarget::Latest);
        }
        let repo = self.repo;
        let window = async {
            let identity = repo.identity().await?.ok_or_else(|| {
                EngineError::invalid(
                    "the repository holds no cluster identity, so no WAL",
                    "archive WAL into it with `lifeboat wal-push`",
                )
            })?;
            let seg_size = identity.wal_segment_size;
            let stop: WalSegmentName = manifest.stop_wal.parse().map_err(|e| {
                EngineError::Internal(format!(
                    "backup {} names a bad WAL segment: {e}",
                    manifest.label
                ))
            })?;
            let end = crate::list::contiguous_end(repo, &stop, seg_size).await?;
            let last_start = end.start_lsn(seg_size).map_err(|e| {
                EngineError::Internal(format!("segment {end} has no start position: {e}"))
            })?;
            Ok::<_, EngineError>(last_start)
        };
        let last_start = match self.race(window).await {
            Raced::Done(r) => r?,
            Raced::TimedOut => return Err(self.timed_out(step::CHOOSE, "listing the WAL")),
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        let lsn = random_lsn(manifest.stop_lsn, last_start, |lo, hi| {
            rand::random_range(lo..=hi)
        });
        self.record.target = format!("lsn {lsn}");
        Ok(RecoveryTarget::Lsn(lsn))
    }

    async fn restore(&mut self, manifest: &Manifest, target: &RecoveryTarget) -> Result<(), Halt> {
        let dir = self.scratch.dir.clone();
        let created = tokio::task::spawn_blocking(move || {
            if let Some(parent) = dir.parent() {
                sweep_abandoned(parent);
            }
            make_scratch_dir(&dir)
        })
        .await
        .map_err(join_error)?;
        if let Err(why) = created {
            return Err(failed(
                step::RESTORE,
                why,
                "give --scratch-dir (or drill.scratch_dir) a writable directory with room for the restored cluster",
            ));
        }
        self.scratch.created = true;
        // A tablespace goes back where it was by default: for a copy that would be the live
        // server's directory, so each goes inside the scratch directory instead.
        let tablespace_map: HashMap<String, PathBuf> = manifest
            .tablespaces
            .iter()
            .map(|ts| {
                (
                    ts.oid.to_string(),
                    self.scratch
                        .dir
                        .join("tablespaces")
                        .join(ts.oid.to_string()),
                )
            })
            .collect();
        let (action, timeline) = match target {
            // The end of the archive: follow the newest timeline, as a real restore does.
            RecoveryTarget::Latest => (TargetAction::Promote, TargetTimeline::Latest),
            // The LSN was chosen on the backup's timeline.
            _ => (TargetAction::Promote, TargetTimeline::Current),
        };
        let ropts = RestoreOptions {
            target_dir: self.scratch.data_dir(),
            backup: Some(manifest.label.clone()),
            target: target.clone(),
            action,
            timeline,
            delta: false,
            standby: false,
            primary_conninfo: None,
            tablespace_map,
            dry_run: false,
            parallel: self.opts.parallel.max(1),
            archive_off: true,
            restore_command: self.opts.restore_command.clone(),
            direct_io: true,
        };
        let began = Instant::now();
        let repo = self.repo;
        let result = self
            .race(crate::restore::restore(repo, &ropts, Arc::new(|_| {})))
            .await;
        let report: RestoreReport = match result {
            Raced::Done(Ok(report)) => report,
            Raced::Done(Err(e)) => {
                let mut failure = e.to_string();
                if let Some(hint) = e.hint() {
                    failure.push_str("; ");
                    failure.push_str(&hint);
                }
                return Err(failed(
                    step::RESTORE,
                    failure,
                    "`lifeboat verify` names every damaged or missing object and the backups it affects; drill another backup with --backup LABEL",
                ));
            }
            Raced::TimedOut => return Err(self.timed_out(step::RESTORE, "the restore")),
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        self.record.restore_seconds = Some(seconds(began.elapsed()));
        self.record.bytes_restored = report.bytes_written;
        Ok(())
    }

    async fn start(&mut self, bindir: PathBuf) -> Result<LocalCluster, Halt> {
        let dir = self.scratch.dir.clone();
        let prepared = match self.blocking(move || prepare_cluster(&dir, &bindir)).await {
            Raced::Done(r) => r?,
            Raced::TimedOut => return Err(self.timed_out(step::START, "preparing the server")),
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        let cluster = prepared.map_err(|why| {
            failed(
                step::START,
                why,
                "fix what the message names, then run the drill again",
            )
        })?;
        self.scratch.cluster = Some(cluster.clone());
        let began = Instant::now();
        let remaining = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let starting = cluster.clone();
        let started = match self.blocking(move || starting.start(remaining)).await {
            Raced::Done(r) => r?,
            Raced::TimedOut => return Err(self.timed_out(step::START, "starting PostgreSQL")),
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        if let Err(e) = started {
            return Err(failed(
                step::START,
                format!("PostgreSQL did not start on the restored copy: {e}"),
                "run the drill with --keep and read postgres.log in the scratch directory",
            ));
        }
        self.scratch.replay_began = Some(began);
        Ok(cluster)
    }

    /// Wait until recovery has ended and the server accepts writes.
    async fn recover(&mut self, cluster: &LocalCluster) -> Result<(), Halt> {
        let began = self.scratch.replay_began.unwrap_or_else(Instant::now);
        loop {
            let asking = cluster.clone();
            let answer = match self
                .blocking(move || {
                    let state = asking.psql("select pg_is_in_recovery()");
                    let running = state.is_ok() || asking.is_running();
                    (state, running)
                })
                .await
            {
                Raced::Done(r) => r?,
                Raced::TimedOut => return Err(self.timed_out(step::RECOVER, "recovery")),
                Raced::Cancelled => return Err(Halt::Interrupted),
            };
            match answer {
                (Ok(state), _) if state == "f" => break,
                (_, false) => {
                    return Err(failed(
                        step::RECOVER,
                        format!(
                            "the restored server stopped during recovery; last lines of its log:\n{}",
                            cluster.log_tail(LOG_LINES)
                        ),
                        "the log names what recovery could not do (a missing or damaged WAL file, a target it could not reach); `lifeboat verify` checks the archive",
                    ));
                }
                _ => {}
            }
            if let Raced::Cancelled = self.race(tokio::time::sleep(POLL)).await {
                return Err(Halt::Interrupted);
            }
        }
        let replay = seconds(began.elapsed());
        self.record.replay_seconds = Some(replay);
        self.record.recovery_seconds = self
            .record
            .restore_seconds
            .map(|restore| round_ms(restore + replay));
        Ok(())
    }

    /// The newest transaction the copy holds, and for `latest` how far it lies behind the moment
    /// the drill started: the data an outage at that moment would have lost.
    async fn newest_commit(
        &mut self,
        cluster: &LocalCluster,
        target: &RecoveryTarget,
    ) -> Result<(), Halt> {
        let asking = cluster.clone();
        let answer = match self
            .blocking(move || {
                asking.psql(
                    "select to_char(t at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                     || ' ' || extract(epoch from t) \
                     from (select pg_last_xact_replay_timestamp() as t) s where t is not null",
                )
            })
            .await
        {
            Raced::Done(r) => r?,
            Raced::TimedOut => {
                return Err(self.timed_out(step::RECOVER, "reading the newest commit"));
            }
            Raced::Cancelled => return Err(Halt::Interrupted),
        };
        let text = answer.map_err(|e| {
            failed(
                step::RECOVER,
                format!("cannot ask the restored server for its newest commit: {e}"),
                "run the drill with --keep and read postgres.log in the scratch directory",
            )
        })?;
        // No row: no transaction was replayed, so the copy cannot say.
        let Some((at, epoch)) = text.split_once(' ') else {
            return Ok(());
        };
        self.record.newest_commit = Some(at.to_string());
        if matches!(target, RecoveryTarget::Latest)
            && let Ok(epoch) = epoch.trim().parse::<f64>()
        {
            let start = self.started.unix_timestamp_nanos() as f64 / 1e9;
            self.record.data_loss_seconds = Some(round_ms((start - epoch).max(0.0)));
        }
        Ok(())
    }

    /// pg_amcheck, then each check query; all run so the record lists every result, and the
    /// first failure is the one named.
    async fn checks(&mut self, cluster: &LocalCluster, major: u32) -> Result<(), Halt> {
        let mut first_failure: Option<Halt> = None;
        if self.opts.amcheck {
            let checking = cluster.clone();
            let out = match self.blocking(move || amcheck(&checking, major)).await {
                Raced::Done(r) => r?,
                Raced::TimedOut => return Err(self.timed_out(step::AMCHECK, "pg_amcheck")),
                Raced::Cancelled => return Err(Halt::Interrupted),
            };
            if !out.passed {
                first_failure = Some(failed(
                    step::AMCHECK,
                    format!(
                        "pg_amcheck found problems in the restored copy: {}",
                        out.detail
                    ),
                    "the backed-up cluster may be corrupt already: run pg_amcheck on it, and restore from an older backup if it is",
                ));
            }
            self.record.checks.push(out);
        }
        for query in self.opts.checks.clone() {
            let checking = cluster.clone();
            let db = self.opts.database.clone();
            let sql = query.clone();
            let out = match self.blocking(move || run_check(&checking, &db, &sql)).await {
                Raced::Done(r) => r?,
                Raced::TimedOut => {
                    return Err(self.timed_out(step::CHECK, &format!("check query `{query}`")));
                }
                Raced::Cancelled => return Err(Halt::Interrupted),
            };
            if !out.passed && first_failure.is_none() {
                first_failure = Some(failed(
                    step::CHECK,
                    format!(
                        "check query `{query}` in database {}: {}",
                        self.opts.database, out.detail
                    ),
                    "a check must return one value that is true or a number greater than zero: see whether the data is missing from the backup or the query expects too much",
                ));
            }
            self.record.checks.push(out);
        }
        match first_failure {
            Some(halt) => Err(halt),
            None => Ok(()),
        }
    }
}

/// The server programs a copy runs with, and their major.
struct ServerPrograms {
    bindir: PathBuf,
    major: u32,
}

/// The bin directory of PostgreSQL `major`: `configured` (`[drill] bindir`) when given, which
/// must hold that major, else the one [`pgc::bindir_for_major`] finds. The error is what to record
/// and what to do.
fn server_bindir(
    major: u32,
    configured: Option<&Path>,
) -> std::result::Result<PathBuf, (String, String)> {
    let install = format!(
        "install PostgreSQL {major}'s server (Debian/Ubuntu: apt-get install postgresql-{major}; \
         RHEL and derivatives: dnf install postgresql{major}-server), or set [drill] bindir to the \
         directory holding its postgres and pg_ctl"
    );
    let Some(dir) = configured else {
        return pgc::bindir_for_major(major).map_err(|e| {
            (
                format!("the backup is of PostgreSQL {major}, which cannot be started here: {e}"),
                install.clone(),
            )
        });
    };
    match pgc::bindir_major(dir) {
        Ok(found) if found == major => Ok(dir.to_path_buf()),
        Ok(found) => Err((
            format!(
                "the backup is of PostgreSQL {major}, but [drill] bindir = {} holds PostgreSQL \
                 {found}, which cannot start it",
                dir.display()
            ),
            format!(
                "set [drill] bindir to the bin directory of PostgreSQL {major}, or remove it to let \
                 the drill find one; otherwise {install}"
            ),
        )),
        Err(e) => Err((
            format!(
                "the backup is of PostgreSQL {major}, and the server programs in [drill] bindir = \
                 {} do not run: {e}",
                dir.display()
            ),
            install,
        )),
    }
}

/// Resolves when `cancel` turns true; never when its sender is gone without cancelling.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Pick the backup: `latest` (the newest readable), `random` (uniform; `pick(n)` returns an index
/// below `n`) or a label. The error is what to record and what to do.
fn choose<'a>(
    manifests: &'a [Manifest],
    unreadable: &[(String, String)],
    choice: &str,
    pick: impl FnOnce(usize) -> usize,
) -> std::result::Result<&'a Manifest, (String, String)> {
    let none = || {
        let mut why = "the repository holds no complete backup".to_string();
        if !unreadable.is_empty() {
            why.push_str(&format!(
                " that can be read ({} unreadable: {})",
                unreadable.len(),
                unreadable
                    .iter()
                    .map(|(label, problem)| format!("{label}: {problem}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        (
            why,
            "take one with `lifeboat backup`; `lifeboat verify` names damaged backups".to_string(),
        )
    };
    match choice {
        "latest" => manifests.last().ok_or_else(none),
        "random" => {
            if manifests.is_empty() {
                return Err(none());
            }
            Ok(&manifests[pick(manifests.len()).min(manifests.len() - 1)])
        }
        label => {
            if let Some(m) = manifests.iter().find(|m| m.label == label) {
                return Ok(m);
            }
            if let Some((_, problem)) = unreadable.iter().find(|(l, _)| l == label) {
                return Err((
                    format!("backup {label} is unreadable: {problem}"),
                    "run `lifeboat verify --backup LABEL` for the details; drill another backup"
                        .to_string(),
                ));
            }
            Err((
                format!("there is no complete backup labelled {label}"),
                "`lifeboat list` shows the backups; --backup also takes latest or random"
                    .to_string(),
            ))
        }
    }
}

/// A target between the backup's end (`lo`) and the start of the last archived segment of the
/// unbroken run after it (`hi`): recovery reaches any such position, since the first record at or
/// after it is archived. When the run ends in the backup's own segment, the backup's end.
fn random_lsn(lo: Lsn, hi: Lsn, pick: impl FnOnce(u64, u64) -> u64) -> Lsn {
    if hi <= lo {
        return lo;
    }
    Lsn(pick(lo.0, hi.0).clamp(lo.0, hi.0))
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

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn seconds(d: Duration) -> f64 {
    round_ms(d.as_secs_f64())
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// The scratch directory, mode 0700: it will hold a copy of the production data.
fn make_scratch_dir(dir: &Path) -> std::result::Result<(), String> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|e| {
            format!(
                "cannot create the scratch directory {}: {e}",
                parent.display()
            )
        })?;
    }
    fs::create_dir(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .and_then(|()| fs::write(dir.join(OWNER_FILE), owner_line()))
        .map_err(|e| format!("cannot create the scratch directory {}: {e}", dir.display()))
}

/// In each scratch directory: `<pid> <pid scope>` of the drill that made it (the scope as repository
/// locks record it: `<boot id>:<PID namespace>`), so that a later drill can tell a directory
/// abandoned by a drill that is gone (kill -9, a crash, a reboot), whose server may still run on
/// a full copy of the data, from one in use. Removed from a directory kept on purpose (`--keep`),
/// which is then never swept.
const OWNER_FILE: &str = "drill.owner";

fn owner_line() -> String {
    format!(
        "{} {}\n",
        std::process::id(),
        this_pid_scope().unwrap_or_default()
    )
}

/// Whether the drill named by an owner line is gone: made before this boot, or in this boot and
/// PID namespace by a process that no longer runs. A drill in another PID namespace (another
/// container sharing the directory) cannot be judged from here and counts as running; so does a
/// live pid, perhaps reused, which a later sweep sees again.
fn owner_gone(pid: u32, scope: &str, here: &str) -> bool {
    let boot = |scope: &str| {
        scope
            .split_once(':')
            .map_or(scope, |(boot, _)| boot)
            .to_string()
    };
    if boot(scope) != boot(here) {
        return true;
    }
    scope == here && !pgc::pid_alive(pid)
}

/// Stop the server of, and remove, every scratch directory under `parent` whose drill is gone
/// ([`owner_gone`]). A directory whose owner cannot be read is left alone.
fn sweep_abandoned(parent: &Path) {
    let Ok(listing) = fs::read_dir(parent) else {
        return;
    };
    let here = this_pid_scope().unwrap_or_default();
    for entry in listing.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("lifeboat-drill-")
        {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut fields = owner.split_whitespace();
        let Some(pid) = fields.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !owner_gone(pid, fields.next().unwrap_or(""), &here) {
            continue;
        }
        tracing::warn!(
            "removing the scratch directory {} left by drill process {pid}, which is gone (killed or crashed); stopping its server first",
            dir.display()
        );
        let data = dir.join("data");
        let cluster = if data.join("postmaster.pid").exists() {
            match pgc::cluster_owner()
                .and_then(|owner| LocalCluster::existing(&data, 0, &dir, owner))
            {
                Ok(cluster) => Some(cluster),
                Err(e) => {
                    tracing::warn!(
                        "cannot stop the server on {} ({e}): stop it with `pg_ctl -D {} stop -m immediate` as its owner, then remove {}",
                        data.display(),
                        data.display(),
                        dir.display()
                    );
                    continue;
                }
            }
        } else {
            None
        };
        let mut abandoned = Scratch::new(dir, false);
        abandoned.created = true;
        abandoned.cluster = cluster;
        for problem in abandoned.cleanup() {
            tracing::warn!("{problem}");
        }
    }
}

/// Settings the copy starts with, after the cluster's own: whatever the backed-up cluster was
/// configured with, the copy must never collide with the real server (address, port, socket),
/// accept connections from anyone but the drill, log where the drill cannot read it, or fail on
/// settings that only matter in production (SSL files, memory sized for the real server).
fn drill_settings(scratch: &Path, port: u16) -> String {
    let path = |name: &str| quote_conf_value(&scratch.join(name).to_string_lossy());
    format!(
        "\n# Added by lifeboat drill for the scratch copy.\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = {}\n\
         unix_socket_permissions = 0700\n\
         hba_file = {}\n\
         ident_file = {}\n\
         logging_collector = off\n\
         log_destination = 'stderr'\n\
         ssl = off\n\
         hot_standby = on\n\
         shared_buffers = '128MB'\n\
         huge_pages = 'try'\n\
         synchronous_standby_names = ''\n\
         archive_mode = 'off'\n",
        quote_conf_value(&scratch.to_string_lossy()),
        path("pg_hba.conf"),
        path("pg_ident.conf"),
    )
}

/// Ready the restored directory to run with the server programs in `bindir`: our authentication
/// files and settings, the directory given to the cluster owner (the `postgres` OS user when we
/// are root), a free port.
fn prepare_cluster(scratch: &Path, bindir: &Path) -> std::result::Result<LocalCluster, String> {
    let data = scratch.join("data");
    let owner = pgc::cluster_owner().map_err(|e| e.to_string())?;
    let port = free_port()?;
    let write = |path: &Path, text: &str| {
        fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    // Only the cluster owner can reach the socket (a 0700 directory), so trust is safe there;
    // no host line, so nothing reaches the copy over TCP.
    write(
        &scratch.join("pg_hba.conf"),
        "# lifeboat drill: the socket in this 0700 directory only.\nlocal all all trust\n",
    )?;
    write(&scratch.join("pg_ident.conf"), "")?;
    // A cluster whose postgresql.conf lives outside its data directory (Debian) is restored with
    // it under restored_config/; that copy names the real data directory, so it is not used.
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        write(
            &conf,
            "# lifeboat drill: the cluster's configuration lives outside its data directory \
             (see restored_config/); the copy runs with PostgreSQL's defaults.\n",
        )?;
    }
    let auto = data.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&drill_settings(scratch, port));
    write(&auto, &text)?;
    if let Some(owner) = &owner {
        pgc::chown_recursive(scratch, owner).map_err(|e| e.to_string())?;
    }
    let cluster = LocalCluster::existing_in(bindir, &data, port, scratch, owner)
        .map_err(|e| e.to_string())?;
    // Said here in the drill's terms: later, pg_ctl's own complaints would not name the cause.
    let socket = scratch.join(format!(".s.PGSQL.{port}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the scratch directory {} is too long a path for the server's Unix socket ({} bytes \
             with the socket's name, at most {MAX_SOCKET_PATH}): give --scratch-dir (or \
             drill.scratch_dir) a shorter directory, e.g. /var/tmp",
            scratch.display(),
            socket.as_os_str().len()
        ));
    }
    if let Some(owner) = &cluster.owner {
        // Runs as the owner in the scratch directory, as pg_ctl will.
        let probe = cluster
            .command("pg_ctl")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = probe {
            return Err(format!(
                "the `{}` OS user, which PostgreSQL runs as, cannot work in the scratch directory \
                 {} ({e}): give --scratch-dir (or drill.scratch_dir) a directory whose parents it \
                 may enter (chmod o+x), e.g. /var/tmp",
                owner.name,
                scratch.display()
            ));
        }
    }
    Ok(cluster.with_log_file(scratch.join("postgres.log")))
}

/// Longest Unix socket path the kernel accepts.
const MAX_SOCKET_PATH: usize = 107;

fn free_port() -> std::result::Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// At most this many lines of a tool's complaint go into a record.
const DETAIL_LINES: usize = 20;

fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[..lines.len().min(DETAIL_LINES)].join("\n");
    if lines.len() > DETAIL_LINES {
        out.push_str(&format!(
            "\n... and {} more lines",
            lines.len() - DETAIL_LINES
        ));
    }
    out
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `pg_amcheck --all`, installing amcheck where missing (without it a database is skipped). A
/// PostgreSQL 13 server's amcheck cannot check tables (`verify_heapam` came in 14), so there
/// only its btree indexes are checked, and the detail says so.
fn amcheck(cluster: &LocalCluster, major: u32) -> DrillCheck {
    let name = "pg_amcheck".to_string();
    let indexes_only = major < 14;
    let mut cmd = cluster.command("pg_amcheck");
    cmd.args(["--all", "--install-missing"]);
    if indexes_only {
        cmd.args(["--index", "*"]);
    }
    let run = cmd.stdin(Stdio::null()).output();
    match run {
        Ok(out) if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) => {
            DrillCheck {
                name,
                passed: true,
                detail: if indexes_only {
                    format!(
                        "no corruption found in any database's btree indexes (PostgreSQL {major}'s \
                         amcheck cannot check tables)"
                    )
                } else {
                    "no corruption found in any database".into()
                },
            }
        }
        Ok(out) => DrillCheck {
            name,
            passed: false,
            detail: format!("({}) {}", out.status, first_lines(&output_text(&out))),
        },
        Err(e) => DrillCheck {
            name,
            passed: false,
            detail: format!(
                "could not run {}: {e}; install PostgreSQL's client programs (14 or later), or set drill.amcheck = false",
                pgc::program_path(&cluster.bindir, "pg_amcheck").display()
            ),
        },
    }
}

/// Field and row separators no query result holds by accident.
const FIELD_SEP: char = '\u{1f}';
const ROW_SEP: char = '\u{1e}';

/// One check query in `db`: it passes when it returns one value that is `t`/`true` or a number
/// greater than zero.
fn run_check(cluster: &LocalCluster, db: &str, sql: &str) -> DrillCheck {
    let fail = |detail: String| DrillCheck {
        name: sql.to_string(),
        passed: false,
        detail,
    };
    let run = cluster
        .command("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg("-F")
        .arg(FIELD_SEP.to_string())
        .arg("-R")
        .arg(ROW_SEP.to_string())
        .args(["-d", db, "-c", sql])
        .stdin(Stdio::null())
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => return fail(format!("could not run psql: {e}")),
    };
    if !out.status.success() {
        return fail(format!(
            "failed: {}",
            first_lines(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let (passed, detail) = judge(text);
    DrillCheck {
        name: sql.to_string(),
        passed,
        detail,
    }
}

/// Judge psql's unaligned output (rows split by [`ROW_SEP`], fields by [`FIELD_SEP`]).
fn judge(text: &str) -> (bool, String) {
    if text.is_empty() {
        return (
            false,
            "returned no rows (it must return one value that is true or a number greater than 0)"
                .into(),
        );
    }
    let rows: Vec<&str> = text.split(ROW_SEP).collect();
    if rows.len() > 1 {
        return (
            false,
            format!(
                "returned {} rows (it must return one value that is true or a number greater than 0)",
                rows.len()
            ),
        );
    }
    let fields: Vec<&str> = rows[0].split(FIELD_SEP).collect();
    if fields.len() > 1 {
        return (
            false,
            format!(
                "returned {} columns (it must return one value that is true or a number greater than 0)",
                fields.len()
            ),
        );
    }
    let value = fields[0].trim();
    let passed = value == "t"
        || value.eq_ignore_ascii_case("true")
        || value.parse::<f64>().is_ok_and(|n| n > 0.0);
    let shown = if value.is_empty() { "NULL" } else { value };
    if passed {
        (true, format!("returned {shown}"))
    } else {
        (
            false,
            format!("returned {shown} (it must be true or a number greater than 0)"),
        )
    }
}

/// The drill's scratch directory and the server running in it; cleaned up by [`Scratch::finish`],
/// or on drop if the drill's future was dropped before it got there (then on a blocking thread of
/// the runtime, which waits for it when it shuts down, never on the runtime thread dropping it).
struct Scratch {
    dir: PathBuf,
    keep: bool,
    /// Whether the directory was made (by us: never remove what we did not make).
    created: bool,
    cluster: Option<LocalCluster>,
    replay_began: Option<Instant>,
    /// Work given up on that may still be running (a start, a query): done when `true`.
    pending: Vec<Box<dyn Fn() -> bool + Send>>,
    cleaned: bool,
    /// Taken out of another to be cleaned up on a blocking thread: if that never runs (the
    /// runtime is shutting down), dropping it cleans up on the spot.
    detached: bool,
}

/// How long cleanup waits for the server to stop and for processes working in the directory.
const CLEANUP_WAIT: Duration = Duration::from_secs(120);

impl Scratch {
    fn new(dir: PathBuf, keep: bool) -> Self {
        Self {
            dir,
            keep,
            created: false,
            cluster: None,
            replay_began: None,
            pending: Vec::new(),
            cleaned: false,
            detached: false,
        }
    }

    /// What cleanup needs, moved into a new value; this one is left with nothing to clean.
    fn take(&mut self) -> Scratch {
        let mut taken = Scratch::new(self.dir.clone(), self.keep);
        taken.created = self.created;
        taken.cluster = self.cluster.take();
        taken.pending = std::mem::take(&mut self.pending);
        taken.detached = true;
        self.cleaned = true;
        taken
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stop the server and remove the directory on a blocking thread; what could not be done.
    async fn finish(&mut self) -> Vec<String> {
        let mut taken = self.take();
        match tokio::task::spawn_blocking(move || taken.cleanup()).await {
            Ok(problems) => problems,
            Err(e) => vec![format!(
                "cleanup of {} did not finish ({e}): stop any server on it (pg_ctl -D {}/data stop) and remove the directory",
                self.dir.display(),
                self.dir.display()
            )],
        }
    }

    fn cleanup(&mut self) -> Vec<String> {
        self.cleaned = true;
        let mut problems = Vec::new();
        let deadline = Instant::now() + CLEANUP_WAIT;
        // A start given up on may still bring the server up: stop it until nothing is pending.
        loop {
            if let Some(cluster) = &self.cluster
                && cluster.is_running()
                && cluster.stop(StopMode::Fast).is_err()
            {
                let _ = cluster.stop(StopMode::Immediate);
            }
            let running = self.cluster.as_ref().is_some_and(LocalCluster::is_running);
            if !running && self.pending.iter().all(|done| done()) {
                break;
            }
            if Instant::now() >= deadline {
                if running {
                    problems.push(format!(
                        "the scratch server on {}/data would not stop: stop it with `pg_ctl -D {}/data stop -m immediate` as its owner",
                        self.dir.display(),
                        self.dir.display()
                    ));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.created {
            return problems;
        }
        // restore_command's prefetcher works in the data directory after the server is gone.
        let working = wait_for_processes_in(&self.dir, deadline);
        if !working.is_empty() {
            problems.push(format!(
                "processes {working:?} still work in {}: they are left alone",
                self.dir.display()
            ));
        }
        if self.keep {
            // Kept on purpose: no later drill may sweep it.
            let _ = fs::remove_file(self.dir.join(OWNER_FILE));
        }
        if self.keep || !problems.is_empty() {
            return problems;
        }
        let mut last = None;
        for _ in 0..10 {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => return problems,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return problems,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(e) = last {
            problems.push(format!(
                "cannot remove the scratch directory {}: {e}; remove it by hand",
                self.dir.display()
            ));
        }
        problems
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Cleanup may wait up to CLEANUP_WAIT for a server to stop: never on a runtime thread.
        if !self.detached
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut taken = self.take();
            runtime.spawn_blocking(move || {
                for problem in taken.cleanup() {
                    tracing::warn!("{problem}");
                }
            });
            return;
        }
        // No runtime here (or it is shutting down): this thread is not serving one.
        for problem in self.cleanup() {
            tracing::warn!("{problem}");
        }
    }
}

/// Wait until no process has its working directory or an argument under `dir`, or `deadline`;
/// the ones still there.
fn wait_for_processes_in(dir: &Path, deadline: Instant) -> Vec<u32> {
    loop {
        let found = processes_in(dir);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes working in `dir` or naming it, from Linux's /proc (empty elsewhere).
fn processes_in(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pgc::pid_alive(pid))
        .filter(|&pid| {
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir));
            let named = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                raw.split(|&b| b == 0)
                    .any(|arg| Path::new(&*String::from_utf8_lossy(arg)).starts_with(dir))
            });
            cwd || named
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_gone_only_when_this_machine_can_tell() {
        let here = "boot-a:pid:[4026531836]";
        let live = std::process::id();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!owner_gone(live, here, here), "a running drill");
        assert!(owner_gone(dead, here, here), "its process is gone");
        assert!(
            owner_gone(live, "boot-b:pid:[4026531836]", here),
            "made before a reboot"
        );
        assert!(
            !owner_gone(dead, "boot-a:pid:[4026532000]", here),
            "another PID namespace"
        );
    }

    fn manifest(label: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": "lifeboat-manifest",
            "version": 1,
            "label": label,
            "system_identifier": 1,
            "pg_version_num": 150000,
            "timeline": 1,
            "start_lsn": "0/2000028",
            "stop_lsn": "0/2000100",
            "start_wal": "000000010000000000000002",
            "stop_wal": "000000010000000000000002",
            "start_time": "2026-01-01T00:00:00Z",
            "stop_time": "2026-01-01T00:00:01Z",
            "duration_seconds": 1.0,
            "backup_label": "",
            "tablespace_map": null,
            "block_size": 1048576,
            "data_checksums": true,
            "size": 0,
            "stored_size": 0,
            "tablespaces": [],
            "entries": [],
        }))
        .unwrap()
    }

    #[test]
    fn chooses_latest_random_and_label() {
        let ms = vec![manifest("a"), manifest("b"), manifest("c")];
        assert_eq!(choose(&ms, &[], "latest", |_| 0).unwrap().label, "c");
        assert_eq!(choose(&ms, &[], "random", |n| n - 2).unwrap().label, "b");
        assert_eq!(choose(&ms, &[], "a", |_| 0).unwrap().label, "a");
        let (why, _) = choose(&ms, &[], "zz", |_| 0).unwrap_err();
        assert!(why.contains("no complete backup labelled zz"), "{why}");
        let bad = vec![("zz".to_string(), "bad tag".to_string())];
        let (why, _) = choose(&ms, &bad, "zz", |_| 0).unwrap_err();
        assert_eq!(why, "backup zz is unreadable: bad tag");
        for choice in ["latest", "random"] {
            let (why, _) = choose(&[], &bad, choice, |_| 0).unwrap_err();
            assert!(
                why.contains("no complete backup") && why.contains("zz: bad tag"),
                "{why}"
            );
        }
    }

    #[test]
    fn random_lsn_stays_in_the_window() {
        assert_eq!(random_lsn(Lsn(100), Lsn(50), |_, _| 7), Lsn(100));
        assert_eq!(random_lsn(Lsn(100), Lsn(100), |_, _| 7), Lsn(100));
        assert_eq!(random_lsn(Lsn(100), Lsn(200), |lo, _| lo + 5), Lsn(105));
        assert_eq!(random_lsn(Lsn(100), Lsn(200), |_, _| 500), Lsn(200));
    }

    #[test]
    fn judges_check_results() {
        assert!(judge("t").0);
        assert!(judge("true").0);
        assert!(judge("5").0);
        assert!(judge("0.5").0);
        let (ok, detail) = judge("0");
        assert!(!ok);
        assert!(detail.starts_with("returned 0 "), "{detail}");
        assert!(!judge("f").0);
        assert_eq!(
            judge("").1.split(' ').take(3).collect::<Vec<_>>(),
            ["returned", "no", "rows"]
        );
        assert!(judge("1\u{1e}2").1.starts_with("returned 2 rows"));
        assert!(judge("1\u{1f}2").1.starts_with("returned 2 columns"));
        assert!(!judge("-3").0);
        assert!(!judge("abc").0);
    }

    /// A drill whose future is dropped before its cleanup ran (a caller's timeout, a task
    /// aborted) must not block the runtime thread while the cleanup waits for work in progress
    /// (up to two minutes for a server that will not stop); the cleanup still happens.
    #[tokio::test]
    async fn dropping_an_unfinished_drill_does_not_block_the_runtime() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lifeboat-drill-dropped");
        fs::create_dir(&dir).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let mut scratch = Scratch::new(dir.clone(), false);
        scratch.created = true;
        let done = released.clone();
        scratch
            .pending
            .push(Box::new(move || done.load(Ordering::SeqCst)));
        // The work in progress finishes 2 s from now.
        let release = released.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            release.store(true, Ordering::SeqCst);
        });

        let began = Instant::now();
        drop(scratch);
        let blocked = began.elapsed();
        assert!(
            blocked < Duration::from_millis(500),
            "dropping the scratch blocked the runtime thread for {blocked:?}"
        );
        assert!(dir.exists(), "removed while work was still in progress");
        let deadline = Instant::now() + Duration::from_secs(30);
        while dir.exists() {
            assert!(
                Instant::now() < deadline,
                "the dropped drill's scratch directory was never removed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        releaser.join().unwrap();
    }

    #[test]
    fn ids_sort_by_start() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_432_502).unwrap();
        let id = drill_id(t);
        assert!(id.starts_with("20261123T"), "{id}");
        assert_eq!(id.len(), "20261123T101502Z-0123abcd".len());
    }
}
