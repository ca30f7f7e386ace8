//! This module owns the `[ha]` section of the configuration file: which etcd, which cluster, this
//! member's name and addresses, and the timings whose relation makes fencing safe
//! (`loop_wait + 2 * retry_timeout <= ttl`).

use std::time::Duration;

use serde::Deserialize;

/// How commits wait for standbys (`synchronous` in `[ha]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication; a failover may lose up to `maximum_lag_on_failover`.
    #[default]
    Off,
    /// `synchronous_standby_names` lists the standbys (and the WAL receiver); when none is
    /// connected, writes continue unprotected.
    On,
    /// As `on`, but writes wait (are refused) while no synchronous standby is connected.
    Strict,
}

/// `[ha]`, as validated by [`HaConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// etcd client URLs, e.g. `http://10.0.0.1:2379`.
    pub etcd: Vec<String>,
    /// Key prefix in etcd; keys are `<namespace>/<cluster>/...`. Default `/lifeboat`.
    pub namespace: String,
    /// The cluster's name, the same on every member.
    pub cluster: String,
    /// This member's name, unique in the cluster (used for its slot: `lifeboat_<name>`).
    pub name: String,
    /// How the other members and the tools reach this member's PostgreSQL (a libpq conninfo,
    /// e.g. `host=10.0.0.2 port=5432 user=replicator`), used in their `primary_conninfo`.
    pub conninfo: String,
    /// This member's agent (`lifeboat serve`) URL, for `lifeboat ha status` and switchover.
    pub api_url: String,
    /// Lifetime of the leader's lease. Default 30 s.
    pub ttl: Duration,
    /// Time between two loops. Default 10 s.
    pub loop_wait: Duration,
    /// Deadline of every etcd call and PostgreSQL query of the loop. Default 10 s.
    pub retry_timeout: Duration,
    /// A standby further behind the last leader's position than this may not be promoted.
    /// Default 1 MiB.
    pub maximum_lag_on_failover: u64,
    pub synchronous: SyncMode,
}
