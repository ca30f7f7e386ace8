//! The first screen: the recoverable banner with the problems firing now, and the row of cards
//! with the numbers people look at first.

use std::fmt::Write as _;

use super::charts::window_end_text;
use super::format::{bytes, duration, esc, plural, time_text, when};
use crate::status::{Severity, Snapshot};

/// The banner: recoverable or not, the restore window, and what is wrong now.
pub(super) fn banner(out: &mut String, s: &Snapshot, now: Option<f64>) {
    let critical = s
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .count();
    let (class, headline) = if s.generated_at.is_none() {
        (
            "unknown",
            "Status not gathered yet: the first check is running".to_string(),
        )
    } else if s.recoverable {
        let class = if s.findings.is_empty() {
            "ok"
        } else {
            "ok warn"
        };
        (class, "✔ Recoverable now".to_string())
    } else {
        let reason = s
            .recoverable_reason
            .as_deref()
            .unwrap_or("no complete backup with unbroken WAL after it");
        (
            "bad",
            format!(
                "✘ NOT recoverable: <span class=\"reason\">{}</span>",
                esc(reason)
            ),
        )
    };
    w!(
        out,
        "<section id=\"recoverable\" class=\"banner {class}\"><div class=\"headline\">{headline}</div>"
    );
    if let Some(earliest) = &s.window.earliest {
        w!(
            out,
            "<div class=\"restore-window\">Restore window: <b>{}</b> → <b>{}</b></div>",
            time_text(earliest),
            window_end_text(s)
        );
    }
    if !s.findings.is_empty() {
        w!(
            out,
            "<div class=\"problem-count\">{} problem{} need attention{}</div>",
            s.findings.len(),
            if s.findings.len() == 1 { "" } else { "s" },
            if critical > 0 {
                format!(" ({critical} critical)")
            } else {
                String::new()
            }
        );
    }
    out.push_str("</section>\n");

    if s.findings.is_empty() && s.active_alerts.is_empty() {
        return;
    }
    out.push_str("<section id=\"problems\"><h2>Problems now</h2><ul class=\"findings\">");
    let mut findings: Vec<_> = s.findings.iter().collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in findings {
        let sev = match f.severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        };
        w!(
            out,
            "<li class=\"finding {sev}\" data-key=\"{}\"><span class=\"sev\">{sev}</span> \
             <b>{}</b><div class=\"detail\">{}</div></li>",
            esc(&f.key),
            esc(&f.summary),
            esc(&f.detail)
        );
    }
    out.push_str("</ul>");
    if !s.active_alerts.is_empty() {
        out.push_str("<h3>Alerts firing</h3><ul class=\"active-alerts\">");
        for a in &s.active_alerts {
            w!(
                out,
                "<li class=\"alert\" data-key=\"{}\"><b>{}</b> since {} · notified {} time{}{}</li>",
                esc(&a.key),
                esc(&a.summary),
                when(&lifeboat_repo::timestamp::text(a.since), now),
                a.notifications,
                if a.notifications == 1 { "" } else { "s" },
                a.last_notified
                    .map(|t| format!(", last {}", when(&lifeboat_repo::timestamp::text(t), now)))
                    .unwrap_or_default()
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>\n");
}

/// A row of the numbers people look at first.
pub(super) fn glance(out: &mut String, s: &Snapshot, now: Option<f64>) {
    if s.generated_at.is_none() {
        return;
    }
    out.push_str("<section id=\"glance\" class=\"cards\">");
    let card = |out: &mut String, class: &str, title: &str, value: String, note: String| {
        w!(
            out,
            "<div class=\"card {class}\"><div class=\"k\">{title}</div><div class=\"v\">{value}</div>\
             <div class=\"n\">{note}</div></div>"
        );
    };
    match (s.backups.last(), s.newest_backup_age_seconds) {
        (Some(b), age) => card(
            out,
            "",
            "Newest backup",
            age.map(|a| format!("{} ago", duration(a)))
                .unwrap_or_else(|| time_text(&b.stop_time)),
            format!("{} · {} backups", esc(&b.label), s.backups.len()),
        ),
        (None, _) => card(
            out,
            "bad",
            "Newest backup",
            "none".into(),
            "no complete backup".into(),
        ),
    }
    let lag = s
        .wal
        .archive_lag_seconds
        .map(duration)
        .unwrap_or_else(|| "unknown".into());
    let ready = s
        .wal
        .ready_segments
        .map(|n| format!("{n} segment{} waiting", if n == 1 { "" } else { "s" }))
        .unwrap_or_else(|| "pg_wal not readable".into());
    let gaps: usize = s.wal.timelines.iter().map(|t| t.gaps.len()).sum();
    let wal_class = if gaps > 0 { "bad" } else { "" };
    let wal_note = if gaps > 0 {
        format!("{ready} · {gaps} gap{} in the archive", plural(gaps))
    } else {
        ready
    };
    card(out, wal_class, "WAL archive lag", lag, wal_note);
    match s.drills.first() {
        Some(d) => card(
            out,
            if d.passed { "" } else { "bad" },
            "Last restore drill",
            if d.passed { "passed" } else { "FAILED" }.into(),
            format!(
                "{}{}",
                when(&lifeboat_repo::timestamp::text(d.finished), now),
                d.recovery_seconds
                    .map(|r| format!(" · recovery {}", duration(r)))
                    .unwrap_or_default()
            ),
        ),
        None => card(
            out,
            "",
            "Last restore drill",
            "none yet".into(),
            "a restore nobody tried is a hope".into(),
        ),
    }
    if let Some(age) = s.copy_age_seconds {
        let stale = s.findings.iter().any(|f| f.key == "copy_age");
        card(
            out,
            if stale { "bad" } else { "" },
            "Second repository",
            format!("{} behind", duration(age)),
            "since the last successful `copy` started".into(),
        );
    }
    if let (Some(label), Some(age)) = (&s.newest_dump, s.newest_dump_age_seconds) {
        card(
            out,
            if s.findings.iter().any(|f| f.key == "dump_age") {
                "bad"
            } else {
                ""
            },
            "Newest logical dump",
            format!("{} ago", duration(age)),
            format!(
                "{} · {} dump{}",
                esc(label),
                s.dumps,
                plural(s.dumps as usize)
            ),
        );
    }
    card(
        out,
        "",
        "Repository size",
        s.repository_bytes
            .map(bytes)
            .unwrap_or_else(|| "not measured yet".into()),
        format!("WAL: {} files", s.wal.wal_files),
    );
    for v in &s.volumes {
        let pct = if v.total_bytes > 0 {
            v.free_bytes as f64 * 100.0 / v.total_bytes as f64
        } else {
            0.0
        };
        card(
            out,
            if pct < 10.0 { "bad" } else { "" },
            &format!("Free on {}", esc(&v.name)),
            format!("{pct:.0}%"),
            format!(
                "{} of {} · {}",
                bytes(v.free_bytes),
                bytes(v.total_bytes),
                esc(&v.path)
            ),
        );
    }
    out.push_str("</section>\n");
}
