//! etcd unreadable: fencing by the deadline, never a promotion.

use super::*;

#[test]
fn without_etcd_a_leader_writes_until_its_deadline_and_a_standby_waits() {
    check(vec![
        (
            "leader, etcd down, deadline ahead: keeps writing, tries to renew",
            world("a", primary(1, 0x500_0000))
                .etcd_down()
                .deadline_in(12),
            vec![Action::RenewLeader],
            &["etcd did not answer", "12s", "fencing deadline"],
        ),
        (
            "leader, etcd down, deadline reached: fences itself",
            world("a", primary(1, 0x500_0000))
                .etcd_down()
                .deadline_in(0),
            vec![Action::StopImmediately],
            &[
                "not renewed before the fencing deadline",
                "stopping PostgreSQL at once",
            ],
        ),
        (
            "leader, etcd down, deadline long passed (agent was frozen)",
            world("a", primary(1, 0x500_0000))
                .etcd_down()
                .deadline_in(-60),
            vec![Action::StopImmediately],
            &["fencing deadline"],
        ),
        (
            "primary that never held the key (agent just started), etcd down",
            world("a", primary(1, 0x500_0000)).etcd_down(),
            vec![Action::StopImmediately],
            &["without holding the leader key"],
        ),
        (
            "standby, etcd down: never promotes",
            world("b", standby(1, 0x500_0000, None)).etcd_down(),
            vec![],
            &["never promoting without etcd"],
        ),
        (
            "standby that holds a deadline (just took the key), etcd down: no promotion",
            world("b", standby(1, 0x500_0000, None))
                .etcd_down()
                .deadline_in(20),
            vec![],
            &["never promoting without etcd"],
        ),
        (
            "stopped member, etcd down",
            world("c", stopped(false)).etcd_down(),
            vec![],
            &["stays stopped"],
        ),
    ]);
}
