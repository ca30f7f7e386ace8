//! The steps of one drill ([`Run::steps`]): choose the backup, find its server programs, choose
//! the target, restore, start, wait for recovery, read the newest commit, run the checks. Every
//! step runs its work through [`Run::step`] (or [`Run::step_blocking`] for blocking work), which
//! races it against cancellation and the drill's deadline and turns those into a [`Halt`].

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::{self as pgc, LocalCluster};
use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::Manifest;
use lifeboat_repo::records::DrillRecord;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checks::{amcheck, run_check};
use super::choose::{choose, random_lsn};
use super::scratch::{Scratch, make_scratch_dir, sweep_abandoned};
use super::server::{prepare_cluster, server_bindir};
use super::{DrillOptions, DrillTarget, round_ms, seconds, step};
use crate::restore::{RestoreOptions, RestoreReport};
use crate::{EngineError, Result, join_error};

/// Why the steps stopped early.
pub(super) enum Halt {
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

pub(super) fn failed(
    step: &'static str,
    failure: impl Into<String>,
    hint: impl Into<String>,
) -> Halt {
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

pub(super) struct Run<'a> {
    pub(super) repo: &'a Repository,
    pub(super) opts: &'a DrillOptions,
    pub(super) started: OffsetDateTime,
    pub(super) deadline: tokio::time::Instant,
    pub(super) cancel: &'a mut watch::Receiver<bool>,
    pub(super) scratch: &'a mut Scratch,
    pub(super) record: &'a mut DrillRecord,
}

/// Pieces of the log tail quoted in a failure.
const LOG_LINES: usize = 20;
/// How often the server is asked whether recovery has ended.
const POLL: Duration = Duration::from_millis(100);

impl Run<'_> {
    pub(super) async fn steps(&mut self) -> Result<(), Halt> {
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

    /// Run one piece of a step, `fut`, to its end: its output, or the halt that ends the drill
    /// when the deadline passes first (the step `step` fails, saying that `what` did not finish
    /// in time) or the drill is cancelled. Every step goes through here or [`Run::step_blocking`].
    pub(super) async fn step<F: Future>(
        &mut self,
        step: &'static str,
        what: &str,
        fut: F,
    ) -> Result<F::Output, Halt> {
        match self.race(fut).await {
            Raced::Done(v) => Ok(v),
            Raced::TimedOut => Err(self.timed_out(step, what)),
            Raced::Cancelled => Err(Halt::Interrupted),
        }
    }

    /// [`Run::step`] for blocking `work`, run on a blocking thread. A task that is given up on
    /// keeps running: cleanup waits for it after stopping the server it talks to.
    pub(super) async fn step_blocking<T: Send + 'static>(
        &mut self,
        step: &'static str,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Halt> {
        let mut handle: JoinHandle<T> = tokio::task::spawn_blocking(work);
        let raced = self.step(step, what, &mut handle).await;
        if raced.is_err() {
            self.scratch
                .pending
                .push(Box::new(move || handle.is_finished()));
        }
        Ok(raced?.map_err(join_error)?)
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
        let repo = self.repo;
        let listing = self
            .step(
                step::CHOOSE,
                "listing the backups",
                repo.readable_manifests(),
            )
            .await?
            .map_err(EngineError::from)?;
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
        let found = self
            .step_blocking(step::START, "finding the server programs", move || {
                server_bindir(major, configured.as_deref())
            })
            .await?;
        let bindir = found.map_err(|(why, hint)| failed(step::START, why, hint))?;
        Ok(ServerPrograms { bindir, major })
    }

    async fn choose_target(&mut self, manifest: &Manifest) -> Result<RecoveryTarget, Halt> {
        if self.opts.target == DrillTarget::Latest {
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
            let end = crate::list::contiguous_end(repo, &manifest.stop_wal, seg_size).await?;
            let last_start = end.start_lsn(seg_size).map_err(|e| {
                EngineError::Internal(format!("segment {end} has no start position: {e}"))
            })?;
            Ok::<_, EngineError>(last_start)
        };
        let last_start = self.step(step::CHOOSE, "listing the WAL", window).await??;
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
            primary_slot_name: None,
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
            .step(
                step::RESTORE,
                "the restore",
                crate::restore::restore(repo, &ropts, Arc::new(|_| {})),
            )
            .await?;
        let report: RestoreReport = match result {
            Ok(report) => report,
            Err(e) => {
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
        };
        self.record.restore_seconds = Some(seconds(began.elapsed()));
        self.record.bytes_restored = report.bytes_written;
        Ok(())
    }

    pub(super) async fn start(&mut self, bindir: PathBuf) -> Result<LocalCluster, Halt> {
        let dir = self.scratch.dir.clone();
        let prepared = self
            .step_blocking(step::START, "preparing the server", move || {
                prepare_cluster(&dir, &bindir)
            })
            .await?;
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
        let started = self
            .step_blocking(step::START, "starting PostgreSQL", move || {
                starting.start(remaining)
            })
            .await?;
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
            let answer = self
                .step_blocking(step::RECOVER, "recovery", move || {
                    let state = asking.psql("select pg_is_in_recovery()");
                    let running = state.is_ok() || asking.is_running();
                    (state, running)
                })
                .await?;
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
        let answer = self
            .step_blocking(step::RECOVER, "reading the newest commit", move || {
                asking.psql(
                    "select to_char(t at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                     || ' ' || extract(epoch from t) \
                     from (select pg_last_xact_replay_timestamp() as t) s where t is not null",
                )
            })
            .await?;
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
    pub(super) async fn checks(&mut self, cluster: &LocalCluster, major: u32) -> Result<(), Halt> {
        let mut first_failure: Option<Halt> = None;
        if self.opts.amcheck {
            let checking = cluster.clone();
            let out = self
                .step_blocking(step::AMCHECK, "pg_amcheck", move || {
                    amcheck(&checking, major)
                })
                .await?;
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
            let what = format!("check query `{query}`");
            let out = self
                .step_blocking(step::CHECK, &what, move || run_check(&checking, &db, &sql))
                .await?;
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

/// Resolves when `cancel` turns true; never when its sender is gone without cancelling.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}
