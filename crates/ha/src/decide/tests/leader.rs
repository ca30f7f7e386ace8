//! The member that holds the leader key.

use super::*;

#[test]
fn the_leader_renews_publishes_and_keeps_slots() {
    let two_standbys = world("a", primary(2, 0x500_0000))
        .leader("a")
        .member(record("a", Role::Primary, 2, 0x500_0000))
        .member(record("b", Role::Replica, 2, 0x4ff_0000))
        .member(record("c", Role::Replica, 2, 0x4f0_0000));
    check(vec![
        (
            "leader with two standbys",
            two_standbys.clone().deadline_in(15),
            vec![
                Action::RenewLeader,
                Action::PublishLeaderPosition,
                keep_slots(&["b", "c"]),
            ],
            &["leader on timeline 2", "0/5000000", "slots kept for b, c"],
        ),
        (
            "leader without standbys, agent just restarted (no deadline yet)",
            world("a", primary(1, 0x500_0000)).leader("a"),
            vec![
                Action::RenewLeader,
                Action::PublishLeaderPosition,
                keep_slots(&[]),
            ],
            &["slots kept for none"],
        ),
        (
            "leader past its fencing deadline (zombie leader woke up): stops",
            two_standbys.clone().deadline_in(-1),
            vec![Action::StopImmediately],
            &["fencing deadline", "stopping PostgreSQL at once"],
        ),
        (
            "leader exactly at its deadline: stops",
            two_standbys.deadline_in(0),
            vec![Action::StopImmediately],
            &["fencing"],
        ),
    ]);
}

#[test]
fn a_standby_holding_the_key_promotes() {
    check(vec![(
        "standby that took the key last loop",
        world("b", standby(1, 0x500_0000, None))
            .leader("b")
            .member(record("c", Role::Replica, 1, 0x400_0000)),
        vec![Action::RenewLeader, Action::Promote],
        &["promoting"],
    )]);
}

#[test]
fn a_crashed_leader_restarts_in_place_then_gives_the_key_up() {
    check(vec![
        (
            "leader's PostgreSQL just seen down",
            world("a", stopped(true)).leader("a").down_for(0),
            vec![Action::RenewLeader, Action::Start],
            &["starting it again", "5m"],
        ),
        (
            "down for 4 minutes: still restarting",
            world("a", stopped(true)).leader("a").down_for(240),
            vec![Action::RenewLeader, Action::Start],
            &["starting it again"],
        ),
        (
            "down for 5 minutes: releases the key",
            world("a", stopped(true)).leader("a").down_for(300),
            vec![Action::ReleaseLeader],
            &[
                "down for 5m",
                "primary_start_timeout 5m",
                "releasing the leader key",
            ],
        ),
    ]);
    check(vec![(
        "stopped for a switchover whose release failed: releases, does not restart",
        world("a", stopped(true))
            .leader("a")
            .switchover(Some("a"), Some("b"))
            .down_for(20),
        vec![Action::ReleaseLeader],
        &["switchover to b", "releasing the leader key"],
    )]);
    let mut at_once = world("a", stopped(true)).leader("a");
    at_once.config.primary_start_timeout = Duration::ZERO;
    check(vec![(
        "primary_start_timeout 0: releases at once",
        at_once,
        vec![Action::ReleaseLeader],
        &["releasing"],
    )]);
}

#[test]
fn a_refused_renewal_stops_a_primary_that_renewed_before() {
    let renewed = world("a", primary(1, 0x500_0000))
        .leader("a")
        .deadline_in(15)
        .decide();
    assert_eq!(renewed.if_key_lost, vec![Action::StopImmediately]);
    // Agent restarted: the key may be under the previous run's lease; it expires first.
    let restarted = world("a", primary(1, 0x500_0000)).leader("a").decide();
    assert!(restarted.if_key_lost.is_empty(), "{restarted:?}");
    let etcd_down = world("a", primary(1, 0x500_0000))
        .etcd_down()
        .deadline_in(15)
        .decide();
    assert_eq!(etcd_down.if_key_lost, vec![Action::StopImmediately]);
}
