//! The operator's commands for automatic failover (issue 16) against a real rig (three etcd
//! members, PostgreSQL members each run by its own `lifeboat serve` with `[ha]`): `ha status`,
//! `ha pause` / `ha resume`, `switchover` under a writer, and the refusals that write nothing.

use std::fs;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::ha::{HaNode, HaRig};
use crate::support::{assert_code, assert_success, ids, json_of, stderr, text};

/// `lifeboat <args>` with member `node`'s config file.
fn lifeboat(rig: &HaRig, node: usize, args: &[&str]) -> Output {
    rig.setup
        .cmd_with(&rig.nodes[node].config)
        .args(args)
        .output()
        .expect("run lifeboat")
}

fn ha_status(rig: &HaRig) -> Value {
    json_of(
        &lifeboat(rig, 0, &["ha", "status", "--json"]),
        "lifeboat ha status --json",
    )
}

fn member<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no member {name} in {status:#}"))
}

/// n1 leads and n2 publishes itself as a replica on n1's timeline.
fn settled(rig: &HaRig) {
    rig.wait_settled(0);
    rig.wait(
        "n2 publishes itself a replica",
        Duration::from_secs(30),
        |rig| {
            let status = ha_status(rig);
            status["members"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["name"] == "n2" && m["role"] == "replica")
            })
        },
    );
}

#[test]
fn ha_status_shows_the_leader_and_the_standby_with_its_lag_and_bad_requests_write_nothing() {
    let rig = HaRig::start(2, "");
    settled(&rig);
    rig.nodes[0]
        .cluster
        .psql("insert into t select g, 'x' from generate_series(1, 1000) g")
        .expect("insert");

    let status = ha_status(&rig);
    eprintln!("ha status --json:\n{status:#}");
    assert_eq!(status["cluster"], "test");
    assert_eq!(status["leader"], "n1");
    assert_eq!(status["paused"], false);
    let (n1, n2) = (member(&status, "n1"), member(&status, "n2"));
    assert_eq!(
        (&n1["role"], &n1["leader"]),
        (&"primary".into(), &true.into())
    );
    assert_eq!(n1["lag_bytes"], 0);
    assert_eq!(
        (&n2["role"], &n2["leader"]),
        (&"replica".into(), &false.into())
    );
    assert_eq!(n2["timeline"], n1["timeline"]);
    let lag = n2["lag_bytes"].as_u64().expect("n2's lag is known");
    assert!(lag <= 1 << 20, "n2 is {lag} bytes behind on an idle rig");
    assert!(n2["wal_position"].is_string() && n2["api_url"].is_string());
    assert!(status["switchover"].is_null() && status["history"].is_array());

    let out = lifeboat(&rig, 1, &["ha", "status"]);
    assert_success(&out, "lifeboat ha status");
    let table = text(&out);
    eprintln!("ha status:\n{table}");
    assert!(
        table.contains("leader n1") && table.contains("n1 *"),
        "{table}"
    );
    assert!(table.contains("replica"), "{table}");

    // Refused before anything is written (exit 4), each saying what to do instead.
    for (args, says) in [
        (&["switchover", "--to", "n1"][..], "already leads"),
        (&["switchover", "--to", "n9"][..], "no member named n9"),
        (
            &["switchover", "--to", "n2", "--from", "n2"][..],
            "n1 leads",
        ),
        (
            &["failover", "--to", "n2"][..],
            "lifeboat switchover --to n2",
        ),
    ] {
        let out = lifeboat(&rig, 0, args);
        assert_code(&out, 4, &args.join(" "));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(ha_status(&rig)["switchover"].is_null(), "a refusal wrote");
    assert_eq!(rig.leader().as_deref(), Some("n1"));

    // etcd out of reach: exit 5, naming the endpoint and how to check it.
    let config = fs::read_to_string(&rig.nodes[0].config).expect("config");
    let dead = format!("http://127.0.0.1:{}", lifeboat_testkit::free_port());
    let etcd_line = config
        .lines()
        .find(|l| l.starts_with("etcd = "))
        .expect("etcd line");
    let path = rig.setup.dir.path().join("dead-etcd.toml");
    fs::write(
        &path,
        config.replace(etcd_line, &format!("etcd = [\"{dead}\"]")),
    )
    .expect("write");
    lifeboat_testkit::cluster::chown_to_owner(&path).expect("chown");
    let started = Instant::now();
    let out = rig
        .setup
        .cmd_with(&path)
        .args(["ha", "status"])
        .output()
        .expect("run");
    assert_code(&out, 5, "ha status with etcd unreachable");
    let err = stderr(&out);
    eprintln!("etcd unreachable, after {:?}:\n{err}", started.elapsed());
    assert!(err.contains(&dead) && err.contains("etcdctl"), "{err}");
}

/// What the writer saw: acknowledged inserts with their time, and failed ones.
#[derive(Default)]
struct Writes {
    acked: Vec<(i64, Instant)>,
    failed: usize,
}

impl Writes {
    /// The longest time between two acknowledged inserts, and when it began.
    fn longest_gap(&self) -> (Duration, Option<Instant>) {
        self.acked
            .windows(2)
            .map(|w| (w[1].1 - w[0].1, Some(w[0].1)))
            .max_by_key(|(gap, _)| *gap)
            .unwrap_or_default()
    }
}

/// Inserts unique ids into `t` on one member until `stop`; on a failure moves to the next
/// member (the writable one is found by trying).
fn write_until(nodes: &[HaNode], stop: &AtomicBool) -> Writes {
    let mut writes = Writes::default();
    let (mut target, mut id) = (0, 0i64);
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let sql = format!("insert into t values ({id}, 'writer')");
        match nodes[target].cluster.psql(&sql) {
            Ok(_) => writes.acked.push((id, Instant::now())),
            Err(_) => {
                writes.failed += 1;
                target = (target + 1) % nodes.len();
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    writes
}

/// n1 rejoined as a standby streaming from n2.
fn n1_streams_from_n2(rig: &HaRig) -> bool {
    rig.nodes[0].in_recovery()
        && rig.nodes[1]
            .cluster
            .psql(
                "select count(*) from pg_stat_replication \
                 where application_name = 'n1' and state = 'streaming'",
            )
            .is_ok_and(|c| c == "1")
}

#[test]
fn switchover_under_a_writer_loses_no_acknowledged_row_and_the_old_leader_rejoins() {
    let rig = HaRig::start(2, "");
    settled(&rig);
    let stop = AtomicBool::new(false);
    let (writes, out, requested, done) = thread::scope(|scope| {
        let writer = scope.spawn(|| write_until(&rig.nodes, &stop));
        thread::sleep(Duration::from_secs(3));
        let requested = Instant::now();
        let out = lifeboat(&rig, 0, &["switchover", "--to", "n2", "--wait", "60"]);
        let done = Instant::now();
        // Writes on n2 after the switchover, so the gap is closed by an acknowledged insert.
        thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        (writer.join().expect("writer"), out, requested, done)
    });
    eprintln!("lifeboat switchover:\n{}", text(&out));
    assert_success(&out, "lifeboat switchover --to n2");
    assert_eq!(rig.leader().as_deref(), Some("n2"));
    assert!(rig.nodes[1].accepts_writes(), "n2 takes writes");

    let acked: Vec<i64> = writes.acked.iter().map(|(id, _)| *id).collect();
    let (gap, gap_start) = writes.longest_gap();
    let present = ids(&rig.nodes[1].cluster);
    let lost: Vec<i64> = acked
        .iter()
        .filter(|id| present.binary_search(id).is_err())
        .copied()
        .collect();
    eprintln!(
        "switchover under a writer: {} inserts acknowledged, {} failed, {} acknowledged rows \
         lost; write outage (longest gap between acknowledged inserts) {gap:?}, starting {:?} \
         after the request",
        acked.len(),
        writes.failed,
        lost.len(),
        gap_start.map(|s| s.saturating_duration_since(requested))
    );
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    assert!(
        writes.acked.last().is_some_and(|(_, at)| *at > requested),
        "no write acknowledged after the switchover"
    );
    assert!(gap < Duration::from_secs(30), "write outage {gap:?}");

    rig.wait(
        "n1 streams from n2",
        Duration::from_secs(120),
        n1_streams_from_n2,
    );
    eprintln!(
        "n1 streams from n2 {:?} after the switchover command returned",
        done.elapsed()
    );
    let status = ha_status(&rig);
    assert_eq!(status["leader"], "n2");
    assert_eq!(member(&status, "n2")["role"], "primary");
    rig.wait("the request is cleared", Duration::from_secs(10), |rig| {
        ha_status(rig)["switchover"].is_null()
    });
    // The promotion is in the cluster's history: from n1 to n2, on timeline 2.
    let history = ha_status(&rig)["history"].clone();
    let last = history
        .as_array()
        .and_then(|h| h.last())
        .unwrap_or_else(|| panic!("no history entry: {history}"));
    assert_eq!(last["to"], "n2", "{history}");
    assert_eq!(last["from"], "n1", "{history}");
    assert_eq!(last["timeline"], 2, "{history}");
    rig.wait("n1 replays every row", Duration::from_secs(30), |rig| {
        ids(&rig.nodes[0].cluster) == ids(&rig.nodes[1].cluster)
    });
}

#[test]
fn paused_the_agents_leave_a_dead_leader_alone_and_resume_brings_writes_back() {
    let rig = HaRig::start(2, "");
    settled(&rig);
    let out = lifeboat(&rig, 1, &["ha", "pause"]);
    assert_success(&out, "lifeboat ha pause");
    assert_eq!(ha_status(&rig)["paused"], true);
    let table = text(&lifeboat(&rig, 0, &["ha", "status"]));
    assert!(table.contains("PAUSED"), "{table}");
    // A switchover would not be carried out while paused: refused.
    let out = lifeboat(&rig, 0, &["switchover", "--to", "n2"]);
    assert_code(&out, 4, "switchover while paused");

    rig.nodes[0]
        .cluster
        .kill9()
        .expect("kill -9 of n1's postmaster");
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(20) {
        assert!(
            rig.nodes[1].in_recovery(),
            "n2 left recovery {:?} after the kill while paused",
            killed.elapsed()
        );
        assert!(
            !rig.nodes[0].accepts_writes(),
            "n1 was restarted while paused"
        );
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        rig.leader().as_deref(),
        Some("n1"),
        "the leader keeps its key"
    );

    let out = lifeboat(&rig, 1, &["ha", "resume"]);
    assert_success(&out, "lifeboat ha resume");
    let resumed = Instant::now();
    rig.wait("a member takes writes", Duration::from_secs(60), |rig| {
        rig.nodes
            .iter()
            .any(|n| n.cluster.psql("insert into t values (1, 'after')").is_ok())
    });
    eprintln!(
        "paused for {:?} with the leader's postmaster dead, writes again {:?} after ha resume \
         (leader {:?})",
        resumed - killed,
        resumed.elapsed(),
        rig.leader()
    );
    assert!(!ha_status(&rig)["paused"].as_bool().unwrap_or(true));
}

#[test]
fn failover_promotes_a_standby_the_election_refuses_as_too_far_behind() {
    let mut rig = HaRig::start(2, "");
    settled(&rig);
    // n2 stops receiving (its WAL receiver frozen) while n1 writes more than
    // maximum_lag_on_failover (1 MiB) into a segment that is not archived yet.
    let receiver = rig.nodes[1]
        .cluster
        .psql("select pid from pg_stat_wal_receiver")
        .expect("n2's WAL receiver");
    signal(&receiver, "-STOP");
    rig.nodes[0]
        .cluster
        .psql("insert into t select g, repeat('x', 1000) from generate_series(1, 2000) g")
        .expect("insert");
    rig.wait(
        "etcd shows n2 more than 1 MiB behind",
        Duration::from_secs(30),
        |rig| {
            member(&ha_status(rig), "n2")["lag_bytes"]
                .as_u64()
                .is_some_and(|lag| lag > 1 << 20)
        },
    );
    rig.nodes[0].kill_agent();
    rig.nodes[0]
        .cluster
        .kill9()
        .expect("kill -9 of n1's postmaster");
    signal(&receiver, "-CONT");
    rig.wait("the leader key expires", Duration::from_secs(30), |rig| {
        rig.leader().is_none()
    });
    // The election leaves the key alone: n2 lacks what the last leader acknowledged.
    thread::sleep(Duration::from_secs(6));
    assert_eq!(rig.leader(), None, "a member took the key");
    assert!(rig.nodes[1].in_recovery(), "n2 was promoted");
    let status = ha_status(&rig);
    assert!(status["leader"].is_null(), "{status:#}");
    let table = text(&lifeboat(&rig, 1, &["ha", "status"]));
    assert!(table.contains("leader none"), "{table}");

    let started = Instant::now();
    let out = lifeboat(&rig, 1, &["failover", "--to", "n2", "--wait", "60"]);
    eprintln!(
        "lifeboat failover ({:?}):\n{}",
        started.elapsed(),
        text(&out)
    );
    assert_success(&out, "lifeboat failover --to n2");
    assert!(text(&out).contains("behind the last leader"), "no warning");
    assert_eq!(rig.leader().as_deref(), Some("n2"));
    rig.wait("n2 takes writes", Duration::from_secs(10), |rig| {
        rig.nodes[1]
            .cluster
            .psql("insert into t values (100000, 'after')")
            .is_ok()
    });
    let kept = ids(&rig.nodes[1].cluster).len() - 1;
    eprintln!(
        "manual failover: {} of 2000 rows n2 never received are lost",
        2000 - kept
    );
    // The new leader withdraws the request on its next loop.
    rig.wait("the request is cleared", Duration::from_secs(10), |rig| {
        ha_status(rig)["switchover"].is_null()
    });
    let _ = &mut rig;
}

fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}
