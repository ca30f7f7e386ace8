//! Fault trials of automatic failover (issue 16, "Test rig"): HAProxy from the shipped
//! `contrib/haproxy/haproxy.cfg` in front of an [`HaRig`], the writer and the sampler of
//! `support::ha_load` running, and the checker ([`TrialRig::check`]): lost = acknowledged −
//! present on the final leader, split brain = a sample with two writable members (or two agents
//! answering 200 on `/primary`), outage = from the fault to the first acknowledged write after the
//! writes failed, handover = from the old primary's last accepted write to the new one's first
//! 200 on `/primary`.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_testkit::haproxy::{Haproxy, Node};

use super::ha::HaRig;
use super::ha_load::{Op, Outcome, SAMPLE_EVERY, Sampler, Samples, Writer, lock};

/// How many trials per fault: `LIFEBOAT_HA_TRIALS` (bench/ha_trials.sh), else 2 (CI).
pub fn trials() -> usize {
    match std::env::var("LIFEBOAT_HA_TRIALS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("LIFEBOAT_HA_TRIALS={v:?} is not a number of trials")),
        Err(_) => 2,
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
        let sampler = Sampler::start(
            rig.nodes
                .iter()
                .map(|n| (n.cluster.port, n.api_port))
                .collect(),
        );
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

    /// Wait until a write is acknowledged after `t`; returns how long after `t` it was.
    pub fn wait_for_ack_after(&self, t: Instant, timeout: Duration) -> Duration {
        let mut first = None;
        self.rig.wait("a write through HAProxy", timeout, |_| {
            first = lock(&self.writer.ops)
                .iter()
                .find(|op| op.done > t && matches!(op.outcome, Outcome::Acked(_)))
                .map(|op| op.done.saturating_duration_since(t));
            first.is_some()
        });
        first.unwrap_or(timeout)
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
        let answers = self.sampler.primary_answers();
        for (k, said) in answers.range(from..) {
            let primaries: Vec<&str> = (0..said.len())
                .filter(|&i| said[i] == Some(true))
                .map(|i| self.rig.nodes[i].name.as_str())
                .collect();
            if primaries.len() > 1 {
                report.split.push(format!(
                    "{:?} after the fault: /primary 200 on {}",
                    self.sampler.at(*k).saturating_duration_since(fault),
                    primaries.join(", ")
                ));
            }
        }
        if old != leader {
            // The old primary must stop taking writes before the new one answers /primary.
            let last_old_writable = samples
                .range(from..)
                .rev()
                .find(|(_, seen)| seen[old].is_some_and(|s| s.writable))
                .map(|(k, _)| *k);
            let first_new_primary = answers
                .range(from..)
                .find(|(_, said)| said[leader] == Some(true))
                .map(|(k, _)| *k);
            if let (Some(a), Some(b)) = (last_old_writable, first_new_primary) {
                report.handover_ms = Some((b as i64 - a as i64) * SAMPLE_EVERY.as_millis() as i64);
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
    /// From the restart of what was killed to the first acknowledged write (set by the trials
    /// where writes wait for it: etcd quorum lost).
    pub resumed_after: Option<Duration>,
    /// From the last sample where the old primary accepted writes to the first where the new
    /// one answered 200 on `/primary` (ms; negative: they overlapped). None without a promotion
    /// or when the old primary took no write after the fault.
    pub handover_ms: Option<i64>,
    /// Bytes the promoted member was behind the old primary (see `promoted_lag`).
    pub promoted_lag: Option<u64>,
}

impl Report {
    /// The line bench/ha_trials.sh parses: `ha trial FAULT N: key=value ...` (ms, counts).
    pub fn line(&self, fault: &str, n: usize, from: &str, to: &str, rejoin: Option<Duration>) {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
        println!(
            "ha trial {fault} {n}: outage_ms={} gap_ms={} fenced_ms={} acked={} failed={} \
             unknown={} lost={} split={} leader={from}->{to} lag_bytes={} rejoin_ms={} resumed_ms={} handover_ms={}",
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
            ms(self.resumed_after),
            self.handover_ms.map_or("-".to_string(), |m| m.to_string()),
        );
    }
}
