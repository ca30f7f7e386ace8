//! This module owns the policy of the member that holds the leader key: renew it while the
//! fencing deadline allows, publish the position, keep the members' slots and the synchronous
//! set, carry out a switchover; promote if it took the key as a standby; restart a crashed
//! primary in place for `primary_start_timeout`, then give the key up.

use super::{Action, Ctx, Decision, Local, human_bytes, human_duration, lag, names};
use crate::config::SyncMode;
use crate::state::MemberRecord;

pub(super) fn decide(ctx: &Ctx) -> Decision {
    match ctx.local {
        Local::Primary => primary(ctx),
        // It took the key as a standby (last loop's AcquireLeader) or was restarted as one:
        // renewing first makes sure the key is still ours when the promotion starts.
        Local::Standby => Decision::new(
            vec![Action::RenewLeader, Action::Promote],
            "holds the leader key as a standby: promoting",
        ),
        Local::Stopped => stopped(ctx),
    }
}

fn primary(ctx: &Ctx) -> Decision {
    if ctx.past_deadline() {
        return Decision::new(
            vec![Action::StopImmediately],
            "the leader lease was not renewed before the fencing deadline: stopping PostgreSQL \
             at once (fencing); another member may take the key once it expires",
        );
    }
    let switchover = switchover_step(ctx);
    if let Step::Demote(to) = &switchover {
        // Writes stop (and the standbys receive the last WAL) before the key is free, so the
        // candidate never promotes while this member still writes.
        return Decision::new(
            vec![Action::StopFast, Action::ReleaseLeader],
            format!(
                "switchover to {to}: stopping PostgreSQL (fast shutdown, standbys receive all \
                 WAL) and releasing the leader key"
            ),
        );
    }
    let members: Vec<String> = ctx.others().map(|m| m.name.clone()).collect();
    let mut actions = vec![
        Action::RenewLeader,
        Action::PublishLeaderPosition,
        Action::KeepSlots {
            members: members.clone(),
        },
    ];
    let mut summary = format!(
        "leader{}: renewed the lease, published the position{}, slots kept for {}",
        ctx.obs
            .local
            .timeline
            .map(|t| format!(" on timeline {}", t.get()))
            .unwrap_or_default(),
        ctx.obs
            .local
            .wal_position
            .map(|p| format!(" {p}"))
            .unwrap_or_default(),
        names(&members)
    );
    if let Some(standbys) = synchronous(ctx) {
        summary.push_str(&format!("; synchronous standbys now {}", names(&standbys)));
        if standbys.is_empty() && ctx.config.synchronous == SyncMode::Strict {
            summary.push_str(" (strict: writes wait until one connects)");
        }
        actions.push(Action::SetSynchronous { standbys });
    }
    if let Step::Clear(why) = switchover {
        actions.push(Action::ClearSwitchover);
        summary.push_str(&format!("; switchover request cleared: {why}"));
    }
    Decision {
        actions,
        // A renewal refused after one that succeeded: the key is gone (deleted, or the lease
        // lapsed), another member may take it now. Without a renewal in this agent's life (it
        // just restarted) the key may still be under the previous run's lease: it expires, then
        // this primary takes it again (standbys wait for a live primary's record).
        if_key_lost: if ctx.obs.leader_deadline.is_some() {
            vec![Action::StopImmediately]
        } else {
            Vec::new()
        },
        summary,
    }
}

/// The leader's PostgreSQL is down: restarting it in place loses nothing, so that is tried
/// first; past `primary_start_timeout` the key goes to a standby.
fn stopped(ctx: &Ctx) -> Decision {
    // Stopped for a switchover whose release failed: finish it rather than start again.
    if let Some(to) = handing_over(ctx) {
        return Decision::new(
            vec![Action::ReleaseLeader],
            format!("switchover to {to}: PostgreSQL is stopped, releasing the leader key"),
        );
    }
    let down_for = ctx
        .obs
        .local
        .down_since
        .map(|since| ctx.obs.now.saturating_duration_since(since))
        .unwrap_or_default();
    let limit = ctx.config.primary_start_timeout;
    if down_for >= limit {
        return Decision::new(
            vec![Action::ReleaseLeader],
            format!(
                "the leader's PostgreSQL has been down for {} (primary_start_timeout {}): \
                 releasing the leader key so a standby can take over",
                human_duration(down_for),
                human_duration(limit)
            ),
        );
    }
    Decision::new(
        vec![Action::RenewLeader, Action::Start],
        format!(
            "the leader's PostgreSQL is down: starting it again (the key goes to a standby if \
             it is still down after primary_start_timeout {})",
            human_duration(limit)
        ),
    )
}

/// The candidate of a switchover this leader is carrying out ("any standby" when the request
/// names none).
fn handing_over(ctx: &Ctx) -> Option<String> {
    let request = ctx.switchover()?;
    let from_me = request.from.as_deref().is_none_or(|from| from == ctx.me);
    let to = request.to.as_deref().unwrap_or("any standby");
    (from_me && to != ctx.me).then(|| to.to_string())
}

/// What a switchover request asks of the leader this loop.
enum Step {
    None,
    /// Hand over to this member (or "the most advanced standby").
    Demote(String),
    /// The request is done or cannot be carried out: remove it, saying why.
    Clear(String),
}

fn switchover_step(ctx: &Ctx) -> Step {
    let Some(request) = ctx.switchover() else {
        return Step::None;
    };
    if request.to.as_deref() == Some(ctx.me) {
        return Step::Clear(format!("{} already leads", ctx.me));
    }
    if let Some(from) = request.from.as_deref().filter(|from| *from != ctx.me) {
        return Step::Clear(format!("it was from {from}, which does not lead"));
    }
    match request.to.as_deref() {
        Some(to) => match ctx.member(to) {
            None => Step::Clear(format!(
                "no member named {to} is running (no member key in etcd)"
            )),
            Some(candidate) => match not_ready(ctx, candidate) {
                None => Step::Demote(to.to_string()),
                Some(why) => Step::Clear(format!("{to} is not ready: {why}")),
            },
        },
        None => {
            let mut ready: Vec<&MemberRecord> = ctx
                .others()
                .filter(|m| not_ready(ctx, m).is_none())
                .collect();
            // The most advanced, ties to the lowest name: the one the election will pick.
            ready.sort_by(|a, b| {
                b.wal_position
                    .cmp(&a.wal_position)
                    .then(a.name.cmp(&b.name))
            });
            match ready.first() {
                Some(best) => Step::Demote(best.name.clone()),
                None => Step::Clear("no standby is ready to take over".to_string()),
            }
        }
    }
}

/// Why `candidate` cannot take over from this leader now (None: it can): a running standby on
/// the leader's timeline, within `maximum_lag_on_failover`, synchronous when that is on.
fn not_ready(ctx: &Ctx, candidate: &MemberRecord) -> Option<String> {
    if candidate.role != crate::state::Role::Replica {
        return Some(format!(
            "it is not a running standby ({:?})",
            candidate.role
        ));
    }
    if candidate.timeline != ctx.obs.local.timeline {
        return Some("it is not on the leader's timeline".to_string());
    }
    let behind = match (ctx.obs.local.wal_position, candidate.wal_position) {
        (Some(leader), Some(standby)) => lag(leader, standby),
        _ => return Some("its WAL position is unknown".to_string()),
    };
    if behind > ctx.config.maximum_lag_on_failover {
        return Some(format!(
            "{} behind (maximum_lag_on_failover {})",
            human_bytes(behind),
            human_bytes(ctx.config.maximum_lag_on_failover)
        ));
    }
    if ctx.config.synchronous != SyncMode::Off
        && !current_sync(ctx).is_some_and(|set| set.contains(&candidate.name))
    {
        return Some("it is not a synchronous standby".to_string());
    }
    None
}

/// The synchronous set this leader published (None: none yet, or the previous leader's).
fn current_sync<'a>(ctx: &'a Ctx) -> Option<&'a [String]> {
    ctx.cluster
        .sync
        .as_ref()
        .filter(|sync| sync.leader == ctx.me)
        .map(|sync| sync.standbys.as_slice())
}

/// The synchronous set to write this loop, if it changes.
fn synchronous(ctx: &Ctx) -> Option<Vec<String>> {
    let current = current_sync(ctx);
    let mut connected: Vec<String> = ctx
        .obs
        .local
        .connected_standbys
        .iter()
        .filter(|name| ctx.others().any(|m| &m.name == *name))
        .cloned()
        .collect();
    connected.sort();
    connected.dedup();
    let wanted = match ctx.config.synchronous {
        // Only undo what a leader wrote; nothing to do when no set was ever published.
        SyncMode::Off => {
            return ctx
                .cluster
                .sync
                .as_ref()
                .filter(|sync| !sync.standbys.is_empty())
                .map(|_| Vec::new());
        }
        SyncMode::On => connected,
        // None connected: the previous set stays, so commits keep waiting for one of them.
        SyncMode::Strict if connected.is_empty() => {
            current.map(<[String]>::to_vec).unwrap_or_default()
        }
        SyncMode::Strict => connected,
    };
    (current != Some(wanted.as_slice())).then_some(wanted)
}
