//! The daemon's sections of the configuration file: `[serve]`, `[schedule]`, `[health]`,
//! `[alerts]` (the `[drill]` section belongs to the drill operation, in the engine).
//!
//! Durations are written the way people write them: "90s", "5m", "26h", "7d".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lifeboat_pg::conf::deserialize_byte_size;
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
    /// The WAL receiver the daemon runs and watches (`[stream]` in the file); None: none.
    pub stream: Option<StreamWatch>,
}

/// What the daemon needs of `[stream]`: the receiver's slot and `application_name`, to find it
/// in `pg_stat_replication` and `pg_replication_slots` (the receiver itself reads the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWatch {
    pub slot: String,
    pub application_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address of the dashboard, metrics and API: `IP:PORT` or `HOST:PORT` (a host name is
    /// resolved when the daemon starts; see [`resolve_listen`]). Default 127.0.0.1:7433.
    pub listen: String,
    /// File whose first line is the token clients must send (`Authorization: Bearer TOKEN`, or
    /// `?token=TOKEN` for the dashboard). Required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// How often health is checked and the status refreshed. Default 30s; 1s to 1d.
    #[serde(deserialize_with = "check_interval")]
    pub check_interval: Duration,
    /// How often the repository's total size is measured (a full listing). Default 1h; 1s to 30d.
    #[serde(deserialize_with = "size_interval")]
    pub size_interval: Duration,
    /// On SIGTERM, how long a running job may take to finish before it is stopped (safely
    /// abandoned: an unfinished backup never counts). Default 60s; keep it below systemd's
    /// TimeoutStopSec. At most 1d.
    #[serde(deserialize_with = "shutdown_grace")]
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
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
    /// `lifeboat copy` to the second repository of `[copy] to`, e.g. "15 * * * *".
    pub copy: Option<String>,
    /// `lifeboat dump` (logical dumps), e.g. "0 2 * * *".
    pub dump: Option<String>,
    /// `lifeboat dump expire`, e.g. "30 2 * * *".
    pub dump_expire: Option<String>,
    /// `lifeboat drill --dump`, e.g. "0 7 * * *".
    pub dump_drill: Option<String>,
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
    /// Free space on the volumes of pg_wal and the data directory, in percent. Default 10; 0 to 100.
    #[serde(deserialize_with = "min_free_percent")]
    pub min_free_percent: f64,
    /// The newest drill must have passed, and be at most this old (unset: only "passed").
    #[serde(deserialize_with = "optional_duration")]
    pub max_drill_age: Option<Duration>,
    /// WAL the receiver has not stored yet (the server's position minus its flush position), in
    /// bytes or with a unit ("16MiB"). Default 16MiB.
    #[serde(deserialize_with = "deserialize_byte_size")]
    pub max_stream_lag: u64,
    /// WAL the receiver's slot keeps on the server. Default 1GiB.
    #[serde(deserialize_with = "deserialize_byte_size")]
    pub max_slot_retained: u64,
    /// The second repository (`lifeboat copy`) may be at most this far behind: the time since the
    /// last successful copy started (what it holds is the source as it was then). Judged once the
    /// copy job is scheduled or has run. Default 26h.
    #[serde(deserialize_with = "duration")]
    pub max_copy_age: Duration,
    /// The newest logical dump may be at most this old. Judged once the dump job is scheduled or
    /// the repository holds a dump. Default 26h.
    #[serde(deserialize_with = "duration")]
    pub max_dump_age: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_backup_age: Duration::from_secs(26 * 3600),
            max_wal_lag: Duration::from_secs(300),
            max_ready_segments: 100,
            min_free_percent: 10.0,
            max_drill_age: None,
            max_stream_lag: 16 << 20,
            max_slot_retained: 1 << 30,
            max_copy_age: Duration::from_secs(26 * 3600),
            max_dump_age: Duration::from_secs(26 * 3600),
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

/// The addresses `[serve] listen` (or `--listen`) names: `IP:PORT`, `[IPv6]:PORT`, or
/// `HOST:PORT` with a host name looked up here (`localhost:7433`). Every address it resolves to
/// is returned, in the resolver's order: the daemon binds the first that works, and judges
/// whether the listener is open to other hosts on all of them.
pub async fn resolve_listen(text: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let form = "write it as IP:PORT or HOST:PORT, e.g. \"127.0.0.1:7433\" or \"localhost:7433\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("[serve] listen = {text:?} has no port: {form}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "[serve] listen = {text:?} is not an address: {form}"
        ));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(text)
        .await
        .map_err(|e| format!("[serve] listen = {text:?}: cannot resolve {host:?}: {e}; {form}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!(
            "[serve] listen = {text:?}: {host:?} resolves to no address; {form}"
        ));
    }
    Ok(addrs)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"90s\", \"5m\" or \"26h\": {e}"))
}

/// A duration key with its accepted range: outside it, the message names the key and the range
/// (a zero check interval would spin the health loop).
fn bounded<'de, D: Deserializer<'de>>(
    d: D,
    key: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, D::Error> {
    let value = duration(d)?;
    if value < min || value > max {
        return Err(serde::de::Error::custom(format!(
            "{key} = {:?} is out of range: accepted {} to {}",
            humantime::format_duration(value).to_string(),
            humantime::format_duration(min),
            humantime::format_duration(max)
        )));
    }
    Ok(value)
}

const DAY: Duration = Duration::from_secs(86_400);

fn check_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    bounded(d, "serve.check_interval", Duration::from_secs(1), DAY)
}

fn size_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    bounded(d, "serve.size_interval", Duration::from_secs(1), 30 * DAY)
}

fn shutdown_grace<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    bounded(d, "serve.shutdown_grace", Duration::ZERO, DAY)
}

fn min_free_percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(0.0..=100.0).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "health.min_free_percent = {value} is out of range: accepted 0 to 100"
        )));
    }
    Ok(value)
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
#[allow(clippy::unwrap_used)]
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

    #[tokio::test]
    async fn listen_takes_addresses_and_host_names() {
        assert_eq!(
            resolve_listen("127.0.0.1:7433").await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 7433))]
        );
        assert_eq!(
            resolve_listen("[::1]:80").await.unwrap(),
            vec!["[::1]:80".parse::<SocketAddr>().unwrap()]
        );
        let local = resolve_listen("localhost:7433").await.unwrap();
        assert!(!local.is_empty());
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7433),
            "{local:?}"
        );
        for bad in [
            "localhost",
            ":7433",
            "localhost:http",
            "localhost:99999",
            "",
        ] {
            let e = resolve_listen(bad).await.unwrap_err();
            assert!(e.contains("[serve] listen"), "{bad}: {e}");
        }
        let f: File = toml::from_str("[serve]\nlisten = \"localhost:7433\"\n").unwrap();
        assert_eq!(f.serve.listen, "localhost:7433");
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
        assert_eq!(f.health.max_stream_lag, 16 << 20);
        assert_eq!(f.health.max_slot_retained, 1 << 30);
        let f: File =
            toml::from_str("[health]\nmax_stream_lag = \"512kB\"\nmax_slot_retained = 4096\n")
                .expect("parses");
        assert_eq!(
            (f.health.max_stream_lag, f.health.max_slot_retained),
            (512 << 10, 4096)
        );
        assert!(toml::from_str::<File>("[health]\nmax_wal_lag = \"soon\"\n").is_err());
        for (bad, key) in [
            ("[serve]\ncheck_interval = \"0s\"", "serve.check_interval"),
            ("[serve]\ncheck_interval = \"400d\"", "serve.check_interval"),
            ("[serve]\nsize_interval = \"0s\"", "serve.size_interval"),
            (
                "[serve]\nshutdown_grace = \"1000y\"",
                "serve.shutdown_grace",
            ),
            (
                "[health]\nmin_free_percent = -1.0",
                "health.min_free_percent",
            ),
            (
                "[health]\nmin_free_percent = 101",
                "health.min_free_percent",
            ),
            (
                "[health]\nmin_free_percent = nan",
                "health.min_free_percent",
            ),
        ] {
            let e = toml::from_str::<File>(bad).unwrap_err();
            assert!(
                e.message().contains(key) && e.message().contains("accepted"),
                "{bad}: {}",
                e.message()
            );
        }
    }
}
