//! Times in the repository's records: `OffsetDateTime` in memory, RFC 3339 text on disk.
//!
//! The text is what the `time` crate's RFC 3339 formatter writes (UTC as `Z`, a fraction of a
//! second only when it is not zero, without trailing zeros): the format every record has been
//! written in, so a record read and written again keeps its bytes. Reading accepts any RFC 3339
//! time and keeps its offset. Use as `#[serde(with = "lifeboat_repo::timestamp")]` (or
//! `timestamp::option` for an `Option`).

use serde::{Deserialize, Deserializer, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `t` as RFC 3339. Fails only for a year outside 0..=9999 or an offset with seconds, which no
/// clock and no parsed record holds.
pub fn format(t: OffsetDateTime) -> Result<String, String> {
    t.format(&Rfc3339)
        .map_err(|e| format!("cannot write the time {t} as RFC 3339: {e}"))
}

/// `t` as RFC 3339 for display; the `Display` of `OffsetDateTime` where `format` fails.
pub fn text(t: OffsetDateTime) -> String {
    format(t).unwrap_or_else(|_| t.to_string())
}

/// An RFC 3339 time, e.g. `2026-01-02T10:00:12.5Z`.
pub fn parse(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-01-02T10:00:00Z: {e}"))
}

/// Now in UTC, to the microsecond: what a backup records as its start and stop (a restore
/// compares target times with them, so whole seconds would be too coarse).
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now)
}

/// Now in UTC, to the second.
pub fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*t).map_err(serde::ser::Error::custom)?)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// The same for an optional time (`null` when absent).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<std::borrow::Cow<str>>::deserialize(d)? {
            Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        t: OffsetDateTime,
        #[serde(with = "super::option")]
        o: Option<OffsetDateTime>,
    }

    #[test]
    fn round_trips_the_bytes_written() {
        for json in [
            r#"{"t":"2026-11-23T13:57:11.123456Z","o":null}"#,
            r#"{"t":"2026-11-23T13:57:11Z","o":"2026-11-23T13:57:11.5Z"}"#,
            r#"{"t":"2026-11-23T13:57:11.0001+02:00","o":null}"#,
        ] {
            let t: T = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&t).unwrap(), json);
        }
    }

    #[test]
    fn writes_what_the_writers_wrote() {
        let t = parse("2026-01-02T10:00:12.250000Z").unwrap();
        assert_eq!(format(t).unwrap(), "2026-01-02T10:00:12.25Z");
        assert_eq!(now_micros().nanosecond() % 1000, 0);
        assert_eq!(now_seconds().nanosecond(), 0);
    }

    #[test]
    fn rejects_what_is_not_rfc_3339() {
        let e = serde_json::from_str::<T>(r#"{"t":"2026-01-02 10:00","o":null}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an RFC 3339 time"), "{e}");
    }
}
