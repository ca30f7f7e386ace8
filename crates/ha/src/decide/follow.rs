//! This module owns the policy when another member holds the leader key: follow it; a member
//! that runs as a primary stops taking writes at once and rejoins (it diverged); a stopped
//! former primary rejoins, a stopped standby starts following.

use super::{Action, Ctx, Decision, Local, human_bytes, lag};

pub(super) fn decide(ctx: &Ctx, leader: &str) -> Decision {
    let record = ctx.member(leader);
    let conninfo = record.map(|r| r.conninfo.clone());
    let rejoin = |conninfo: String| Action::Rejoin {
        leader: leader.to_string(),
        conninfo,
    };
    if ctx.local == Local::Primary {
        // Two primaries: this one's writes after the leader's promotion are on a diverged
        // history; stopping comes first whatever else is known.
        let then = if conninfo.is_some() {
            "then rejoining as its standby (rewind, else re-clone from the repository)"
        } else {
            "it rejoins as its standby once the leader publishes its member key"
        };
        let mut actions = vec![Action::StopImmediately];
        actions.extend(conninfo.map(rejoin));
        return Decision::new(
            actions,
            format!(
                "{leader} holds the leader key but this member runs as a primary: stopping \
                 PostgreSQL at once (fencing); {then}"
            ),
        );
    }
    let (Some(record), Some(conninfo)) = (record, conninfo) else {
        return Decision::wait(format!(
            "{leader} holds the leader key but has published no member key yet: waiting for \
             its conninfo"
        ));
    };
    let mine = ctx.obs.local.timeline;
    if mine.is_some() && record.timeline.is_some() && mine > record.timeline {
        // A newer timeline than the leader's: this member was promoted on a history the
        // cluster does not follow.
        let mut actions = Vec::new();
        if ctx.local == Local::Standby {
            actions.push(Action::StopImmediately);
        }
        actions.push(rejoin(conninfo));
        return Decision::new(
            actions,
            format!(
                "this member is on a newer timeline than the leader {leader}: its history \
                 diverged, rejoining (rewind, else re-clone from the repository)"
            ),
        );
    }
    match ctx.local {
        Local::Stopped if ctx.obs.local.was_primary => Decision::new(
            vec![rejoin(conninfo)],
            format!(
                "PostgreSQL is stopped and last ran as a primary: rejoining as a standby of \
                 {leader} (rewind if it diverged, else re-clone from the repository)"
            ),
        ),
        Local::Stopped => Decision::new(
            vec![Action::Follow {
                leader: leader.to_string(),
                conninfo,
            }],
            format!("PostgreSQL is stopped: starting it as a standby of {leader}"),
        ),
        _ if ctx.obs.local.following.as_deref() == Some(leader) => {
            let behind = match (record.wal_position, ctx.obs.local.wal_position) {
                (Some(theirs), Some(mine)) => {
                    format!(", {} behind", human_bytes(lag(theirs, mine)))
                }
                _ => String::new(),
            };
            let streaming = if ctx.obs.local.streaming {
                "streaming"
            } else {
                "not streaming yet"
            };
            Decision::wait(format!("standby of {leader} ({streaming}{behind})"))
        }
        _ => Decision::new(
            vec![Action::Follow {
                leader: leader.to_string(),
                conninfo,
            }],
            format!(
                "{leader} is the leader and this standby follows {}: pointing it at {leader}",
                ctx.obs.local.following.as_deref().unwrap_or("no one")
            ),
        ),
    }
}
