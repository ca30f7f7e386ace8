//! The daemon's sections of the configuration file: `[serve]`, `[schedule]`, `[health]`,
//! `[alerts]` (the `[drill]` section belongs to the drill operation, in the engine).
//!
//! Durations are written the way people write them: "90s", "5m", "26h", "7d".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Default listen address: loopback only; anything else needs a token.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7433";

/// Every section the daemon reads, as the CLI hands them over.
#[derive(Debug, Clone, Default)]
pub struct DaemonConfig {
    pub serve: ServeConfig,
    pub schedule: ScheduleConfig,
    pub health: HealthConfig,
    pub alerts: AlertsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address of the dashboard, metrics and API. Default 127.0.0.1:7433.
    pub listen: SocketAddr,
    /// File whose first line is the token clients must send (`Authorization: Bearer TOKEN`, or
    /// `?token=TOKEN` for the dashboard). Required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// How often health is checked and the status refreshed. Default 30s.
    #[serde(deserialize_with = "duration")]
    pub check_interval: Duration,
    /// How often the repository's total size is measured (a full listing). Default 1h.
    #[serde(deserialize_with = "duration")]
    pub size_interval: Duration,
    /// On SIGTERM, how long a running job may take to finish before it is stopped (safely
    /// abandoned: an unfinished backup never counts). Default 60s; keep it below systemd's
    /// TimeoutStopSec.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7433))),
            token_file: None,
            check_interval: Duration::from_secs(30),
            size_interval: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

/// Cron lines (5 fields: minute hour day-of-month month day-of-week, in UTC) per job. A job
/// without a line is not scheduled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `lifeboat backup` (incremental: unchanged files are reused), e.g. "0 * * * *".
    pub backup: Option<String>,
    /// `lifeboat backup --full-scan` (reads every file), e.g. "0 3 * * 0".
    pub backup_full: Option<String>,
    /// `lifeboat expire`, e.g. "30 4 * * *".
    pub expire: Option<String>,
    /// `lifeboat verify`, e.g. "0 5 * * *".
    pub verify: Option<String>,
    /// `lifeboat drill`, e.g. "0 6 * * *".
    pub drill: Option<String>,
}

/// Limits the daemon watches; crossing one raises an alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// The newest complete backup may be at most this old. Default 26h (a daily backup, with slack).
    #[serde(deserialize_with = "duration")]
    pub max_backup_age: Duration,
    /// WAL waiting to be archived: the oldest `.ready` segment may be at most this old (the data an
    /// outage now would lose). Default 5m.
    #[serde(deserialize_with = "duration")]
    pub max_wal_lag: Duration,
    /// Segments waiting to be archived (`.ready` in pg_wal/archive_status). Default 100.
    pub max_ready_segments: u64,
    /// Free space on the volumes of pg_wal and the data directory, in percent. Default 10.
    pub min_free_percent: f64,
    /// The newest drill must have passed, and be at most this old (unset: only "passed").
    #[serde(deserialize_with = "optional_duration")]
    pub max_drill_age: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_backup_age: Duration::from_secs(26 * 3600),
            max_wal_lag: Duration::from_secs(300),
            max_ready_segments: 100,
            min_free_percent: 10.0,
            max_drill_age: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// A problem that persists is announced again after this long ("0s": never). Default 4h.
    #[serde(deserialize_with = "duration")]
    pub repeat: Duration,
    /// JSON POSTs, one per URL.
    pub webhook: Vec<WebhookConfig>,
    pub email: Option<EmailConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            repeat: Duration::from_secs(4 * 3600),
            webhook: Vec::new(),
            email: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST. Webhook URLs often carry a secret: prefer `url_file`.
    pub url: Option<String>,
    /// File whose first line is the URL.
    pub url_file: Option<PathBuf>,
    /// A name for logs and the dashboard (the URL itself is never shown). Default "webhook".
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, and refuse a server that does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on the same host.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server host.
    pub server: String,
    /// Default: 587 for starttls, 465 for tls, 25 for none.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    /// File whose first line is the SMTP password.
    pub password_file: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"90s\", \"5m\" or \"26h\": {e}"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        #[serde(default)]
        serve: ServeConfig,
        #[serde(default)]
        health: HealthConfig,
        #[serde(default)]
        alerts: AlertsConfig,
    }

    #[test]
    fn durations_and_defaults() {
        let f: File = toml::from_str(
            "[serve]\nlisten = \"127.0.0.1:9000\"\ncheck_interval = \"5s\"\n[health]\nmax_wal_lag = \"90s\"\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:1/x\"\n",
        )
        .expect("parses");
        assert_eq!(f.serve.check_interval, Duration::from_secs(5));
        assert_eq!(f.serve.shutdown_grace, Duration::from_secs(60));
        assert_eq!(f.health.max_wal_lag, Duration::from_secs(90));
        assert_eq!(f.health.max_backup_age, Duration::from_secs(26 * 3600));
        assert_eq!(f.alerts.webhook.len(), 1);
        assert!(toml::from_str::<File>("[health]\nmax_wal_lag = \"soon\"\n").is_err());
    }
}
