//! This module owns the failover policy: [`decide`] turns one [`Observation`] into the actions
//! the loop carries out, in order. Pure: no I/O, no clock of its own; tested over tables of
//! states. Its parts: this member holds the leader key (`leader`), another member does
//! (`follow`), nobody does (`election`).
//!
//! The rules, in the order they are tried (docs/design/failover.md, "The loop"; Patroni's
//! behaviour is the reference for corner cases):
//! 1. etcd did not answer: a primary keeps writing only until its fencing deadline, then stops at
//!    once; a standby never promotes.
//! 2. The cluster's system identifier (`initialize`): absent, a running primary writes it;
//!    different from this member's, nothing is done at all (never join, never promote).
//! 3. Paused: the leader renews its key, a primary without a leader takes it; nothing else.
//! 4. Then by who holds the leader key: this member, another, nobody.

mod election;
mod follow;
mod leader;

use std::time::Duration;

use lifeboat_pg::lsn::Lsn;

use crate::config::HaConfig;
use crate::state::{ClusterView, LocalState, MemberRecord, Observation, Switchover};

/// One step the loop carries out. The loop publishes this member's key after the actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `initialize` with this system identifier (create-if-absent). Fails (the rest is
    /// skipped) when the identifier stored is another: a member initialized the cluster first.
    Initialize { system_identifier: u64 },
    /// Create the leader key under this member's lease, only if absent. See
    /// [`Decision::if_key_lost`] for what follows a refusal.
    AcquireLeader,
    /// Renew the lease and confirm the leader key is still this member's (under this lease).
    RenewLeader,
    /// Delete the leader key if this member holds it.
    ReleaseLeader,
    /// Promote PostgreSQL and wait until it is out of recovery.
    Promote,
    /// Stop PostgreSQL at once (`pg_ctl stop -m immediate`): fencing.
    StopImmediately,
    /// Start PostgreSQL as it is configured.
    Start,
    /// Point this standby at `leader` (primary_conninfo with its conninfo, this member's slot)
    /// and start or reload PostgreSQL.
    Follow { leader: String, conninfo: String },
    /// This former primary diverged from `leader`: archive its own timeline's surplus WAL,
    /// `pg_rewind`, else re-clone from the repository, then follow.
    Rejoin { leader: String, conninfo: String },
    /// Publish this member's position as the leader's (`optime`).
    PublishLeaderPosition,
    /// Set `synchronous_standby_names` to these members (empty: none) and publish `sync`.
    /// With `synchronous = "strict"` an empty set means writes wait: the loop writes a name no
    /// standby has.
    SetSynchronous { standbys: Vec<String> },
    /// On the leader: keep a physical slot for each of these members, drop other `lifeboat_ha_`
    /// member slots (the loop waits a while before dropping the slot of a member whose key
    /// vanished: an agent restart must not cost its standby the WAL it still needs).
    KeepSlots { members: Vec<String> },
    /// Remove a finished or impossible `switchover` request.
    ClearSwitchover,
    /// Stop PostgreSQL with a fast shutdown (`pg_ctl stop -m fast`): a checkpoint, and the
    /// connected standbys receive all WAL before it exits. A switchover's demotion.
    StopFast,
    /// Start PostgreSQL in recovery with no upstream yet (standby.signal, restore_command from
    /// the repository): a stopped member takes part in the election as a standby, never as a
    /// primary without the key.
    StartStandby,
}

/// What one loop concluded.
///
/// The loop carries out [`actions`](Self::actions) in order and stops at the first that fails;
/// the next loop observes again. So a `Promote` after an `AcquireLeader` that failed never runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// When etcd answers that an `AcquireLeader` or `RenewLeader` of `actions` did not get or
    /// keep the key (another member holds it, or this member's lease had expired), the loop
    /// carries these out instead of the rest: for a running primary, `StopImmediately`. When
    /// etcd does not answer, the loop only stops going through `actions`: the fencing deadline
    /// covers that case.
    pub if_key_lost: Vec<Action>,
    /// One line for the log and `lifeboat ha status`, e.g. "leader, renewed the lease".
    pub summary: String,
}

impl Decision {
    fn new(actions: Vec<Action>, summary: impl Into<String>) -> Self {
        Decision {
            actions,
            if_key_lost: Vec::new(),
            summary: summary.into(),
        }
    }

    /// No action this loop.
    fn wait(summary: impl Into<String>) -> Self {
        Decision::new(Vec::new(), summary)
    }
}

/// The whole policy. See the module's documentation for the order of the rules.
pub fn decide(observation: &Observation, config: &HaConfig) -> Decision {
    let local = Local::of(&observation.local);
    let Some(cluster) = observation.cluster.as_ref() else {
        return without_etcd(observation, local);
    };
    let ctx = Ctx {
        obs: observation,
        cluster,
        config,
        me: &config.name,
        local,
    };
    let mut first = Vec::new();
    match (cluster.initialize, observation.local.system_identifier) {
        (Some(cluster_id), Some(mine)) if cluster_id != mine => {
            return Decision::wait(format!(
                "refusing to take part: this member's system identifier {mine} differs from the \
                 cluster's {cluster_id} (etcd {}/{}/initialize), so it holds another database; \
                 check [ha] cluster, or recreate this member with `lifeboat standby create`",
                config.namespace, config.cluster
            ));
        }
        (Some(_), None) => {
            return Decision::wait(
                "this member's system identifier is unknown (pg_control unreadable): not taking \
                 part until it is; create the member with `lifeboat standby create` if its data \
                 directory is missing",
            );
        }
        // Only a primary that may lead writes it: one that sees another leader stops instead.
        (None, Some(mine)) if local == Local::Primary && !led_by_another(cluster, config) => {
            first.push(Action::Initialize {
                system_identifier: mine,
            });
        }
        // Nothing to check against: the leader writes it; the other rules still hold.
        (None, _) if led_by_another(cluster, config) => {}
        (None, _) => {
            return Decision::wait(
                "the cluster is not initialized in etcd: waiting for a member running as a \
                 primary to initialize it",
            );
        }
        (Some(_), Some(_)) => {}
    }
    let mut decision = if cluster.paused {
        paused(&ctx)
    } else {
        match cluster.leader.as_ref().map(|key| key.name.as_str()) {
            Some(holder) if holder == ctx.me => leader::decide(&ctx),
            Some(holder) => follow::decide(&ctx, holder),
            None => election::decide(&ctx),
        }
    };
    if !first.is_empty() {
        first.append(&mut decision.actions);
        decision.actions = first;
        decision.summary = format!("initializing the cluster in etcd; {}", decision.summary);
    }
    decision
}

/// Another member holds the leader key.
fn led_by_another(cluster: &ClusterView, config: &HaConfig) -> bool {
    cluster
        .leader
        .as_ref()
        .is_some_and(|key| key.name != config.name)
}

/// etcd did not answer: fencing decides. Only a leader whose deadline has not passed keeps
/// writing (and tries to renew); nobody promotes.
fn without_etcd(obs: &Observation, local: Local) -> Decision {
    match (local, obs.leader_deadline) {
        (Local::Primary, Some(deadline)) if obs.now < deadline => Decision {
            actions: vec![Action::RenewLeader],
            if_key_lost: vec![Action::StopImmediately],
            summary: format!(
                "etcd did not answer: still the leader for {} (the fencing deadline), trying to \
                 renew the lease",
                human_duration(deadline.saturating_duration_since(obs.now))
            ),
        },
        (Local::Primary, Some(_)) => Decision::new(
            vec![Action::StopImmediately],
            "etcd did not answer and the leader lease was not renewed before the fencing \
             deadline: stopping PostgreSQL at once so that no two primaries take writes",
        ),
        (Local::Primary, None) => Decision::new(
            vec![Action::StopImmediately],
            "etcd did not answer and this member runs as a primary without holding the leader \
             key: stopping PostgreSQL at once (another member may hold the key)",
        ),
        (Local::Standby, _) => {
            Decision::wait("etcd did not answer: staying a standby (never promoting without etcd)")
        }
        (Local::Stopped, _) => {
            Decision::wait("etcd did not answer: PostgreSQL stays stopped until etcd answers")
        }
    }
}

/// Maintenance: no promotion, no stop, no follow; the leader keeps its key so that resuming
/// changes nothing.
fn paused(ctx: &Ctx) -> Decision {
    let holder = ctx.cluster.leader.as_ref().map(|key| key.name.as_str());
    match holder {
        Some(holder) if holder == ctx.me => Decision::new(
            vec![Action::RenewLeader],
            "paused (maintenance): renewed the leader key; no automatic action",
        ),
        None if ctx.local == Local::Primary => Decision::new(
            vec![Action::AcquireLeader],
            "paused (maintenance): no leader, this running primary takes the key; no other \
             action while paused",
        ),
        _ => Decision::wait("paused (maintenance): no automatic action"),
    }
}

/// This member's PostgreSQL, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// Running, out of recovery.
    Primary,
    /// Running, in recovery.
    Standby,
    Stopped,
}

impl Local {
    fn of(local: &LocalState) -> Self {
        match (local.running, local.in_recovery) {
            (false, _) => Local::Stopped,
            (true, true) => Local::Standby,
            (true, false) => Local::Primary,
        }
    }
}

/// One observation with the etcd view present, shared by the parts of the policy.
struct Ctx<'a> {
    obs: &'a Observation,
    cluster: &'a ClusterView,
    config: &'a HaConfig,
    me: &'a str,
    local: Local,
}

impl Ctx<'_> {
    fn member(&self, name: &str) -> Option<&MemberRecord> {
        self.cluster.members.iter().find(|m| m.name == name)
    }

    /// The other members whose keys are alive (their agents renew their leases), leaving out
    /// any that holds another database: it can neither be followed, nor compete, nor block.
    fn others(&self) -> impl Iterator<Item = &MemberRecord> {
        self.cluster.members.iter().filter(|m| {
            m.name != self.me
                && self
                    .cluster
                    .initialize
                    .is_none_or(|id| id == m.system_identifier)
        })
    }

    /// This member holds (or held) the leader key and its fencing deadline has passed.
    fn past_deadline(&self) -> bool {
        self.obs
            .leader_deadline
            .is_some_and(|deadline| self.obs.now >= deadline)
    }

    fn switchover(&self) -> Option<&Switchover> {
        self.cluster.switchover.as_ref()
    }

    /// The synchronous standbys the last leader published, when synchronous replication is on
    /// and it named any: a standby outside this set may lack acknowledged commits.
    fn sync_set(&self) -> Option<&[String]> {
        if self.config.synchronous == crate::config::SyncMode::Off {
            return None;
        }
        self.cluster
            .sync
            .as_ref()
            .map(|sync| sync.standbys.as_slice())
            .filter(|standbys| !standbys.is_empty())
    }
}

/// Bytes the way operators read them: "512 B", "64.0 KiB", "4.2 MiB".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Whole seconds ("9s", "1m 30s"): the loop runs every few seconds, finer is noise.
fn human_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// How far `position` is behind `ahead` (0 when it is not behind).
fn lag(ahead: Lsn, position: Lsn) -> u64 {
    ahead.0.saturating_sub(position.0)
}

/// "a, b" or "none".
fn names(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests;
