//! Fault trials of automatic failover (issue 16, "Must show" 1 to 5) with real processes: the
//! rig of `support::ha` (three etcd members, PostgreSQL members each run by its own `lifeboat
//! serve`), HAProxy from the shipped config in front, a writer through HAProxy's write port and
//! a sampler asking every member whether it accepts writes (`support::ha_trials`).
//!
//! One test per fault, one rig per test, [`trials`] trials in a row on it (2 in CI;
//! `LIFEBOAT_HA_TRIALS=10` from bench/ha_trials.sh). A trial: writes flow, the fault strikes the
//! member holding the leader key, writes come back through HAProxy, what was killed is started
//! again, the cluster settles (a leader, every other member streaming from it), the checker runs.
//! Each trial prints one `ha trial ...` line (run with `--no-capture` to see them).
//!
//! Asserted per trial: writes back through HAProxy within 25 s (not for the etcd fault, where the
//! primary must instead stop taking writes within ttl and nobody may be promoted); no sample with
//! two writable members or two agents answering 200 on `/primary`; the old primary took its last
//! write before the new one answered `/primary`; no refused id present; the promoted member
//! within `maximum_lag_on_failover`; every old primary streaming again within 120 s. Rows lost
//! (asynchronous replication) are reported, and must be 0 when the primary restarts in place.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::ha_trials::{Report, TrialRig, trials};

/// PostgreSQL members per rig.
const MEMBERS: usize = 3;
/// The rig's ttl (support::ha::HA_TIMINGS).
const TTL: Duration = Duration::from_secs(10);
/// The bound: a new primary takes writes through HAProxy within 25 s.
const OUTAGE_BOUND: Duration = Duration::from_secs(25);
/// An old primary must be a streaming standby again within this.
const REJOIN_BOUND: Duration = Duration::from_secs(120);
/// The rig's `maximum_lag_on_failover` (the default, 1 MiB).
const MAX_LAG: u64 = 1 << 20;
/// How long writes flow before each fault.
const WRITING: Duration = Duration::from_secs(2);
/// Scheduling slack on this loaded machine for "within ttl".
const SLACK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9 of the leader's postmaster: its agent starts it again in place.
    Postmaster,
    /// kill -9 of the leader's agent only: its fence keeper stops PostgreSQL at the deadline.
    Agent,
    /// kill -9 of both.
    Both,
    /// SIGSTOP of the leader's agent for ttl + 10 s (a zombie leader).
    Zombie,
    /// Two of the three etcd members killed: no quorum.
    Quorum,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Postmaster => "kill9-postmaster",
            Fault::Agent => "kill9-agent",
            Fault::Both => "kill9-both",
            Fault::Zombie => "sigstop-agent",
            Fault::Quorum => "etcd-quorum-lost",
        }
    }
}

/// What one trial ended with, beyond the checker's report.
struct Ended {
    new: usize,
    rejoin: Option<Duration>,
}

/// Inflict `fault` on the leader `old`, wait until writes come back, heal; returns when the
/// cluster is settled again.
fn inflict(
    t: &mut TrialRig,
    fault: Fault,
    old: usize,
    n: usize,
    since: Instant,
    at: Instant,
) -> (Ended, Report) {
    let name = fault.name();
    let mut fenced_after = None;
    let mut resumed_after = None;
    let healed = match fault {
        Fault::Postmaster => {
            t.rig.nodes[old]
                .cluster
                .kill9()
                .expect("kill -9 of the postmaster");
            t.wait_writes_back(at, Duration::from_secs(60));
            None
        }
        Fault::Agent | Fault::Both => {
            t.rig.nodes[old].kill_agent();
            if fault == Fault::Both {
                t.rig.nodes[old]
                    .cluster
                    .kill9()
                    .expect("kill -9 of the postmaster");
            }
            t.wait_writes_back(at, Duration::from_secs(60));
            t.rig.nodes[old].start_agent();
            Some(Instant::now())
        }
        Fault::Zombie => {
            t.rig.nodes[old].freeze_agent(true);
            t.wait_writes_back(at, Duration::from_secs(60));
            thread::sleep((TTL + Duration::from_secs(10)).saturating_sub(at.elapsed()));
            t.rig.nodes[old].freeze_agent(false);
            Some(Instant::now())
        }
        Fault::Quorum => {
            // Vary which members go, so that the etcd leader is sometimes among them.
            let gone = [n % 3, (n + 1) % 3];
            for &i in &gone {
                t.rig.etcd.kill_member(i).expect("kill an etcd member");
            }
            // Long enough for a lease to expire had it not been for the lost quorum.
            thread::sleep((TTL + SLACK + Duration::from_secs(2)).saturating_sub(at.elapsed()));
            let back = Instant::now();
            let writable = t.writable_between(at, back);
            let others: Vec<_> = writable
                .iter()
                .filter(|(_, members)| members.iter().any(|&i| i != old))
                .collect();
            assert!(
                others.is_empty(),
                "{name} {n}: a member other than the old primary accepted writes without etcd \
                 quorum: {others:?}"
            );
            fenced_after = writable.last().map(|(after, _)| *after);
            let last_ack = t.last_ack_between(at, back);
            for after in [fenced_after, last_ack].into_iter().flatten() {
                assert!(
                    after <= TTL + SLACK,
                    "{name} {n}: the primary still accepted writes {after:?} after etcd lost \
                     its quorum (ttl {TTL:?})"
                );
            }
            for &i in &gone {
                t.rig
                    .etcd
                    .start_member(i)
                    .expect("start the etcd member again");
            }
            for &i in &gone {
                t.rig
                    .etcd
                    .wait_healthy(i, Duration::from_secs(30))
                    .expect("etcd member healthy again");
            }
            resumed_after = Some(t.wait_for_ack_after(back, Duration::from_secs(90)));
            None
        }
    };
    let new = t.wait_all_streaming(Duration::from_secs(180));
    let rejoin = if new != old {
        // The old primary is back as a streaming standby: when, from its heal.
        let from = healed.unwrap_or(at);
        t.rig.wait(
            "the old primary streams from the new leader",
            REJOIN_BOUND.saturating_sub(from.elapsed()),
            |_| t.streams_from(old, new),
        );
        Some(from.elapsed())
    } else {
        None
    };
    let mut report = t.check(since, at, old, new);
    report.fenced_after = fenced_after;
    report.resumed_after = resumed_after;
    (Ended { new, rejoin }, report)
}

fn run(fault: Fault) {
    let started = Instant::now();
    let mut t = TrialRig::start(MEMBERS);
    let name = fault.name();
    let mut lost = 0;
    for n in 1..=trials() {
        let since = Instant::now();
        thread::sleep(WRITING);
        let old = t.leader_index().expect("a leader before the fault");
        let at = Instant::now();
        let (ended, report) = inflict(&mut t, fault, old, n, since, at);
        let (from, to) = (&t.rig.nodes[old].name, &t.rig.nodes[ended.new].name);
        report.line(name, n, from, to, ended.rejoin);
        lost += report.lost.len();
        assert!(
            report.split.is_empty(),
            "{name} {n}: two writable members: {:?}",
            report.split
        );
        assert!(
            report.failed_present.is_empty(),
            "{name} {n}: ids refused but present: {:?}",
            report.failed_present
        );
        if fault != Fault::Quorum {
            let outage = report.outage.expect("writes came back");
            assert!(
                outage <= OUTAGE_BOUND,
                "{name} {n}: writes came back after {outage:?}"
            );
        }
        if let Some(handover) = report.handover_ms {
            assert!(
                handover > 0,
                "{name} {n}: the old primary still accepted writes {}ms after the new one \
                 answered 200 on /primary",
                -handover
            );
        }
        if let Some(lag) = report.promoted_lag {
            assert!(
                lag <= MAX_LAG,
                "{name} {n}: the promoted member was {lag} bytes behind"
            );
        }
        if let Some(rejoin) = ended.rejoin {
            assert!(
                rejoin <= REJOIN_BOUND,
                "{name} {n}: the old primary rejoined after {rejoin:?}"
            );
        }
        if fault == Fault::Postmaster && ended.new == old {
            // Restarted in place: crash recovery keeps every commit.
            assert!(
                report.lost.is_empty(),
                "{name} {n}: acknowledged ids lost: {:?}",
                report.lost
            );
        }
    }
    eprintln!(
        "{name}: {} trials, {lost} acknowledged rows lost, in {:?}",
        trials(),
        started.elapsed()
    );
}

#[test]
fn kill9_of_the_leaders_postmaster() {
    run(Fault::Postmaster);
}

#[test]
fn kill9_of_the_leaders_agent() {
    run(Fault::Agent);
}

#[test]
fn kill9_of_the_leaders_postmaster_and_agent() {
    run(Fault::Both);
}

#[test]
fn sigstop_of_the_leaders_agent_past_ttl() {
    run(Fault::Zombie);
}

#[test]
fn etcd_quorum_lost_and_back() {
    run(Fault::Quorum);
}
