//! The load and the observer of the failover trials (`support::ha_trials`): the [`Writer`]
//! inserts unique ids through HAProxy's write port and logs each attempt as acknowledged, failed
//! or unknown; the [`Sampler`] asks every member directly, every 100 ms, whether it accepts
//! writes and where its WAL is. Each runs on its own thread with its own runtime and owns what
//! it needs (ports), so a test keeps `&mut` access to the rig while they run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// One insert every this long (no catch-up bursts after a stall).
const PACE: Duration = Duration::from_millis(10);
/// Connect through HAProxy, and each statement, must finish within this or count as failed
/// (connect) or unknown (statement).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The sampler's period and how long one member may take to answer a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(300);

/// The log behind a mutex, poisoned or not (a panicking test must still report).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of one attempt of the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; the PostgreSQL port that answered.
    Acked(u16),
    /// Certainly not written: no connection through HAProxy, or the server refused the insert
    /// (read-only).
    Failed(String),
    /// Sent, but no answer said whether it committed (connection cut, timeout, shutdown).
    Unknown(String),
}

/// One attempt: its id (None: the connection failed before any insert), when it ended.
#[derive(Debug, Clone)]
pub struct Op {
    pub id: Option<i64>,
    pub done: Instant,
    pub outcome: Outcome,
}

/// Inserts `insert into trials values (id)` through HAProxy's write port every [`PACE`] on one
/// connection, reconnecting after any error; logs every attempt.
pub struct Writer {
    pub ops: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(port: u16) -> Writer {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (Arc::clone(&ops), Arc::clone(&stop));
        let conninfo = format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout={}",
            CONNECT_TIMEOUT.as_secs()
        );
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("writer runtime");
            runtime.block_on(write_loop(conninfo, log, halt));
        });
        Writer {
            ops,
            stop,
            thread: Some(thread),
        }
    }

    /// A copy of the log so far.
    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_loop(conninfo: String, ops: Arc<Mutex<Vec<Op>>>, stop: Arc<AtomicBool>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next_id = 1i64;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        next = (next + PACE).max(tokio::time::Instant::now());
        let Some(c) = client.as_ref() else {
            let connect = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls);
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok((c, connection))) => {
                    tokio::spawn(connection);
                    client = Some(c);
                }
                Ok(Err(e)) => failed_connect(&ops, e.to_string()),
                Err(_) => failed_connect(&ops, "connect timed out".to_string()),
            }
            continue;
        };
        let id = next_id;
        next_id += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = c.query_one(
            "insert into trials values ($1) returning inet_server_port()",
            &params,
        );
        let outcome = match tokio::time::timeout(STATEMENT_TIMEOUT, insert).await {
            Ok(Ok(row)) => Outcome::Acked(row.get::<_, i32>(0) as u16),
            Ok(Err(e)) => {
                let code = e.code().map(|c| c.code().to_string());
                let text = match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None => e.to_string(),
                };
                client = None;
                // Refused before anything was written: read-only, or a standby.
                if code.as_deref() == Some("25006") {
                    Outcome::Failed(text)
                } else {
                    Outcome::Unknown(text)
                }
            }
            Err(_) => {
                client = None;
                Outcome::Unknown("statement timed out".to_string())
            }
        };
        lock(&ops).push(Op {
            id: Some(id),
            done: Instant::now(),
            outcome,
        });
    }
}

fn failed_connect(ops: &Mutex<Vec<Op>>, why: String) {
    lock(ops).push(Op {
        id: None,
        done: Instant::now(),
        outcome: Outcome::Failed(why),
    });
}

/// One member in one sample: whether it is out of recovery (accepts writes) and its WAL position
/// (current on a primary, received on a standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub writable: bool,
    pub lsn: u64,
}

/// Sample `k` (taken at start + k × 100 ms): per member, None when it did not answer in time.
pub type Samples = BTreeMap<u64, Vec<Option<Seen>>>;

/// Sample `k`: per member, whether its agent answered 200 on `/primary` (None: no answer).
pub type PrimaryAnswers = BTreeMap<u64, Vec<Option<bool>>>;

/// Asks every member directly (not through HAProxy), every [`SAMPLE_EVERY`], whether it accepts
/// writes (one persistent connection per member, made again when it breaks), and its agent
/// whether it answers 200 on `/primary` (what HAProxy routes writes by).
pub struct Sampler {
    pub start: Instant,
    samples: Arc<Mutex<Samples>>,
    primary: Arc<Mutex<PrimaryAnswers>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// `members`: each member's PostgreSQL port and agent port.
    pub fn start(members: Vec<(u16, u16)>) -> Sampler {
        let samples = Arc::new(Mutex::new(BTreeMap::new()));
        let primary = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let (shared, answers, halt) = (
            Arc::clone(&samples),
            Arc::clone(&primary),
            Arc::clone(&stop),
        );
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sampler runtime");
            runtime.block_on(async move {
                let n = members.len();
                let mut tasks = Vec::new();
                for (i, (pg_port, api_port)) in members.into_iter().enumerate() {
                    tasks.push(tokio::spawn(sample_member(
                        (i, n),
                        pg_port,
                        start,
                        Arc::clone(&shared),
                        Arc::clone(&halt),
                    )));
                    tasks.push(tokio::spawn(sample_primary_answer(
                        (i, n),
                        api_port,
                        start,
                        Arc::clone(&answers),
                        Arc::clone(&halt),
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Sampler {
            start,
            samples,
            primary,
            stop,
            thread: Some(thread),
        }
    }

    pub fn samples(&self) -> Samples {
        lock(&self.samples).clone()
    }

    pub fn primary_answers(&self) -> PrimaryAnswers {
        lock(&self.primary).clone()
    }

    /// When sample `k` was taken.
    pub fn at(&self, k: u64) -> Instant {
        self.start + SAMPLE_EVERY * k as u32
    }

    /// The index of the first sample at or after `t`.
    pub fn index(&self, t: Instant) -> u64 {
        let ms = t.saturating_duration_since(self.start).as_millis() as u64;
        ms.div_ceil(SAMPLE_EVERY.as_millis() as u64)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SAMPLE_SQL: &str = "select not pg_is_in_recovery(), (case when pg_is_in_recovery() then \
     coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) else pg_current_wal_lsn() end \
     - '0/0'::pg_lsn)::bigint";

async fn sample_member(
    (i, n): (usize, usize),
    port: u16,
    start: Instant,
    samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
) {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(start), SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let tick = ticks.tick().await.into_std();
        let k =
            (tick.saturating_duration_since(start).as_millis() / SAMPLE_EVERY.as_millis()) as u64;
        let seen = tokio::time::timeout(SAMPLE_TIMEOUT, async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                let (c, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client = Some(c);
            }
            let row = client.as_ref()?.query_one(SAMPLE_SQL, &[]).await.ok()?;
            Some(Seen {
                writable: row.get(0),
                lsn: row.get::<_, i64>(1) as u64,
            })
        })
        .await
        .ok()
        .flatten();
        if seen.is_none() {
            client = None;
        }
        lock(&samples).entry(k).or_insert_with(|| vec![None; n])[i] = seen;
    }
}

/// `GET /primary` on the agent at `port` every [`SAMPLE_EVERY`]: Some(true) on 200.
async fn sample_primary_answer(
    (i, n): (usize, usize),
    port: u16,
    start: Instant,
    answers: Arc<Mutex<PrimaryAnswers>>,
    stop: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(start), SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        let tick = ticks.tick().await.into_std();
        let k =
            (tick.saturating_duration_since(start).as_millis() / SAMPLE_EVERY.as_millis()) as u64;
        let answer = tokio::time::timeout(SAMPLE_TIMEOUT, async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            stream
                .write_all(b"GET /primary HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.ok()?;
            // "HTTP/1.1 200"
            Some(&head[9..12] == b"200")
        })
        .await
        .ok()
        .flatten();
        lock(&answers).entry(k).or_insert_with(|| vec![None; n])[i] = answer;
    }
}
