//! The dashboard: one self-contained HTML page rendered from the status snapshot.
//!
//! Everything is inline (CSS, two SVG charts, a few lines of JS) so the page works offline, behind
//! any proxy and with a strict Content-Security-Policy. The first screen answers the one question
//! that matters at 3 a.m., "can I restore right now, and to when?"; the sections below explain why.
//! Backup labels, job messages, alert texts and drill check queries are user data: every dynamic
//! string goes through [`esc`].
//!
//! This module assembles the page (head, header, footer) from its parts: `summary` (the banner
//! and the cards), `charts` (restore window and size SVGs), `tables` (backups, WAL, jobs, drills,
//! alerts sent), `stream` (the WAL receiver) and `format` (escaping, times, durations, sizes). The style sheet and the script
//! are `dashboard/style.css` and `dashboard/script.js`, included at compile time.

use std::fmt::Write as _;

use crate::metrics::unix_seconds;
use crate::status::Snapshot;

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

mod charts;
mod failover;
mod format;
mod stream;
mod summary;
mod tables;

pub use format::{bytes as human_bytes, esc};

use charts::{size, window};
use format::time_text;
use summary::{banner, glance};
use tables::{alerts, backups, drills, jobs, wal};

/// The page's style sheet and its few lines of script, inlined into the page.
const CSS: &str = include_str!("dashboard/style.css");
/// How old the status is by the viewer's clock (a stuck check loop shows here), and links that
/// keep `?token=` so they work on a protected daemon.
const JS: &str = include_str!("dashboard/script.js");

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
         <title>{} · {} · Lifeboat</title><style>\n{CSS}</style></head><body>\n",
        state,
        esc(&s.host)
    );
    header(&mut out, s, now);
    banner(&mut out, s, now);
    glance(&mut out, s, now);
    window(&mut out, s, now);
    backups(&mut out, s, now);
    wal(&mut out, s, now);
    stream::stream(&mut out, s, now);
    failover::failover(&mut out, s, now);
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
         this page reloads every {REFRESH_SECONDS} s.</footer>\n<script>\n{JS}</script></body></html>\n"
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

#[cfg(test)]
mod tests {
    use super::format::{bytes, duration};
    use super::*;
    use crate::samples::{self, drill, snapshot};
    use crate::status::{Finding, Severity};
    use lifeboat_repo::records::{ActiveAlert, JobRun, Outcome, SentAlert, SizeSample};

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
            since: time::macros::datetime!(2026-01-02 10:50:00 UTC),
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
            time: time::macros::datetime!(2026-01-02 10:00:00 UTC),
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
