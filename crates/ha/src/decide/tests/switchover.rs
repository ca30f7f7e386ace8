//! Planned switchover (`from` the leader) and manual failover (`to` without `from`).

use super::*;

fn cluster_led_by_a() -> World {
    world("a", primary(2, 0x600_0000))
        .leader("a")
        .member(record("a", Role::Primary, 2, 0x600_0000))
        .member(record("b", Role::Replica, 2, 0x600_0000))
        .member(record("c", Role::Replica, 2, 0x5ff_0000))
}

fn leader_routine(members: &[&str]) -> Vec<Action> {
    vec![
        Action::RenewLeader,
        Action::PublishLeaderPosition,
        keep_slots(members),
    ]
}

fn cleared(members: &[&str]) -> Vec<Action> {
    let mut actions = leader_routine(members);
    actions.push(Action::ClearSwitchover);
    actions
}

#[test]
fn the_leader_hands_over_or_clears_the_request() {
    let demote = vec![Action::StopFast, Action::ReleaseLeader];
    let mut lagging = cluster_led_by_a();
    lagging.cluster().members[2] = record("c", Role::Replica, 2, 0x400_0000);
    check(vec![
        (
            "switchover from a to c, c caught up: fast stop, then release",
            cluster_led_by_a().switchover(Some("a"), Some("c")),
            demote.clone(),
            &[
                "switchover to c",
                "fast shutdown",
                "releasing the leader key",
            ],
        ),
        (
            "switchover from a to anyone: b (most advanced)",
            cluster_led_by_a().switchover(Some("a"), None),
            demote.clone(),
            &["switchover to b"],
        ),
        (
            "manual failover request while a leader is healthy: handled as a switchover",
            cluster_led_by_a().switchover(None, Some("b")),
            demote,
            &["switchover to b"],
        ),
        (
            "switchover to a member that does not exist: cleared",
            cluster_led_by_a().switchover(Some("a"), Some("zed")),
            cleared(&["b", "c"]),
            &["no member named zed"],
        ),
        (
            "switchover to a lagging member: cleared, saying why",
            lagging.switchover(Some("a"), Some("c")),
            cleared(&["b", "c"]),
            &["c is not ready: 32.0 MiB behind (maximum_lag_on_failover 1.0 MiB)"],
        ),
        (
            "switchover to a stopped member: cleared",
            world("a", primary(2, 0x600_0000))
                .leader("a")
                .member(record("b", Role::Stopped, 2, 0x600_0000))
                .switchover(Some("a"), Some("b")),
            cleared(&["b"]),
            &["b is not ready: it is not a running standby"],
        ),
        (
            "switchover to anyone with no standby: cleared",
            world("a", primary(2, 0x600_0000))
                .leader("a")
                .switchover(Some("a"), None),
            cleared(&[]),
            &["no standby is ready"],
        ),
        (
            "switchover done: the new leader clears it",
            world("c", primary(3, 0x600_0000))
                .leader("c")
                .member(record("a", Role::Stopped, 2, 0x600_0000))
                .switchover(Some("a"), Some("c")),
            cleared(&["a"]),
            &["c already leads"],
        ),
        (
            "switchover to anyone done: the new leader clears it (from is not the leader)",
            world("b", primary(3, 0x600_0000))
                .leader("b")
                .switchover(Some("a"), None),
            cleared(&[]),
            &["from a, which does not lead"],
        ),
        (
            "synchronous on: a switchover to an asynchronous standby is refused",
            cluster_led_by_a()
                .mode(SyncMode::On)
                .connected(&["b"])
                .sync("a", &["b"])
                .switchover(Some("a"), Some("c")),
            cleared(&["b", "c"]),
            &["c is not ready: it is not a synchronous standby"],
        ),
    ]);
}

#[test]
fn the_named_candidate_takes_the_free_key() {
    let after_release = |me: &str, position: u64| {
        world(me, standby(2, position, Some("a")))
            .last_leader(0x600_0000)
            .member(record("a", Role::Stopped, 2, 0x600_0000))
            .switchover(Some("a"), Some("c"))
    };
    check(vec![
        (
            "c is named, b slightly ahead: c takes the key anyway",
            after_release("c", 0x5ff_0000).member(record("b", Role::Replica, 2, 0x600_0000)),
            vec![Action::AcquireLeader, Action::Promote],
            &["promoting"],
        ),
        (
            "b is not named: leaves the key to c",
            after_release("b", 0x600_0000).member(record("c", Role::Replica, 2, 0x5ff_0000)),
            vec![],
            &["the switchover names c"],
        ),
        (
            "b is not named, but c is gone: the normal rule applies",
            after_release("b", 0x600_0000),
            vec![Action::AcquireLeader, Action::Promote],
            &["promoting"],
        ),
        (
            "b is not named, c is but lags too far to take it: b does not wait for c",
            after_release("b", 0x600_0000).member(record("c", Role::Replica, 2, 0x100_0000)),
            vec![Action::AcquireLeader, Action::Promote],
            &["promoting"],
        ),
        (
            "b is not named, c is but stopped: b does not wait for c",
            after_release("b", 0x600_0000).member(record("c", Role::Stopped, 2, 0x600_0000)),
            vec![Action::AcquireLeader, Action::Promote],
            &["promoting"],
        ),
        (
            "manual failover to a lagging c: b leaves the key to c all the same",
            world("b", standby(2, 0x600_0000, None))
                .last_leader(0x600_0000)
                .member(record("c", Role::Replica, 2, 0x100_0000))
                .switchover(None, Some("c")),
            vec![],
            &["the switchover names c"],
        ),
        (
            "c is named but far behind: the lag rule still holds for a switchover",
            after_release("c", 0x100_0000),
            vec![],
            &["behind the last leader"],
        ),
        (
            "manual failover to c (no leader): lag is the operator's choice",
            world("c", standby(2, 0x100_0000, None))
                .last_leader(0x600_0000)
                .member(record("b", Role::Replica, 2, 0x600_0000))
                .switchover(None, Some("c")),
            vec![Action::AcquireLeader, Action::Promote],
            &["promoting"],
        ),
        (
            "manual failover to c, but c is on an older timeline: refused",
            world("c", standby(1, 0x600_0000, None))
                .member(record("b", Role::Replica, 2, 0x600_0000))
                .switchover(None, Some("c")),
            vec![],
            &["on timeline 1 while b is on 2"],
        ),
    ]);
}
