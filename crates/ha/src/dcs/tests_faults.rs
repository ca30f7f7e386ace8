//! The client against three etcd members while they fail: the etcd leader killed mid-use (calls
//! still succeed within `retry_timeout` on the survivors), two of three killed (every call fails
//! within `retry_timeout`, none hangs), and quorum back (calls succeed again).

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_testkit::etcd::EtcdCluster;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_succeed_on_the_survivors_when_the_etcd_leader_is_killed() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let leader = etcd_leader(&etcd).await;
    // The client asks the etcd leader first, so the kill hits the member it talks to.
    let mut urls = endpoints(&etcd);
    urls.rotate_left(leader);
    let retry = Duration::from_secs(4);
    let dcs = Arc::new(
        Dcs::connect(&config(&urls, "a", Duration::from_secs(10), retry))
            .await
            .unwrap(),
    );
    assert!(dcs.acquire_leader().await.unwrap());
    assert_eq!(dcs.current_endpoint(), urls[0]);

    // The loop's calls back to back, each timed, across the kill.
    let worker = {
        let dcs = dcs.clone();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            let until = Instant::now() + Duration::from_secs(7);
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
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    etcd.kill_member(leader).unwrap();
    let calls = worker.await.unwrap();

    let slowest = calls.iter().map(|(_, (took, _))| *took).max().unwrap();
    eprintln!(
        "{} calls, slowest {slowest:?}, killed {:?} into the run",
        calls.len(),
        killed_at.elapsed()
    );
    for (what, (took, result)) in &calls {
        assert_eq!(result, &Ok(true), "{what} after {took:?}");
        assert!(*took <= retry + SLACK, "{what} took {took:?}");
    }
    assert_ne!(
        dcs.current_endpoint(),
        urls[0],
        "still asking the dead member"
    );
    let view = dcs.read().await.unwrap();
    assert_eq!(view.leader.unwrap().name, "a");
    assert_eq!(view.members.len(), 1);
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

    etcd.kill_member(0).unwrap();
    etcd.kill_member(1).unwrap();
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

    etcd.start_member(0).unwrap();
    etcd.start_member(1).unwrap();
    etcd.wait_healthy(0, Duration::from_secs(30)).unwrap();
    etcd.wait_healthy(1, Duration::from_secs(30)).unwrap();
    let back = Instant::now();
    let view = loop {
        match dcs.read().await {
            Ok(view) => break view,
            Err(e) => assert!(back.elapsed() < Duration::from_secs(10), "{e}"),
        }
    };
    eprintln!("quorum back: first read after {:?}", back.elapsed());
    assert_eq!(view.initialize, Some(42));
    // The refused release may still have been committed once quorum came back (a timed-out
    // write's outcome is unknown): either the key is still a's or it is free for a again.
    if !dcs.renew_leader().await.unwrap() {
        assert!(dcs.acquire_leader().await.unwrap());
    }
    dcs.publish_member(&member).await.unwrap();
    dcs.set_pause(false).await.unwrap();
}
