//! The streamed WAL as the server sees it: the receiver's walsender and slot, gathered into the
//! snapshot's `stream` section each check, and judged: `stream_down`, `stream_lag`,
//! `slot_retained`, `slot_lost`, `slot_unlimited`.
//!
//! A receiver that runs but stores nothing, or a slot that keeps WAL on the primary while the
//! receiver is down (until the primary's disk fills, or the server drops the WAL and the
//! repository has a gap) are what this catches; the receiver's own word is not enough.

use std::time::Duration;

use chrono::Utc;
use lifeboat_pg::session::{ReceiverServerStatus, Session};

use crate::config::{HealthConfig, StreamWatch};
use crate::schedule::{parse_rfc3339, rfc3339};
use crate::status::{Finding, ReceiverProcess, Severity, StreamStatus};

/// Refresh `status` from the server's answer (`Err`: it could not be asked) and the receiver
/// process.
pub fn update(
    status: &mut StreamStatus,
    watch: &StreamWatch,
    receiver: ReceiverProcess,
    server: Result<ReceiverServerStatus, String>,
) {
    status.slot = watch.slot.clone();
    status.application_name = watch.application_name.clone();
    status.receiver = receiver;
    let server = server.ok();
    let sender = server.as_ref().and_then(|s| s.sender.clone());
    let slot = server.as_ref().and_then(|s| s.slot.clone());
    // Catching up after an outage is receiving: `stream_lag` says how far behind it is. A role
    // without pg_monitor sees the row with its columns null: unknown, not down.
    status.streaming = match (&server, &sender) {
        (None, _) => None,
        (Some(_), None) => Some(false),
        (Some(_), Some(s)) if s.state.is_empty() => None,
        (Some(_), Some(s)) => Some(s.state == "streaming" || s.state == "catchup"),
    };
    status.state = sender.as_ref().map(|s| s.state.clone());
    status.sent_lsn = sender.as_ref().and_then(|s| s.sent_lsn.clone());
    status.flush_lsn = sender.as_ref().and_then(|s| s.flush_lsn.clone());
    status.lag_bytes = sender.as_ref().and_then(|s| s.lag_bytes);
    status.reply_age_seconds = sender.as_ref().and_then(|s| s.reply_age_seconds);
    status.exposure_seconds = sender.as_ref().and_then(|s| s.exposure_seconds);
    status.sync_state = sender.as_ref().and_then(|s| s.sync_state.clone());
    status.slot_exists = server.as_ref().map(|s| s.slot.is_some());
    status.slot_active = slot.as_ref().map(|s| s.active);
    status.restart_lsn = slot.as_ref().and_then(|s| s.restart_lsn.clone());
    status.retained_bytes = slot.as_ref().and_then(|s| s.retained_bytes);
    status.wal_status = slot.as_ref().and_then(|s| s.wal_status.clone());
    status.safe_wal_size = slot.as_ref().and_then(|s| s.safe_wal_size);
    status.max_slot_wal_keep_size_mb = server.as_ref().and_then(|s| s.max_slot_wal_keep_size_mb);
    status.synchronous_standby = server
        .as_ref()
        .map(|s| names(&s.synchronous_standby_names, &watch.application_name));
    // Unknown (server unreachable): judged by the process alone.
    let up = status.streaming.unwrap_or(status.receiver.pid.is_some());
    if up {
        status.down_since = None;
    } else if status.down_since.is_none() {
        status.down_since = Some(rfc3339(Utc::now()));
    }
}

/// Whether `synchronous_standby_names` (`a, b`, `FIRST 1 (a, "b")`, `ANY 2 (*)`) lists
/// `application_name`, which PostgreSQL compares case-insensitively.
fn names(setting: &str, application_name: &str) -> bool {
    setting
        .split(|c: char| c == ',' || c == '(' || c == ')' || c.is_whitespace())
        .map(|t| t.trim_matches('"'))
        .any(|t| t == "*" || t.eq_ignore_ascii_case(application_name))
}

/// The walsender and slot of the receiver, over a session of its own (`db`).
pub async fn ask_server(
    session: &Session,
    watch: &StreamWatch,
) -> Result<ReceiverServerStatus, String> {
    session
        .receiver_status(&watch.slot, &watch.application_name)
        .await
        .map_err(|e| e.to_string())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Judge the `stream` section; `down_after` is how long the receiver may be down before
/// `stream_down` (two check intervals, at least 20 s: a restart after a crash is no outage).
pub fn findings(
    status: &StreamStatus,
    limits: &HealthConfig,
    down_after: Duration,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |key: &str, severity, summary: String, detail: String| {
        out.push(Finding {
            key: key.to_string(),
            severity,
            summary,
            detail,
        });
    };
    let down_for = status
        .down_since
        .as_deref()
        .and_then(parse_rfc3339)
        .map(|t| (Utc::now() - t).to_std().unwrap_or_default());
    if let Some(down_for) = down_for
        && down_for > down_after
    {
        let why = status
            .receiver
            .last_error
            .as_deref()
            .map(|e| format!("the receiver's last error: {e}"))
            .unwrap_or_else(|| "the receiver printed no error".to_string());
        let waiting = if status.synchronous_standby == Some(true) {
            "; synchronous_standby_names names it, so commits on the primary WAIT for it: \
             take it out of synchronous_standby_names (and reload) if it cannot be fixed at once"
        } else {
            ""
        };
        let process = match status.receiver.pid {
            Some(pid) => format!(
                "the receiver process runs (pid {pid}) but the server does not list it as streaming"
            ),
            None => format!(
                "the receiver process is not running (started {} times, next start {})",
                status.receiver.starts,
                status
                    .receiver
                    .restart_at
                    .as_deref()
                    .unwrap_or("not planned")
            ),
        };
        add(
            "stream_down",
            Severity::Critical,
            format!(
                "WAL is not streamed to the repository: slot {} has no streaming receiver for {}",
                status.slot,
                humantime::format_duration(Duration::from_secs(down_for.as_secs()))
            ),
            format!(
                "{process}; {why}{waiting}. Until it streams, a failure of the primary loses \
                 what archive_command has not stored yet. Check the daemon's log (wal-stream lines), \
                 the `replication` line in pg_hba.conf and the role's REPLICATION attribute"
            ),
        );
    }
    if let Some(lag) = status.lag_bytes
        && lag > limits.max_stream_lag
    {
        add(
            "stream_lag",
            Severity::Warning,
            format!("the WAL receiver is {} behind the server", mib(lag)),
            format!(
                "the limit is {} (health.max_stream_lag): a failure of the primary now loses that \
                 much; the repository may be slow or unreachable (see the receiver's log)",
                mib(limits.max_stream_lag)
            ),
        );
    }
    if let Some(retained) = status.retained_bytes
        && retained > limits.max_slot_retained
        && status.wal_status.as_deref() != Some("lost")
    {
        add(
            "slot_retained",
            Severity::Warning,
            format!(
                "replication slot {} keeps {} of WAL on the server",
                status.slot,
                mib(retained)
            ),
            format!(
                "the limit is {} (health.max_slot_retained): the receiver does not confirm WAL, \
                 so the primary keeps it in pg_wal until its disk fills. Get the receiver \
                 streaming again (restart `lifeboat serve`), or set max_slot_wal_keep_size so \
                 the server gives the slot up before its disk fills",
                mib(limits.max_slot_retained)
            ),
        );
    }
    if status.wal_status.as_deref() == Some("lost") {
        add(
            "slot_lost",
            Severity::Critical,
            format!(
                "replication slot {} is lost: the server removed WAL the receiver had not stored",
                status.slot
            ),
            "the repository has a gap unless archive_command stored those segments: run \
             `lifeboat info` for gaps and take a new backup so later moments can be restored; \
             then drop the slot (select pg_drop_replication_slot(...)) so the receiver creates \
             it again"
                .to_string(),
        );
    }
    if status.max_slot_wal_keep_size_mb == Some(-1) && status.slot_exists == Some(true) {
        add(
            "slot_unlimited",
            Severity::Warning,
            format!(
                "replication slot {} may keep unlimited WAL on the server (max_slot_wal_keep_size = -1)",
                status.slot
            ),
            "while the receiver is down the primary keeps every WAL segment for it, until its \
             disk fills and PostgreSQL stops: set max_slot_wal_keep_size (e.g. '50GB', below the \
             free space of pg_wal) and reload"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_pg::session::{SlotStatus, WalSenderStatus};

    fn watch() -> StreamWatch {
        StreamWatch {
            slot: "lifeboat".into(),
            application_name: "lifeboat".into(),
        }
    }

    fn keys(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn streaming_lag_retained_lost_and_down() {
        let limits = HealthConfig {
            max_stream_lag: 1000,
            max_slot_retained: 5000,
            ..HealthConfig::default()
        };
        let wait = Duration::from_secs(60);
        let mut s = StreamStatus::default();
        let mut server = ReceiverServerStatus {
            sender: Some(WalSenderStatus {
                state: "streaming".into(),
                lag_bytes: Some(10),
                ..WalSenderStatus::default()
            }),
            slot: Some(SlotStatus {
                active: true,
                retained_bytes: Some(100),
                wal_status: Some("reserved".into()),
                ..SlotStatus::default()
            }),
            max_slot_wal_keep_size_mb: Some(1024),
            synchronous_standby_names: String::new(),
        };
        let running = ReceiverProcess {
            pid: Some(7),
            ..ReceiverProcess::default()
        };
        update(&mut s, &watch(), running.clone(), Ok(server.clone()));
        assert_eq!((s.streaming, s.down_since.as_deref()), (Some(true), None));
        assert!(findings(&s, &limits, wait).is_empty());
        server.sender.as_mut().expect("sender").state = "catchup".into();
        update(&mut s, &watch(), running.clone(), Ok(server.clone()));
        assert_eq!((s.streaming, s.down_since.as_deref()), (Some(true), None));
        // Seen by a role without pg_monitor: the row, its columns null.
        server.sender.as_mut().expect("sender").state = String::new();
        update(&mut s, &watch(), running.clone(), Ok(server.clone()));
        assert_eq!((s.streaming, s.down_since.as_deref()), (None, None));
        server.sender.as_mut().expect("sender").state = "streaming".into();

        let (sender, slot) = (server.sender.as_mut(), server.slot.as_mut());
        sender.expect("sender").lag_bytes = Some(2000);
        slot.expect("slot").retained_bytes = Some(6000);
        server.max_slot_wal_keep_size_mb = Some(-1);
        update(&mut s, &watch(), running.clone(), Ok(server.clone()));
        assert_eq!(
            keys(&findings(&s, &limits, wait)),
            ["stream_lag", "slot_retained", "slot_unlimited"]
        );

        // Not streaming: down from now on, an alert only once it lasts.
        server.sender = None;
        server.slot.as_mut().expect("slot").wal_status = Some("lost".into());
        update(
            &mut s,
            &watch(),
            ReceiverProcess::default(),
            Ok(server.clone()),
        );
        assert_eq!(s.streaming, Some(false));
        let since = s.down_since.clone();
        assert!(since.is_some());
        assert_eq!(
            keys(&findings(&s, &limits, wait)),
            ["slot_lost", "slot_unlimited"]
        );
        s.down_since = Some(rfc3339(Utc::now() - chrono::Duration::seconds(61)));
        s.receiver.last_error = Some("no pg_hba.conf entry".into());
        let f = findings(&s, &limits, wait);
        assert_eq!(keys(&f), ["stream_down", "slot_lost", "slot_unlimited"]);
        assert!(
            f[0].detail.contains("no pg_hba.conf entry"),
            "{}",
            f[0].detail
        );
        assert!(!f[0].detail.contains("WAIT"), "{}", f[0].detail);
        server.synchronous_standby_names = "FIRST 1 (replica1, \"LifeBoat\")".into();
        update(
            &mut s,
            &watch(),
            ReceiverProcess::default(),
            Ok(server.clone()),
        );
        let f = findings(&s, &limits, wait);
        assert!(
            f[0].detail.contains("commits on the primary WAIT"),
            "{}",
            f[0].detail
        );
        for (setting, listed) in [
            ("", false),
            ("lifeboat_2", false),
            ("ANY 1 (*)", true),
            ("a,lifeboat", true),
        ] {
            assert_eq!(names(setting, "lifeboat"), listed, "{setting}");
        }

        // The server cannot be asked: the process decides.
        update(&mut s, &watch(), running, Err("refused".into()));
        assert_eq!((s.streaming, s.down_since.as_deref()), (None, None));
        assert!(s.retained_bytes.is_none());
        assert!(findings(&s, &limits, wait).is_empty());
    }
}
