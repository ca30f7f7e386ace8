//! This module owns what the role endpoints answer (`/primary`, `/replica?lag=`, `/read-only`,
//! `/health`, `/liveness`, ...): an HTTP status and a small JSON body, as a pure function of the
//! request's path and query, the last published [`RoleView`] and the monotonic clock. The daemon
//! serves it; HAProxy's checks route on the status alone (200 or 503), with Patroni's contract so
//! existing HAProxy configurations work unchanged.
//!
//! Fencing lives here as much as in the loop: with `[ha]`, `/primary` answers 503 from the
//! leader's deadline on, however recently PostgreSQL was seen out of recovery, so a leader whose
//! loop is stuck drops out of the write pool on time. The age of the view is then not judged
//! (the deadline is the only clock that matters for writes, and the loop refreshes the view every
//! `loop_wait`). Without `[ha]` there is no deadline: a view older than [`STALE_WITHOUT_HA`]
//! means the observer itself is stuck, and every endpoint but `/liveness` answers 503 until it
//! publishes again.

use std::time::{Duration, Instant};

use lifeboat_pg::timeline::TimelineId;
use serde::Serialize;

use crate::state::{Role, RoleView};

/// Without `[ha]`, the observer publishes every second; a view older than this says it is stuck.
pub const STALE_WITHOUT_HA: Duration = Duration::from_secs(5);

/// Paths of the role endpoints, as HAProxy (or Patroni's configs) ask them. `/` is Patroni's
/// `/primary`; whether a server routes `/` here is its choice (the daemon keeps its dashboard on
/// `GET /`).
pub const PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/replica",
    "/read-only",
    "/health",
    "/liveness",
];

/// What a role endpoint checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `/`, `/primary`, `/master`, `/read-write`: this member takes writes.
    Primary,
    /// `/replica`: a streaming standby, at most `max_lag` bytes behind when given.
    Replica { max_lag: Option<u64> },
    /// `/read-only`: the primary, or a replica as for `/replica`.
    ReadOnly { max_lag: Option<u64> },
    /// `/health`: PostgreSQL runs, whatever its role.
    Health,
    /// `/liveness`: the agent answers.
    Liveness,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Primary => "primary",
            Check::Replica { .. } => "replica",
            Check::ReadOnly { .. } => "read-only",
            Check::Health => "health",
            Check::Liveness => "liveness",
        }
    }
}

/// The check a request asks for: None when `path` is no role endpoint; `Err` (answer 400) when
/// its query is malformed, e.g. `?lag=lots`.
pub fn check_for(path: &str, query: Option<&str>) -> Option<Result<Check, String>> {
    let lag = || max_lag(query.unwrap_or(""));
    Some(match path {
        "/" | "/primary" | "/master" | "/read-write" => Ok(Check::Primary),
        "/replica" => lag().map(|max_lag| Check::Replica { max_lag }),
        "/read-only" => lag().map(|max_lag| Check::ReadOnly { max_lag }),
        "/health" => Ok(Check::Health),
        "/liveness" => Ok(Check::Liveness),
        _ => return None,
    })
}

/// `lag=` of a query string, in bytes (None: no limit).
fn max_lag(query: &str) -> Result<Option<u64>, String> {
    let mut limit = None;
    for pair in query.split('&') {
        if let Some(("lag", value)) = pair.split_once('=') {
            limit = Some(parse_size(value)?);
        }
    }
    Ok(limit)
}

/// A size as Patroni's `?lag=` takes it: bytes (`1048576`), or with a unit `B`, `kB`, `MB`, `GB`,
/// `TB` (powers of 1024, any case, `KiB`-style spellings too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    // `16%20MB` or `16+MB` from a URL are a space.
    let text = text.replace("%20", " ").replace('+', " ");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad_size(text)),
    };
    let number: u64 = digits.parse().map_err(|_| bad_size(text))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad_size(text))
}

fn bad_size(text: &str) -> String {
    format!(
        "lag={text:?} is not a size: write bytes (lag=1048576) or a whole number with a unit B, \
         kB, MB, GB or TB (lag=16MB)"
    )
}

/// The JSON body of every answer: the member's role as last observed, and why a 503 is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Body {
    /// The endpoint's check: `primary`, `replica`, `read-only`, `health` or `liveness`.
    pub check: &'static str,
    /// `running` (PostgreSQL answers), `stopped`, or `unknown` (nothing observed, or too long ago).
    pub state: &'static str,
    pub role: Option<Role>,
    /// With `[ha]`: whether this member holds the leader key; null without `[ha]`.
    pub holds_leader: Option<bool>,
    pub timeline: Option<TimelineId>,
    pub streaming: bool,
    pub lag_bytes: Option<u64>,
    pub paused: bool,
    /// How long ago the view was observed, in milliseconds.
    pub observed_ms_ago: Option<u64>,
    /// On the leader: milliseconds left before the fencing deadline (0: passed).
    pub fencing_in_ms: Option<u64>,
    /// Why the check fails; null on a 200.
    pub reason: Option<String>,
}

/// An endpoint's answer: 200, 503, or 400 for a malformed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Body,
}

/// The answer to `path` and `query` (None: not a role endpoint).
pub fn respond(
    path: &str,
    query: Option<&str>,
    view: Option<&RoleView>,
    now: Instant,
) -> Option<Answer> {
    Some(match check_for(path, query)? {
        Ok(check) => answer(check, view, now),
        Err(why) => {
            let mut a = answer(Check::Liveness, view, now);
            a.status = 400;
            a.body.reason = Some(why);
            a
        }
    })
}

/// The answer of `check` given the last published view (None: none yet) at `now`.
pub fn answer(check: Check, view: Option<&RoleView>, now: Instant) -> Answer {
    let verdict = view
        .ok_or_else(|| "no observation of PostgreSQL yet: the agent has just started".to_string())
        .and_then(|v| judge(check, v, now));
    let stale = view.is_some_and(|v| is_stale(v, now));
    let body = Body {
        check: check.name(),
        state: match view {
            None => "unknown",
            Some(_) if stale => "unknown",
            Some(v) if running(v) => "running",
            Some(_) => "stopped",
        },
        role: view.map(|v| v.role),
        holds_leader: view.and_then(|v| v.holds_leader),
        timeline: view.and_then(|v| v.timeline),
        streaming: view.is_some_and(|v| v.streaming),
        lag_bytes: view.and_then(|v| v.lag_bytes),
        paused: view.is_some_and(|v| v.paused),
        observed_ms_ago: view.map(|v| millis(now.saturating_duration_since(v.observed_at))),
        fencing_in_ms: view
            .filter(|v| v.holds_leader == Some(true))
            .and_then(|v| v.leader_deadline)
            .map(|d| millis(d.saturating_duration_since(now))),
        reason: verdict.as_ref().err().cloned(),
    };
    let status = match (check, verdict) {
        (Check::Liveness, _) | (_, Ok(())) => 200,
        (_, Err(_)) => 503,
    };
    Answer { status, body }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn running(v: &RoleView) -> bool {
    matches!(v.role, Role::Primary | Role::Replica)
}

/// Only without `[ha]`: with it, the loop refreshes the view and the deadline fences.
fn is_stale(v: &RoleView, now: Instant) -> bool {
    v.holds_leader.is_none() && now.saturating_duration_since(v.observed_at) > STALE_WITHOUT_HA
}

/// Ok when `check` passes on `v`, else why not.
fn judge(check: Check, v: &RoleView, now: Instant) -> Result<(), String> {
    if check == Check::Liveness {
        return Ok(());
    }
    if is_stale(v, now) {
        return Err(format!(
            "PostgreSQL was last observed {} ms ago (more than {} s): the agent's observer is \
             stuck; see the agent's log",
            millis(now.saturating_duration_since(v.observed_at)),
            STALE_WITHOUT_HA.as_secs()
        ));
    }
    match check {
        Check::Liveness => Ok(()),
        Check::Health if running(v) => Ok(()),
        Check::Health => Err(format!("PostgreSQL is not running ({})", role_name(v.role))),
        Check::Primary => primary(v, now),
        Check::Replica { max_lag } => replica(v, max_lag),
        Check::ReadOnly { max_lag } => primary(v, now).or_else(|not_primary| {
            replica(v, max_lag).map_err(|not_replica| format!("{not_primary}; {not_replica}"))
        }),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Stopped => "stopped",
        Role::Rejoining => "rejoining the cluster",
    }
}

fn primary(v: &RoleView, now: Instant) -> Result<(), String> {
    if v.role != Role::Primary {
        return Err(format!(
            "not the primary: PostgreSQL is {}",
            role_name(v.role)
        ));
    }
    match (v.holds_leader, v.leader_deadline) {
        // Without [ha] a primary out of recovery is the primary.
        (None, _) => Ok(()),
        (Some(false), _) => Err(
            "PostgreSQL runs as a primary but this member does not hold \
                                 the leader key: it must not take writes"
                .to_string(),
        ),
        (Some(true), None) => Err("this member holds the leader key but has no fencing \
                                   deadline: it must not take writes until it renews"
            .to_string()),
        (Some(true), Some(deadline)) if now >= deadline => Err(format!(
            "fenced: the leader key's lease was not renewed in time (deadline passed {} ms \
             ago); writes stop until it is renewed",
            millis(now.saturating_duration_since(deadline))
        )),
        (Some(true), Some(_)) => Ok(()),
    }
}

fn replica(v: &RoleView, max_lag: Option<u64>) -> Result<(), String> {
    if v.role != Role::Replica {
        return Err(format!(
            "not a replica: PostgreSQL is {}",
            role_name(v.role)
        ));
    }
    if v.holds_leader == Some(true) {
        return Err("this member holds the leader key (being promoted)".to_string());
    }
    if !v.streaming {
        return Err("the standby's WAL receiver is not streaming from a primary".to_string());
    }
    match (max_lag, v.lag_bytes) {
        (None, _) => Ok(()),
        (Some(_), None) => Err("the replica's lag is unknown, and ?lag= limits it".to_string()),
        (Some(max), Some(lag)) if lag > max => Err(format!(
            "the replica is {lag} bytes behind, more than lag={max} bytes"
        )),
        (Some(_), Some(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
