//! The cluster's system identifier, and pause.

use super::*;

#[test]
fn system_identifier_is_written_once_and_checked_by_everyone() {
    let mut other = primary(1, 0x300_0000);
    other.system_identifier = Some(SYSID + 1);
    let mut standby_other = standby(1, 0x300_0000, Some("a"));
    standby_other.system_identifier = Some(SYSID + 1);
    let mut unknown = stopped(false);
    unknown.system_identifier = None;
    check(vec![
        (
            "first member, a primary, cluster not initialized: initializes and takes the key",
            world("a", primary(1, 0x300_0000)).initialize(None),
            vec![
                Action::Initialize {
                    system_identifier: SYSID,
                },
                Action::AcquireLeader,
            ],
            &["initializing the cluster", "takes the leader key"],
        ),
        (
            "not initialized, another leader: a primary stops rather than initialize",
            world("b", primary(1, 0x300_0000))
                .initialize(None)
                .leader("a")
                .member(record("a", Role::Primary, 2, 0x300_0000)),
            vec![Action::StopImmediately, rejoin("a")],
            &["fencing"],
        ),
        (
            "not initialized, another leader: a standby follows (the leader initializes)",
            world("b", standby(1, 0x300_0000, None))
                .initialize(None)
                .leader("a")
                .member(record("a", Role::Primary, 1, 0x300_0000)),
            vec![follow("a")],
            &["pointing it at a"],
        ),
        (
            "not initialized, this member leads: initializes and goes on leading",
            world("a", primary(1, 0x300_0000))
                .initialize(None)
                .leader("a"),
            vec![
                Action::Initialize {
                    system_identifier: SYSID,
                },
                Action::RenewLeader,
                Action::PublishLeaderPosition,
                keep_slots(&[]),
            ],
            &["initializing the cluster", "leader"],
        ),
        (
            "a standby never initializes",
            world("b", standby(1, 0x300_0000, None)).initialize(None),
            vec![],
            &[
                "not initialized",
                "waiting for a member running as a primary",
            ],
        ),
        (
            "primary of another database: refuses, never stops or joins",
            world("x", other)
                .leader("a")
                .member(record("a", Role::Primary, 1, 0x300_0000)),
            vec![],
            &[
                "refusing",
                "7311234567891",
                "differs from the cluster's 7311234567890",
            ],
        ),
        (
            "standby of another database, no leader: never promotes",
            world("x", standby_other),
            vec![],
            &["refusing", "lifeboat standby create"],
        ),
        (
            "system identifier unknown",
            world("x", unknown)
                .leader("a")
                .member(record("a", Role::Primary, 1, 0)),
            vec![],
            &["unknown"],
        ),
    ]);
}

#[test]
fn paused_cluster_only_keeps_the_key() {
    check(vec![
        (
            "paused leader: renews only",
            world("a", primary(1, 0x300_0000))
                .leader("a")
                .member(record("b", Role::Replica, 1, 0x300_0000))
                .paused(),
            vec![Action::RenewLeader],
            &["paused", "renewed the leader key"],
        ),
        (
            "paused leader past its deadline: no stop",
            world("a", primary(1, 0x300_0000))
                .leader("a")
                .paused()
                .deadline_in(-5),
            vec![Action::RenewLeader],
            &["paused"],
        ),
        (
            "paused standby holding the key: no promotion",
            world("a", standby(1, 0x300_0000, None))
                .leader("a")
                .paused(),
            vec![Action::RenewLeader],
            &["paused"],
        ),
        (
            "paused, no leader, best standby: no promotion",
            world("b", standby(1, 0x300_0000, None)).paused(),
            vec![],
            &["paused", "no automatic action"],
        ),
        (
            "paused, another leader, this one a primary: no stop",
            world("b", primary(1, 0x300_0000))
                .leader("a")
                .member(record("a", Role::Primary, 1, 0x300_0000))
                .paused(),
            vec![],
            &["paused"],
        ),
        (
            "paused, another leader, standby following no one: no follow",
            world("b", standby(1, 0x300_0000, None))
                .leader("a")
                .member(record("a", Role::Primary, 1, 0x300_0000))
                .paused(),
            vec![],
            &["paused"],
        ),
        (
            "paused, no leader, running primary: takes the key, nothing else",
            world("a", primary(1, 0x300_0000)).paused(),
            vec![Action::AcquireLeader],
            &["paused", "takes the key"],
        ),
    ]);
}

#[test]
fn a_paused_primary_is_not_stopped_when_the_key_is_taken() {
    let d = world("a", primary(1, 0x300_0000)).paused().decide();
    assert!(d.if_key_lost.is_empty(), "{d:?}");
}
