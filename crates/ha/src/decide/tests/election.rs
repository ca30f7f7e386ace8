//! Nobody holds the leader key: the promotion rule.

use super::*;

fn take_and_promote() -> Vec<Action> {
    vec![Action::AcquireLeader, Action::Promote]
}

#[test]
fn the_promotion_rule() {
    let leaderless = |me: &str, position: u64| {
        world(me, standby(2, position, Some("a")))
            .last_leader(0x600_0000)
            .member(record(me, Role::Replica, 2, position))
    };
    check(vec![
        (
            "only standby, caught up",
            leaderless("b", 0x600_0000),
            take_and_promote(),
            &["best candidate", "taking the leader key, then promoting"],
        ),
        (
            "only standby, last leader's position unknown",
            world("b", standby(2, 0x100_0000, None)),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "within maximum_lag_on_failover (exactly 1 MiB behind)",
            leaderless("b", 0x600_0000 - MIB),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "the lagging standby: 4.2 MiB behind with a 1 MiB limit",
            leaderless("b", 0x600_0000 - 4 * MIB - MIB / 5),
            vec![],
            &[
                "not promoting: 4.2 MiB behind the last leader",
                "maximum_lag_on_failover 1.0 MiB",
            ],
        ),
        (
            "two standbys racing, b ahead: b takes it",
            leaderless("b", 0x600_0000).member(record("c", Role::Replica, 2, 0x5ff_0000)),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "two standbys racing, c ahead: b waits",
            leaderless("b", 0x5ff_0000).member(record("c", Role::Replica, 2, 0x600_0000)),
            vec![],
            &["c is further ahead (0/6000000, 64.0 KiB more than this standby's 0/5FF0000)"],
        ),
        (
            "two standbys racing, equal: the lowest name (b) takes it",
            leaderless("b", 0x600_0000).member(record("c", Role::Replica, 2, 0x600_0000)),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "two standbys racing, equal: c waits for b",
            leaderless("c", 0x600_0000).member(record("b", Role::Replica, 2, 0x600_0000)),
            vec![],
            &["b is as far (0/6000000) and its name sorts first"],
        ),
        (
            "a stopped member further ahead does not block (it cannot promote)",
            leaderless("b", 0x600_0000).member(record("c", Role::Stopped, 2, 0x700_0000)),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "behind in timeline: never promotes",
            world("b", standby(1, 0x600_0000, None)).member(record(
                "c",
                Role::Replica,
                2,
                0x500_0000,
            )),
            vec![],
            &["on timeline 1 while c is on 2"],
        ),
        (
            "a member still runs as a primary without the key: wait for it",
            leaderless("b", 0x600_0000).member(record("a", Role::Primary, 2, 0x600_0000)),
            vec![],
            &["a still runs as a primary"],
        ),
        (
            "a member of another database further ahead neither competes nor blocks",
            leaderless("b", 0x600_0000)
                .member(MemberRecord {
                    system_identifier: SYSID + 1,
                    ..record("a", Role::Replica, 2, 0x900_0000)
                })
                .member(MemberRecord {
                    system_identifier: SYSID + 1,
                    ..record("x", Role::Primary, 5, 0x900_0000)
                }),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "position unknown",
            world(
                "b",
                LocalState {
                    wal_position: None,
                    ..standby(2, 0, None)
                },
            ),
            vec![],
            &["WAL position is unknown"],
        ),
    ]);
}

#[test]
fn a_primary_without_the_key() {
    let d = world("a", primary(2, 0x600_0000)).decide();
    assert_eq!(d.actions, vec![Action::AcquireLeader]);
    assert_eq!(d.if_key_lost, vec![Action::StopImmediately], "{d:?}");
    assert!(
        d.summary
            .contains("stops at once if another member got it first"),
        "{}",
        d.summary
    );
    check(vec![
        (
            "lease expired unnoticed (agent was frozen past its deadline)",
            world("a", primary(2, 0x600_0000)).deadline_in(-3),
            vec![Action::StopImmediately],
            &["leader key expired", "comes back as a standby"],
        ),
        (
            "a member is on a newer timeline: this primary is stale",
            world("a", primary(1, 0x900_0000)).member(record("b", Role::Replica, 2, 0x600_0000)),
            vec![Action::StopImmediately],
            &["b is on timeline 2", "stale"],
        ),
        (
            "stopped member, no leader: starts as a standby, never as a primary",
            world("a", stopped(true)),
            vec![Action::StartStandby],
            &["starting it as a standby"],
        ),
    ]);
    let standby_decision = world("b", standby(2, 0x600_0000, None)).decide();
    assert!(standby_decision.if_key_lost.is_empty());
}

#[test]
fn synchronous_modes_restrict_the_candidates() {
    let sync_world = |me: &str, mode: SyncMode| {
        world(me, standby(2, 0x600_0000, None))
            .last_leader(0x600_0000)
            .sync("a", &["c"])
            .mode(mode)
    };
    check(vec![
        (
            "on: b is not in the synchronous set",
            sync_world("b", SyncMode::On).member(record("c", Role::Replica, 2, 0x600_0000)),
            vec![],
            &["not a synchronous standby (the last leader's were c)"],
        ),
        (
            "strict: same",
            sync_world("b", SyncMode::Strict),
            vec![],
            &["not a synchronous standby"],
        ),
        (
            "on: c is, and an asynchronous b further ahead does not block it",
            sync_world("c", SyncMode::On).member(record("b", Role::Replica, 2, 0x700_0000)),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "off: the published set does not matter",
            sync_world("b", SyncMode::Off),
            take_and_promote(),
            &["promoting"],
        ),
        (
            "on, empty set (writes were not protected): any standby",
            world("b", standby(2, 0x600_0000, None))
                .sync("a", &[])
                .mode(SyncMode::On),
            take_and_promote(),
            &["promoting"],
        ),
    ]);
}
