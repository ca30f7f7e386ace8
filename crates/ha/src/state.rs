//! This module owns what one loop of the failover agent sees: this member's PostgreSQL
//! ([`LocalState`]), the cluster's keys in etcd ([`ClusterView`], with each member's published
//! [`MemberRecord`]) and the clock ([`Observation`]); and what the role endpoints answer from
//! ([`RoleView`]). Plain data: the policy in [`crate::decide`] is a pure function of it.

use std::time::Instant;

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use serde::{Deserialize, Serialize};

/// A member's role as it publishes it in its member key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// PostgreSQL runs out of recovery.
    Primary,
    /// PostgreSQL runs in recovery (streaming or restoring from the repository).
    Replica,
    /// PostgreSQL is not running (stopped, crashed, fenced).
    Stopped,
    /// The agent is rewinding or re-cloning this member to follow the leader.
    Rejoining,
}

/// `members/<name>` in etcd, as JSON, bound to the member's lease: it disappears when the
/// member's agent stops renewing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub name: String,
    pub role: Role,
    /// Timeline PostgreSQL runs on (None when stopped and unknown).
    pub timeline: Option<TimelineId>,
    /// Primary: its flushed WAL position; standby: the larger of received and replayed.
    /// The promotion rule compares these.
    pub wal_position: Option<Lsn>,
    /// Standby: the last replayed position (for lag shown to users).
    pub replayed: Option<Lsn>,
    /// How others reach this member's PostgreSQL (libpq conninfo, without password).
    pub conninfo: String,
    /// This member's agent URL.
    pub api_url: String,
    /// pg_control's database system identifier.
    pub system_identifier: u64,
    /// Lifeboat's version, e.g. "0.1.0".
    pub version: String,
}

/// The leader key: who holds it, under which lease, at which revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub lease: i64,
    pub mod_revision: i64,
}

/// `sync`: the synchronous standbys the leader wrote into `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub leader: String,
    pub standbys: Vec<String>,
}

/// `switchover`: a planned switchover (`from` set) or a manual failover (`from` None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub from: Option<String>,
    /// The member to promote; None: the healthiest.
    pub to: Option<String>,
}

/// The cluster's keys as one range read returned them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// `initialize`: the cluster's system identifier, written once by the first member.
    pub initialize: Option<u64>,
    pub leader: Option<LeaderKey>,
    /// `optime`: the last leader's last published WAL position (no lease: it outlives the
    /// leader, so standbys can tell how far behind it they are after it died).
    pub last_leader_position: Option<Lsn>,
    pub members: Vec<MemberRecord>,
    /// `pause` present: maintenance, no automatic action.
    pub paused: bool,
    pub sync: Option<SyncState>,
    pub switchover: Option<Switchover>,
}

/// This member's PostgreSQL as the loop observed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalState {
    /// PostgreSQL answered a query within `retry_timeout`.
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: Option<TimelineId>,
    /// From pg_control (known even when stopped).
    pub system_identifier: Option<u64>,
    /// As in [`MemberRecord::wal_position`].
    pub wal_position: Option<Lsn>,
    pub replayed: Option<Lsn>,
    /// A standby whose WAL receiver is streaming.
    pub streaming: bool,
    /// The member this standby's `primary_conninfo` points at, as the agent last wrote it.
    pub following: Option<String>,
    /// Primary: `application_name`s of the standbys connected and streaming.
    pub connected_standbys: Vec<String>,
    /// pg_control says the server last ran as a primary (state "in production", or "shut down"
    /// rather than "shut down in recovery"); known even when stopped. A stopped former primary
    /// must rejoin (it may have diverged), a stopped standby may just follow.
    pub was_primary: bool,
    /// When the loop first saw PostgreSQL not running (None while it runs): how long a leader's
    /// PostgreSQL has been down, against `primary_start_timeout`.
    pub down_since: Option<Instant>,
}

/// One loop's observation: everything [`crate::decide::decide`] looks at.
#[derive(Debug, Clone)]
pub struct Observation {
    pub local: LocalState,
    /// None: etcd did not answer within `retry_timeout` (no quorum, unreachable).
    pub cluster: Option<ClusterView>,
    pub now: Instant,
    /// While this member holds the leader key: last successful renewal (the instant the
    /// renewal was sent) + ttl − retry_timeout. Past it, the member must not take writes.
    pub leader_deadline: Option<Instant>,
}

/// What the role endpoints answer from: the last loop's conclusion, never a fresh query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleView {
    pub role: Role,
    /// With `[ha]`: whether this member holds the leader key. None without `[ha]`.
    pub holds_leader: Option<bool>,
    /// With `[ha]`, on the leader: from this instant on `/primary` answers 503 whatever
    /// PostgreSQL does (fencing).
    pub leader_deadline: Option<Instant>,
    pub timeline: Option<TimelineId>,
    /// Standby: bytes behind the leader's last published position (None: unknown).
    pub lag_bytes: Option<u64>,
    pub streaming: bool,
    pub paused: bool,
    pub observed_at: Instant,
}
