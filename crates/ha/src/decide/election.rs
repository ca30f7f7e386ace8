//! This module owns the policy when nobody holds the leader key: which standby may take it and
//! promote (the promotion rule), what a primary without the key does, and how a stopped member
//! comes back to take part.

use super::{Action, Ctx, Decision, Local, human_bytes, lag};
use lifeboat_pg::timeline::TimelineId;

use crate::state::{MemberRecord, Role, Switchover};

pub(super) fn decide(ctx: &Ctx) -> Decision {
    match ctx.local {
        Local::Primary => primary(ctx),
        Local::Standby => match not_eligible(ctx) {
            None => Decision::new(
                vec![Action::AcquireLeader, Action::Promote],
                "no leader and this standby is the best candidate: taking the leader key, then \
                 promoting",
            ),
            Some(why) => Decision::wait(format!("no leader; not promoting: {why}")),
        },
        // Started as a standby, never as a primary: without the key it must not take writes.
        Local::Stopped => Decision::new(
            vec![Action::StartStandby],
            "no leader and PostgreSQL is stopped: starting it as a standby to take part in the \
             election",
        ),
    }
}

/// A primary without the key: its lease expired unnoticed, or its agent just started.
fn primary(ctx: &Ctx) -> Decision {
    if ctx.past_deadline() {
        return Decision::new(
            vec![Action::StopImmediately],
            "the leader key expired (the lease was not renewed before the fencing deadline): \
             stopping PostgreSQL at once; it comes back as a standby",
        );
    }
    let mine = ctx.obs.local.timeline;
    if let Some(newer) = ctx
        .others()
        .find(|m| m.timeline.is_some() && m.timeline > mine)
    {
        return Decision::new(
            vec![Action::StopImmediately],
            format!(
                "no leader, but {} is on timeline {} and this primary on an older one: it is \
                 stale, stopping PostgreSQL at once",
                newer.name,
                newer
                    .timeline
                    .map(|t| t.get().to_string())
                    .unwrap_or_default()
            ),
        );
    }
    Decision {
        actions: vec![Action::AcquireLeader],
        if_key_lost: vec![Action::StopImmediately],
        summary: "no leader: this running primary takes the leader key (and stops at once if \
                  another member got it first)"
            .to_string(),
    }
}

/// Why this standby may not take the key now (None: it may). The promotion rule: within
/// `maximum_lag_on_failover` of the last leader, on the newest timeline, a synchronous standby
/// when that is on, and no better candidate alive (further ahead; ties: the lowest name). A
/// switchover's `to` skips the "better candidate" test; a manual failover (`to` without `from`)
/// the lag test too.
fn not_eligible(ctx: &Ctx) -> Option<String> {
    let request = ctx.switchover();
    let named = request.is_some_and(|r| r.to.as_deref() == Some(ctx.me));
    let forced = named && forced_to(request);
    if let Some(primary) = ctx.others().find(|m| m.role == Role::Primary) {
        return Some(format!(
            "{} still runs as a primary (without the key): it takes the key or stops first",
            primary.name
        ));
    }
    let Some(mine) = ctx.obs.local.wal_position else {
        return Some("this standby's WAL position is unknown".to_string());
    };
    let Some(timeline) = ctx.obs.local.timeline else {
        return Some("this standby's timeline is unknown".to_string());
    };
    if let Some(last) = ctx.cluster.last_leader_position.filter(|_| !forced) {
        let behind = lag(last, mine);
        if behind > ctx.config.maximum_lag_on_failover {
            return Some(format!(
                "{} behind the last leader ({mine} < {last}; limit maximum_lag_on_failover {})",
                human_bytes(behind),
                human_bytes(ctx.config.maximum_lag_on_failover)
            ));
        }
    }
    if let Some(newer) = ctx
        .others()
        .filter(|m| m.timeline.is_some_and(|t| t > timeline))
        .max_by_key(|m| m.timeline)
    {
        return Some(format!(
            "on timeline {} while {} is on {}",
            timeline.get(),
            newer.name,
            newer
                .timeline
                .map(|t| t.get().to_string())
                .unwrap_or_default()
        ));
    }
    let sync = ctx.sync_set();
    if let Some(set) = sync.filter(|set| !set.iter().any(|n| n == ctx.me)) {
        return Some(format!(
            "not a synchronous standby (the last leader's were {}): it may lack acknowledged \
             commits",
            set.join(", ")
        ));
    }
    if named {
        return None;
    }
    // The named candidate goes first, as long as it could take the key itself: a named member
    // that cannot must not hold everyone back (with no leader, nobody clears the request).
    if let Some(to) = request.and_then(|r| r.to.as_deref())
        && let Some(candidate) = ctx.member(to).filter(|m| m.name != ctx.me)
        && could_promote(ctx, candidate, timeline, sync, !forced_to(request))
    {
        return Some(format!("the switchover names {to}: leaving the key to it"));
    }
    // Competitors: running standbys that could themselves be promoted; comparing with one that
    // cannot would block everyone.
    let better = ctx
        .others()
        .filter(|m| could_promote(ctx, m, timeline, sync, true))
        .filter_map(|m| m.wal_position.map(|p| (m, p)))
        .find(|(m, p)| *p > mine || (*p == mine && m.name.as_str() < ctx.me));
    better.map(|(m, p)| {
        if p > mine {
            format!(
                "{} is further ahead ({p}, {} more than this standby's {mine})",
                m.name,
                human_bytes(lag(p, mine))
            )
        } else {
            format!("{} is as far ({p}) and its name sorts first", m.name)
        }
    })
}

/// A manual failover: `to` without `from` (no leader to hand over); the lag test is waived.
fn forced_to(request: Option<&Switchover>) -> bool {
    request.is_some_and(|r| r.from.is_none() && r.to.is_some())
}

/// Whether another member, as it published itself, passes the promotion rule's own tests: a
/// running standby on `timeline` (the newest), synchronous when that counts, within
/// `maximum_lag_on_failover` of the last leader when `lag_applies`.
fn could_promote(
    ctx: &Ctx,
    member: &MemberRecord,
    timeline: TimelineId,
    sync: Option<&[String]>,
    lag_applies: bool,
) -> bool {
    let within_lag = match (ctx.cluster.last_leader_position, member.wal_position) {
        _ if !lag_applies => true,
        (Some(last), Some(position)) => lag(last, position) <= ctx.config.maximum_lag_on_failover,
        (None, position) => position.is_some(),
        (Some(_), None) => false,
    };
    member.role == Role::Replica
        && member.timeline == Some(timeline)
        && sync.is_none_or(|set| set.contains(&member.name))
        && within_lag
}
