//! Fault trials of automatic failover (issue 16, "Test rig"): HAProxy from the shipped
//! `contrib/haproxy/haproxy.cfg` in front of an [`HaRig`], a [`Writer`] inserting unique ids
//! through HAProxy's write port and logging each as acknowledged, failed or unknown, a
//! [`Sampler`] asking every member directly, every 100 ms, whether it accepts writes, and the
//! checker ([`Trial::check`]): lost = acknowledged − present on the final leader, split brain = a
//! sample with two writable members, outage = from the fault to the first acknowledged write
//! after the writes failed.
//!
//! The writer and the sampler run on their own threads and own what they need (ports), so a
//! test keeps `&mut` access to the rig to inflict faults while they run.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_testkit::haproxy::{Haproxy, Node};

use super::ha::HaRig;

/// One insert every this long (no catch-up bursts after a stall).
const PACE: Duration = Duration::from_millis(10);
/// Connect through HAProxy, and each statement, must finish within this or count as failed
/// (connect) or unknown (statement).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The sampler's period and how long one member may take to answer a sample.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(300);

/// How many trials per fault: `LIFEBOAT_HA_TRIALS` (bench/ha_trials.sh), else 2 (CI).
pub fn trials() -> usize {
    match std::env::var("LIFEBOAT_HA_TRIALS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("LIFEBOAT_HA_TRIALS={v:?} is not a number of trials")),
        Err(_) => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// Asks every member directly (not through HAProxy), every [`SAMPLE_EVERY`], whether it accepts
/// writes; one persistent connection per member, made again when it breaks.
pub struct Sampler {
    pub start: Instant,
    samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(ports: Vec<u16>) -> Sampler {
        let samples = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let (shared, halt) = (Arc::clone(&samples), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sampler runtime");
            runtime.block_on(async move {
                let n = ports.len();
                let tasks: Vec<_> = ports
                    .into_iter()
                    .enumerate()
                    .map(|(i, port)| {
                        tokio::spawn(sample_member(
                            i,
                            n,
                            port,
                            start,
                            Arc::clone(&shared),
                            Arc::clone(&halt),
                        ))
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Sampler {
            start,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    pub fn samples(&self) -> Samples {
        lock(&self.samples).clone()
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
    i: usize,
    n: usize,
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

/// The rig with HAProxy, the writer and the sampler running.
pub struct TrialRig {
    pub rig: HaRig,
    pub proxy: Haproxy,
    pub writer: Writer,
    pub sampler: Sampler,
}

impl TrialRig {
    /// `size` members settled around n1, the `trials` table, HAProxy in front, the writer and
    /// the sampler started; returns once a write went through HAProxy.
    pub fn start(size: usize) -> TrialRig {
        let started = Instant::now();
        let rig = HaRig::start(size, "");
        rig.wait_settled(0);
        rig.nodes[0]
            .cluster
            .psql("create table trials (id bigint primary key)")
            .expect("create the trials table");
        let nodes: Vec<Node> = rig
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                pg_port: n.cluster.port,
                agent_port: n.api_port,
            })
            .collect();
        let proxy = Haproxy::start(&nodes).expect("HAProxy must start (scripts/setup.sh)");
        let sampler = Sampler::start(rig.nodes.iter().map(|n| n.cluster.port).collect());
        let writer = Writer::start(proxy.write_port);
        let trial_rig = TrialRig {
            rig,
            proxy,
            writer,
            sampler,
        };
        trial_rig.wait_for_ack_after(Instant::now(), Duration::from_secs(30));
        eprintln!(
            "ha trials: rig of {size} members with HAProxy ready in {:?}",
            started.elapsed()
        );
        trial_rig
    }

    /// Index of the member holding the leader key.
    pub fn leader_index(&self) -> Option<usize> {
        let name = self.rig.leader()?;
        self.rig.nodes.iter().position(|n| n.name == name)
    }

    fn port_name(&self, port: u16) -> String {
        self.rig
            .nodes
            .iter()
            .find(|n| n.cluster.port == port)
            .map_or_else(|| format!("port {port}"), |n| n.name.clone())
    }

    /// Wait until a write is acknowledged after `t`.
    pub fn wait_for_ack_after(&self, t: Instant, timeout: Duration) {
        self.rig.wait("a write through HAProxy", timeout, |_| {
            lock(&self.writer.ops)
                .iter()
                .rev()
                .any(|op| op.done > t && matches!(op.outcome, Outcome::Acked(_)))
        });
    }

    /// Wait until writes through HAProxy failed after `fault` and then one was acknowledged
    /// again; returns when that acknowledgement came, measured from `fault`.
    pub fn wait_writes_back(&self, fault: Instant, timeout: Duration) -> Duration {
        let mut back = None;
        self.rig.wait(
            "writes through HAProxy fail, then come back",
            timeout,
            |_| {
                back = writes_back(&lock(&self.writer.ops), fault);
                back.is_some()
            },
        );
        back.map_or(timeout, |at| at.saturating_duration_since(fault))
    }

    /// Wait until one member leads and accepts writes and every other streams from it; returns
    /// the leader's index.
    pub fn wait_all_streaming(&self, timeout: Duration) -> usize {
        let n = self.rig.nodes.len();
        let mut leader = None;
        self.rig.wait(
            "a leader with every other member streaming",
            timeout,
            |rig| {
                leader = rig
                    .leader()
                    .and_then(|name| rig.nodes.iter().position(|m| m.name == name));
                leader.is_some_and(|l| {
                    rig.nodes[l].accepts_writes()
                        && rig.nodes[l]
                            .cluster
                            .psql(
                                "select count(*) from pg_stat_replication where state = \
                                 'streaming' and application_name like 'n%'",
                            )
                            .is_ok_and(|c| c == (n - 1).to_string())
                })
            },
        );
        leader.unwrap_or(0)
    }

    /// Whether member `i` streams from the leader `leader`.
    pub fn streams_from(&self, i: usize, leader: usize) -> bool {
        self.rig.nodes[i].in_recovery()
            && self.rig.nodes[leader]
                .cluster
                .psql(&format!(
                    "select count(*) from pg_stat_replication where application_name = '{}' \
                     and state = 'streaming'",
                    self.rig.nodes[i].name
                ))
                .is_ok_and(|c| c == "1")
    }

    /// The checker, over the writer's attempts since `since` and the samples from `fault` on;
    /// the ids present are read from member `leader` (the final leader). `old` is the leader
    /// when the fault struck.
    pub fn check(&self, since: Instant, fault: Instant, old: usize, leader: usize) -> Report {
        let ops: Vec<Op> = self
            .writer
            .ops()
            .into_iter()
            .filter(|op| op.done >= since)
            .collect();
        let present: HashSet<i64> = self.rig.nodes[leader]
            .cluster
            .psql("select id from trials")
            .expect("read the trials table from the leader")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let mut report = Report::default();
        for op in &ops {
            let Some(id) = op.id else { continue };
            match &op.outcome {
                Outcome::Acked(port) => {
                    report.acked += 1;
                    if !present.contains(&id) {
                        report.lost.push((id, self.port_name(*port)));
                    }
                }
                Outcome::Failed(_) => {
                    report.failed += 1;
                    if present.contains(&id) {
                        report.failed_present.push(id);
                    }
                }
                Outcome::Unknown(_) => report.unknown += 1,
            }
        }
        report.outage = writes_back(&ops, fault).map(|at| at.saturating_duration_since(fault));
        report.gap = longest_gap(&ops, fault);
        let samples = self.sampler.samples();
        let from = self.sampler.index(fault);
        for (k, seen) in samples.range(from..) {
            let writable: Vec<String> = seen
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some_and(|s| s.writable))
                .map(|(i, _)| self.rig.nodes[i].name.clone())
                .collect();
            if writable.len() > 1 {
                report.split.push(format!(
                    "{:?} after the fault: {}",
                    self.sampler.at(*k).saturating_duration_since(fault),
                    writable.join(", ")
                ));
            }
        }
        report.promoted_lag = promoted_lag(&samples, from, old, leader);
        report
    }

    /// The samples in [`from`, `until`) where some member accepted writes: when (after
    /// `from`) and which members.
    pub fn writable_between(&self, from: Instant, until: Instant) -> Vec<(Duration, Vec<usize>)> {
        let samples = self.sampler.samples();
        samples
            .range(self.sampler.index(from)..self.sampler.index(until))
            .filter_map(|(k, seen)| {
                let writable: Vec<usize> = (0..seen.len())
                    .filter(|&i| seen[i].is_some_and(|s| s.writable))
                    .collect();
                (!writable.is_empty()).then(|| {
                    (
                        self.sampler.at(*k).saturating_duration_since(from),
                        writable,
                    )
                })
            })
            .collect()
    }

    /// The last write acknowledged in [`from`, `until`), measured from `from`.
    pub fn last_ack_between(&self, from: Instant, until: Instant) -> Option<Duration> {
        lock(&self.writer.ops)
            .iter()
            .rev()
            .filter(|op| op.done >= from && op.done < until)
            .find(|op| matches!(op.outcome, Outcome::Acked(_)))
            .map(|op| op.done.saturating_duration_since(from))
    }
}

impl Drop for TrialRig {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "HAProxy log:\n{}",
                super::daemon::tail(&self.proxy.log(), 40)
            );
        }
    }
}

/// When the first acknowledgement after the first failure at or after `fault` came.
fn writes_back(ops: &[Op], fault: Instant) -> Option<Instant> {
    let failed_at = ops
        .iter()
        .find(|op| op.done >= fault && !matches!(op.outcome, Outcome::Acked(_)))?
        .done;
    ops.iter()
        .find(|op| op.done > failed_at && matches!(op.outcome, Outcome::Acked(_)))
        .map(|op| op.done)
}

/// The longest time without an acknowledged write from `fault` to the last acknowledgement.
fn longest_gap(ops: &[Op], fault: Instant) -> Duration {
    let mut last = fault;
    let mut gap = Duration::ZERO;
    for op in ops.iter().filter(|op| op.done >= fault) {
        if matches!(op.outcome, Outcome::Acked(_)) {
            gap = gap.max(op.done.saturating_duration_since(last));
            last = op.done;
        }
    }
    gap
}

/// How far member `new` (promoted) was behind member `old` when it took over, from the
/// samples: `old`'s last position as a writable primary minus `new`'s last received position
/// while still in recovery. None when no promotion happened or the samples miss one side.
fn promoted_lag(samples: &Samples, from: u64, old: usize, new: usize) -> Option<u64> {
    if old == new {
        return None;
    }
    let mut old_last = None;
    let mut new_last = None;
    for seen in samples.range(from.saturating_sub(50)..).map(|(_, s)| s) {
        if let Some(s) = seen[old].filter(|s| s.writable) {
            old_last = Some(s.lsn);
        }
        match seen[new] {
            Some(s) if s.writable => break,
            Some(s) => new_last = Some(s.lsn),
            None => {}
        }
    }
    Some(old_last?.saturating_sub(new_last?))
}

/// One trial's figures.
#[derive(Debug, Default)]
pub struct Report {
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged ids missing from the final leader, with the member that acknowledged each.
    pub lost: Vec<(i64, String)>,
    /// Ids the writer saw refused that are present anyway (must never happen).
    pub failed_present: Vec<i64>,
    /// From the fault to the first acknowledged write after writes failed.
    pub outage: Option<Duration>,
    /// The longest time without an acknowledged write after the fault.
    pub gap: Duration,
    /// Samples with more than one writable member.
    pub split: Vec<String>,
    /// From the fault to the last sample where the old primary still accepted writes (set by
    /// the trials that expect it to stop by itself).
    pub fenced_after: Option<Duration>,
    /// Bytes the promoted member was behind the old primary (see `promoted_lag`).
    pub promoted_lag: Option<u64>,
}

impl Report {
    /// The line bench/ha_trials.sh parses: `ha trial FAULT N: key=value ...` (ms, counts).
    pub fn line(&self, fault: &str, n: usize, from: &str, to: &str, rejoin: Option<Duration>) {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
        println!(
            "ha trial {fault} {n}: outage_ms={} gap_ms={} fenced_ms={} acked={} failed={} \
             unknown={} lost={} split={} leader={from}->{to} lag_bytes={} rejoin_ms={}",
            ms(self.outage),
            self.gap.as_millis(),
            ms(self.fenced_after),
            self.acked,
            self.failed,
            self.unknown,
            self.lost.len(),
            self.split.len(),
            self.promoted_lag.map_or("-".to_string(), |b| b.to_string()),
            ms(rejoin),
        );
    }
}
