//! The main loop of `lifeboat serve`.
//!
//! Tasks: one timer per scheduled job that queues it when due; one executor that runs queued jobs
//! one at a time (so a backup, an expire and a drill never contend for the repository lock or the
//! disks); the health loop that refreshes the snapshot, judges it and sends alerts; the WAL
//! receiver's supervisor (with `[stream]`, beside the jobs); the role observer (`role`); and the
//! HTTP server. SIGTERM or SIGINT stops the timers, lets a running job finish within the grace
//! period (then stops it: every job is safe to abandon), records its run, saves the alert state
//! and closes the listener.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use lifeboat_engine::LazyRepo;
use lifeboat_repo::records::{AlertState, JobHistory, JobRun, SizeSample};
use tokio::sync::{Notify, mpsc, watch};

use crate::alert::{self, Notifier};
use crate::config::DaemonConfig;
use crate::health::{self, Sources};
use crate::receiver::SharedReceiver;
use crate::runner::Launcher;
use crate::schedule::{self, JobKind, ScheduledJob, rfc3339};
use crate::status::{JobStatus, SharedSnapshot, Snapshot};

/// Everything `serve` needs, resolved by the CLI.
pub struct ServeOptions {
    pub config: DaemonConfig,
    /// `IP:PORT` or `HOST:PORT`, resolved at start ([`crate::config::resolve_listen`]).
    pub listen: String,
    /// Required when `listen` resolves to any address that is not loopback.
    pub token: Option<String>,
    pub repo: Arc<LazyRepo>,
    pub db: Option<String>,
    pub pgdata: Option<PathBuf>,
    pub launcher: Launcher,
    /// `[ha]`: the failover agent runs beside the jobs.
    pub ha: Option<crate::ha::HaOptions>,
}

/// Why the daemon could not start or run; the CLI maps it to an exit code.
#[derive(Debug)]
pub enum ServeError {
    /// A configuration problem: the message says which key and what to write.
    Config(String),
    /// The listener could not be opened.
    Listen(String),
}

/// A job waiting for the executor, with the moment it was scheduled for.
type Due = (JobKind, Option<chrono::DateTime<Utc>>);

/// Shared between the timers, the executor and the health loop.
struct Daemon {
    options: ServeOptions,
    jobs: Vec<ScheduledJob>,
    snapshot: SharedSnapshot,
    /// Jobs queued or running: a job is never queued twice (no overlapping runs).
    busy: Mutex<HashSet<&'static str>>,
    /// Wakes the health loop at once (after a job finished).
    refresh: Notify,
    /// The WAL receiver's process state, when `[stream]` is configured; `receiver_changed` wakes
    /// the health loop when it starts or exits.
    receiver: Option<SharedReceiver>,
    receiver_changed: Arc<Notify>,
    /// The failover agent's last pass, when `[ha]` is configured.
    ha_status: crate::ha::SharedHaStatus,
    stop: watch::Receiver<bool>,
}

pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let jobs = schedule::jobs(&options.config.schedule)
        .map_err(|errors| ServeError::Config(errors.join("\n")))?;
    let notifier = Notifier::from_config(&options.config.alerts).map_err(ServeError::Config)?;
    let addrs = crate::config::resolve_listen(&options.listen)
        .await
        .map_err(ServeError::Config)?;
    // Judged on every address the name resolves to: the one bound may be any of them.
    if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
        && options.token.is_none()
    {
        return Err(ServeError::Config(format!(
            "[serve] listen = \"{}\" is reachable from other hosts ({open}), and no token \
             protects it: set [serve] token_file to a file holding a long random token, or listen \
             on 127.0.0.1",
            options.listen
        )));
    }
    let listeners = crate::http::bind_all(&options.listen, &addrs)
        .await
        .map_err(ServeError::Listen)?;
    let bound = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(watch_signals(stop_tx));

    let snapshot = Snapshot::shared();
    {
        let mut s = snapshot.write().await;
        s.host = options.launcher.host.clone();
        s.version = env!("CARGO_PKG_VERSION").to_string();
        s.jobs = jobs
            .iter()
            .map(|job| JobStatus {
                job: job.name().to_string(),
                schedule: Some(job.pattern.clone()),
                next_run: job.next_after(Utc::now()).map(rfc3339),
                running_since: None,
                history: JobHistory {
                    job: job.name().to_string(),
                    ..JobHistory::default()
                },
            })
            .collect();
    }
    let roles = crate::role::RoleCell::default();
    let router = crate::http::router(snapshot.clone(), options.token.clone(), roles.clone());
    let http: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let mut http_stop = stop_rx.clone();
            tokio::spawn(crate::http::serve(listener, router.clone(), async move {
                wait_stop(&mut http_stop).await;
            }))
        })
        .collect();
    tracing::info!(
        listen = %bound,
        jobs = ?jobs.iter().map(|j| format!("{} \"{}\"", j.name(), j.pattern)).collect::<Vec<_>>(),
        alert_channels = ?notifier.channel_names(),
        "lifeboat serve started"
    );

    let receiver = options
        .config
        .stream
        .as_ref()
        .map(|_| SharedReceiver::default());
    let daemon = Arc::new(Daemon {
        options,
        jobs,
        snapshot,
        busy: Mutex::new(HashSet::new()),
        refresh: Notify::new(),
        receiver,
        receiver_changed: Arc::new(Notify::new()),
        ha_status: crate::ha::SharedHaStatus::default(),
        stop: stop_rx,
    });
    // Beside the jobs, not through their executor: the receiver runs for good.
    let supervisor = daemon.receiver.clone().map(|state| {
        tokio::spawn(crate::receiver::supervise(
            daemon.options.launcher.clone(),
            state,
            daemon.stop.clone(),
            daemon.receiver_changed.clone(),
        ))
    });
    // The failover agent answers to its own loop, not the job executor: it must never wait
    // behind a backup. With [ha] it publishes the role (it knows the leader key and the fencing
    // deadline); without, the role endpoints answer from the local server's role.
    let agent = match daemon.options.ha.clone() {
        Some(ha) => Some(tokio::spawn(crate::ha::run(
            ha,
            roles,
            daemon.ha_status.clone(),
            daemon.stop.clone(),
        ))),
        None => {
            tokio::spawn(crate::role::observe_local(
                roles,
                daemon.options.db.clone(),
                daemon.stop.clone(),
            ));
            None
        }
    };
    let (due_tx, due_rx) = mpsc::unbounded_channel::<Due>();
    catch_up(&daemon, &due_tx).await;
    for job in daemon.jobs.clone() {
        tokio::spawn(timer(daemon.clone(), job, due_tx.clone()));
    }
    drop(due_tx);
    let executor = tokio::spawn(executor(daemon.clone(), due_rx));
    let health = tokio::spawn(health_loop(daemon.clone(), notifier));

    // The executor ends after the stop signal, once the running job is finished or abandoned
    // and recorded; the health loop then saves the alert state.
    if let Err(e) = executor.await {
        tracing::error!("the job executor failed: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(supervisor).await {
        tracing::error!("the WAL receiver's supervisor failed: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(agent).await {
        tracing::error!("the failover agent failed: {e}");
    }
    daemon.refresh.notify_one();
    if let Err(e) = health.await {
        tracing::error!("the health loop failed: {e}");
    }
    for task in http {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the HTTP server failed: {e}"),
            Err(e) => tracing::error!("the HTTP server failed: {e}"),
        }
    }
    tracing::info!("lifeboat serve stopped");
    Ok(())
}

async fn watch_signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop.send(true);
}

/// Queue, once each, the runs missed while the daemon was down.
async fn catch_up(daemon: &Daemon, due: &mpsc::UnboundedSender<Due>) {
    let repo = match daemon.options.repo.get().await {
        Ok(repo) => repo,
        Err(e) => {
            tracing::warn!("cannot read the job history to catch up missed runs: {e}");
            return;
        }
    };
    let now = Utc::now();
    for job in &daemon.jobs {
        let history = match repo.job_history(job.name()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job = job.name(), "cannot read the job's history: {e}");
                continue;
            }
        };
        if let Some(missed) = job.missed(history.as_ref(), now) {
            tracing::info!(
                job = job.name(),
                scheduled_for = %rfc3339(missed),
                "a run was missed while the daemon was down: running it now"
            );
            enqueue(daemon, due, job.kind, Some(missed));
        }
    }
}

fn enqueue(
    daemon: &Daemon,
    due: &mpsc::UnboundedSender<Due>,
    kind: JobKind,
    at: Option<chrono::DateTime<Utc>>,
) {
    let fresh = daemon
        .busy
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(kind.name());
    if !fresh {
        tracing::warn!(
            job = kind.name(),
            "the previous run is still queued or running: this occurrence is skipped"
        );
        return;
    }
    if due.send((kind, at)).is_err() {
        daemon
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(kind.name());
    }
}

/// Sleep until the job's next moment, queue it, repeat; until the stop signal.
async fn timer(daemon: Arc<Daemon>, job: ScheduledJob, due: mpsc::UnboundedSender<Due>) {
    let mut stop = daemon.stop.clone();
    loop {
        let now = Utc::now();
        let Some(next) = job.next_after(now) else {
            tracing::warn!(job = job.name(), "the schedule has no next moment");
            return;
        };
        set_next_run(&daemon, job.name(), Some(rfc3339(next))).await;
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wait_stop(&mut stop) => return,
        }
        // Timers may wake a little early; never run before the scheduled moment.
        let early = (next - Utc::now()).to_std().unwrap_or_default();
        if !early.is_zero() {
            tokio::time::sleep(early).await;
        }
        enqueue(&daemon, &due, job.kind, Some(next));
    }
}

async fn set_next_run(daemon: &Daemon, job: &str, next: Option<String>) {
    let mut s = daemon.snapshot.write().await;
    if let Some(j) = s.jobs.iter_mut().find(|j| j.job == job) {
        j.next_run = next;
    }
}

/// Run queued jobs one at a time and record each run.
async fn executor(daemon: Arc<Daemon>, mut due: mpsc::UnboundedReceiver<Due>) {
    let mut stop = daemon.stop.clone();
    loop {
        let (kind, scheduled_for) = tokio::select! {
            job = due.recv() => match job {
                Some(job) => job,
                None => return,
            },
            () = wait_stop(&mut stop) => return,
        };
        if is_stopping(&daemon.stop) {
            return;
        }
        {
            let mut s = daemon.snapshot.write().await;
            if let Some(j) = s.jobs.iter_mut().find(|j| j.job == kind.name()) {
                j.running_since = Some(rfc3339(Utc::now()));
            }
        }
        let run = daemon
            .options
            .launcher
            .run(
                kind,
                scheduled_for,
                daemon.stop.clone(),
                daemon.options.config.serve.shutdown_grace,
            )
            .await;
        tracing::info!(
            job = kind.name(),
            outcome = ?run.outcome,
            seconds = run.duration_seconds,
            message = run.message.as_deref().unwrap_or(""),
            "job finished"
        );
        record_run(&daemon, kind, run).await;
        daemon
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(kind.name());
        daemon.refresh.notify_one();
    }
}

/// Append the run to the job's history in the repository (and the snapshot). Retried a few
/// times: a run that cannot be recorded is logged, and the catch-up at the next start repeats it.
async fn record_run(daemon: &Daemon, kind: JobKind, run: JobRun) {
    let mut history = None;
    for attempt in 1..=3 {
        let result = async {
            let repo = daemon.options.repo.get().await.map_err(|e| e.to_string())?;
            let mut h = repo
                .job_history(kind.name())
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| JobHistory {
                    job: kind.name().to_string(),
                    ..JobHistory::default()
                });
            h.record(run.clone());
            repo.put_job_history(&h).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(h)
        }
        .await;
        match result {
            Ok(h) => {
                history = Some(h);
                break;
            }
            Err(e) => {
                tracing::error!(job = kind.name(), attempt, "cannot record the run: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let mut s = daemon.snapshot.write().await;
    if let Some(j) = s.jobs.iter_mut().find(|j| j.job == kind.name()) {
        j.running_since = None;
        match history {
            Some(h) => j.history = h,
            None => j.history.record(run),
        }
    }
}

/// Refresh the snapshot, judge it, alert; every check interval, after each job, and once more at
/// shutdown.
async fn health_loop(daemon: Arc<Daemon>, notifier: Notifier) {
    let sources = Sources {
        repo: daemon.options.repo.clone(),
        db: daemon.options.db.clone(),
        pgdata: daemon.options.pgdata.clone(),
        stream: config_stream(&daemon),
    };
    let config = &daemon.options.config;
    let host = daemon.options.launcher.host.clone();
    let mut alerts = AlertState::default();
    let mut alerts_loaded = false;
    let mut alerts_dirty = false;
    let mut last_size: Option<std::time::Instant> = None;
    let mut stop = daemon.stop.clone();
    loop {
        let stopping = is_stopping(&daemon.stop);
        // The alert state comes from the repository once, so a restart neither repeats nor
        // forgets alerts. Until it can be read (the repository may be what is down), alerts
        // still go out from the state in memory, merged with the stored one later.
        if !alerts_loaded && let Ok(repo) = sources.repo.get().await {
            match repo.alert_state().await {
                Ok(stored) => {
                    alert::merge_alert_state(&mut alerts, stored);
                    alerts_loaded = true;
                }
                Err(lifeboat_repo::RepoError::Corrupt { key, reason }) => {
                    tracing::warn!("the alert state {key} is unreadable ({reason}); starting anew");
                    alerts_loaded = true;
                }
                Err(e) => tracing::warn!("cannot read the alert state yet: {e}"),
            }
        }
        let mut fresh = daemon.snapshot.read().await.clone();
        let problems = health::gather(&sources, &mut fresh).await;
        if last_size.is_none_or(|t| t.elapsed() >= config.serve.size_interval)
            && problems.repository.is_none()
            && let Ok(repo) = sources.repo.get().await
        {
            match repo_size(repo).await {
                Ok(bytes) => {
                    last_size = Some(std::time::Instant::now());
                    fresh.repository_bytes = Some(bytes);
                    let sample = SizeSample {
                        time: Utc::now().timestamp(),
                        bytes,
                    };
                    match repo.add_size_sample(sample).await {
                        Ok(samples) => fresh.size_history = samples,
                        Err(e) => tracing::warn!("cannot record the repository size: {e}"),
                    }
                }
                Err(e) => tracing::warn!("cannot measure the repository size: {e}"),
            }
        }
        let mut findings = health::findings(&fresh, &problems, &config.health);
        if let Some(stream) = &fresh.stream {
            // A receiver that died is started again within 5 s: not yet an outage.
            let down_after = (config.serve.check_interval * 2).max(Duration::from_secs(20));
            findings.extend(crate::stream_watch::findings(
                stream,
                &config.health,
                down_after,
            ));
        }
        let messages = {
            let before = alerts.clone();
            let now = time::OffsetDateTime::now_utc();
            let messages = alert::plan(&mut alerts, &findings, now, config.alerts.repeat, &host);
            alerts_dirty |= alerts != before;
            fresh.active_alerts = alerts.active.values().cloned().collect();
            fresh.sent_alerts = alerts.sent.clone();
            messages
        };
        fresh.findings = findings;
        // Publish before sending: a channel may take seconds, the dashboard should not.
        publish(&daemon, fresh).await;
        {
            let state = &mut alerts;
            for msg in messages {
                // Without a channel the log is the only one: say it once, not every check.
                let delivery = if notifier.is_empty() {
                    alert::Delivery {
                        delivered: vec!["log".into()],
                        failed: vec![],
                    }
                } else {
                    notifier.send(&msg).await
                };
                for failed in &delivery.failed {
                    tracing::error!(alert = %msg.key, "alert not delivered: {failed}");
                }
                tracing::warn!(alert = %msg.key, kind = msg.kind.as_str(), delivered = ?delivery.delivered, "{}", msg.summary);
                alert::record_delivery(state, &msg, &delivery, time::OffsetDateTime::now_utc());
                alerts_dirty = true;
            }
            if alerts_dirty
                && alerts_loaded
                && let Ok(repo) = sources.repo.get().await
            {
                match repo.put_alert_state(state).await {
                    Ok(()) => alerts_dirty = false,
                    Err(e) => tracing::warn!("cannot save the alert state: {e}"),
                }
            }
            let mut s = daemon.snapshot.write().await;
            s.active_alerts = state.active.values().cloned().collect();
            s.sent_alerts = state.sent.clone();
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(config.serve.check_interval) => {}
            () = daemon.refresh.notified() => {}
            () = daemon.receiver_changed.notified() => {}
            () = wait_stop(&mut stop) => {
                // One last pass after the executor recorded its last run.
                daemon.refresh.notified().await;
            }
        }
    }
}

fn config_stream(daemon: &Daemon) -> Option<(crate::config::StreamWatch, SharedReceiver)> {
    daemon
        .options
        .config
        .stream
        .clone()
        .zip(daemon.receiver.clone())
}

/// Replace the shared snapshot with a fresh one, keeping what the executor changed meanwhile
/// (a job started or finished, its next run).
async fn publish(daemon: &Daemon, fresh: Snapshot) {
    let mut s = daemon.snapshot.write().await;
    let live_jobs = std::mem::take(&mut s.jobs);
    *s = fresh;
    s.ha = daemon
        .ha_status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let (Some(stream), Some(live)) = (s.stream.as_mut(), &daemon.receiver) {
        stream.receiver = live.lock().unwrap_or_else(PoisonError::into_inner).clone();
    }
    for job in &mut s.jobs {
        if let Some(live) = live_jobs.iter().find(|j| j.job == job.job) {
            job.running_since = live.running_since.clone();
            job.next_run = live.next_run.clone();
            let finished = |h: &JobHistory| h.last_run().map(|r| r.finished.clone());
            if finished(&live.history) > finished(&job.history) {
                job.history = live.history.clone();
            }
        }
    }
}

/// Returns once the stop signal is given (never, if its sender is gone).
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn is_stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

async fn repo_size(repo: &lifeboat_repo::Repository) -> Result<u64, String> {
    let objects = repo.store().list("").await.map_err(|e| e.to_string())?;
    Ok(objects.iter().map(|o| o.size).sum())
}
