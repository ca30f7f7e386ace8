//! Formatting helpers for the dashboard: HTML escaping, times (absolute and relative to the
//! snapshot), durations and byte sizes. Every helper returning HTML escapes what it is given.

use lifeboat_repo::records::Outcome;
use time::OffsetDateTime;

use crate::metrics::unix_seconds;

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

pub(super) fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `2026-01-02 10:15:03 UTC`, from Unix seconds.
pub(super) fn unix_plain(t: f64) -> String {
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
pub(super) fn unix_text(t: f64) -> String {
    esc(&unix_plain(t))
}

/// A recorded time as HTML: readable when it parses, else the text as stored.
pub(super) fn time_text(text: &str) -> String {
    match unix_seconds(text) {
        Some(t) => format!("<span title=\"{}\">{}</span>", esc(text), unix_text(t)),
        None => esc(text),
    }
}

/// A time and how long ago (or ahead) it is from the snapshot's own time.
pub(super) fn when(text: &str, now: Option<f64>) -> String {
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
/// A byte count for people: `1.5 GiB`. The command line uses it too, so both say the same.
pub fn bytes(n: u64) -> String {
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
