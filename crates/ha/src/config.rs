//! This module owns the `[ha]` section of the configuration file: which etcd, which cluster, this
//! member's name and addresses, and the timings whose relation makes fencing safe
//! (`loop_wait + 2 * retry_timeout <= ttl`). [`RawHaConfig`] is the section as written;
//! [`RawHaConfig::into_config`] fills the defaults and refuses what cannot work.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
    /// This member's name, unique in the cluster (used for its slot: `lifeboat_ha_<name>`).
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
    /// How long the leader's PostgreSQL may stay down (being restarted in place, which loses
    /// nothing) before the leader gives the key up for a failover. Default 5 min; 0: at once.
    pub primary_start_timeout: Duration,
}

/// Defaults (Patroni's, which the fencing rule was checked against).
pub const DEFAULT_NAMESPACE: &str = "/lifeboat";
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_LOOP_WAIT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAXIMUM_LAG_ON_FAILOVER: u64 = 1 << 20;
pub const DEFAULT_PRIMARY_START_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest member or cluster name: `lifeboat_ha_<name>` must fit a slot name (63 bytes) with room.
pub const MAX_NAME_LEN: usize = 50;

/// `[ha]` as written in the file. Required: `etcd`, `cluster`, `name`, `conninfo`, `api_url`
/// (missing ones are refused by [`RawHaConfig::into_config`] with an example); the others have
/// defaults. Each key means what the field of the same name in [`HaConfig`] says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHaConfig {
    pub etcd: Vec<String>,
    pub namespace: Option<String>,
    pub cluster: String,
    pub name: String,
    pub conninfo: String,
    pub api_url: String,
    /// Durations: "30s", "1m", "500ms".
    #[serde(deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub loop_wait: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub retry_timeout: Option<Duration>,
    /// Bytes (4096) or with a unit, 1024-based: "1MB", "16MiB".
    #[serde(deserialize_with = "optional_byte_size")]
    pub maximum_lag_on_failover: Option<u64>,
    /// "off" (default), "on" or "strict".
    pub synchronous: SyncMode,
    #[serde(deserialize_with = "optional_duration")]
    pub primary_start_timeout: Option<Duration>,
}

/// A refused `[ha]`: which key, and a message saying what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfigError {
    /// The offending key (for the timing rule, the first of the keys involved: `ttl`).
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for HaConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[ha] {}", self.message)
    }
}

impl std::error::Error for HaConfigError {}

impl RawHaConfig {
    /// The section with its defaults filled in, validated ([`HaConfig::validate`]).
    pub fn into_config(self) -> Result<HaConfig, HaConfigError> {
        let namespace = self
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let config = HaConfig {
            etcd: self.etcd.iter().map(|u| u.trim().to_string()).collect(),
            // One spelling: keys are joined with '/', so a trailing one would double.
            namespace: namespace.trim_end_matches('/').to_string(),
            cluster: self.cluster,
            name: self.name,
            conninfo: self.conninfo,
            api_url: self.api_url,
            ttl: self.ttl.unwrap_or(DEFAULT_TTL),
            loop_wait: self.loop_wait.unwrap_or(DEFAULT_LOOP_WAIT),
            retry_timeout: self.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
            maximum_lag_on_failover: self
                .maximum_lag_on_failover
                .unwrap_or(DEFAULT_MAXIMUM_LAG_ON_FAILOVER),
            synchronous: self.synchronous,
            primary_start_timeout: self
                .primary_start_timeout
                .unwrap_or(DEFAULT_PRIMARY_START_TIMEOUT),
        };
        config.validate()?;
        Ok(config)
    }
}

impl HaConfig {
    /// Refuses a configuration the agent cannot run safely, naming the key and the fix.
    pub fn validate(&self) -> Result<(), HaConfigError> {
        let fail = |key, message: String| Err(HaConfigError { key, message });
        if self.etcd.is_empty() {
            return fail(
                "etcd",
                "etcd is empty: list the etcd client URLs, e.g. etcd = [\"http://10.0.0.1:2379\", \
                 \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]"
                    .to_string(),
            );
        }
        for url in &self.etcd {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
                return fail(
                    "etcd",
                    format!(
                        "etcd: {url:?} is not an etcd client URL: write it with its scheme and \
                         host, e.g. \"http://10.0.0.1:2379\""
                    ),
                );
            }
        }
        if !self.namespace.starts_with('/') || self.namespace.contains(char::is_whitespace) {
            return fail(
                "namespace",
                format!(
                    "namespace = {:?} is not a key prefix: write it as an absolute path without \
                     spaces, e.g. \"{DEFAULT_NAMESPACE}\"",
                    self.namespace
                ),
            );
        }
        check_name("cluster", &self.cluster)?;
        check_name("name", &self.name)?;
        if self.conninfo.trim().is_empty() {
            return fail(
                "conninfo",
                "conninfo is empty: write how the other members reach this member's PostgreSQL \
                 for replication, e.g. conninfo = \"host=10.0.0.2 port=5432 user=replicator\""
                    .to_string(),
            );
        }
        if self.api_url.trim().is_empty() {
            return fail(
                "api_url",
                "api_url is empty: write the URL other members and `lifeboat ha status` reach \
                 this member's `lifeboat serve` at, e.g. api_url = \"http://10.0.0.2:7433\""
                    .to_string(),
            );
        }
        let at_least = |key: &'static str, value: Duration, min: Duration| {
            if value < min {
                fail(
                    key,
                    format!(
                        "{key} = \"{}\" is too short: set it to at least {}",
                        humantime::format_duration(value),
                        humantime::format_duration(min)
                    ),
                )
            } else {
                Ok(())
            }
        };
        at_least("ttl", self.ttl, Duration::from_secs(2))?;
        at_least("loop_wait", self.loop_wait, Duration::from_secs(1))?;
        at_least("retry_timeout", self.retry_timeout, Duration::from_secs(1))?;
        let needed = self.loop_wait + 2 * self.retry_timeout;
        if needed > self.ttl {
            return fail(
                "ttl",
                format!(
                    "ttl = \"{}\" is too short for loop_wait = \"{}\" and retry_timeout = \"{}\": \
                     fencing needs loop_wait + 2 * retry_timeout <= ttl (here {} > {}), or a \
                     leader could still take writes after its key expired; set ttl to at least \
                     \"{}\", or shorten loop_wait or retry_timeout",
                    humantime::format_duration(self.ttl),
                    humantime::format_duration(self.loop_wait),
                    humantime::format_duration(self.retry_timeout),
                    humantime::format_duration(needed),
                    humantime::format_duration(self.ttl),
                    humantime::format_duration(needed),
                ),
            );
        }
        Ok(())
    }

    /// This member's replication slot on the leader (and the name it streams under).
    #[must_use]
    pub fn slot_name(&self) -> String {
        slot_name(&self.name)
    }
}

/// The physical slot the leader keeps for member `name`.
#[must_use]
pub fn slot_name(name: &str) -> String {
    lifeboat_pg::session::ha::member_slot(name)
}

/// Member and cluster names end up in slot names and etcd keys: lowercase letters, digits and
/// underscores only, at most [`MAX_NAME_LEN`].
fn check_name(key: &'static str, value: &str) -> Result<(), HaConfigError> {
    let problem = if value.is_empty() {
        Some("is empty".to_string())
    } else if value.len() > MAX_NAME_LEN {
        Some(format!(
            "is {} characters long (at most {MAX_NAME_LEN})",
            value.len()
        ))
    } else {
        value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
            .map(|c| format!("contains {c:?}"))
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(HaConfigError {
            key,
            message: format!(
                "{key} = {value:?} {problem}: it becomes part of replication slot names \
                 (lifeboat_ha_<name>) and etcd keys, so use 1 to {MAX_NAME_LEN} lowercase letters, \
                 digits or underscores, e.g. {key} = \"{}\"",
                if key == "cluster" { "main" } else { "node1" }
            ),
        }),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim())
        .map(Some)
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration like \"10s\" or \"1m\": {e}"
            ))
        })
}

fn optional_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lifeboat_pg::conf::deserialize_byte_size(d).map(Some)
}

#[cfg(test)]
mod tests;
