//! The leader's synchronous set.

use super::*;

fn leader_with(mode: SyncMode, connected: &[&str]) -> World {
    world("a", primary(2, 0x600_0000))
        .leader("a")
        .member(record("b", Role::Replica, 2, 0x600_0000))
        .member(record("c", Role::Replica, 2, 0x600_0000))
        .mode(mode)
        .connected(connected)
}

fn routine_then(extra: Option<Action>) -> Vec<Action> {
    let mut actions = vec![
        Action::RenewLeader,
        Action::PublishLeaderPosition,
        keep_slots(&["b", "c"]),
    ];
    actions.extend(extra);
    actions
}

#[test]
fn the_synchronous_set_follows_the_connected_standbys() {
    check(vec![
        (
            "on: first set after a failover (sync still names the old leader)",
            leader_with(SyncMode::On, &["c", "b", "lifeboat"]).sync("x", &["a"]),
            routine_then(Some(set_sync(&["b", "c"]))),
            &["synchronous standbys now b, c"],
        ),
        (
            "on: unchanged set, nothing written",
            leader_with(SyncMode::On, &["b", "c"]).sync("a", &["b", "c"]),
            routine_then(None),
            &["slots kept"],
        ),
        (
            "on: c disconnected, narrowed",
            leader_with(SyncMode::On, &["b"]).sync("a", &["b", "c"]),
            routine_then(Some(set_sync(&["b"]))),
            &["synchronous standbys now b"],
        ),
        (
            "on: none connected, writes continue",
            leader_with(SyncMode::On, &[]).sync("a", &["b"]),
            routine_then(Some(set_sync(&[]))),
            &["synchronous standbys now none"],
        ),
        (
            "on: a connected standby without a member key is not listed",
            leader_with(SyncMode::On, &["b", "stranger"]).sync("a", &["b"]),
            routine_then(None),
            &["leader"],
        ),
        (
            "strict: none connected, the previous set stays so writes wait",
            leader_with(SyncMode::Strict, &[]).sync("a", &["b"]),
            routine_then(None),
            &["leader"],
        ),
        (
            "strict: none connected and no set yet: an empty set, writes wait",
            leader_with(SyncMode::Strict, &[]),
            routine_then(Some(set_sync(&[]))),
            &["strict: writes wait"],
        ),
        (
            "strict: c connects instead of b",
            leader_with(SyncMode::Strict, &["c"]).sync("a", &["b"]),
            routine_then(Some(set_sync(&["c"]))),
            &["now c"],
        ),
        (
            "off: a set left from before is emptied",
            leader_with(SyncMode::Off, &["b"]).sync("a", &["b"]),
            routine_then(Some(set_sync(&[]))),
            &["now none"],
        ),
        (
            "off: an empty set is left alone",
            leader_with(SyncMode::Off, &["b"]).sync("a", &[]),
            routine_then(None),
            &["leader"],
        ),
        (
            "off: no set at all",
            leader_with(SyncMode::Off, &["b"]),
            routine_then(None),
            &["leader"],
        ),
    ]);
}
