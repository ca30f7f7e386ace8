//! The client against three etcd members while they fail: the etcd leader in use killed or frozen
//! mid-use (calls still succeed within `retry_timeout` on the survivors), two of three killed
//! (every call fails within `retry_timeout`, none hangs), and quorum back (calls succeed again).

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_testkit::etcd::EtcdCluster;
use tokio::task::JoinHandle;

use super::tests::{config, endpoints, record};
use super::*;

/// What the failure detector may add to a deadline: the last attempt's pause and scheduling.
const SLACK: Duration = Duration::from_millis(500);

/// Index in `etcd.members` of the member the others follow.
async fn etcd_leader(etcd: &EtcdCluster) -> usize {
    for (i, member) in etcd.members.iter().enumerate() {
        let mut client = etcd_client::Client::connect([member.endpoint()], None)
            .await
            .unwrap();
        let status = client.status().await.unwrap();
        if status.header().unwrap().member_id() == status.leader() {
            return i;
        }
    }
    panic!("no etcd member says it leads");
}

/// How long a call took and what it returned (its error as text).
type Timed<T> = (Duration, Result<T, String>);

/// Runs `call`, timing it; a call that outlives `limit` by far counts as a hang.
async fn timed<T, F>(limit: Duration, call: F) -> Timed<T>
where
    F: Future<Output = Result<T, DcsError>>,
{
    let started = Instant::now();
    let result = match tokio::time::timeout(limit + Duration::from_secs(5), call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("hung".to_string()),
    };
    (started.elapsed(), result)
}

/// The loop's calls back to back for `run`, each timed: renew the leader key, read, publish.
fn calls_for(
    dcs: Arc<Dcs>,
    retry: Duration,
    run: Duration,
) -> JoinHandle<Vec<(&'static str, Timed<bool>)>> {
    tokio::spawn(async move {
        let mut calls = Vec::new();
        let until = Instant::now() + run;
        let mut n = 0u64;
        while Instant::now() < until {
            n += 1;
            calls.push(("renew", timed(retry, dcs.renew_leader()).await));
            let read = timed(retry, dcs.read()).await;
            calls.push(("read", (read.0, read.1.map(|v| v.leader.is_some()))));
            let publish = timed(retry, dcs.publish_member(&record("a", n))).await;
            calls.push(("publish", (publish.0, publish.1.map(|()| true))));
        }
        calls
    })
}

/// Every call succeeded (and found the leader key) within `retry`.
fn check(fault: &str, calls: &[(&str, Timed<bool>)], retry: Duration) {
    let (what, (slowest, _)) = calls.iter().max_by_key(|(_, (took, _))| *took).unwrap();
    eprintln!("{fault}: {} calls, slowest {what} {slowest:?}", calls.len());
    for (what, (took, result)) in calls {
        assert_eq!(result, &Ok(true), "{fault}: {what} after {took:?}");
        assert!(*took <= retry + SLACK, "{fault}: {what} took {took:?}");
    }
}

/// The pid of the process listening on `port` (`ss -ltnp`).
fn listener_pid(port: u16) -> u32 {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .split("pid=")
        .nth(1)
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    pid.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

/// Three trials, each on the etcd leader while the client talks to it: killed (-9) twice, then
/// frozen (SIGSTOP). A dead member refuses connections at once; a frozen one swallows requests
/// until the attempt's share of the deadline runs out, and the others still take it for their
/// leader until an election timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_succeed_on_the_survivors_when_the_etcd_leader_in_use_dies_or_freezes() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let retry = Duration::from_secs(4);
    for (trial, fault) in ["killed", "killed again", "frozen"].into_iter().enumerate() {
        let leader = etcd_leader(&etcd).await;
        // The client asks the etcd leader first, so the fault hits the member it talks to.
        let mut urls = endpoints(&etcd);
        urls.rotate_left(leader);
        let mut config = config(&urls, "a", Duration::from_secs(10), retry);
        config.cluster = format!("trial{trial}");
        let dcs = Arc::new(Dcs::connect(&config).await.unwrap());
        assert!(dcs.acquire_leader().await.unwrap());
        assert_eq!(dcs.current_endpoint(), urls[0]);

        let calls = calls_for(dcs.clone(), retry, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let frozen = (fault == "frozen").then(|| listener_pid(etcd.members[leader].client_port));
        match frozen {
            Some(pid) => signal(pid, "-STOP"),
            None => etcd.kill_member(leader).unwrap(),
        }
        let calls = calls.await;
        match frozen {
            Some(pid) => signal(pid, "-CONT"),
            None => etcd.start_member(leader).unwrap(),
        }
        check(&format!("etcd leader {fault}"), &calls.unwrap(), retry);
        assert_ne!(dcs.current_endpoint(), urls[0], "{fault}: still asking it");
        let view = dcs.read().await.unwrap();
        assert_eq!(view.leader.unwrap().name, "a");
        assert_eq!(view.members.len(), 1);
        etcd.wait_healthy(leader, Duration::from_secs(30)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_every_call_fails_within_its_deadline_and_works_again_after() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let retry = Duration::from_secs(2);
    let dcs = Dcs::connect(&config(
        &endpoints(&etcd),
        "a",
        Duration::from_secs(10),
        retry,
    ))
    .await
    .unwrap();
    assert!(dcs.acquire_leader().await.unwrap());
    dcs.publish_member(&record("a", 1)).await.unwrap();
    assert_eq!(dcs.initialize(42).await.unwrap(), 42);
    // One client per member, to prove each one works again once its member is back.
    let mut singles = Vec::new();
    for url in endpoints(&etcd) {
        let config = config(&[url], "b", Duration::from_secs(10), retry);
        singles.push(Dcs::connect(&config).await.unwrap());
    }
    for single in &singles {
        single.read().await.unwrap();
    }

    // The etcd leader and a follower: the survivor is a follower. (A surviving leader answers
    // lease renewals for up to an election timeout before it notices it lost quorum: etcd
    // renews leases without consensus. That is why renew_leader confirms with a read.)
    let leader = etcd_leader(&etcd).await;
    let killed = [leader, (leader + 1) % 3];
    for i in killed {
        etcd.kill_member(i).unwrap();
    }
    let entry = HistoryEntry::now(None, "a".to_string(), TimelineId::ONE, Lsn(1));
    let sync = SyncState {
        leader: "a".to_string(),
        standbys: Vec::new(),
    };
    let member = record("a", 2);
    // All at once: each has its own deadline, and the test takes one deadline, not fourteen.
    let results: Vec<(&str, Timed<()>)> = {
        let (r1, r2, r3, r4, r5, r6, r7) = tokio::join!(
            timed(retry, async { dcs.read().await.map(drop) }),
            timed(retry, async { dcs.keep_alive().await.map(drop) }),
            timed(retry, async { dcs.acquire_leader().await.map(drop) }),
            timed(retry, async { dcs.renew_leader().await.map(drop) }),
            timed(retry, async { dcs.release_leader().await.map(drop) }),
            timed(retry, dcs.publish_member(&member)),
            timed(retry, async { dcs.initialize(42).await.map(drop) }),
        );
        let (r8, r9, r10, r11, r12, r13) = tokio::join!(
            timed(retry, dcs.set_leader_position(Lsn(5))),
            timed(retry, dcs.set_sync(&sync)),
            timed(retry, dcs.set_pause(true)),
            timed(retry, dcs.set_switchover(None)),
            timed(retry, dcs.append_history(&entry)),
            timed(retry, async { dcs.history().await.map(drop) }),
        );
        vec![
            ("read", r1),
            ("keep_alive", r2),
            ("acquire_leader", r3),
            ("renew_leader", r4),
            ("release_leader", r5),
            ("publish_member", r6),
            ("initialize", r7),
            ("set_leader_position", r8),
            ("set_sync", r9),
            ("set_pause", r10),
            ("set_switchover", r11),
            ("append_history", r12),
            ("history", r13),
        ]
    };
    for (what, (took, result)) in &results {
        let error = result.as_ref().err();
        assert!(
            error.is_some_and(|e| e.contains("did not answer")),
            "{what} without quorum: {result:?}"
        );
        assert!(*took <= retry + SLACK, "{what} took {took:?}");
    }
    eprintln!(
        "without quorum, slowest failure: {:?}",
        results.iter().map(|(_, (took, _))| *took).max().unwrap()
    );

    for i in killed {
        etcd.start_member(i).unwrap();
    }
    for i in killed {
        etcd.wait_healthy(i, Duration::from_secs(30)).unwrap();
    }
    let back = Instant::now();
    let view = loop {
        match dcs.read().await {
            Ok(view) => break view,
            Err(e) => assert!(back.elapsed() < Duration::from_secs(10), "{e}"),
        }
    };
    eprintln!("quorum back: first read after {:?}", back.elapsed());
    // Every member's client reconnects, the restarted ones too.
    for (i, single) in singles.iter().enumerate() {
        let started = Instant::now();
        while let Err(e) = single.read().await {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "member {i}: {e}"
            );
        }
    }
    eprintln!(
        "quorum back: every member answered after {:?}",
        back.elapsed()
    );
    assert_eq!(view.initialize, Some(42));
    // The refused release may still have been committed once quorum came back (a timed-out
    // write's outcome is unknown): either the key is still a's or it is free for a again.
    if !dcs.renew_leader().await.unwrap() {
        assert!(dcs.acquire_leader().await.unwrap());
    }
    dcs.publish_member(&member).await.unwrap();
    dcs.set_pause(false).await.unwrap();
}
