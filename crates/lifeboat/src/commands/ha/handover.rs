//! `lifeboat switchover` and `lifeboat failover`: check the request against the cluster as etcd
//! holds it (refusing before anything is written), write the `switchover` key, then wait until
//! the named member holds the leader key and publishes itself primary. The agents do the work:
//! the leader stops (fast shutdown) and releases the key, the candidate takes it and promotes,
//! the old leader rejoins as a standby (`lifeboat_ha::decide`). A request that did not complete
//! in time is withdrawn, so that it cannot fire later by surprise.

use std::time::{Duration, Instant};

use lifeboat_ha::config::HaConfig;
use lifeboat_ha::dcs::Dcs;
use lifeboat_ha::state::{ClusterView, MemberRecord, Role, Switchover};

use super::{connect, dcs_failure, dcs_write_failure};
use crate::cli::{FailoverArgs, SwitchoverArgs};
use crate::commands::context::human_bytes;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

/// How often the wait reads etcd: fine enough to time an outage of a few seconds.
const POLL: Duration = Duration::from_millis(250);

pub async fn switchover(resolved: &Resolved, args: &SwitchoverArgs) -> Result<Exit, Failure> {
    let (dcs, config) = connect(resolved).await?;
    let view = dcs.read().await.map_err(|e| dcs_failure(e, &config))?;
    refuse_if_paused(&view, "switchover")?;
    let Some(leader) = view.leader.as_ref().map(|key| key.name.clone()) else {
        return Err(refused(
            "no member holds the leader key, so there is no leader to hand over from",
            format!(
                "to promote {} now, run `lifeboat failover --to {}`; `lifeboat ha status` shows \
                 the members",
                args.to, args.to
            ),
        ));
    };
    if let Some(from) = args.from.as_deref().filter(|from| *from != leader) {
        return Err(refused(
            format!("--from {from}, but {leader} leads"),
            "check `lifeboat ha status`, then give --from the current leader (or leave it out)",
        ));
    }
    if args.to == leader {
        return Err(refused(
            format!("{leader} already leads"),
            "name a standby with --to (see `lifeboat ha status`)",
        ));
    }
    let candidate = running_standby(&view, &args.to)?;
    if let Some(leader_record) = view.members.iter().find(|m| m.name == leader) {
        if candidate.timeline != leader_record.timeline {
            return Err(refused(
                format!(
                    "{} is on timeline {} and the leader {leader} on {}: it does not follow it",
                    args.to,
                    timeline_text(candidate),
                    timeline_text(leader_record)
                ),
                "wait until it follows the leader (lifeboat ha status), or pick another standby",
            ));
        }
        if let (Some(ahead), Some(mine)) = (leader_record.wal_position, candidate.wal_position) {
            let behind = ahead.0.saturating_sub(mine.0);
            if behind > config.maximum_lag_on_failover {
                return Err(refused(
                    format!(
                        "{} is {} behind the leader (maximum_lag_on_failover {}): the leader \
                         would refuse to hand over",
                        args.to,
                        human_bytes(behind),
                        human_bytes(config.maximum_lag_on_failover)
                    ),
                    "wait until it has caught up (lifeboat ha status shows the lag), then run \
                     the switchover again",
                ));
            }
        }
    }
    let request = Switchover {
        from: Some(leader.clone()),
        to: Some(args.to.clone()),
    };
    write_request(&dcs, &config, &view, &request).await?;
    outln!(
        "switchover from {leader} to {} requested; waiting up to {}s for {} to lead",
        args.to,
        args.wait,
        args.to
    );
    wait_for(&dcs, &config, Some(&leader), &args.to, args.wait).await
}

pub async fn failover(resolved: &Resolved, args: &FailoverArgs) -> Result<Exit, Failure> {
    let (dcs, config) = connect(resolved).await?;
    let view = dcs.read().await.map_err(|e| dcs_failure(e, &config))?;
    if let Some(leader) = view.leader.as_ref() {
        return Err(refused(
            format!(
                "{} holds the leader key: a manual failover is only for a cluster without a \
                 leader",
                leader.name
            ),
            format!(
                "to move the leader to {} without losing a row, run `lifeboat switchover --to {}`",
                args.to, args.to
            ),
        ));
    }
    refuse_if_paused(&view, "failover")?;
    let candidate = running_standby(&view, &args.to)?;
    if let (Some(last), Some(mine)) = (view.last_leader_position, candidate.wal_position) {
        let behind = last.0.saturating_sub(mine.0);
        if behind > 0 {
            tracing::warn!(
                "{} is {} behind the last leader's published position {last}: what it lacks \
                 will not be on the new timeline (when the old leader rejoins, its surplus WAL \
                 is archived on its own timeline before it is rewound)",
                args.to,
                human_bytes(behind)
            );
        }
    }
    let request = Switchover {
        from: None,
        to: Some(args.to.clone()),
    };
    write_request(&dcs, &config, &view, &request).await?;
    outln!(
        "failover to {} requested; waiting up to {}s for it to lead",
        args.to,
        args.wait
    );
    wait_for(&dcs, &config, None, &args.to, args.wait).await
}

fn refused(message: impl Into<String>, hint: impl Into<String>) -> Failure {
    Failure::new(
        Exit::Refused,
        format!("{}; nothing was written", message.into()),
        Some(hint.into()),
    )
}

fn refuse_if_paused(view: &ClusterView, what: &str) -> Result<(), Failure> {
    if view.paused {
        return Err(refused(
            format!("the cluster is paused: the agents would not carry out a {what}"),
            "run `lifeboat ha resume` first",
        ));
    }
    Ok(())
}

/// The member named `name`, which must publish itself as a running standby.
fn running_standby<'a>(view: &'a ClusterView, name: &str) -> Result<&'a MemberRecord, Failure> {
    let Some(member) = view.members.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        return Err(refused(
            format!(
                "no member named {name} publishes itself in etcd (members: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
            "check the name (lifeboat ha status) and that its agent (lifeboat serve) runs",
        ));
    };
    if member.role != Role::Replica {
        return Err(refused(
            format!(
                "{name} is not a running standby (it publishes role {:?})",
                member.role
            ),
            "pick a running standby (lifeboat ha status), or wait until this one runs",
        ));
    }
    Ok(member)
}

fn timeline_text(member: &MemberRecord) -> String {
    member
        .timeline
        .map_or("unknown".to_string(), |t| t.get().to_string())
}

async fn write_request(
    dcs: &Dcs,
    config: &HaConfig,
    view: &ClusterView,
    request: &Switchover,
) -> Result<(), Failure> {
    if let Some(pending) = &view.switchover {
        tracing::warn!(
            "replacing a pending request (from {:?} to {:?})",
            pending.from,
            pending.to
        );
    }
    dcs.set_switchover(Some(request))
        .await
        .map_err(|e| dcs_write_failure(e, config))
}

/// Waits until `to` holds the leader key and publishes itself primary. `old`: the leader handing
/// over (switchover), None for a failover. Prints how long etcd saw no primary.
async fn wait_for(
    dcs: &Dcs,
    config: &HaConfig,
    old: Option<&str>,
    to: &str,
    wait_seconds: u64,
) -> Result<Exit, Failure> {
    let start = Instant::now();
    let wait = Duration::from_secs(wait_seconds);
    // When a read first found no leader running as a primary.
    let mut no_primary_since: Option<Duration> = None;
    let mut last_seen;
    loop {
        match dcs.read().await {
            Ok(view) => {
                let leader = view.leader.as_ref().map(|key| key.name.as_str());
                let role =
                    |name: &str| view.members.iter().find(|m| m.name == name).map(|m| m.role);
                let leader_writes = leader.is_some_and(|l| role(l) == Some(Role::Primary));
                if leader == Some(to) && leader_writes {
                    report_done(&view, old, to, start.elapsed(), no_primary_since, config);
                    return Ok(Exit::Success);
                }
                if !leader_writes && no_primary_since.is_none() {
                    no_primary_since = Some(start.elapsed());
                }
                last_seen = format!(
                    "leader {}, {to} is {}",
                    leader.unwrap_or("none"),
                    role(to).map_or("not publishing itself".to_string(), |r| format!("{r:?}"))
                );
                if view.switchover.is_none() && leader.is_some_and(|l| l != to) {
                    return Err(Failure::new(
                        Exit::Failed,
                        format!(
                            "{} withdrew the request without handing over to {to} ({last_seen})",
                            leader.unwrap_or("the leader")
                        ),
                        Some(format!(
                            "the leader's agent log says why ({to} not ready, e.g. lagging or not \
                             a synchronous standby); `lifeboat ha status` shows the members"
                        )),
                    ));
                }
            }
            Err(e) => last_seen = e.to_string(),
        }
        if start.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let withdrawn = match dcs.set_switchover(None).await {
        Ok(()) => "the request was withdrawn".to_string(),
        Err(e) => format!("withdrawing the request failed too ({e})"),
    };
    Err(Failure::new(
        Exit::Failed,
        format!("{to} did not take over within {wait_seconds}s ({last_seen}); {withdrawn}"),
        Some(
            "the agents' logs (lifeboat serve) say what they did; `lifeboat ha status` shows \
             where the cluster stands"
                .to_string(),
        ),
    ))
}

fn report_done(
    view: &ClusterView,
    old: Option<&str>,
    to: &str,
    took: Duration,
    no_primary_since: Option<Duration>,
    config: &HaConfig,
) {
    let timeline = view
        .members
        .iter()
        .find(|m| m.name == to)
        .map_or("unknown".to_string(), timeline_text);
    outln!(
        "{to} leads (primary on timeline {timeline}), {:.1}s after the request",
        took.as_secs_f64()
    );
    // A failover starts without a primary: only a switchover has an outage of its own.
    let Some(old) = old else { return };
    match no_primary_since {
        Some(since) => outln!(
            "no primary as seen from etcd: {:.1}s, from {old} stepping down to {to} publishing \
             itself primary (members publish once a loop, every {}s: to within that)",
            took.saturating_sub(since).as_secs_f64(),
            config.loop_wait.as_secs()
        ),
        None => outln!("no outage seen from etcd"),
    }
    outln!("{old} rejoins as a standby of {to} (lifeboat ha status shows when it streams)");
}
