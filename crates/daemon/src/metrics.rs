//! `/metrics`: the status snapshot in Prometheus text format.
//!
//! A fresh registry is built from the snapshot on every scrape: every value already lives in the
//! snapshot, so there is no second copy to keep in step, and a series whose value is unknown
//! (`None`) is simply not exported, because a made-up 0 would read as "backup is 0 seconds old"
//! or "no WAL lag" to an alert rule. docs/DAEMON_API.md lists every metric. This module renders
//! and converts the formats; `series` registers the series of each part of the snapshot.

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::status::{Severity, Snapshot};

mod series;

use series::{Builder, backups, drills, flag, ha, jobs, labels, replicas, stream, wal};

/// Content type of [`render`]: the classic Prometheus text format every scraper understands.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`render_openmetrics`], served when the scraper asks for it (Prometheus does).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The snapshot in the Prometheus text format, version 0.0.4.
///
/// prometheus-client writes OpenMetrics; the two differ only in `# UNIT`/`# EOF` lines and in
/// how a counter's `# TYPE` is named, which is rewritten here so strict 0.0.4 parsers (promtool,
/// older agents) accept every line.
pub fn render(s: &Snapshot) -> String {
    openmetrics_to_prometheus(&render_openmetrics(s))
}

/// The snapshot in the OpenMetrics text format (ends with `# EOF`).
pub fn render_openmetrics(s: &Snapshot) -> String {
    let registry = build(s);
    let mut out = String::new();
    // Writing into a String cannot fail; an error here would only be a bug in the encoder, and a
    // truncated scrape is still better than none.
    if encode_registry(&mut out, &registry).is_err() {
        tracing::warn!("encoding metrics failed; the scrape is incomplete");
    }
    out.push_str("# EOF\n");
    out
}

/// Rewrite OpenMetrics text as Prometheus 0.0.4 text: drop `# UNIT` and `# EOF`, and name the
/// `# HELP`/`# TYPE` of a counter or info family after its sample (`_total`, `_info`), an info
/// being a gauge in 0.0.4.
fn openmetrics_to_prometheus(text: &str) -> String {
    let renamed: Vec<(&str, &str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            if let Some(name) = l.strip_suffix(" counter") {
                Some((name, "_total", "counter"))
            } else {
                l.strip_suffix(" info").map(|name| (name, "_info", "gauge"))
            }
        })
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let (_, suffix, kind) = renamed.iter().find(|(n, _, _)| *n == name)?;
            let tail = if *prefix == "# TYPE " { kind } else { tail };
            Some(format!("{prefix}{name}{suffix} {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Seconds since the Unix epoch of an RFC 3339 time, or of PostgreSQL's text form of a
/// `timestamptz` (`2026-01-02 10:15:03.123+00`, as `pg_stat_archiver` gives it).
/// Seconds since the Unix epoch, with the fraction.
pub(crate) fn unix_of(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

pub(crate) fn unix_seconds(text: &str) -> Option<f64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        let mut t = text.trim().replacen(' ', "T", 1);
        // PostgreSQL writes the offset as `+00` or `+05:30`; RFC 3339 needs `+00:00`.
        if let Some(pos) = t.rfind(['+', '-'])
            && pos > 10
            && t.len() - pos == 3
        {
            t.push_str(":00");
        }
        OffsetDateTime::parse(&t, &Rfc3339).ok()
    })?;
    Some(unix_of(parsed))
}

fn build(s: &Snapshot) -> Registry {
    let mut b = Builder {
        registry: Registry::with_prefix("lifeboat"),
    };
    b.registry.register(
        "build",
        "Lifeboat version and host",
        Info::new(labels(&[("version", &s.version), ("host", &s.host)])),
    );
    let gathered = s.generated_at.is_some();
    let repo_reachable = !s.findings.iter().any(|f| f.key == "repository_unreachable");
    b.gauge(
        "up",
        "1 when the last status check completed and reached the repository",
        None,
        Some(flag(gathered && repo_reachable)),
    );
    if !gathered {
        // Before the first check every other value would be a default, not a measurement.
        return b.registry;
    }
    b.gauge(
        "status_timestamp",
        "When the status these metrics show was gathered",
        Some(Unit::Seconds),
        s.generated_at.as_deref().and_then(unix_seconds),
    );
    b.gauge(
        "recoverable",
        "1 when a complete backup exists and the WAL after it has no gap",
        None,
        Some(flag(s.recoverable)),
    );

    backups(&mut b, s);
    wal(&mut b, s);
    stream(&mut b, s);
    ha(&mut b, s);
    replicas(&mut b, s);
    b.family(
        "volume_free",
        "Free space on the volume (pg_wal, data)",
        Some(Unit::Bytes),
        s.volumes
            .iter()
            .map(|v| {
                let l = labels(&[("volume", &v.name), ("path", &v.path)]);
                (l, v.free_bytes as f64)
            })
            .collect(),
    );
    b.family(
        "volume_size",
        "Total size of the volume (pg_wal, data)",
        Some(Unit::Bytes),
        s.volumes
            .iter()
            .map(|v| {
                let l = labels(&[("volume", &v.name), ("path", &v.path)]);
                (l, v.total_bytes as f64)
            })
            .collect(),
    );
    jobs(&mut b, s);
    drills(&mut b, s);
    b.gauge(
        "repository_size",
        "Bytes of every object in the repository at the last measurement",
        Some(Unit::Bytes),
        s.repository_bytes.map(|v| v as f64),
    );
    b.gauge(
        "active_alerts",
        "Alerts firing now",
        None,
        Some(s.active_alerts.len() as f64),
    );
    b.family(
        "findings",
        "Problems the last health check found, by severity",
        None,
        [Severity::Warning, Severity::Critical]
            .iter()
            .map(|sev| {
                let name = match sev {
                    Severity::Warning => "warning",
                    Severity::Critical => "critical",
                };
                let n = s.findings.iter().filter(|f| f.severity == *sev).count();
                (labels(&[("severity", name)]), n as f64)
            })
            .collect(),
    );
    b.registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{self, run};
    use crate::status::{Finding, Volume, WalStatus};
    use lifeboat_engine::backup::BackupReport;
    use lifeboat_repo::records::{DrillRecord, Outcome};

    /// 5,000,000 bytes, 1,200,000 stored, finished at `stop`.
    fn backup(label: &str, stop: &str) -> BackupReport {
        BackupReport {
            stop_time: stop.into(),
            size: 5_000_000,
            stored_size: 1_200_000,
            ..samples::backup(label)
        }
    }

    /// The sample snapshot with two backups, a WAL backlog with a gap, a volume, a failed and a
    /// succeeded backup run, a scheduled drill at 06:00 and a warning.
    fn snapshot() -> Snapshot {
        let mut s = samples::snapshot();
        s.window.earliest = Some("2026-01-01T10:00:12Z".into());
        s.window.latest_backup = Some("2026-01-02T10:00:12Z".into());
        s.backups = vec![
            backup("20260101T100000Z", "2026-01-01T10:00:12Z"),
            backup("20260102T100000Z", "2026-01-02T10:00:12Z"),
        ];
        s.newest_backup_age_seconds = Some(3588.0);
        s.wal = WalStatus {
            ready_segments: Some(2),
            archive_lag_seconds: Some(7.5),
            failed_count: Some(3),
            last_archived_time: Some("2026-01-02 10:59:50.5+00".into()),
            ..s.wal
        };
        s.wal.timelines[0].segments = 7;
        s.wal.timelines[0].gaps.push(samples::gap());
        s.volumes = vec![Volume {
            name: "pg_wal".into(),
            path: "/pg/wal".into(),
            total_bytes: 1000,
            free_bytes: 400,
        }];
        let history = &mut s.jobs[0].history;
        history.record(run(Outcome::Failed, "2026-01-02T09:00:00Z"));
        history.record(run(Outcome::Succeeded, "2026-01-02T10:00:12Z"));
        s.drills = vec![DrillRecord {
            trigger: "schedule".into(),
            started: time::macros::datetime!(2026-01-02 06:00:00 UTC),
            finished: time::macros::datetime!(2026-01-02 06:01:00 UTC),
            backup: Some("20260101T100000Z".into()),
            data_loss_seconds: None,
            checks: Vec::new(),
            ..samples::drill(true)
        }];
        s.findings = vec![Finding {
            key: "wal_backlog".into(),
            severity: Severity::Warning,
            summary: "s".into(),
            detail: "d".into(),
        }];
        s.repository_bytes = Some(123_456);
        s
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn key_series_are_exported_with_conventional_names() {
        let text = render(&snapshot());
        has(&text, "lifeboat_up 1.0");
        has(&text, "lifeboat_recoverable 1.0");
        has(&text, "lifeboat_backups 2.0");
        has(&text, "lifeboat_newest_backup_age_seconds 3588.0");
        has(&text, "lifeboat_latest_backup_size_bytes 5000000.0");
        has(&text, "lifeboat_latest_backup_stored_bytes 1200000.0");
        has(&text, "lifeboat_latest_backup_duration_seconds 12.5");
        has(
            &text,
            "lifeboat_latest_backup_stop_timestamp_seconds 1767348012.0",
        );
        has(&text, "lifeboat_wal_archive_lag_seconds 7.5");
        has(&text, "lifeboat_wal_ready_segments 2.0");
        has(&text, "# TYPE lifeboat_wal_archive_failures_total counter");
        has(&text, "lifeboat_wal_archive_failures_total 3");
        has(&text, "# TYPE lifeboat_build_info gauge");
        has(
            &text,
            "# HELP lifeboat_build_info Lifeboat version and host.",
        );
        has(
            &text,
            "lifeboat_wal_last_archived_timestamp_seconds 1767351590.5",
        );
        has(&text, "lifeboat_wal_gaps 1.0");
        has(&text, "lifeboat_wal_missing_segments 2.0");
        has(
            &text,
            "lifeboat_volume_free_bytes{volume=\"pg_wal\",path=\"/pg/wal\"} 400.0",
        );
        has(
            &text,
            "lifeboat_volume_size_bytes{volume=\"pg_wal\",path=\"/pg/wal\"} 1000.0",
        );
        has(
            &text,
            "lifeboat_job_last_success_timestamp_seconds{job=\"backup\"} 1767348012.0",
        );
        has(
            &text,
            "lifeboat_job_last_failure_timestamp_seconds{job=\"backup\"} 1767344400.0",
        );
        has(
            &text,
            "lifeboat_job_last_duration_seconds{job=\"backup\"} 42.0",
        );
        has(&text, "lifeboat_job_running{job=\"backup\"} 0.0");
        has(
            &text,
            "lifeboat_job_last_outcome{job=\"backup\",outcome=\"succeeded\"} 1.0",
        );
        has(
            &text,
            "lifeboat_job_last_outcome{job=\"backup\",outcome=\"failed\"} 0.0",
        );
        has(
            &text,
            "lifeboat_job_recorded_runs{job=\"backup\",outcome=\"failed\"} 1.0",
        );
        has(&text, "lifeboat_drill_last_passed 1.0");
        has(&text, "lifeboat_drill_last_recovery_seconds 25.5");
        has(&text, "lifeboat_drill_last_restore_seconds 20.0");
        has(&text, "lifeboat_drill_last_replay_seconds 5.5");
        has(&text, "lifeboat_drill_last_timestamp_seconds 1767333660.0");
        has(&text, "lifeboat_repository_size_bytes 123456.0");
        has(&text, "lifeboat_active_alerts 0.0");
        has(&text, "lifeboat_findings{severity=\"warning\"} 1.0");
        has(&text, "lifeboat_findings{severity=\"critical\"} 0.0");
        has(
            &text,
            "lifeboat_build_info{version=\"0.1.0\",host=\"db1\"} 1",
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn unknown_values_are_omitted_not_zero() {
        let mut s = snapshot();
        s.drills[0].data_loss_seconds = None;
        s.wal.archive_lag_seconds = None;
        s.wal.failed_count = None;
        s.repository_bytes = None;
        s.newest_backup_age_seconds = None;
        let text = render(&s);
        for name in [
            "lifeboat_drill_last_data_loss_seconds",
            "lifeboat_wal_archive_lag_seconds",
            "lifeboat_wal_archive_failures",
            "lifeboat_repository_size_bytes",
            "lifeboat_newest_backup_age_seconds",
            "lifeboat_wal_last_failed_timestamp_seconds",
        ] {
            assert!(!text.contains(name), "{name} exported:\n{text}");
        }
    }

    #[test]
    fn before_the_first_check_only_up_and_build_info() {
        let text = render(&Snapshot {
            version: "0.1.0".into(),
            ..Default::default()
        });
        has(&text, "lifeboat_up 0.0");
        assert!(!text.contains("lifeboat_recoverable"));
        assert!(!text.contains("lifeboat_backups"));
        assert!(render_openmetrics(&Snapshot::default()).ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_keeps_units_and_counter_family_names() {
        let text = render_openmetrics(&snapshot());
        has(&text, "# TYPE lifeboat_wal_archive_failures counter");
        has(&text, "# TYPE lifeboat_build info");
        has(&text, "# UNIT lifeboat_wal_archive_lag_seconds seconds");
    }

    #[test]
    fn times_in_rfc3339_and_postgres_form() {
        assert_eq!(unix_seconds("1970-01-01T00:01:00Z"), Some(60.0));
        assert_eq!(unix_seconds("1970-01-01 00:01:00+00"), Some(60.0));
        assert_eq!(unix_seconds("1970-01-01 01:01:00.5+01"), Some(60.5));
        assert_eq!(unix_seconds("1970-01-01 05:31:00+05:30"), Some(60.0));
        assert_eq!(unix_seconds("soon"), None);
    }
}
