//! The detail sections, one table each: backups, WAL archive per timeline, jobs, restore drills
//! and alerts sent.

use std::fmt::Write as _;

use lifeboat_repo::records::{DrillRecord, JobRun, Outcome};

use super::SENT_ALERTS_SHOWN;
use super::format::{bytes, duration, esc, outcome_name, plural, time_text, when};
use crate::metrics::unix_seconds;
use crate::status::{JobStatus, Snapshot};

pub(super) fn backups(out: &mut String, s: &Snapshot, now: Option<f64>) {
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

pub(super) fn wal(out: &mut String, s: &Snapshot, now: Option<f64>) {
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

pub(super) fn run_cell(run: Option<&JobRun>, now: Option<f64>, bad: bool) -> String {
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

pub(super) fn jobs(out: &mut String, s: &Snapshot, now: Option<f64>) {
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
pub(super) fn last_failed(j: &JobStatus) -> bool {
    match (&j.history.last_failure, &j.history.last_success) {
        (Some(f), Some(s)) => match (unix_seconds(&f.finished), unix_seconds(&s.finished)) {
            (Some(f), Some(s)) => f > s,
            _ => f.finished > s.finished,
        },
        (Some(_), None) => true,
        _ => false,
    }
}

pub(super) fn drills(out: &mut String, s: &Snapshot, now: Option<f64>) {
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

pub(super) fn drill_row(out: &mut String, d: &DrillRecord, now: Option<f64>) {
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
        when(&lifeboat_repo::timestamp::text(d.finished), now),
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

pub(super) fn alerts(out: &mut String, s: &Snapshot, now: Option<f64>) {
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
            when(&lifeboat_repo::timestamp::text(a.time), now),
            esc(&a.summary),
            esc(&a.key),
            list(&a.delivered),
            if a.failed.is_empty() { "" } else { "bad-text" },
            list(&a.failed)
        );
    }
    out.push_str("</tbody></table></section>\n");
}
