//! Automatic failover (issue 16) with real parts: three etcd members, PostgreSQL members each
//! run by its own `lifeboat serve` with `[ha]`, one repository. Faults are real: kill -9 of the
//! postmaster, SIGSTOP of the leader's agent. Timings as in the issue: ttl 10 s, loop_wait 2 s,
//! retry_timeout 4 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::assert_success;
use crate::support::ha::{HaNode, HaRig};

/// The bound on a failover: a new primary takes writes within 25 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(25);

/// `lifeboat --config <the member's config>`, as the cluster owner.
fn node_cmd(node: &HaNode) -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::support::BIN);
    lifeboat_testkit::cluster::run_as_owner(&mut cmd);
    cmd.arg("--config").arg(&node.config);
    cmd
}

/// The status a member's agent answers on `path` (0: no answer).
fn status(node: &HaNode, path: &str) -> u16 {
    node.api(path).map_or(0, |(code, _)| code)
}

fn count(node: &HaNode) -> Option<i64> {
    node.cluster
        .psql("select count(*) from t")
        .ok()
        .and_then(|c| c.parse().ok())
}

/// Every 100 ms, which members accept writes; returns the samples where more than one did.
fn sample_writable(rig: &HaRig, stop: &AtomicBool) -> Vec<(Duration, Vec<String>)> {
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
fn kill9_of_the_postmaster_restarts_the_primary_in_place_without_losing_a_row() {
    let rig = HaRig::start(2, "");
    rig.wait_settled(0);
    let (n1, n2) = (&rig.nodes[0], &rig.nodes[1]);
    n1.cluster
        .psql("insert into t select g, 'before' from generate_series(1, 100) g")
        .expect("insert");

    // `check` with [ha]: the archive path, etcd, this cluster's identity, failover's settings.
    let out = node_cmd(n1)
        .arg("check")
        .output()
        .expect("run lifeboat check");
    assert_success(&out, "lifeboat check on a failover member");
    // The status, metrics and dashboard show the failover agent's view.
    rig.wait(
        "the status shows the agents",
        Duration::from_secs(20),
        |_| {
            let status = |node: &HaNode| {
                node.api("/api/status")
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .unwrap_or_default()
            };
            let (s1, s2) = (status(n1), status(n2));
            s1["ha"]["leader"] == "n1"
                && s1["ha"]["holds_leader"] == true
                && s2["ha"]["role"] == "replica"
                && s2["ha"]["members"].as_array().is_some_and(|m| m.len() == 2)
        },
    );
    let metrics = |node: &HaNode| node.api("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics(n1).contains("lifeboat_ha_leader 1"),
        "{}",
        metrics(n1)
    );
    assert!(
        metrics(n2).contains("lifeboat_ha_leader 0"),
        "{}",
        metrics(n2)
    );
    let page = n1.api("/").map(|(_, b)| b).unwrap_or_default();
    assert!(
        page.contains("<h2>Failover</h2>"),
        "no failover section on the dashboard"
    );

    n1.cluster.kill9().expect("kill -9 of n1's postmaster");
    let killed = Instant::now();
    // The leader's agent starts its server again (crash recovery) and keeps the key: the
    // quickest way back for writes, and nothing acknowledged is lost.
    rig.wait(
        "a primary takes writes again",
        Duration::from_secs(60),
        |rig| {
            rig.nodes.iter().any(|n| {
                n.cluster
                    .psql("insert into t values (1000, 'after')")
                    .is_ok()
            })
        },
    );
    let outage = killed.elapsed();
    eprintln!("kill -9 of the primary's postmaster: writes again after {outage:?}");
    assert!(
        outage <= FAILOVER_BOUND,
        "writes came back after {outage:?}"
    );
    assert_eq!(rig.leader().as_deref(), Some("n1"));
    assert_eq!(count(n1), Some(101), "no acknowledged row lost");
    rig.wait("n2 streams again", Duration::from_secs(60), |_| {
        count(n2) == Some(101)
    });
}

#[test]
fn kill9_of_the_primary_and_its_agent_promotes_the_standby_and_the_old_primary_rejoins() {
    let mut rig = HaRig::start(2, "");
    rig.wait_settled(0);
    rig.nodes[0]
        .cluster
        .psql("insert into t select g, 'before' from generate_series(1, 100) g")
        .expect("insert");
    rig.wait("n2 replayed the rows", Duration::from_secs(30), |rig| {
        count(&rig.nodes[1]) == Some(100)
    });

    // The role endpoints HAProxy checks: the leader is the primary, the other a replica.
    assert_eq!(status(&rig.nodes[0], "/primary"), 200);
    assert_eq!(status(&rig.nodes[1], "/primary"), 503);
    assert_eq!(status(&rig.nodes[1], "/replica"), 200);

    rig.nodes[0].kill_agent();
    rig.nodes[0]
        .cluster
        .kill9()
        .expect("kill -9 of n1's postmaster");
    let killed = Instant::now();
    rig.wait("n2 takes writes", Duration::from_secs(60), |rig| {
        rig.nodes[1]
            .cluster
            .psql("insert into t values (1000, 'after')")
            .is_ok()
    });
    let outage = killed.elapsed();
    eprintln!("kill -9 of the primary and its agent: n2 took writes after {outage:?}");
    assert!(outage <= FAILOVER_BOUND, "failover took {outage:?}");
    assert_eq!(rig.leader().as_deref(), Some("n2"));
    assert_eq!(count(&rig.nodes[1]), Some(101), "no acknowledged row lost");
    rig.wait("n2 answers /primary", Duration::from_secs(10), |rig| {
        status(&rig.nodes[1], "/primary") == 200
    });

    // The old primary's agent back: it rewinds its server and follows n2, within 120 s.
    rig.nodes[0].start_agent();
    let back = Instant::now();
    rig.wait("n1 streams from n2", Duration::from_secs(120), |rig| {
        rig.nodes[0].in_recovery()
            && rig.nodes[1]
                .cluster
                .psql(
                    "select count(*) from pg_stat_replication \
                     where application_name = 'n1' and state = 'streaming'",
                )
                .is_ok_and(|c| c == "1")
    });
    eprintln!(
        "n1 rejoined as a standby {:?} after its agent came back",
        back.elapsed()
    );
    rig.nodes[1]
        .cluster
        .psql("insert into t values (1001, 'rejoined')")
        .expect("insert on n2");
    rig.wait("n1 replays n2's writes", Duration::from_secs(30), |rig| {
        count(&rig.nodes[0]) == Some(102)
    });
    rig.wait("n1 answers /replica", Duration::from_secs(10), |rig| {
        status(&rig.nodes[0], "/replica") == 200
    });
    assert_eq!(status(&rig.nodes[0], "/primary"), 503);
    // The repository holds both timelines: verify finds nothing wrong.
    let out = rig.setup.run(&["verify"]);
    assert_success(&out, "lifeboat verify after the failover");
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
        eprintln!(
            "frozen leader agent: n2 took writes after {:?}",
            frozen.elapsed()
        );
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

/// The ids in `t` of a restored copy, in order.
fn restored_ids(copy: &lifeboat_pg::cluster::LocalCluster) -> Vec<i64> {
    crate::support::ids(copy)
}

#[test]
fn pitr_before_and_after_a_failover_is_exact_and_a_backup_of_the_new_primary_verifies() {
    use crate::backup_restore::{archive_everything, restore_json, start_restored, target};

    let mut rig = HaRig::start(2, "");
    rig.wait_settled(0);
    let insert = |node: &HaNode, from: i64, to: i64| {
        node.cluster
            .psql(&format!(
                "insert into t select g, 'row' from generate_series({from}, {to}) g"
            ))
            .expect("insert");
    };
    let now = |node: &HaNode| {
        node.cluster
            .psql("select clock_timestamp()")
            .expect("clock_timestamp")
    };
    insert(&rig.nodes[0], 1, 10);
    let before_failover = now(&rig.nodes[0]);
    thread::sleep(Duration::from_millis(50));
    insert(&rig.nodes[0], 11, 20);
    archive_everything(&rig.nodes[0].cluster);
    rig.wait("n2 replayed rows 1-20", Duration::from_secs(30), |rig| {
        count(&rig.nodes[1]) == Some(20)
    });

    rig.nodes[0].kill_agent();
    rig.nodes[0].cluster.kill9().expect("kill -9 of n1");
    rig.wait(
        "n2 leads and takes writes",
        Duration::from_secs(60),
        |rig| rig.leader().as_deref() == Some("n2") && rig.nodes[1].accepts_writes(),
    );
    insert(&rig.nodes[1], 21, 30);
    let after_failover = now(&rig.nodes[1]);
    thread::sleep(Duration::from_millis(50));
    insert(&rig.nodes[1], 31, 40);
    archive_everything(&rig.nodes[1].cluster);

    // A backup of the new primary, on its new timeline, into the same repository.
    let report = rig.setup.backup(&rig.nodes[1].cluster);
    assert_eq!(report["timeline"], 2, "{report}");
    let owner = rig.nodes[0].cluster.owner.clone();
    for (target_time, want) in [(&before_failover, 10), (&after_failover, 30)] {
        let t = target();
        restore_json(&rig.setup, &t.data, &["--target-time", target_time]);
        let copy = start_restored(t, owner.clone());
        assert_eq!(
            restored_ids(&copy),
            crate::support::first_n(want),
            "restore to {target_time}"
        );
    }
    let out = rig.setup.run(&["verify"]);
    assert_success(
        &out,
        "lifeboat verify after the failover and the new backup",
    );
    let _ = &mut rig;
}

#[test]
fn synchronous_strict_loses_no_acknowledged_row_when_the_primary_dies() {
    let rig = HaRig::start(3, "synchronous = \"strict\"\n");
    rig.wait_settled(0);
    rig.wait(
        "n1 commits synchronously to a standby",
        Duration::from_secs(30),
        |rig| {
            rig.nodes[0]
                .cluster
                .psql("select count(*) from pg_stat_replication where sync_state in ('sync', 'quorum')")
                .is_ok_and(|c| c != "0")
        },
    );
    // A writer on n1: every insert psql reports committed is acknowledged.
    let acknowledged = thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut acked = Vec::new();
            for id in 1..=100_000_i64 {
                match rig.nodes[0]
                    .cluster
                    .psql(&format!("insert into t values ({id}, 'sync')"))
                {
                    Ok(_) => acked.push(id),
                    Err(_) => break,
                }
            }
            acked
        });
        thread::sleep(Duration::from_secs(3));
        // The agent first, so that nothing restarts the server in place.
        let n1 = &rig.nodes[0];
        let agent_pid = n1.agent_pid();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &agent_pid.to_string()])
            .status();
        n1.cluster.kill9().expect("kill -9 of n1's postmaster");
        writer.join().expect("writer")
    });
    assert!(
        acknowledged.len() > 10,
        "the writer made too little progress"
    );
    let leader = rig.wait("a standby leads", Duration::from_secs(60), |rig| {
        matches!(rig.leader().as_deref(), Some("n2" | "n3"))
    });
    eprintln!(
        "strict: {} rows acknowledged before the kill; a new leader after {leader:?}",
        acknowledged.len()
    );
    let new_leader = rig
        .nodes
        .iter()
        .find(|n| Some(n.name.clone()) == rig.leader())
        .expect("leader");
    rig.wait(
        "the new leader is out of recovery",
        Duration::from_secs(30),
        |_| new_leader.accepts_writes(),
    );
    let present: Vec<i64> = new_leader
        .cluster
        .psql("select id from t order by id")
        .expect("read the rows")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let lost: Vec<&i64> = acknowledged
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    // Writes come back once the third member follows the new leader as its synchronous standby.
    rig.wait(
        "the new leader takes writes",
        Duration::from_secs(60),
        |_| {
            new_leader
                .cluster
                .psql("insert into t values (0, 'after')")
                .is_ok()
        },
    );
}

#[test]
fn a_rewind_that_cannot_work_falls_back_to_a_reclone_from_the_repository() {
    let mut rig = HaRig::start(2, "");
    rig.wait_settled(0);
    rig.nodes[0]
        .cluster
        .psql("insert into t select g, 'before' from generate_series(1, 50) g")
        .expect("insert");
    rig.wait("n2 replayed the rows", Duration::from_secs(30), |rig| {
        count(&rig.nodes[1]) == Some(50)
    });
    rig.nodes[0].kill_agent();
    rig.nodes[0].cluster.kill9().expect("kill -9 of n1");
    rig.wait(
        "n2 leads and takes writes",
        Duration::from_secs(60),
        |rig| rig.leader().as_deref() == Some("n2") && rig.nodes[1].accepts_writes(),
    );
    rig.nodes[1]
        .cluster
        .psql("insert into t select g, 'after' from generate_series(51, 60) g")
        .expect("insert on n2");
    // A backup of the new primary: what a re-clone restores.
    rig.setup.backup(&rig.nodes[1].cluster);

    // The old primary lost its pg_wal (a damaged disk): pg_rewind cannot read the WAL since the
    // last common checkpoint, neither there nor in the repository (the unfinished segment was
    // never archived).
    let pg_wal = rig.nodes[0].cluster.datadir.join("pg_wal");
    for entry in std::fs::read_dir(&pg_wal).expect("pg_wal") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::remove_file(&path).expect("remove a WAL file");
        }
    }
    for entry in std::fs::read_dir(pg_wal.join("archive_status")).expect("archive_status") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove a status file");
    }

    rig.nodes[0].start_agent();
    let back = Instant::now();
    rig.wait(
        "n1 streams from n2 again",
        Duration::from_secs(120),
        |rig| {
            rig.nodes[0].in_recovery()
                && rig.nodes[1]
                    .cluster
                    .psql(
                        "select count(*) from pg_stat_replication \
                     where application_name = 'n1' and state = 'streaming'",
                    )
                    .is_ok_and(|c| c == "1")
        },
    );
    eprintln!(
        "n1 re-cloned and streaming {:?} after its agent came back",
        back.elapsed()
    );
    let log = rig.nodes[0].log_text();
    assert!(
        log.contains("pg_rewind failed"),
        "the rejoin did not go through a failed rewind:\n{log}"
    );
    rig.wait("n1 has every row", Duration::from_secs(30), |rig| {
        count(&rig.nodes[0]) == Some(60)
    });
}
