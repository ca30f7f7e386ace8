//! Data-loss trials for `wal-stream` (issue 15, must-show 1): a writer commits one row every
//! 10 ms on one connection and records what was acknowledged; the primary is killed with SIGKILL
//! and its data directory deleted; a restore to the end of the repository must hold every
//! acknowledged row but those of the last 2 s (default mode), or every one (synchronous mode),
//! and no row that was never written.
//!
//! Few trials by default so CI stays fast; the full count with
//! `LIFEBOAT_STREAM_TRIALS_ASYNC=10 LIFEBOAT_STREAM_TRIALS_SYNC=20` (figures in
//! docs/BENCHMARKS.md). Each trial prints one line (run with `--no-capture` to see them).

use std::fs;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::backup_restore::{restore_json, start_restored, target};
use crate::support::stream::streamed_cluster;
use crate::support::*;
use lifeboat_pg::cluster::LocalCluster;

/// How long the writer runs before the primary is killed.
const WRITING: Duration = Duration::from_secs(3);
/// One commit every this long.
const PACE: Duration = Duration::from_millis(10);
/// Default mode: acknowledged rows may be missing only if acknowledged this close to the crash.
const ASYNC_BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Default flush interval (1 s); the receiver is stopped with SIGTERM after the crash.
    Async,
    /// `--synchronous` as the only synchronous standby; the receiver is killed with SIGKILL too.
    Sync,
}

/// What the writer saw: every id it sent, and when each acknowledged one came back.
struct Written {
    acked: Vec<(i64, Instant)>,
    /// The highest id sent (acknowledged or in flight at the crash).
    sent: i64,
    error: Option<String>,
}

/// Commit `insert into t values (id)` every [`PACE`] with ids 1, 2, ... on one connection until
/// a commit fails (the primary died). How long the first commit took goes to `first`: the pace
/// starts once it returned (in synchronous mode it waits for the receiver to catch up with the
/// backup's WAL switch).
fn writer(cluster: &LocalCluster, first: mpsc::Sender<Duration>) -> thread::JoinHandle<Written> {
    let conninfo = cluster.conninfo();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("writer runtime");
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .expect("the writer connects");
            tokio::spawn(connection);
            let insert = client
                .prepare("insert into t (id) values ($1)")
                .await
                .expect("prepare the insert");
            let mut start = tokio::time::Instant::now();
            let mut written = Written {
                acked: Vec::new(),
                sent: 0,
                error: None,
            };
            loop {
                let id = written.sent + 1;
                tokio::time::sleep_until(start + PACE * id as u32).await;
                written.sent = id;
                match client.execute(&insert, &[&id]).await {
                    Ok(_) => {
                        written.acked.push((id, Instant::now()));
                        if id == 1 {
                            let _ = first.send(start.elapsed());
                            start = tokio::time::Instant::now() - PACE;
                        }
                    }
                    Err(e) => {
                        written.error = Some(match e.as_db_error() {
                            Some(db) => format!("{e}: {}", db.message()),
                            None => e.to_string(),
                        });
                        return written;
                    }
                }
            }
        })
    })
}

/// One trial's figures.
struct Outcome {
    acked: usize,
    restored: usize,
    /// Acknowledged ids missing from the restore, with how long before the crash each was
    /// acknowledged.
    missing: Vec<(i64, Duration)>,
    /// The receiver's log and the server's, for a failed trial's message.
    logs: String,
}

fn trial(mode: Mode, n: usize) -> Outcome {
    let setup = Setup::new(Backend::Local, true);
    let args: &[&str] = match mode {
        Mode::Async => &[],
        Mode::Sync => &["--synchronous"],
    };
    let (cluster, receiver) = streamed_cluster(&setup, args);
    let receiver_log = receiver.log.clone();

    let (first, first_commit) = mpsc::channel();
    let writing = writer(&cluster, first);
    let first_commit = first_commit.recv_timeout(WAIT).unwrap_or_else(|e| {
        panic!(
            "trial {mode:?} {n}: the first commit did not return ({e}):\n{}",
            fs::read_to_string(&receiver_log).unwrap_or_default()
        )
    });
    thread::sleep(WRITING);
    let crash = Instant::now();
    cluster.kill9().expect("kill -9 the primary");
    fs::remove_dir_all(&cluster.datadir).expect("delete the primary's data directory");
    let written = writing.join().expect("the writer thread");
    match mode {
        Mode::Async => {
            let status = receiver.terminate();
            assert!(status.success(), "wal-stream exit: {status}");
        }
        Mode::Sync => receiver.kill9(),
    }

    let t = target();
    let report = restore_json(&setup, &t.data, &[]);
    let restored_cluster = start_restored(t, cluster.owner.clone());
    let restored = ids(&restored_cluster);

    let k = restored.len() as i64;
    assert_eq!(
        restored,
        first_n(k),
        "trial {mode:?} {n}: the restore holds ids with holes"
    );
    assert!(
        k <= written.sent,
        "trial {mode:?} {n}: restored id {k} was never written (last sent {}); restore report: {report}",
        written.sent
    );
    let missing: Vec<(i64, Duration)> = written
        .acked
        .iter()
        .filter(|(id, _)| *id > k)
        .map(|&(id, at)| (id, crash.saturating_duration_since(at)))
        .collect();
    let outcome = Outcome {
        acked: written.acked.len(),
        restored: restored.len(),
        missing,
        logs: format!(
            "wal-stream:\n{}\nserver:\n{}",
            fs::read_to_string(&receiver_log).unwrap_or_default(),
            cluster.log_tail(30)
        ),
    };
    println!(
        "stream trial {mode:?} {n}: acknowledged {}, restored {}, missing {}{}; first commit {} ms; streamed WAL to {}; writer stopped by: {}",
        outcome.acked,
        outcome.restored,
        outcome.missing.len(),
        span(&outcome.missing),
        first_commit.as_millis(),
        report["plan"]["streamed_wal_to"],
        written.error.as_deref().unwrap_or("-"),
    );
    outcome
}

/// " (ids A..B, acknowledged X to Y ms before the crash)" or "" when nothing is missing.
fn span(missing: &[(i64, Duration)]) -> String {
    match (missing.first(), missing.last()) {
        (Some((first, oldest)), Some((last, newest))) => format!(
            " (ids {first}..{last}, acknowledged {} to {} ms before the crash)",
            oldest.as_millis(),
            newest.as_millis()
        ),
        _ => String::new(),
    }
}

fn trials(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number of trials")),
        Err(_) => default,
    }
}

#[test]
fn stream_trials_async_lose_at_most_the_last_two_seconds() {
    for n in 1..=trials("LIFEBOAT_STREAM_TRIALS_ASYNC", 2) {
        let outcome = trial(Mode::Async, n);
        assert!(
            outcome.acked > 100,
            "trial {n}: the writer barely ran\n{}",
            outcome.logs
        );
        if let Some((id, before)) = outcome.missing.first() {
            assert!(
                *before <= ASYNC_BOUND,
                "trial {n}: id {id}, acknowledged {} ms before the crash, is missing{}\n{}",
                before.as_millis(),
                span(&outcome.missing),
                outcome.logs
            );
        }
    }
}

#[test]
fn stream_trials_sync_lose_no_acknowledged_row() {
    for n in 1..=trials("LIFEBOAT_STREAM_TRIALS_SYNC", 3) {
        let outcome = trial(Mode::Sync, n);
        assert!(
            outcome.acked > 100,
            "trial {n}: the writer barely ran\n{}",
            outcome.logs
        );
        assert!(
            outcome.missing.is_empty(),
            "trial {n}: {} acknowledged rows missing{}\n{}",
            outcome.missing.len(),
            span(&outcome.missing),
            outcome.logs
        );
    }
}
