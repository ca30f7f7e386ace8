//! Safety properties over every combination of a grid of situations, beyond the hand-picked
//! tables: whatever the state, no promotion without the key, no action without etcd but fencing,
//! none at all for a foreign database, nothing but the key while paused, and a primary past its
//! deadline or facing another leader always stops.

use super::*;

fn locals() -> Vec<(&'static str, LocalState)> {
    vec![
        ("primary", primary(2, 0x600_0000)),
        ("standby of b", standby(2, 0x600_0000, Some("b"))),
        ("standby of none", standby(2, 0x5f0_0000, None)),
        ("stopped former primary", stopped(true)),
        ("stopped standby", stopped(false)),
    ]
}

fn others() -> Vec<(&'static str, Option<MemberRecord>)> {
    vec![
        ("alone", None),
        ("b ahead", Some(record("b", Role::Replica, 2, 0x700_0000))),
        ("b behind", Some(record("b", Role::Replica, 2, 0x100_0000))),
        ("b primary", Some(record("b", Role::Primary, 2, 0x600_0000))),
        (
            "b newer timeline",
            Some(record("b", Role::Replica, 3, 0x600_0000)),
        ),
    ]
}

fn worlds() -> Vec<(String, World)> {
    let mut out = Vec::new();
    for (local_name, local) in locals() {
        for leader in [None, Some("a"), Some("b")] {
            for (other_name, other) in others() {
                for deadline in [None, Some(20), Some(-1)] {
                    for switchover in [None, Some((Some("a"), Some("b"))), Some((None, Some("a")))]
                    {
                        for mode in [SyncMode::Off, SyncMode::Strict] {
                            let mut w = world("a", local.clone()).last_leader(0x600_0000);
                            if let Some(l) = leader {
                                w = w.leader(l);
                            }
                            if let Some(o) = other.clone() {
                                w = w.member(o);
                            }
                            if let Some(d) = deadline {
                                w = w.deadline_in(d);
                            }
                            if let Some((from, to)) = switchover {
                                w = w.switchover(from, to);
                            }
                            w = w.mode(mode).sync("b", &["b"]).connected(&["b"]);
                            let name = format!(
                                "{local_name}, leader {leader:?}, {other_name}, deadline \
                                 {deadline:?}, switchover {switchover:?}, {mode:?}"
                            );
                            out.push((name.clone(), w.clone()));
                            out.push((format!("{name}, paused"), w.clone().paused()));
                            out.push((format!("{name}, etcd down"), w.clone().etcd_down()));
                            let mut foreign = w.clone();
                            foreign.obs.local.system_identifier = Some(SYSID + 1);
                            out.push((format!("{name}, foreign database"), foreign));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn safety_holds_in_every_situation() {
    let worlds = worlds();
    assert!(worlds.len() > 4000, "{}", worlds.len());
    for (name, w) in worlds {
        let d = w.decide();
        let has = |a: &Action| d.actions.contains(a);
        let cluster = w.obs.cluster.as_ref();
        let paused = cluster.is_some_and(|c| c.paused);
        let foreign = w.obs.local.system_identifier != Some(SYSID);
        let is_primary = w.obs.local.running && !w.obs.local.in_recovery;
        let past = w.obs.leader_deadline.is_some_and(|dl| w.obs.now >= dl);
        let other_leader = cluster
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|k| k.name != "a");
        assert!(!d.summary.is_empty(), "{name}");
        if let Some(at) = d.actions.iter().position(|a| *a == Action::Promote) {
            let before = &d.actions[..at];
            assert!(
                before.contains(&Action::AcquireLeader) || before.contains(&Action::RenewLeader),
                "{name}: {d:?}"
            );
        }
        if !d.if_key_lost.is_empty() {
            assert!(
                has(&Action::AcquireLeader) || has(&Action::RenewLeader),
                "{name}: {d:?}"
            );
        }
        if cluster.is_none() {
            assert!(
                d.actions
                    .iter()
                    .all(|a| matches!(a, Action::RenewLeader | Action::StopImmediately)),
                "{name}: without etcd only renewing or fencing: {d:?}"
            );
        }
        if foreign && cluster.is_some() {
            assert!(d.actions.is_empty(), "{name}: {d:?}");
            continue;
        }
        if paused && cluster.is_some() {
            assert!(
                d.actions.iter().all(|a| matches!(
                    a,
                    Action::RenewLeader | Action::AcquireLeader | Action::Initialize { .. }
                )),
                "{name}: paused: {d:?}"
            );
            continue;
        }
        if is_primary && (past || other_leader) {
            assert_eq!(
                d.actions.first(),
                Some(&Action::StopImmediately),
                "{name}: a primary past its deadline or facing another leader stops first: {d:?}"
            );
        }
        // A primary that finds the key not (or no longer) its own stops at once, unless it has
        // not renewed it in this agent's life (the previous run's lease expires first).
        let asks_for_key = has(&Action::AcquireLeader) || has(&Action::RenewLeader);
        if is_primary
            && asks_for_key
            && (has(&Action::AcquireLeader) || w.obs.leader_deadline.is_some())
        {
            assert_eq!(
                d.if_key_lost,
                vec![Action::StopImmediately],
                "{name}: {d:?}"
            );
        }
    }
}
