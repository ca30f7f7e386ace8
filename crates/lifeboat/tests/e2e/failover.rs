//! Automatic failover (issue 16) with real parts: three etcd members, PostgreSQL members each
//! run by its own `lifeboat serve` with `[ha]`, one repository. Faults are real: kill -9 of the
//! postmaster, SIGSTOP of the leader's agent. Timings as in the issue: ttl 10 s, loop_wait 2 s,
//! retry_timeout 4 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::ha::HaRig;

/// The bound on a failover: a new primary takes writes within 25 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(25);

fn count(node: &crate::support::ha::HaNode) -> Option<i64> {
    node.cluster
        .psql("select count(*) from t")
        .ok()
        .and_then(|c| c.parse().ok())
}

/// Every 100 ms, which members accept writes; returns the samples where more than one did.
fn sample_writable(
    rig: &HaRig,
    stop: &AtomicBool,
) -> Vec<(Duration, Vec<String>)> {
    let start = Instant::now();
    let mut split = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let writable: Vec<String> = rig
            .nodes
            .iter()
            .filter(|n| n.accepts_writes())
            .map(|n| n.name.clone())
            .collect();
        if writable.len() > 1 {
            split.push((start.elapsed(), writable));
        }
        thread::sleep(Duration::from_millis(100));
    }
    split
}

#[test]
fn kill9_of_the_primary_promotes_the_standby_and_the_old_primary_rejoins() {
    let rig = HaRig::start(2, "");
    rig.wait_settled(0);
    let (n1, n2) = (&rig.nodes[0], &rig.nodes[1]);
    n1.cluster
        .psql("insert into t select g, 'before' from generate_series(1, 100) g")
        .expect("insert");
    rig.wait("n2 replayed the rows", Duration::from_secs(30), |_| {
        count(n2) == Some(100)
    });

    n1.cluster.kill9().expect("kill -9 of n1's postmaster");
    let killed = Instant::now();
    rig.wait("n2 takes writes", Duration::from_secs(60), |_| {
        n2.cluster
            .psql("insert into t values (1000, 'after')")
            .is_ok()
    });
    let outage = killed.elapsed();
    eprintln!("kill -9 of the primary's postmaster: n2 took writes after {outage:?}");
    assert!(outage <= FAILOVER_BOUND, "failover took {outage:?}");
    assert_eq!(rig.leader().as_deref(), Some("n2"));
    assert_eq!(count(n2), Some(101), "no acknowledged row lost");

    // The old primary comes back as a standby of n2 (rewound), within 120 s.
    let rejoined = rig.wait(
        "n1 streams from n2",
        Duration::from_secs(120),
        |_| {
            n1.in_recovery()
                && n2
                    .cluster
                    .psql(
                        "select count(*) from pg_stat_replication \
                         where application_name = 'n1' and state = 'streaming'",
                    )
                    .is_ok_and(|c| c == "1")
        },
    );
    eprintln!("n1 rejoined as a standby {rejoined:?} after the failover");
    n2.cluster
        .psql("insert into t values (1001, 'rejoined')")
        .expect("insert on n2");
    rig.wait("n1 replays n2's writes", Duration::from_secs(30), |_| {
        count(n1) == Some(102)
    });
}

#[test]
fn a_frozen_leader_agent_is_fenced_before_a_standby_is_promoted() {
    let mut rig = HaRig::start(2, "");
    rig.wait_settled(0);
    rig.nodes[0]
        .cluster
        .psql("insert into t select g, 'before' from generate_series(1, 10) g")
        .expect("insert");

    let stop = Arc::new(AtomicBool::new(false));
    let split = thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_writable(&rig, &stop));
        // The zombie: the leader's agent stops for ttl + 10 s while its PostgreSQL runs on.
        rig.nodes[0].freeze_agent(true);
        let frozen = Instant::now();
        rig.wait("n2 takes writes", Duration::from_secs(60), |rig| {
            rig.nodes[1].accepts_writes()
        });
        eprintln!("frozen leader agent: n2 took writes after {:?}", frozen.elapsed());
        thread::sleep(Duration::from_secs(20).saturating_sub(frozen.elapsed()));
        rig.nodes[0].freeze_agent(false);
        thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    assert!(split.is_empty(), "two writable members: {split:?}");
    assert_eq!(rig.leader().as_deref(), Some("n2"));
    // The old leader, back, follows the new one.
    rig.wait("n1 is a standby again", Duration::from_secs(120), |rig| {
        rig.nodes[0].in_recovery()
    });
    let _ = &mut rig;
}
