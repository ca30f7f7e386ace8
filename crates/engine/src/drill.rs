//! `drill`: prove a backup restores. (Being written: see the drill helper's task.)

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The `[drill]` section of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {
    /// `latest` or `random` (any retained backup). Default latest.
    pub backup: String,
    /// `latest` (end of the archive) or `random` (a random point in the backup's window). Default latest.
    pub target: String,
    /// Where scratch clusters are made. Default: the system's temporary directory.
    pub scratch_dir: Option<PathBuf>,
    /// Database the check queries run in. Default `postgres`.
    pub database: String,
    /// Queries that must each return one value that is true or a number greater than zero, e.g.
    /// "select count(*) from orders where created_at > now() - '1 day'::interval".
    pub checks: Vec<String>,
    /// Run pg_amcheck on every database. Default true.
    pub amcheck: bool,
    /// The whole drill (restore, replay, checks) must finish within this. Default 1h.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            backup: "latest".into(),
            target: "latest".into(),
            scratch_dir: None,
            database: "postgres".into(),
            checks: Vec::new(),
            amcheck: true,
            timeout: Duration::from_secs(3600),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"90s\", \"5m\" or \"1h\": {e}"
        ))
    })
}
