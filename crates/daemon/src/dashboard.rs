//! The dashboard: one self-contained HTML page rendered from the status snapshot.
//!
//! Everything is inline (CSS, two SVG charts, a few lines of JS) so the page works offline, behind
//! any proxy and with a strict Content-Security-Policy. The first screen answers the one question
//! that matters at 3 a.m., "can I restore right now, and to when?"; the sections below explain why.
//! Backup labels, job messages, alert texts and drill check queries are user data: every dynamic
//! string goes through [`esc`].

use std::fmt::Write as _;

use lifeboat_engine::backup::BackupReport;
use lifeboat_repo::records::{DrillRecord, JobRun, Outcome, SizeSample};
use time::OffsetDateTime;

use crate::metrics::unix_seconds;
use crate::status::{JobStatus, Severity, Snapshot};

/// Status data is small; a page reload every 30 s keeps a wall screen current without JS.
const REFRESH_SECONDS: u32 = 30;
/// Sent alerts shown (the record keeps 100).
const SENT_ALERTS_SHOWN: usize = 50;

/// `write!` into a String cannot fail.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// HTML-escape text for element content and double- or single-quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let now = s.generated_at.as_deref().and_then(unix_seconds);
    let mut out = String::with_capacity(32 * 1024);
    let state = if s.generated_at.is_none() {
        "Status not gathered yet"
    } else if s.recoverable {
        "Recoverable"
    } else {
        "NOT RECOVERABLE"
    };
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>{} · {} · Lifeboat</title><style>{CSS}</style></head><body>\n",
        state,
        esc(&s.host)
    );
    header(&mut out, s, now);
    banner(&mut out, s, now);
    glance(&mut out, s, now);
    window(&mut out, s, now);
    backups(&mut out, s, now);
    wal(&mut out, s, now);
    jobs(&mut out, s, now);
    drills(&mut out, s, now);
    alerts(&mut out, s, now);
    size(&mut out, s);
    w!(
        out,
        "<footer>Also: <a class=\"keep-query\" href=\"/metrics\">/metrics</a> · \
         <a class=\"keep-query\" href=\"/api/status\">/api/status</a> · \
         <a class=\"keep-query\" href=\"/api/backups\">/api/backups</a> · \
         <a class=\"keep-query\" href=\"/api/drills\">/api/drills</a> · \
         <a class=\"keep-query\" href=\"/api/jobs\">/api/jobs</a> · \
         this page reloads every {REFRESH_SECONDS} s.</footer>\n<script>{JS}</script></body></html>\n"
    );
    out
}

fn header(out: &mut String, s: &Snapshot, now: Option<f64>) {
    w!(
        out,
        "<header><span class=\"brand\">Lifeboat</span> <span class=\"host\">{}</span> \
         <span class=\"repo\" title=\"repository\">{}</span> <span class=\"muted\">v{}</span>",
        esc(&s.host),
        esc(&s.repository),
        esc(&s.version)
    );
    match (&s.generated_at, now) {
        (Some(at), Some(unix)) => w!(
            out,
            "<span id=\"generated\" data-unix=\"{unix:.0}\">status as of {} \
             <span class=\"age\"></span></span>",
            time_text(at)
        ),
        (Some(at), None) => w!(
            out,
            "<span id=\"generated\">status as of {}</span>",
            esc(at)
        ),
        (None, _) => {}
    }
    out.push_str("</header>\n");
}

/// The banner: recoverable or not, the restore window, and what is wrong now.
fn banner(out: &mut String, s: &Snapshot, now: Option<f64>) {
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
                when(&a.since, now),
                a.notifications,
                if a.notifications == 1 { "" } else { "s" },
                a.last_notified
                    .as_deref()
                    .map(|t| format!(", last {}", when(t, now)))
                    .unwrap_or_default()
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>\n");
}

/// A row of the numbers people look at first.
fn glance(out: &mut String, s: &Snapshot, now: Option<f64>) {
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
                when(&d.finished, now),
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

/// Where the restorable span ends: the time the last contiguous WAL segment was archived, when
/// pg_stat_archiver's last archived file is that segment (or before it); else the newest
/// backup's stop, which is certainly covered.
fn wal_end_time(s: &Snapshot) -> Option<f64> {
    let latest = s.window.latest_wal.as_deref()?;
    let archived = s.wal.last_archived_wal.as_deref()?.get(..24)?;
    let t = unix_seconds(s.wal.last_archived_time.as_deref()?)?;
    (archived <= latest).then_some(t)
}

fn window_end_text(s: &Snapshot) -> String {
    match (&s.window.latest_wal, wal_end_time(s)) {
        (Some(seg), Some(t)) => format!(
            "{} <span class=\"muted\">(end of WAL {})</span>",
            unix_text(t),
            esc(seg)
        ),
        (Some(seg), None) => format!("end of WAL {}", esc(seg)),
        (None, _) => s
            .window
            .latest_backup
            .as_deref()
            .map(time_text)
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// The restore window as a bar: grey from the oldest backup's start, green where a restore can
/// land, amber from there to now, a tick per backup.
fn window(out: &mut String, s: &Snapshot, now: Option<f64>) {
    out.push_str("<section id=\"window\"><h2>Restore window</h2>");
    let times: Vec<(&BackupReport, f64, f64)> = s
        .backups
        .iter()
        .filter_map(|b| Some((b, unix_seconds(&b.start_time)?, unix_seconds(&b.stop_time)?)))
        .collect();
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        out.push_str("<p class=\"bad-text\">No complete backup: nothing can be restored yet.</p></section>\n");
        return;
    };
    let t0 = first.1;
    let covered_from = first.2;
    let covered_to = wal_end_time(s).unwrap_or(last.2).max(last.2);
    let t1 = now.unwrap_or(covered_to).max(covered_to);
    let span = (t1 - t0).max(1.0);
    let (left, width) = (10.0, 980.0);
    let x = |t: f64| left + (t - t0) / span * width;
    let cover_class = if s.recoverable {
        "covered"
    } else {
        "covered bad"
    };
    w!(
        out,
        "<svg class=\"timeline\" viewBox=\"0 0 1000 78\" role=\"img\" aria-label=\"restore window\">\
         <rect class=\"track\" x=\"{left}\" y=\"22\" width=\"{width}\" height=\"22\" rx=\"3\"/>\
         <rect class=\"{cover_class}\" x=\"{:.1}\" y=\"22\" width=\"{:.1}\" height=\"22\"><title>restorable: {} → {}</title></rect>",
        x(covered_from),
        (x(covered_to) - x(covered_from)).max(2.0),
        esc(&unix_plain(covered_from)),
        esc(&unix_plain(covered_to))
    );
    if t1 > covered_to {
        w!(
            out,
            "<rect class=\"uncovered\" x=\"{:.1}\" y=\"22\" width=\"{:.1}\" height=\"22\">\
             <title>not yet known to be archived</title></rect>",
            x(covered_to),
            x(t1) - x(covered_to)
        );
    }
    for (b, start, stop) in &times {
        w!(
            out,
            "<g class=\"backup-mark\"><line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"16\" y2=\"50\"/>\
             <circle cx=\"{0:.1}\" cy=\"16\" r=\"4\"/><title>backup {1}: {2} → {3}</title></g>",
            x(*stop),
            esc(&b.label),
            esc(&unix_plain(*start)),
            esc(&unix_plain(*stop))
        );
    }
    if let Some(n) = now {
        w!(
            out,
            "<line class=\"now\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"8\" y2=\"56\"/>\
             <text x=\"{0:.1}\" y=\"7\" text-anchor=\"end\">now</text>",
            x(n)
        );
    }
    w!(
        out,
        "<text x=\"{left}\" y=\"70\">{}</text><text x=\"{}\" y=\"70\" text-anchor=\"end\">{}</text></svg>",
        esc(&unix_plain(t0)),
        left + width,
        esc(&unix_plain(t1))
    );
    w!(
        out,
        "<p class=\"legend\"><span class=\"sw covered\"></span> a restore can reach \
         <span class=\"sw uncovered\"></span> not (yet) in the archive \
         <span class=\"sw mark\"></span> backup · WAL to {}</p></section>\n",
        s.window
            .latest_wal
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "unknown".into())
    );
}

fn backups(out: &mut String, s: &Snapshot, now: Option<f64>) {
    w!(
        out,
        "<section id=\"backups\"><h2>Backups <span class=\"muted\">({})</span></h2>",
        s.backups.len()
    );
    if s.backups.is_empty() {
        out.push_str("<p class=\"muted\">No complete backup yet.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Label</th><th>Started</th><th>Finished</th><th>Duration</th>\
         <th class=\"num\">Size</th><th class=\"num\">Stored</th><th class=\"num\">Files reused</th>\
         <th>WAL</th><th>Pages</th></tr></thead><tbody>",
    );
    for b in s.backups.iter().rev() {
        let pages = if b.bad_pages.is_empty() {
            "<span class=\"ok-text\">ok</span>".to_string()
        } else {
            format!("<span class=\"bad-text\">{} bad</span>", b.bad_pages.len())
        };
        w!(
            out,
            "<tr class=\"backup\" data-label=\"{0}\"><td class=\"label\">{0}</td><td>{1}</td><td>{2}</td>\
             <td>{3}</td><td class=\"num\">{4}</td><td class=\"num\">{5}</td><td class=\"num\">{6} of {7}</td>\
             <td class=\"mono small\">tl {8} · {9} → {10}</td><td>{11}</td></tr>",
            esc(&b.label),
            time_text(&b.start_time),
            when(&b.stop_time, now),
            duration(b.duration_seconds),
            bytes(b.size),
            bytes(b.stored_size),
            b.files_reused,
            b.files,
            b.timeline,
            esc(&b.start_wal),
            esc(&b.stop_wal),
            pages
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn wal(out: &mut String, s: &Snapshot, now: Option<f64>) {
    let w = &s.wal;
    out.push_str("<section id=\"wal\"><h2>WAL archive</h2><p>");
    let mut facts = Vec::new();
    if let Some(lag) = w.archive_lag_seconds {
        facts.push(format!("archive lag <b>{}</b>", duration(lag)));
    }
    if let Some(n) = w.ready_segments {
        facts.push(format!("<b>{n}</b> segment{} waiting", plural(n as usize)));
    }
    if let Some(seg) = &w.last_archived_wal {
        facts.push(format!(
            "last archived <span class=\"mono\">{}</span>{}",
            esc(seg),
            w.last_archived_time
                .as_deref()
                .map(|t| format!(" {}", when(t, now)))
                .unwrap_or_default()
        ));
    }
    if let Some(seg) = &w.last_failed_wal {
        let failed_after = match (
            w.last_failed_time.as_deref().and_then(unix_seconds),
            w.last_archived_time.as_deref().and_then(unix_seconds),
        ) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            _ => false,
        };
        facts.push(format!(
            "<span class=\"{}\">last failure <span class=\"mono\">{}</span>{}</span>",
            if failed_after { "bad-text" } else { "" },
            esc(seg),
            w.last_failed_time
                .as_deref()
                .map(|t| format!(" {}", when(t, now)))
                .unwrap_or_default()
        ));
    }
    if let Some(n) = w.failed_count {
        facts.push(format!(
            "{n} failed attempt{} since the stats reset",
            plural(n as usize)
        ));
    }
    facts.push(format!(
        "{} files, {} in the repository",
        w.wal_files,
        bytes(w.wal_stored_bytes)
    ));
    out.push_str(&facts.join(" · "));
    out.push_str("</p>");
    if w.timelines.is_empty() {
        out.push_str("<p class=\"muted\">No WAL archived yet.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Timeline</th><th>First segment</th><th>Last segment</th>\
         <th class=\"num\">Segments</th><th>Continuity</th></tr></thead><tbody>",
    );
    for t in &w.timelines {
        let continuity = if t.gaps.is_empty() {
            "<span class=\"ok-text\">no gap</span>".to_string()
        } else {
            let mut g = String::from("<ul class=\"gaps\">");
            for gap in &t.gaps {
                w!(
                    g,
                    "<li class=\"gap\">missing <span class=\"mono\">{}</span> … <span class=\"mono\">{}</span> ({} segment{})</li>",
                    esc(&gap.first_missing),
                    esc(&gap.last_missing),
                    gap.count,
                    plural(gap.count as usize)
                );
            }
            g.push_str("</ul>");
            g
        };
        let partial = if t.partial_files.is_empty() {
            String::new()
        } else {
            format!(
                "<div class=\"muted small\">{} .partial file{}</div>",
                t.partial_files.len(),
                plural(t.partial_files.len())
            )
        };
        w!(
            out,
            "<tr class=\"timeline{}\"><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td>\
             <td class=\"num\">{}</td><td>{continuity}{partial}</td></tr>",
            if t.gaps.is_empty() { "" } else { " has-gaps" },
            t.timeline,
            esc(&t.first_segment),
            esc(&t.last_segment),
            t.segments
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn run_cell(run: Option<&JobRun>, now: Option<f64>, bad: bool) -> String {
    let Some(r) = run else {
        return "<span class=\"muted\">never</span>".into();
    };
    let message = r
        .message
        .as_deref()
        .map(|m| format!("<div class=\"msg\">{}</div>", esc(m)))
        .unwrap_or_default();
    // docs/EXIT_CODES.md explains each code; 0 says nothing worth the space.
    let code = match r.exit_code {
        Some(c) if c != 0 => format!(" <span class=\"muted small\">exit {c}</span>"),
        _ => String::new(),
    };
    format!(
        "<span class=\"{}\">{}</span>{code}{message}",
        if bad { "bad-text" } else { "" },
        when(&r.finished, now)
    )
}

fn jobs(out: &mut String, s: &Snapshot, now: Option<f64>) {
    out.push_str("<section id=\"jobs\"><h2>Jobs</h2>");
    if s.jobs.is_empty() {
        out.push_str("<p class=\"muted\">No job scheduled or recorded.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Job</th><th>Schedule</th><th>Next run</th><th>Running</th>\
         <th>Last success</th><th>Last failure</th><th>Last run</th><th class=\"num\">Recorded runs</th>\
         </tr></thead><tbody>",
    );
    for j in &s.jobs {
        let h = &j.history;
        let failing = last_failed(j);
        let last = h.last_run();
        let last_cell = match last {
            Some(r) => format!(
                "<span class=\"outcome {0}\">{0}</span> in {1}",
                outcome_name(r.outcome),
                duration(r.duration_seconds)
            ),
            None => "<span class=\"muted\">never</span>".into(),
        };
        let count = |o: Outcome| h.runs.iter().filter(|r| r.outcome == o).count();
        w!(
            out,
            "<tr class=\"job{}\" data-job=\"{}\"><td><b>{}</b></td><td class=\"mono nowrap\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{} ok · {} failed</td></tr>",
            if failing { " failing" } else { "" },
            esc(&j.job),
            esc(&j.job),
            j.schedule
                .as_deref()
                .map(esc)
                .unwrap_or_else(|| "<span class=\"muted\">not scheduled</span>".into()),
            j.next_run
                .as_deref()
                .map(|t| when(t, now))
                .unwrap_or_else(|| "<span class=\"muted\">—</span>".into()),
            j.running_since
                .as_deref()
                .map(|t| format!(
                    "<span class=\"running\">running since {}</span>",
                    when(t, now)
                ))
                .unwrap_or_else(|| "no".into()),
            run_cell(h.last_success.as_ref(), now, false),
            run_cell(h.last_failure.as_ref(), now, failing),
            last_cell,
            count(Outcome::Succeeded),
            count(Outcome::Failed)
        );
    }
    out.push_str("</tbody></table></section>\n");
}

/// The job's last failure is newer than its last success.
fn last_failed(j: &JobStatus) -> bool {
    match (&j.history.last_failure, &j.history.last_success) {
        (Some(f), Some(s)) => match (unix_seconds(&f.finished), unix_seconds(&s.finished)) {
            (Some(f), Some(s)) => f > s,
            _ => f.finished > s.finished,
        },
        (Some(_), None) => true,
        _ => false,
    }
}

fn drills(out: &mut String, s: &Snapshot, now: Option<f64>) {
    out.push_str("<section id=\"drills\"><h2>Restore drills</h2>");
    if s.drills.is_empty() {
        out.push_str(
            "<p class=\"muted\">No drill yet. <code>lifeboat drill</code> restores a backup into a \
             scratch directory, starts it and checks it; schedule one with \
             <code>[schedule] drill</code>.</p></section>\n",
        );
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Finished</th><th>Backup</th><th>Target</th><th>Result</th>\
         <th class=\"num\">Restore</th><th class=\"num\">Replay</th><th class=\"num\">Recovery</th>\
         <th class=\"num\">Data loss</th><th>Checks</th></tr></thead><tbody>",
    );
    for d in &s.drills {
        drill_row(out, d, now);
    }
    out.push_str("</tbody></table></section>\n");
}

fn drill_row(out: &mut String, d: &DrillRecord, now: Option<f64>) {
    let class = if d.passed { "passed" } else { "failed" };
    let result = if d.passed {
        "<span class=\"result ok-text\">passed</span>".to_string()
    } else {
        format!(
            "<span class=\"result bad-text\">failed{}</span>{}",
            d.failed_step
                .as_deref()
                .map(|step| format!(" at <b>{}</b>", esc(step)))
                .unwrap_or_default(),
            d.failure
                .as_deref()
                .map(|f| format!("<div class=\"msg\">{}</div>", esc(f)))
                .unwrap_or_default()
        )
    };
    let secs = |v: Option<f64>| v.map(duration).unwrap_or_else(|| "—".into());
    let checks = if d.checks.is_empty() {
        "<span class=\"muted\">none</span>".to_string()
    } else {
        let passed = d.checks.iter().filter(|c| c.passed).count();
        let mut c = format!(
            "<details><summary>{passed} of {} passed</summary><ul class=\"checks\">",
            d.checks.len()
        );
        for check in &d.checks {
            w!(
                c,
                "<li class=\"check {}\"><code>{}</code>{}</li>",
                if check.passed { "passed" } else { "failed" },
                esc(&check.name),
                if check.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", esc(&check.detail))
                }
            );
        }
        c.push_str("</ul></details>");
        c
    };
    w!(
        out,
        "<tr class=\"drill {class}\" data-id=\"{}\"><td>{}<div class=\"muted small\">{} on {}</div></td>\
         <td class=\"label\">{}<div class=\"muted small\">{}</div></td><td class=\"mono small\">{}</td>\
         <td>{result}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td>{checks}</td></tr>",
        esc(&d.id),
        when(&d.finished, now),
        esc(&d.trigger),
        esc(&d.host),
        d.backup.as_deref().map(esc).unwrap_or_else(|| "—".into()),
        esc(&d.backup_choice),
        esc(&d.target),
        secs(d.restore_seconds),
        secs(d.replay_seconds),
        secs(d.recovery_seconds),
        secs(d.data_loss_seconds),
    );
}

fn alerts(out: &mut String, s: &Snapshot, now: Option<f64>) {
    out.push_str("<section id=\"alerts\"><h2>Alerts sent</h2>");
    if s.sent_alerts.is_empty() {
        out.push_str("<p class=\"muted\">None.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Time</th><th>Kind</th><th>Problem</th><th>Delivered to</th>\
         <th>Failed</th></tr></thead><tbody>",
    );
    for a in s.sent_alerts.iter().rev().take(SENT_ALERTS_SHOWN) {
        let list = |v: &[String]| {
            if v.is_empty() {
                "—".to_string()
            } else {
                v.iter().map(|x| esc(x)).collect::<Vec<_>>().join(", ")
            }
        };
        w!(
            out,
            "<tr class=\"sent {0}\"><td>{1}</td><td>{0}</td><td><b>{2}</b><div class=\"muted small\">{3}</div></td>\
             <td>{4}</td><td class=\"{5}\">{6}</td></tr>",
            esc(&a.kind),
            when(&a.time, now),
            esc(&a.summary),
            esc(&a.key),
            list(&a.delivered),
            if a.failed.is_empty() { "" } else { "bad-text" },
            list(&a.failed)
        );
    }
    out.push_str("</tbody></table></section>\n");
}

/// Repository size over time; the y axis starts at 0 so growth is not exaggerated.
fn size(out: &mut String, s: &Snapshot) {
    out.push_str("<section id=\"size\"><h2>Repository size</h2>");
    let samples: &[SizeSample] = &s.size_history;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        out.push_str("<p class=\"muted\">Not measured yet.</p></section>\n");
        return;
    };
    if samples.len() == 1 {
        w!(
            out,
            "<p>{} on {} <span class=\"muted\">(one measurement so far; the chart needs two)</span></p></section>\n",
            bytes(first.bytes),
            esc(&unix_plain(first.time as f64))
        );
        return;
    }
    let max = samples.iter().map(|p| p.bytes).max().unwrap_or(0).max(1) as f64;
    let (t0, t1) = (first.time as f64, last.time as f64);
    let span = (t1 - t0).max(1.0);
    let (left, top, width, height) = (70.0, 10.0, 910.0, 160.0);
    let x = |t: i64| left + (t as f64 - t0) / span * width;
    let y = |b: u64| top + height - b as f64 / max * height;
    let points: Vec<String> = samples
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.time), y(p.bytes)))
        .collect();
    let points = points.join(" ");
    w!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 1000 200\" role=\"img\" aria-label=\"repository size over time\">\
         <line class=\"axis\" x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{bottom}\"/>\
         <line class=\"axis\" x1=\"{left}\" x2=\"{right}\" y1=\"{bottom}\" y2=\"{bottom}\"/>\
         <polygon class=\"area\" points=\"{left},{bottom} {points} {lastx:.1},{bottom}\"/>\
         <polyline class=\"line\" points=\"{points}\"/>\
         <circle class=\"dot\" cx=\"{lastx:.1}\" cy=\"{lasty:.1}\" r=\"3\"><title>{lastb}</title></circle>\
         <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{maxb}</text>\
         <text x=\"{tx}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <text x=\"{left}\" y=\"195\">{from}</text><text x=\"{right}\" y=\"195\" text-anchor=\"end\">{to}</text></svg>",
        bottom = top + height,
        right = left + width,
        lastx = x(last.time),
        lasty = y(last.bytes),
        lastb = bytes(last.bytes),
        tx = left - 6.0,
        ty = top + 8.0,
        maxb = bytes(max as u64),
        from = esc(&unix_plain(t0)),
        to = esc(&unix_plain(t1)),
    );
    w!(
        out,
        "<p class=\"legend\">now {} · {} measurements</p></section>\n",
        bytes(last.bytes),
        samples.len()
    );
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `2026-01-02 10:15:03 UTC`, from Unix seconds.
fn unix_plain(t: f64) -> String {
    match OffsetDateTime::from_unix_timestamp(t.floor() as i64) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("{t:.0}"),
    }
}

/// Unix seconds as HTML.
fn unix_text(t: f64) -> String {
    esc(&unix_plain(t))
}

/// A recorded time as HTML: readable when it parses, else the text as stored.
fn time_text(text: &str) -> String {
    match unix_seconds(text) {
        Some(t) => format!("<span title=\"{}\">{}</span>", esc(text), unix_text(t)),
        None => esc(text),
    }
}

/// A time and how long ago (or ahead) it is from the snapshot's own time.
fn when(text: &str, now: Option<f64>) -> String {
    let base = time_text(text);
    match (unix_seconds(text), now) {
        (Some(t), Some(now)) => {
            let rel = if now >= t {
                format!("{} ago", duration(now - t))
            } else {
                format!("in {}", duration(t - now))
            };
            format!("{base} <span class=\"rel\">({rel})</span>")
        }
        _ => base,
    }
}

/// `850 ms`, `12.5 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h`.
pub(crate) fn duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.max(0.0);
    if s == 0.0 {
        return "0 s".into();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1000.0);
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    if whole < 3600 {
        return format!("{} min {} s", whole / 60, whole % 60);
    }
    if whole < 86_400 {
        return format!("{} h {} min", whole / 3600, whole % 3600 / 60);
    }
    format!("{} d {} h", whole / 86_400, whole % 86_400 / 3600)
}

/// Binary units, one decimal: `1.5 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

const CSS: &str = r#"
:root{--bg:#f6f8fa;--fg:#1f2328;--muted:#656d76;--card:#fff;--line:#d0d7de;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--track:#e1e4e8;--amber:#f0b429}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#8d96a0;--card:#161b22;--line:#30363d;--ok:#2ea043;--bad:#f85149;--warn:#d29922;--track:#30363d}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1280px;padding:12px 20px 40px;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:baseline;padding:6px 0 12px;color:var(--muted)}
header .brand{font-weight:700;color:var(--fg);font-size:16px}header .host{font-weight:600;color:var(--fg)}
#generated{margin-left:auto}#generated.stale{color:var(--bad);font-weight:600}
.banner{border-radius:10px;padding:20px 26px;color:#fff;margin-bottom:14px}
.banner.ok{background:var(--ok)}.banner.bad{background:var(--bad)}.banner.unknown{background:#6e7781}
.banner.ok.warn{background:linear-gradient(90deg,var(--ok) 70%,var(--warn))}
.banner .headline{font-size:34px;font-weight:700;line-height:1.2}
.banner .reason{font-size:22px;font-weight:600}
.banner .restore-window{font-size:18px;margin-top:6px}.banner .muted{color:#ffffffcc}
.banner .problem-count{margin-top:6px;font-size:16px;font-weight:600}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin-bottom:14px}
section.banner{border:0}section.cards{background:none;border:0;padding:0;display:flex;flex-wrap:wrap;gap:10px}
h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:10px 0 6px}
.card{flex:1 1 170px;background:var(--card);border:1px solid var(--line);border-left:5px solid var(--ok);border-radius:8px;padding:10px 12px}
.card.bad{border-left-color:var(--bad)}.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:700}.card .n{color:var(--muted);font-size:12px;overflow-wrap:anywhere}
.card.bad .v{color:var(--bad)}
ul.findings{list-style:none;margin:0;padding:0}
.finding{padding:8px 10px;border-left:5px solid var(--warn);margin-bottom:6px;background:var(--bg);border-radius:4px}
.finding.critical{border-left-color:var(--bad)}.finding .sev{text-transform:uppercase;font-size:11px;font-weight:700;color:var(--warn)}
.finding.critical .sev{color:var(--bad)}.finding .detail{color:var(--muted)}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600}tbody tr:nth-child(even){background:var(--bg)}
.num{text-align:right;white-space:nowrap}.mono,code,.label{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.small{font-size:12px}.nowrap{white-space:nowrap}.muted,.rel{color:var(--muted)}.ok-text{color:var(--ok);font-weight:600}.bad-text{color:var(--bad);font-weight:600}
.msg{color:var(--bad);font-size:12px;white-space:pre-wrap;max-width:420px}
tr.drill.failed td:first-child,tr.job.failing td:first-child{border-left:4px solid var(--bad)}
tr.drill.passed td:first-child{border-left:4px solid var(--ok)}
ul.gaps{margin:0;padding-left:16px;color:var(--bad);font-weight:600}ul.checks{margin:4px 0 0;padding-left:16px}
li.check.failed{color:var(--bad)}.outcome.failed{color:var(--bad);font-weight:600}.outcome.succeeded{color:var(--ok)}
.running{color:var(--warn);font-weight:600}
svg{width:100%;height:auto;display:block}svg text{font-size:12px;fill:var(--muted)}
.track{fill:var(--track)}.covered{fill:var(--ok)}.covered.bad{fill:var(--bad)}.uncovered{fill:var(--amber);opacity:.7}
.backup-mark line{stroke:var(--fg);stroke-width:1.5}.backup-mark circle{fill:var(--fg)}
line.now{stroke:var(--muted);stroke-dasharray:3 3}
.chart .axis{stroke:var(--line)}.chart .line{fill:none;stroke:#0969da;stroke-width:2}.chart .area{fill:#0969da;opacity:.12}.chart .dot{fill:#0969da}
.legend{color:var(--muted);font-size:12px;margin:6px 0 0}.sw{display:inline-block;width:12px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
.sw.covered{background:var(--ok)}.sw.uncovered{background:var(--amber)}.sw.mark{background:var(--fg);width:3px}
footer{color:var(--muted);font-size:12px}a{color:#0969da}
"#;

/// How old the status is by the viewer's clock (a stuck check loop shows here), and links that
/// keep `?token=` so they work on a protected daemon.
const JS: &str = r#"
(function(){
var g=document.getElementById('generated');
if(g&&g.dataset.unix){var t=+g.dataset.unix,a=g.querySelector('.age');
function tick(){var s=Math.max(0,Math.round(Date.now()/1000-t));
a.textContent='('+(s<120?s+' s':Math.round(s/60)+' min')+' ago)';
if(s>600){g.classList.add('stale');a.textContent+=': the daemon has not refreshed its status; is it stuck?';}}
tick();setInterval(tick,1000);}
if(location.search){document.querySelectorAll('a.keep-query').forEach(function(l){l.href+=location.search;});}
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{self, drill, snapshot};
    use crate::status::Finding;
    use lifeboat_repo::records::{ActiveAlert, SentAlert};

    fn section<'a>(page: &'a str, id: &str) -> &'a str {
        let start = page
            .find(&format!("<section id=\"{id}\""))
            .unwrap_or_else(|| panic!("no section {id}"));
        let len = page[start..]
            .find("</section>")
            .unwrap_or(page.len() - start);
        &page[start..start + len]
    }

    #[test]
    fn recoverable_banner_shows_the_window() {
        let page = render(&snapshot());
        let banner = section(&page, "recoverable");
        assert!(banner.contains("class=\"banner ok\""), "{banner}");
        assert!(banner.contains("Recoverable now"));
        assert!(banner.contains("2026-01-02 10:00:12 UTC"), "{banner}");
        assert!(banner.contains("2026-01-02 10:59:00 UTC"), "{banner}");
        assert!(banner.contains("000000010000000000000009"));
        assert!(!page.contains("id=\"problems\""));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\""));
        // Self-contained: nothing fetched from anywhere.
        assert!(!page.contains("src=") && !page.contains("<link"));
    }

    #[test]
    fn not_recoverable_banner_gives_the_reason_and_problems() {
        let mut s = snapshot();
        s.recoverable = false;
        s.recoverable_reason = Some("WAL gap after the newest backup".into());
        s.findings.push(Finding {
            key: "wal_gap".into(),
            severity: Severity::Critical,
            summary: "WAL gap 4..5".into(),
            detail: "take a backup now".into(),
        });
        s.active_alerts.push(ActiveAlert {
            key: "wal_gap".into(),
            summary: "WAL gap".into(),
            detail: "d".into(),
            since: "2026-01-02T10:50:00Z".into(),
            last_notified: None,
            notifications: 1,
        });
        s.wal.timelines[0].gaps.push(samples::gap());
        let page = render(&s);
        let banner = section(&page, "recoverable");
        assert!(banner.contains("class=\"banner bad\""));
        assert!(banner.contains(
            "NOT recoverable: <span class=\"reason\">WAL gap after the newest backup</span>"
        ));
        assert!(
            banner.contains("1 problem need attention (1 critical)"),
            "{banner}"
        );
        let problems = section(&page, "problems");
        assert!(problems.contains("class=\"finding critical\""));
        assert!(problems.contains("take a backup now"));
        assert!(problems.contains("Alerts firing"));
        assert!(section(&page, "wal").contains("<li class=\"gap\">missing"));
        assert!(page.contains("<title>NOT RECOVERABLE"));
    }

    #[test]
    fn before_the_first_check_the_banner_says_so() {
        let page = render(&Snapshot::default());
        assert!(section(&page, "recoverable").contains("class=\"banner unknown\""));
        assert!(section(&page, "backups").contains("No complete backup yet"));
        assert!(section(&page, "size").contains("Not measured yet"));
    }

    #[test]
    fn user_data_is_escaped_everywhere() {
        let mut s = snapshot();
        let evil = "<script>alert('x')</script>&\"";
        s.host = evil.into();
        s.backups[0].label = evil.into();
        s.recoverable = false;
        s.recoverable_reason = Some(evil.into());
        s.drills[0].failure = Some(evil.into());
        s.drills[0].passed = false;
        s.drills[0].checks[0].name = evil.into();
        s.jobs[0].history.record(JobRun {
            message: Some(evil.into()),
            ..samples::run(Outcome::Failed, "2026-01-02T10:00:00Z")
        });
        s.sent_alerts.push(SentAlert {
            time: "2026-01-02T10:00:00Z".into(),
            key: evil.into(),
            kind: "firing".into(),
            summary: evil.into(),
            delivered: vec![evil.into()],
            failed: Vec::new(),
        });
        let page = render(&s);
        assert!(!page.contains("<script>alert"), "unescaped user data");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
        // The only script is ours.
        assert_eq!(page.matches("<script>").count(), 1);
    }

    #[test]
    fn a_drill_is_shown_with_its_numbers_and_checks() {
        let page = render(&snapshot());
        let drills = section(&page, "drills");
        assert!(drills.contains("<tr class=\"drill passed\""), "{drills}");
        assert!(drills.contains("20260102T100000Z"));
        assert!(drills.contains("25.5 s") && drills.contains("800 ms"));
        assert!(drills.contains("1 of 1 passed"));
        assert!(
            drills.contains("&lt;&gt; &#39;&lt;b&gt;&#39;"),
            "check query escaped"
        );

        let mut s = snapshot();
        s.drills = vec![drill(false)];
        let page = render(&s);
        let drills = section(&page, "drills");
        assert!(drills.contains("<tr class=\"drill failed\""));
        assert!(drills.contains("failed at <b>check</b>"));
        assert!(drills.contains("query returned &lt;nothing&gt;"));
    }

    #[test]
    fn backups_table_and_timeline() {
        let page = render(&snapshot());
        let b = section(&page, "backups");
        assert!(b.contains("data-label=\"20260102T100000Z\""));
        assert!(b.contains("5.0 MiB") && b.contains("1.0 MiB") && b.contains("850 of 900"));
        let w = section(&page, "window");
        assert!(w.contains("<svg class=\"timeline\""));
        assert_eq!(w.matches("class=\"backup-mark\"").count(), 1);
    }

    #[test]
    fn size_chart_handles_zero_one_and_many_samples() {
        let mut s = snapshot();
        s.size_history = vec![SizeSample {
            time: 1_767_348_000,
            bytes: 1 << 30,
        }];
        let one = render(&s);
        assert!(section(&one, "size").contains("1.0 GiB"));
        assert!(!section(&one, "size").contains("<svg"));
        s.size_history.push(SizeSample {
            time: 1_767_351_600,
            bytes: 2 << 30,
        });
        s.size_history.push(SizeSample {
            time: 1_767_351_600,
            bytes: 0,
        });
        let many = render(&s);
        let size = section(&many, "size");
        assert!(size.contains("<polyline class=\"line\""));
        assert!(!size.contains("NaN") && !size.contains("inf"));
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(0.0), "0 s");
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(184.0), "3 min 4 s");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 4 h");
    }
}
