//! Another member holds the leader key.

use super::*;

fn led_by_a(me: &str, local: LocalState) -> World {
    world(me, local)
        .leader("a")
        .member(record("a", Role::Primary, 2, 0x600_0000))
}

#[test]
fn members_follow_the_leader() {
    check(vec![
        (
            "standby already following the leader",
            led_by_a("b", standby(2, 0x5f0_0000, Some("a"))),
            vec![],
            &["standby of a", "streaming", "1.0 MiB behind"],
        ),
        (
            "standby still pointing at the old leader (after a failover)",
            led_by_a("b", standby(2, 0x5f0_0000, Some("c"))),
            vec![follow("a")],
            &["follows c", "pointing it at a"],
        ),
        (
            "standby restored from the repository, following no one",
            led_by_a("b", standby(1, 0x100_0000, None)),
            vec![follow("a")],
            &["follows no one"],
        ),
        (
            "stopped standby: starts as a standby of the leader",
            led_by_a("b", stopped(false)),
            vec![follow("a")],
            &["starting it as a standby of a"],
        ),
        (
            "stopped former primary (fenced, or stopped for a switchover): rejoins",
            led_by_a("b", stopped(true)),
            vec![rejoin("a")],
            &["last ran as a primary", "rejoining"],
        ),
        (
            "leader without a member key yet: waits for its conninfo",
            world("b", standby(1, 0x100_0000, None)).leader("a"),
            vec![],
            &["published no member key", "conninfo"],
        ),
        (
            "standby on a newer timeline than the leader: diverged, rejoins",
            led_by_a("b", standby(3, 0x600_0000, Some("a"))),
            vec![Action::StopImmediately, rejoin("a")],
            &["newer timeline", "diverged"],
        ),
    ]);
}

#[test]
fn a_primary_that_sees_another_leader_stops_then_rejoins() {
    check(vec![
        (
            "old primary back after a failover",
            led_by_a("b", primary(1, 0x580_0000)),
            vec![Action::StopImmediately, rejoin("a")],
            &[
                "a holds the leader key but this member runs as a primary",
                "fencing",
                "rejoining",
            ],
        ),
        (
            "old primary, leader's member key not there yet: stops anyway",
            world("b", primary(1, 0x580_0000)).leader("a"),
            vec![Action::StopImmediately],
            &[
                "stopping PostgreSQL at once",
                "once the leader publishes its member key",
            ],
        ),
        (
            "old primary with a deadline still ahead: the key says otherwise, stops",
            led_by_a("b", primary(1, 0x580_0000)).deadline_in(10),
            vec![Action::StopImmediately, rejoin("a")],
            &["fencing"],
        ),
    ]);
}
