//! The two SVG charts: the restore window as a bar with a mark per backup, and the repository
//! size over time.

use std::fmt::Write as _;

use lifeboat_engine::backup::BackupReport;
use lifeboat_repo::records::SizeSample;

use super::format::{bytes, esc, time_text, unix_plain, unix_text};
use crate::metrics::unix_seconds;
use crate::status::Snapshot;

/// Where the restorable span ends: the time the last contiguous WAL segment was archived, when
/// pg_stat_archiver's last archived file is that segment (or before it); else the newest
/// backup's stop, which is certainly covered.
fn wal_end_time(s: &Snapshot) -> Option<f64> {
    let latest = s.window.latest_wal.as_deref()?;
    let archived = s.wal.last_archived_wal.as_deref()?.get(..24)?;
    let t = unix_seconds(s.wal.last_archived_time.as_deref()?)?;
    (archived <= latest).then_some(t)
}

pub(super) fn window_end_text(s: &Snapshot) -> String {
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
pub(super) fn window(out: &mut String, s: &Snapshot, now: Option<f64>) {
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

/// Repository size over time; the y axis starts at 0 so growth is not exaggerated.
pub(super) fn size(out: &mut String, s: &Snapshot) {
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
