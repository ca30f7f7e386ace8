//! The role endpoints' answers over tables of views and clocks, and the loop's view of an
//! observation.

use super::*;
use crate::state::{ClusterView, LeaderKey, LocalState, MemberRecord};
use lifeboat_pg::lsn::Lsn;

const MB: u64 = 1 << 20;

fn view(role: Role, now: Instant) -> RoleView {
    RoleView {
        role,
        holds_leader: None,
        leader_deadline: None,
        timeline: TimelineId::new(1),
        lag_bytes: None,
        streaming: false,
        paused: false,
        observed_at: now,
    }
}

fn status(path: &str, query: Option<&str>, v: Option<&RoleView>, now: Instant) -> u16 {
    respond(path, query, v, now).map_or(404, |a| a.status)
}

#[test]
fn sizes_as_patroni_takes_them() {
    for (text, bytes) in [
        ("0", 0),
        ("1048576", MB),
        ("16MB", 16 * MB),
        ("16mb", 16 * MB),
        ("16 MB", 16 * MB),
        ("16%20MB", 16 * MB),
        ("16MiB", 16 * MB),
        ("1kB", 1024),
        ("2GB", 2 << 30),
        ("1TB", 1 << 40),
        ("5B", 5),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for text in ["", "MB", "lots", "-1", "1.5MB", "16PB", "99999999999TB"] {
        let e = parse_size(text).expect_err(text);
        assert!(e.contains("lag=16MB"), "{e}");
    }
}

#[test]
fn paths_and_queries() {
    assert_eq!(check_for("/", None), Some(Ok(Check::Primary)));
    assert_eq!(check_for("/master", None), Some(Ok(Check::Primary)));
    assert_eq!(
        check_for("/read-write", Some("lag=1")),
        Some(Ok(Check::Primary))
    );
    assert_eq!(
        check_for("/replica", Some("lag=16MB")),
        Some(Ok(Check::Replica {
            max_lag: Some(16 * MB)
        }))
    );
    assert_eq!(
        check_for("/read-only", Some("x=1&lag=1kB")),
        Some(Ok(Check::ReadOnly {
            max_lag: Some(1024)
        }))
    );
    assert_eq!(
        check_for("/replica", None),
        Some(Ok(Check::Replica { max_lag: None }))
    );
    assert!(matches!(check_for("/replica", Some("lag=x")), Some(Err(_))));
    assert_eq!(check_for("/api/status", None), None);
    assert_eq!(check_for("/primary/", None), None);
    for path in PATHS {
        assert!(check_for(path, None).is_some(), "{path}");
    }
}

/// Without [ha]: the role PostgreSQL reports decides, for a fresh view.
#[test]
fn without_ha() {
    let now = Instant::now();
    let primary = view(Role::Primary, now);
    let replica = RoleView {
        streaming: true,
        lag_bytes: Some(MB),
        ..view(Role::Replica, now)
    };
    let restoring = view(Role::Replica, now);
    let unknown_lag = RoleView {
        lag_bytes: None,
        ..replica.clone()
    };
    let stopped = view(Role::Stopped, now);
    let rejoining = view(Role::Rejoining, now);
    // path, query, view, status
    let table: &[(&str, Option<&str>, Option<&RoleView>, u16)] = &[
        ("/primary", None, Some(&primary), 200),
        ("/", None, Some(&primary), 200),
        ("/read-write", None, Some(&primary), 200),
        ("/master", None, Some(&primary), 200),
        ("/primary", None, Some(&replica), 503),
        ("/primary", None, Some(&stopped), 503),
        ("/primary", None, None, 503),
        ("/replica", None, Some(&replica), 200),
        ("/replica", None, Some(&primary), 503),
        ("/replica", None, Some(&restoring), 503),
        ("/replica", None, Some(&stopped), 503),
        ("/replica", Some("lag=1MB"), Some(&replica), 200),
        ("/replica", Some("lag=1048575"), Some(&replica), 503),
        ("/replica", Some("lag=16MB"), Some(&unknown_lag), 503),
        ("/replica", None, Some(&unknown_lag), 200),
        ("/replica", Some("lag=nope"), Some(&replica), 400),
        ("/read-only", None, Some(&primary), 200),
        ("/read-only", None, Some(&replica), 200),
        ("/read-only", Some("lag=1kB"), Some(&replica), 503),
        ("/read-only", Some("lag=1kB"), Some(&primary), 200),
        ("/read-only", None, Some(&restoring), 503),
        ("/read-only", None, Some(&stopped), 503),
        ("/health", None, Some(&primary), 200),
        ("/health", None, Some(&replica), 200),
        ("/health", None, Some(&restoring), 200),
        ("/health", None, Some(&stopped), 503),
        ("/health", None, Some(&rejoining), 503),
        ("/health", None, None, 503),
        ("/liveness", None, Some(&stopped), 200),
        ("/liveness", None, None, 200),
    ];
    for (path, query, v, want) in table {
        assert_eq!(
            status(path, *query, *v, now),
            *want,
            "{path} {query:?} {v:?}"
        );
    }
}

/// Without [ha] an old view means the observer is stuck: nothing but /liveness passes.
#[test]
fn a_stale_view_without_ha_passes_nothing_but_liveness() {
    let then = Instant::now();
    let now = then + STALE_WITHOUT_HA + Duration::from_millis(1);
    let primary = view(Role::Primary, then);
    let replica = RoleView {
        streaming: true,
        ..view(Role::Replica, then)
    };
    for path in ["/primary", "/replica", "/read-only", "/health"] {
        for v in [&primary, &replica] {
            let a = respond(path, None, Some(v), now).expect("role path");
            assert_eq!(a.status, 503, "{path}");
            assert_eq!(a.body.state, "unknown");
            assert!(
                a.body
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("stuck"))
            );
        }
    }
    assert_eq!(status("/liveness", None, Some(&primary), now), 200);
    // Just inside the limit it still counts.
    assert_eq!(
        status("/primary", None, Some(&primary), then + STALE_WITHOUT_HA),
        200
    );
}

/// With [ha]: the leader key and the fencing deadline decide /primary; the view's age does
/// not.
#[test]
fn with_ha_the_deadline_fences() {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(6);
    let leader = RoleView {
        holds_leader: Some(true),
        leader_deadline: Some(deadline),
        ..view(Role::Primary, t0)
    };
    let no_key = RoleView {
        holds_leader: Some(false),
        ..view(Role::Primary, t0)
    };
    let no_deadline = RoleView {
        leader_deadline: None,
        ..leader.clone()
    };
    let follower = RoleView {
        holds_leader: Some(false),
        streaming: true,
        lag_bytes: Some(0),
        ..view(Role::Replica, t0)
    };
    let promoting = RoleView {
        holds_leader: Some(true),
        leader_deadline: Some(deadline),
        streaming: true,
        ..view(Role::Replica, t0)
    };
    let just_before = deadline - Duration::from_millis(1);
    // An old view (past the no-[ha] limit) is still judged by the deadline alone.
    let old = t0 + STALE_WITHOUT_HA + Duration::from_millis(500);
    assert!(old < deadline);
    let table: &[(&str, &RoleView, Instant, u16)] = &[
        ("/primary", &leader, t0, 200),
        ("/primary", &leader, old, 200),
        ("/primary", &leader, just_before, 200),
        ("/primary", &leader, deadline, 503),
        ("/primary", &leader, deadline + Duration::from_secs(60), 503),
        ("/read-write", &leader, deadline, 503),
        ("/", &leader, deadline, 503),
        ("/read-only", &leader, deadline, 503),
        ("/primary", &no_key, t0, 503),
        ("/primary", &no_deadline, t0, 503),
        ("/primary", &follower, t0, 503),
        ("/primary", &promoting, t0, 503),
        ("/replica", &follower, old, 200),
        ("/replica", &promoting, t0, 503),
        ("/replica", &leader, t0, 503),
        ("/read-only", &follower, t0, 200),
        ("/read-only", &no_key, t0, 503),
        ("/health", &leader, deadline, 200),
        ("/health", &no_key, t0, 200),
        ("/liveness", &leader, deadline, 200),
    ];
    for (path, v, now, want) in table {
        assert_eq!(
            status(path, None, Some(v), *now),
            *want,
            "{path} {v:?} at {now:?}"
        );
    }
    let fenced = answer(
        Check::Primary,
        Some(&leader),
        deadline + Duration::from_secs(1),
    );
    assert_eq!(fenced.body.fencing_in_ms, Some(0));
    assert!(
        fenced
            .body
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("fenced"))
    );
    let ok = answer(Check::Primary, Some(&leader), t0);
    assert_eq!(ok.body.fencing_in_ms, Some(6000));
    assert_eq!(ok.body.reason, None);
    assert_eq!(ok.body.holds_leader, Some(true));
}

#[test]
fn the_body_says_what_was_observed() {
    let t0 = Instant::now();
    let v = RoleView {
        streaming: true,
        lag_bytes: Some(42),
        ..view(Role::Replica, t0)
    };
    let a = answer(
        Check::Replica { max_lag: None },
        Some(&v),
        t0 + Duration::from_millis(250),
    );
    assert_eq!(
        a.body,
        Body {
            check: "replica",
            state: "running",
            role: Some(Role::Replica),
            holds_leader: None,
            timeline: TimelineId::new(1),
            streaming: true,
            lag_bytes: Some(42),
            paused: false,
            observed_ms_ago: Some(250),
            fencing_in_ms: None,
            reason: None,
        }
    );
    let a = answer(Check::Primary, None, t0);
    assert_eq!(
        (a.status, a.body.state, a.body.role),
        (503, "unknown", None)
    );
    let a = respond("/replica", Some("lag=x"), Some(&v), t0).expect("role path");
    assert_eq!(a.status, 400);
    assert!(
        a.body
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("lag=16MB"))
    );
}

fn member(name: &str, position: u64) -> MemberRecord {
    MemberRecord {
        name: name.to_string(),
        role: Role::Primary,
        timeline: TimelineId::new(1),
        wal_position: Some(Lsn(position)),
        replayed: None,
        conninfo: String::new(),
        api_url: String::new(),
        system_identifier: 1,
        version: "0.1.0".to_string(),
    }
}

fn observation(local: LocalState, leader: Option<&str>, deadline: Option<Instant>) -> Observation {
    Observation {
        local,
        cluster: Some(ClusterView {
            leader: leader.map(|name| LeaderKey {
                name: name.to_string(),
                lease: 7,
                mod_revision: 3,
            }),
            last_leader_position: Some(Lsn(900)),
            members: vec![member("a", 1000), member("b", 600)],
            ..ClusterView::default()
        }),
        now: Instant::now(),
        leader_deadline: deadline,
    }
}

/// What the loop publishes: the key held only with a deadline and no other holder in etcd.
#[test]
fn the_loop_view_of_an_observation() {
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let primary = LocalState {
        running: true,
        timeline: TimelineId::new(1),
        ..LocalState::default()
    };
    let v = ha_view(&observation(primary.clone(), Some("a"), deadline), "a");
    assert_eq!(
        (v.role, v.holds_leader, v.leader_deadline),
        (Role::Primary, Some(true), deadline)
    );
    assert_eq!(answer(Check::Primary, Some(&v), v.observed_at).status, 200);
    // etcd unreachable: still the leader until the deadline.
    let mut unreachable = observation(primary.clone(), Some("a"), deadline);
    unreachable.cluster = None;
    assert_eq!(ha_view(&unreachable, "a").holds_leader, Some(true));
    // Another member holds the key, or the loop kept no deadline: not the leader.
    let v = ha_view(&observation(primary.clone(), Some("b"), deadline), "a");
    assert_eq!((v.holds_leader, v.leader_deadline), (Some(false), None));
    assert_eq!(answer(Check::Primary, Some(&v), v.observed_at).status, 503);
    assert_eq!(
        ha_view(&observation(primary, Some("a"), None), "a").holds_leader,
        Some(false)
    );

    let standby = LocalState {
        running: true,
        in_recovery: true,
        streaming: true,
        replayed: Some(Lsn(400)),
        ..LocalState::default()
    };
    let v = ha_view(&observation(standby.clone(), Some("a"), None), "b");
    // Behind the leader's member key (1000, newer than optime's 900).
    assert_eq!(
        (v.role, v.lag_bytes, v.streaming),
        (Role::Replica, Some(600), true)
    );
    assert_eq!(
        answer(
            Check::Replica { max_lag: Some(600) },
            Some(&v),
            v.observed_at
        )
        .status,
        200
    );
    assert_eq!(
        answer(
            Check::Replica { max_lag: Some(599) },
            Some(&v),
            v.observed_at
        )
        .status,
        503
    );
    // No leader: behind optime.
    assert_eq!(
        ha_view(&observation(standby, None, None), "b").lag_bytes,
        Some(500)
    );
    let stopped = ha_view(&observation(LocalState::default(), Some("a"), None), "b");
    assert_eq!((stopped.role, stopped.streaming), (Role::Stopped, false));
}
