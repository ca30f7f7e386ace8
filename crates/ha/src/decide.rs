//! This module owns the failover policy: [`decide`] turns one [`Observation`] into the actions
//! the loop carries out, in order. Pure: no I/O, no clock of its own; tested over tables of
//! states.

use crate::config::HaConfig;
use crate::state::Observation;

/// One step the loop carries out. The loop publishes this member's key after the actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `initialize` with this system identifier (create-if-absent).
    Initialize { system_identifier: u64 },
    /// Create the leader key under this member's lease, only if absent.
    AcquireLeader,
    /// Renew the lease and confirm the leader key is still this member's.
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
    SetSynchronous { standbys: Vec<String> },
    /// On the leader: keep a physical slot for each of these members, drop other `lifeboat_`
    /// member slots.
    KeepSlots { members: Vec<String> },
    /// Remove a finished or impossible `switchover` request.
    ClearSwitchover,
}

/// What one loop concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One line for the log and `lifeboat ha status`, e.g. "leader, renewed the lease".
    pub summary: String,
}

/// The whole policy. See docs/design/failover.md, "The loop".
pub fn decide(observation: &Observation, config: &HaConfig) -> Decision {
    let _ = (observation, config);
    Decision {
        actions: Vec::new(),
        summary: "not implemented".to_string(),
    }
}
