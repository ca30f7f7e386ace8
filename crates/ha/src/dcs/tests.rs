//! The client against a real etcd (one member): the leader key's exclusivity, expiry and
//! release, what `read` returns, `initialize`, `history`, and calls with nothing listening.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_testkit::etcd::EtcdCluster;

use super::*;
use crate::config::SyncMode;
use crate::state::Role;

/// `[ha]` for member `name` of cluster "main" on these endpoints.
pub(super) fn config(endpoints: &[String], name: &str, ttl: Duration, retry: Duration) -> HaConfig {
    HaConfig {
        etcd: endpoints.to_vec(),
        namespace: "/lifeboat".to_string(),
        cluster: "main".to_string(),
        name: name.to_string(),
        conninfo: format!("host={name}"),
        api_url: format!("http://{name}:8008"),
        ttl,
        loop_wait: Duration::from_secs(1),
        retry_timeout: retry,
        maximum_lag_on_failover: 1 << 20,
        synchronous: SyncMode::Off,
        primary_start_timeout: Duration::from_secs(300),
    }
}

pub(super) fn endpoints(etcd: &EtcdCluster) -> Vec<String> {
    etcd.members.iter().map(|m| m.endpoint()).collect()
}

async fn member(etcd: &EtcdCluster, name: &str, ttl_secs: u64) -> Dcs {
    let config = config(
        &endpoints(etcd),
        name,
        Duration::from_secs(ttl_secs),
        Duration::from_secs(2),
    );
    Dcs::connect(&config).await.unwrap()
}

pub(super) fn record(name: &str, position: u64) -> MemberRecord {
    MemberRecord {
        name: name.to_string(),
        role: Role::Replica,
        timeline: TimelineId::new(2),
        wal_position: Some(Lsn(position)),
        replayed: Some(Lsn(position)),
        conninfo: format!("host={name}"),
        api_url: format!("http://{name}:8008"),
        system_identifier: 7_311_234_567_890,
        version: "0.1.0".to_string(),
    }
}

#[tokio::test]
async fn the_leader_key_is_exclusive_and_released_only_by_its_holder() {
    let etcd = EtcdCluster::start(1).unwrap();
    let a = member(&etcd, "a", 10).await;
    let b = member(&etcd, "b", 10).await;

    assert!(a.acquire_leader().await.unwrap());
    assert!(!b.acquire_leader().await.unwrap(), "b took a's key");
    // Taking it again under the same lease is what a repeated attempt does: it holds it.
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.renew_leader().await.unwrap());
    assert!(!b.renew_leader().await.unwrap(), "b renewed a's key");

    assert!(!b.release_leader().await.unwrap(), "b deleted a's key");
    let leader = b.read().await.unwrap().leader.unwrap();
    assert_eq!(leader.name, "a");
    assert_eq!(leader.lease, a.keep_alive().await.unwrap().id);

    assert!(a.release_leader().await.unwrap());
    assert_eq!(b.read().await.unwrap().leader, None);
    assert!(
        !a.release_leader().await.unwrap(),
        "nothing left to release"
    );

    // a's lease lives on, but the key is b's now: a's renewal must say so.
    assert!(b.acquire_leader().await.unwrap());
    assert!(!a.renew_leader().await.unwrap(), "a renewed b's key");
    assert!(b.renew_leader().await.unwrap());

    // Concurrent first calls share one lease.
    let c = member(&etcd, "c", 10).await;
    let c_record = record("c", 1);
    let (first, second) = tokio::join!(c.keep_alive(), c.publish_member(&c_record));
    second.unwrap();
    let lease = first.unwrap();
    assert!(lease.fresh);
    assert_eq!(
        c.keep_alive().await.unwrap(),
        Lease {
            id: lease.id,
            fresh: false
        }
    );
    let members = c.read().await.unwrap().members;
    assert_eq!(members.last().map(|m| m.name.as_str()), Some("c"));
    assert!(format!("{c:?}").contains(&format!("{:?}", Some(lease.id))));
}

#[tokio::test]
async fn an_unrenewed_leader_key_expires_after_ttl_and_another_member_takes_it() {
    let etcd = EtcdCluster::start(1).unwrap();
    let ttl = Duration::from_secs(3);
    let a = member(&etcd, "a", ttl.as_secs()).await;
    let b = member(&etcd, "b", ttl.as_secs()).await;

    let sent = Instant::now();
    assert!(a.acquire_leader().await.unwrap());
    a.publish_member(&record("a", 0x100)).await.unwrap();
    b.publish_member(&record("b", 0x100)).await.unwrap();
    let deadline = a.fencing_deadline(sent);
    assert_eq!(deadline, sent + ttl - Duration::from_secs(2));

    // b keeps its own lease alive and tries, as its loop would; a does nothing.
    let taken = loop {
        assert!(sent.elapsed() < ttl * 3, "a's key never expired");
        b.keep_alive().await.unwrap();
        if b.acquire_leader().await.unwrap() {
            break sent.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The contract a's fencing relies on: the key outlived sent + ttl.
    assert!(
        taken >= ttl,
        "a's key vanished {taken:?} after its renewal, before ttl"
    );
    let view = b.read().await.unwrap();
    assert_eq!(view.leader.unwrap().name, "b");
    let names: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["b"], "a's member key outlived its lease");

    // a wakes up: its lease is gone, its renewal fails, and it gets a new lease.
    assert!(!a.renew_leader().await.unwrap());
    assert!(!a.keep_alive().await.unwrap().fresh);
    assert!(!a.acquire_leader().await.unwrap());
    assert!(b.renew_leader().await.unwrap());
}

#[tokio::test]
async fn read_returns_what_was_published() {
    let etcd = EtcdCluster::start(1).unwrap();
    let a = member(&etcd, "a", 10).await;
    let b = member(&etcd, "b", 10).await;

    assert_eq!(a.read().await.unwrap(), ClusterView::default());
    a.publish_member(&record("a", 0x300_0060)).await.unwrap();
    b.publish_member(&record("b", 0x200_0000)).await.unwrap();
    // A record that does not parse, and one under another member's name: left out.
    etcd.put("/lifeboat/main/members/zz", "{oops").unwrap();
    let c_json = serde_json::to_string(&record("a", 1)).unwrap();
    etcd.put("/lifeboat/main/members/c", &c_json).unwrap();
    assert!(a.acquire_leader().await.unwrap());
    assert_eq!(
        a.initialize(7_311_234_567_890).await.unwrap(),
        7_311_234_567_890
    );
    a.set_leader_position(Lsn(0x300_0060)).await.unwrap();
    let sync = SyncState {
        leader: "a".to_string(),
        standbys: vec!["b".to_string()],
    };
    a.set_sync(&sync).await.unwrap();
    a.set_pause(true).await.unwrap();
    let switchover = Switchover {
        from: Some("a".to_string()),
        to: Some("b".to_string()),
    };
    a.set_switchover(Some(&switchover)).await.unwrap();

    let view = b.read().await.unwrap();
    assert_eq!(view.initialize, Some(7_311_234_567_890));
    let leader = view.leader.unwrap();
    assert_eq!(leader.name, "a");
    assert_eq!(leader.lease, a.keep_alive().await.unwrap().id);
    assert!(leader.mod_revision > 0);
    assert_eq!(view.last_leader_position, Some(Lsn(0x300_0060)));
    assert_eq!(
        view.members,
        vec![record("a", 0x300_0060), record("b", 0x200_0000)]
    );
    assert!(view.paused);
    assert_eq!(view.sync, Some(sync));
    assert_eq!(view.switchover, Some(switchover));

    // A record under another name would be skipped by every reader: refused.
    let error = a.publish_member(&record("b", 1)).await.unwrap_err();
    assert!(matches!(error, DcsError::Invalid { .. }), "{error}");
    // Publishing again replaces the record.
    a.publish_member(&record("a", 0x400_0000)).await.unwrap();
    a.set_pause(false).await.unwrap();
    a.set_switchover(None).await.unwrap();
    let view = b.read().await.unwrap();
    assert_eq!(view.members[0], record("a", 0x400_0000));
    assert!(!view.paused);
    assert_eq!(view.switchover, None);

    // A clean stop: the member key and the leader key go at once.
    a.revoke_lease().await.unwrap();
    let view = b.read().await.unwrap();
    assert_eq!(view.leader, None);
    assert_eq!(view.members, vec![record("b", 0x200_0000)]);
}

#[tokio::test]
async fn initialize_keeps_the_first_identifier_and_history_keeps_every_entry() {
    let etcd = EtcdCluster::start(1).unwrap();
    let a = member(&etcd, "a", 10).await;
    let b = member(&etcd, "b", 10).await;

    assert_eq!(a.initialize(1111).await.unwrap(), 1111);
    assert_eq!(b.initialize(2222).await.unwrap(), 1111);
    assert_eq!(a.initialize(1111).await.unwrap(), 1111);

    let mut other = config(
        &endpoints(&etcd),
        "x",
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    other.cluster = "other".to_string();
    let x = Dcs::connect(&other).await.unwrap();
    etcd.put("/lifeboat/other/initialize", "not a number")
        .unwrap();
    let error = x.initialize(3333).await.unwrap_err();
    assert!(
        matches!(error, DcsError::Corrupt { .. }) && error.to_string().contains("etcdctl del"),
        "{error}"
    );

    assert_eq!(a.history().await.unwrap(), Vec::new());
    let first = HistoryEntry::now(None, "a".to_string(), TimelineId::ONE, Lsn(0));
    let second = HistoryEntry::now(
        Some("a".to_string()),
        "b".to_string(),
        TimelineId::new(2).unwrap(),
        Lsn(0x300_0060),
    );
    a.append_history(&first).await.unwrap();
    b.append_history(&second).await.unwrap();
    // A repeated call (its answer lost) does not add the entry twice.
    b.append_history(&second).await.unwrap();
    assert_eq!(a.history().await.unwrap(), vec![first, second]);
    // Both writers at once: neither entry is lost.
    let third = HistoryEntry::now(None, "c".to_string(), TimelineId::new(3).unwrap(), Lsn(9));
    let fourth = HistoryEntry::now(None, "d".to_string(), TimelineId::new(4).unwrap(), Lsn(10));
    let (r1, r2) = tokio::join!(a.append_history(&third), b.append_history(&fourth));
    r1.unwrap();
    r2.unwrap();
    let history = b.history().await.unwrap();
    assert_eq!(history.len(), 4);
    assert!(history.contains(&third) && history.contains(&fourth));
}

#[tokio::test]
async fn with_nothing_listening_a_call_fails_within_its_deadline() {
    let urls: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", lifeboat_testkit::free_port()))
        .collect();
    let retry = Duration::from_secs(1);
    let dcs = Dcs::connect(&config(&urls, "a", Duration::from_secs(10), retry))
        .await
        .unwrap();
    let started = Instant::now();
    let error = dcs.read().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, DcsError::Unavailable { .. }), "{error}");
    assert!(
        took >= retry && took < retry + Duration::from_millis(500),
        "{took:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&urls[0]) && message.contains("endpoint health"),
        "{message}"
    );

    for bad in [&[][..], &["http://[::1".to_string()][..]] {
        let error = Dcs::connect(&config(bad, "a", Duration::from_secs(10), retry))
            .await
            .err()
            .unwrap();
        assert!(matches!(error, DcsError::Endpoint { .. }), "{error}");
    }
}
