//! Recovery target times as PostgreSQL reads them: the forms accepted, the instant and whether
//! (and how) the text names its zone, and the form written into `recovery_target_time`.

use std::fs;
use std::path::PathBuf;

use time::OffsetDateTime;

/// The widest distance between a local time and UTC (UTC-12 to UTC+14).
const MAX_ZONE_OFFSET: time::Duration = time::Duration::hours(14);

/// The forms of a target time lifeboat reads, for messages.
pub const TARGET_TIME_FORMS: &str = "YYYY-MM-DD[ HH:MM[:SS[.ffffff]]] (a space or T between date and time), then a zone: Z, UTC, GMT, a numeric offset (+01, +0100, +01:00, -05:30), or a tz database name such as Europe/Paris (PostgreSQL resolves it); e.g. 2026-11-23 10:15:00+00";

/// How a target time named its time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetZone {
    /// No zone: the restored server reads the time in its own TimeZone.
    None,
    /// UTC or a numeric offset: the instant is exact.
    Fixed,
    /// A tz database name (`Europe/Paris`): PostgreSQL resolves it; lifeboat, which carries no tz
    /// database of its own, knows the instant only to within a day.
    Named,
}

/// A target time as lifeboat reads it: the instant, and whether the text named its time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetTime {
    /// Exact when `zone` is `Fixed`; else the written local time read as UTC.
    pub instant: OffsetDateTime,
    /// The instant is exact (UTC or a numeric offset was given).
    pub has_zone: bool,
    pub zone: TargetZone,
}

impl TargetTime {
    /// The form written into `recovery_target_time`: PostgreSQL rejects `Z`, so an exact time is
    /// written in UTC with `+00`; a zone-less time, or one with a zone name, stays as the user
    /// wrote it (the restored server reads it in its own TimeZone, or resolves the name).
    pub fn for_postgres(&self, original: &str) -> String {
        if !self.has_zone {
            return original.trim().to_string();
        }
        let utc = self.instant.to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
            utc.year(),
            u8::from(utc.month()),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second(),
            utc.microsecond()
        )
    }

    /// The earliest and latest instant the text can mean: exact with a zone, else within
    /// [`MAX_ZONE_OFFSET`] either side.
    pub(super) fn bounds(&self) -> (OffsetDateTime, OffsetDateTime) {
        if self.has_zone {
            (self.instant, self.instant)
        } else {
            (
                self.instant - MAX_ZONE_OFFSET,
                self.instant + MAX_ZONE_OFFSET,
            )
        }
    }
}

/// Read a target time as PostgreSQL reads a timestamp with time zone, in the forms of
/// [`TARGET_TIME_FORMS`]. `None` for anything else (including zone abbreviations such as CET
/// or PST, and zone names the system's tz database does not hold).
pub fn read_target_time(text: &str) -> Option<TargetTime> {
    let (local, zone) = split_target_time(text)?;
    let (zone, offset) = match zone {
        "" => (TargetZone::None, time::UtcOffset::UTC),
        z if ["z", "zulu", "utc", "ut", "gmt"]
            .iter()
            .any(|u| z.eq_ignore_ascii_case(u)) =>
        {
            (TargetZone::Fixed, time::UtcOffset::UTC)
        }
        z if z.starts_with(['+', '-']) => (TargetZone::Fixed, numeric_offset(z)?),
        z if is_tz_name(z) => (TargetZone::Named, time::UtcOffset::UTC),
        _ => return None,
    };
    Some(TargetTime {
        instant: local.assume_offset(offset),
        has_zone: zone == TargetZone::Fixed,
        zone,
    })
}

/// Parse a recovery target time (see [`read_target_time`]); a time without a zone, or with a
/// zone name, is read as UTC.
pub fn parse_target_time(text: &str) -> Option<OffsetDateTime> {
    read_target_time(text).map(|t| t.instant)
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.f]]]` and what follows (the zone, trimmed).
fn split_target_time(text: &str) -> Option<(time::PrimitiveDateTime, &str)> {
    let t = text.trim();
    let date_text = t.get(..10)?;
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(date_text, &date_format).ok()?;
    let rest = &t[10..];
    let rest = match rest.chars().next() {
        None => return Some((date.midnight(), "")),
        Some('T' | 't' | ' ') => rest[1..].trim_start(),
        Some(_) => return None,
    };
    let time_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(time_len);
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let number = |s: &str| -> Option<u8> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (h, m, sec) = match parts.as_slice() {
        [h, m] if frac.is_none() => (number(h)?, number(m)?, 0),
        [h, m, sec] => (number(h)?, number(m)?, number(sec)?),
        _ => return None,
    };
    let nanos = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{f:0<9}").parse::<u32>().ok()?
        }
        Some(_) => return None,
    };
    let clock = time::Time::from_hms_nano(h, m, sec, nanos).ok()?;
    Some((time::PrimitiveDateTime::new(date, clock), zone.trim()))
}

/// `+HH`, `+HHMM`, `+HH:MM` (or `-`), as PostgreSQL writes offsets; at most 15:59 as it allows.
fn numeric_offset(z: &str) -> Option<time::UtcOffset> {
    let sign: i8 = if z.starts_with('-') { -1 } else { 1 };
    let digits = &z[1..];
    let (h, m) = match digits.len() {
        2 => (digits, "00"),
        4 if !digits.contains(':') => digits.split_at(2),
        5 if digits.as_bytes()[2] == b':' => (&digits[..2], &digits[3..]),
        _ => return None,
    };
    if !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if h > 15 || m > 59 {
        return None;
    }
    time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// A time zone name the system's tz database holds (`$TZDIR` or /usr/share/zoneinfo): the same
/// database PostgreSQL builds from on the usual distributions, so the name it will resolve.
fn is_tz_name(name: &str) -> bool {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'))
        && !name.starts_with('/')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !plain {
        return false;
    }
    let dir = std::env::var_os("TZDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/zoneinfo"));
    let mut magic = [0u8; 4];
    fs::File::open(dir.join(name))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == b"TZif")
}

/// The date and time of a target time text, without its zone.
pub(super) fn strip_zone(text: &str) -> String {
    let t = text.trim();
    match read_target_time(t) {
        Some(target) if target.zone == TargetZone::Named => t
            .rsplit_once(' ')
            .map_or(t, |(head, _)| head.trim_end())
            .to_string(),
        _ => t.to_string(),
    }
}
