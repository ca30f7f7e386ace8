//! Tables of observed states and the decisions the policy must take, one module per part of the
//! policy. A case names the situation, the actions expected in order, and words the summary must
//! contain (what an operator reads).

#![allow(clippy::unwrap_used)]

mod election;
mod etcd_down;
mod follow;
mod identity;
mod invariants;
mod leader;
mod switchover;
mod sync;

use std::time::{Duration, Instant};

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;

use super::{Action, Decision, decide};
use crate::config::{HaConfig, SyncMode};
use crate::state::{
    ClusterView, LeaderKey, LocalState, MemberRecord, Observation, Role, Switchover, SyncState,
};

const SYSID: u64 = 7_311_234_567_890;
const MIB: u64 = 1 << 20;

fn tl(n: u32) -> Option<TimelineId> {
    TimelineId::new(n)
}

fn config(name: &str) -> HaConfig {
    HaConfig {
        etcd: vec!["http://127.0.0.1:2379".to_string()],
        namespace: "/lifeboat".to_string(),
        cluster: "main".to_string(),
        name: name.to_string(),
        conninfo: format!("host={name}"),
        api_url: format!("http://{name}:7433"),
        ttl: Duration::from_secs(30),
        loop_wait: Duration::from_secs(10),
        retry_timeout: Duration::from_secs(10),
        maximum_lag_on_failover: MIB,
        synchronous: SyncMode::Off,
        primary_start_timeout: Duration::from_secs(300),
    }
}

/// This member's PostgreSQL running as a primary on `timeline` at `position`.
fn primary(timeline: u32, position: u64) -> LocalState {
    LocalState {
        running: true,
        in_recovery: false,
        timeline: tl(timeline),
        system_identifier: Some(SYSID),
        wal_position: Some(Lsn(position)),
        was_primary: true,
        ..LocalState::default()
    }
}

/// Running in recovery, following `following`.
fn standby(timeline: u32, position: u64, following: Option<&str>) -> LocalState {
    LocalState {
        running: true,
        in_recovery: true,
        timeline: tl(timeline),
        system_identifier: Some(SYSID),
        wal_position: Some(Lsn(position)),
        replayed: Some(Lsn(position)),
        streaming: following.is_some(),
        following: following.map(str::to_string),
        ..LocalState::default()
    }
}

fn stopped(was_primary: bool) -> LocalState {
    LocalState {
        running: false,
        timeline: tl(1),
        system_identifier: Some(SYSID),
        was_primary,
        ..LocalState::default()
    }
}

fn record(name: &str, role: Role, timeline: u32, position: u64) -> MemberRecord {
    MemberRecord {
        name: name.to_string(),
        role,
        timeline: tl(timeline),
        wal_position: Some(Lsn(position)),
        replayed: None,
        conninfo: format!("host={name}"),
        api_url: format!("http://{name}:7433"),
        system_identifier: SYSID,
        version: "0.1.0".to_string(),
    }
}

fn follow(leader: &str) -> Action {
    Action::Follow {
        leader: leader.to_string(),
        conninfo: format!("host={leader}"),
    }
}

fn rejoin(leader: &str) -> Action {
    Action::Rejoin {
        leader: leader.to_string(),
        conninfo: format!("host={leader}"),
    }
}

fn keep_slots(members: &[&str]) -> Action {
    Action::KeepSlots {
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn set_sync(standbys: &[&str]) -> Action {
    Action::SetSynchronous {
        standbys: standbys.iter().map(|m| m.to_string()).collect(),
    }
}

/// One situation as member `me` observes it. The cluster starts initialized with [`SYSID`],
/// with no leader, no member keys and etcd answering.
#[derive(Clone)]
struct World {
    obs: Observation,
    config: HaConfig,
}

fn world(me: &str, local: LocalState) -> World {
    let now = Instant::now();
    World {
        obs: Observation {
            local,
            cluster: Some(ClusterView {
                initialize: Some(SYSID),
                ..ClusterView::default()
            }),
            now,
            leader_deadline: None,
        },
        config: config(me),
    }
}

impl World {
    fn cluster(&mut self) -> &mut ClusterView {
        self.obs.cluster.get_or_insert_with(ClusterView::default)
    }

    fn leader(mut self, name: &str) -> Self {
        self.cluster().leader = Some(LeaderKey {
            name: name.to_string(),
            lease: 1,
            mod_revision: 1,
        });
        self
    }

    fn member(mut self, record: MemberRecord) -> Self {
        self.cluster().members.push(record);
        self
    }

    fn last_leader(mut self, position: u64) -> Self {
        self.cluster().last_leader_position = Some(Lsn(position));
        self
    }

    fn initialize(mut self, id: Option<u64>) -> Self {
        self.cluster().initialize = id;
        self
    }

    fn paused(mut self) -> Self {
        self.cluster().paused = true;
        self
    }

    fn sync(mut self, leader: &str, standbys: &[&str]) -> Self {
        self.cluster().sync = Some(SyncState {
            leader: leader.to_string(),
            standbys: standbys.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    fn switchover(mut self, from: Option<&str>, to: Option<&str>) -> Self {
        self.cluster().switchover = Some(Switchover {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        });
        self
    }

    fn etcd_down(mut self) -> Self {
        self.obs.cluster = None;
        self
    }

    /// The fencing deadline `secs` from now (negative: passed).
    fn deadline_in(mut self, secs: i64) -> Self {
        let now = self.obs.now;
        let delta = Duration::from_secs(secs.unsigned_abs());
        self.obs.leader_deadline = Some(if secs >= 0 {
            now + delta
        } else {
            now.checked_sub(delta).unwrap()
        });
        self
    }

    /// PostgreSQL was first seen down `secs` ago.
    fn down_for(mut self, secs: u64) -> Self {
        let since = self.obs.now.checked_sub(Duration::from_secs(secs)).unwrap();
        self.obs.local.down_since = Some(since);
        self
    }

    fn connected(mut self, standbys: &[&str]) -> Self {
        self.obs.local.connected_standbys = standbys.iter().map(|s| s.to_string()).collect();
        self
    }

    fn mode(mut self, mode: SyncMode) -> Self {
        self.config.synchronous = mode;
        self
    }

    fn decide(&self) -> Decision {
        decide(&self.obs, &self.config)
    }
}

/// (situation, world, expected actions, words the summary must contain)
type Case = (&'static str, World, Vec<Action>, &'static [&'static str]);

fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for (situation, world, expected, says) in cases {
        let decision = world.decide();
        if decision.actions != expected {
            failures.push(format!(
                "{situation}:\n  expected {expected:?}\n  got      {:?}\n  summary: {}",
                decision.actions, decision.summary
            ));
            continue;
        }
        for word in says {
            if !decision.summary.contains(word) {
                failures.push(format!(
                    "{situation}: summary lacks {word:?}: {}",
                    decision.summary
                ));
            }
        }
        // A promotion never happens without the key being taken or held first.
        if let Some(at) = decision.actions.iter().position(|a| *a == Action::Promote) {
            let before = &decision.actions[..at];
            assert!(
                before.contains(&Action::AcquireLeader) || before.contains(&Action::RenewLeader),
                "{situation}: Promote without the key: {:?}",
                decision.actions
            );
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
