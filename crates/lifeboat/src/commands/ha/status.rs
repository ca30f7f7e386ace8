//! `lifeboat ha status`: the cluster as etcd holds it, from one read of its keys and one of its
//! history, as a table or JSON. The lag shown is how far each member's published WAL position
//! is behind the leader's (the members publish every loop, so it is as fresh as `loop_wait`).

use lifeboat_ha::dcs::HistoryEntry;
use lifeboat_ha::state::{ClusterView, MemberRecord, Role, Switchover, SyncState};
use lifeboat_pg::lsn::Lsn;
use serde::Serialize;

use super::{connect, dcs_failure};
use crate::cli::HaStatusArgs;
use crate::commands::context::{human_bytes, print_json};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

/// What `ha status --json` prints.
#[derive(Debug, Serialize)]
pub(super) struct Status {
    pub cluster: String,
    pub namespace: String,
    /// The member holding the leader key (None: no leader).
    pub leader: Option<String>,
    pub paused: bool,
    /// The leader's WAL position the lags are measured from: its record's, else the last one
    /// published (`optime`).
    pub leader_position: Option<Lsn>,
    pub members: Vec<MemberStatus>,
    pub synchronous: Option<SyncState>,
    pub switchover: Option<Switchover>,
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Serialize)]
pub(super) struct MemberStatus {
    pub name: String,
    pub role: Role,
    pub leader: bool,
    pub timeline: Option<u32>,
    pub wal_position: Option<Lsn>,
    pub replayed: Option<Lsn>,
    /// Bytes the member's WAL position is behind the leader's (0 on the leader).
    pub lag_bytes: Option<u64>,
    pub api_url: String,
    pub version: String,
}

impl Status {
    pub(super) fn of(
        view: &ClusterView,
        history: Vec<HistoryEntry>,
        namespace: &str,
        cluster: &str,
    ) -> Self {
        let leader = view.leader.as_ref().map(|key| key.name.clone());
        let leader_record = leader
            .as_deref()
            .and_then(|name| view.members.iter().find(|m| m.name == name));
        let leader_position = leader_record
            .and_then(|m| m.wal_position)
            .or(view.last_leader_position);
        let members = view
            .members
            .iter()
            .map(|m| member(m, leader.as_deref(), leader_position))
            .collect();
        Status {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            leader,
            paused: view.paused,
            leader_position,
            members,
            synchronous: view.sync.clone(),
            switchover: view.switchover.clone(),
            history,
        }
    }
}

fn member(m: &MemberRecord, leader: Option<&str>, leader_position: Option<Lsn>) -> MemberStatus {
    let is_leader = leader == Some(m.name.as_str());
    let lag_bytes = if is_leader {
        Some(0)
    } else {
        leader_position
            .zip(m.wal_position)
            .map(|(ahead, mine)| ahead.0.saturating_sub(mine.0))
    };
    MemberStatus {
        name: m.name.clone(),
        role: m.role,
        leader: is_leader,
        timeline: m.timeline.map(|t| t.get()),
        wal_position: m.wal_position,
        replayed: m.replayed,
        lag_bytes,
        api_url: m.api_url.clone(),
        version: m.version.clone(),
    }
}

pub async fn status(resolved: &Resolved, args: &HaStatusArgs) -> Result<Exit, Failure> {
    let (dcs, config) = connect(resolved).await?;
    let view = dcs.read().await.map_err(|e| dcs_failure(e, &config))?;
    // A damaged history must not hide the state that matters now.
    let history = dcs.history().await.unwrap_or_else(|e| {
        tracing::warn!("the failover history is left out: {e}");
        Vec::new()
    });
    let status = Status::of(&view, history, &config.namespace, &config.cluster);
    if args.json {
        print_json(&status)?;
    } else {
        print_table(&status);
    }
    Ok(Exit::Success)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Stopped => "stopped",
        Role::Rejoining => "rejoining",
    }
}

fn print_table(s: &Status) {
    let leader = s
        .leader
        .as_deref()
        .unwrap_or("none (no member holds the key)");
    outln!(
        "cluster {} ({}/{}/), leader {leader}{}",
        s.cluster,
        s.namespace,
        s.cluster,
        if s.paused {
            ", PAUSED: no automatic action (lifeboat ha resume)"
        } else {
            ""
        }
    );
    if s.members.is_empty() {
        outln!("no member publishes itself: are the agents (lifeboat serve with [ha]) running?");
    } else {
        outln!(
            "{:<12} {:<10} {:>3} {:>14} {:>12} {}",
            "member",
            "role",
            "tl",
            "wal position",
            "lag",
            "api"
        );
        for m in &s.members {
            let name = if m.leader {
                format!("{} *", m.name)
            } else {
                m.name.clone()
            };
            outln!(
                "{:<12} {:<10} {:>3} {:>14} {:>12} {}",
                name,
                role_name(m.role),
                m.timeline.map_or("-".to_string(), |t| t.to_string()),
                m.wal_position.map_or("-".to_string(), |p| p.to_string()),
                m.lag_bytes.map_or("-".to_string(), human_bytes),
                m.api_url
            );
        }
    }
    if let Some(sync) = &s.synchronous {
        let standbys = if sync.standbys.is_empty() {
            "none".to_string()
        } else {
            sync.standbys.join(", ")
        };
        outln!("synchronous standbys (set by {}): {standbys}", sync.leader);
    }
    if let Some(request) = &s.switchover {
        outln!(
            "pending {}: from {} to {}",
            if request.from.is_some() {
                "switchover"
            } else {
                "manual failover"
            },
            request.from.as_deref().unwrap_or("(no leader)"),
            request.to.as_deref().unwrap_or("the best standby")
        );
    }
    if s.history.is_empty() {
        outln!("no failover yet");
    } else {
        outln!("failovers (newest last):");
        for h in &s.history {
            outln!(
                "  {} {} -> {} timeline {} at {}",
                time_text(h.time),
                h.from.as_deref().unwrap_or("?"),
                h.to,
                h.timeline.get(),
                h.lsn
            );
        }
    }
}

/// Seconds since the epoch as UTC, e.g. "2026-12-07 06:12:14Z".
fn time_text(seconds: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| seconds.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lifeboat_ha::state::LeaderKey;

    fn record(name: &str, role: Role, position: Option<u64>) -> MemberRecord {
        MemberRecord {
            name: name.to_string(),
            role,
            timeline: None,
            wal_position: position.map(Lsn),
            replayed: None,
            conninfo: String::new(),
            api_url: format!("http://{name}:7433"),
            system_identifier: 7,
            version: "0.1.0".to_string(),
        }
    }

    #[test]
    fn lag_is_measured_from_the_leaders_record_else_from_the_last_published_position() {
        let mut view = ClusterView {
            leader: Some(LeaderKey {
                name: "a".to_string(),
                lease: 1,
                mod_revision: 1,
            }),
            last_leader_position: Some(Lsn(100)),
            members: vec![
                record("a", Role::Primary, Some(5000)),
                record("b", Role::Replica, Some(4000)),
                record("c", Role::Stopped, None),
            ],
            ..ClusterView::default()
        };
        let status = Status::of(&view, Vec::new(), "/lifeboat", "main");
        let lags: Vec<Option<u64>> = status.members.iter().map(|m| m.lag_bytes).collect();
        assert_eq!(lags, vec![Some(0), Some(1000), None]);
        assert_eq!(status.leader_position, Some(Lsn(5000)));

        // No leader: from `optime`, which outlives it; a member ahead of it is 0 behind.
        view.leader = None;
        view.members.remove(0);
        view.members[0].wal_position = Some(Lsn(60));
        view.members.push(record("d", Role::Replica, Some(200)));
        let status = Status::of(&view, Vec::new(), "/lifeboat", "main");
        let lags: Vec<Option<u64>> = status.members.iter().map(|m| m.lag_bytes).collect();
        assert_eq!(lags, vec![Some(40), None, Some(0)]);
        assert!(status.members.iter().all(|m| !m.leader));
    }
}
