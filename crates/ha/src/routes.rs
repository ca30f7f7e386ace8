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

use crate::state::{Observation, Role, RoleView};

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

/// The view one loop of the failover agent publishes for member `name` (with `[ha]`): the role
/// PostgreSQL showed; the leader key held while the loop keeps a fencing deadline and etcd names
/// no other member (etcd unreachable does not end it: the deadline does); a replica's lag behind
/// the leader's last published position (its member key or `optime`, the further), in replayed
/// bytes, since replayed WAL is what reads see. The loop may still override `role` (e.g.
/// [`Role::Rejoining`] while it rewinds).
pub fn ha_view(obs: &Observation, name: &str) -> RoleView {
    let local = &obs.local;
    let role = match (local.running, local.in_recovery) {
        (false, _) => Role::Stopped,
        (true, true) => Role::Replica,
        (true, false) => Role::Primary,
    };
    let cluster = obs.cluster.as_ref();
    let holds = obs.leader_deadline.is_some()
        && cluster.is_none_or(|c| c.leader.as_ref().is_some_and(|l| l.name == name));
    let leader_position = cluster.and_then(|c| {
        let published = c.leader.as_ref().and_then(|l| {
            c.members
                .iter()
                .find(|m| m.name == l.name)
                .and_then(|m| m.wal_position)
        });
        published.max(c.last_leader_position)
    });
    let lag_bytes = match role {
        Role::Replica => leader_position
            .zip(local.replayed)
            .map(|(leader, replayed)| leader.0.saturating_sub(replayed.0)),
        _ => None,
    };
    RoleView {
        role,
        holds_leader: Some(holds),
        leader_deadline: obs.leader_deadline.filter(|_| holds),
        timeline: local.timeline,
        lag_bytes,
        streaming: role == Role::Replica && local.streaming,
        paused: cluster.is_some_and(|c| c.paused),
        observed_at: obs.now,
    }
}

#[cfg(test)]
mod tests;
