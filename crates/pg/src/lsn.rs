//! Log sequence numbers: byte positions in the endless WAL stream.
//!
//! This module owns [`Lsn`] and its one text form, `HI/LO` in upper-case hex as PostgreSQL prints
//! it (`0/16B3748`), used in `Display`, parsing and serde alike. It also owns the arithmetic that
//! maps a position to the WAL segment holding it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in the WAL, as PostgreSQL's `XLogRecPtr` / `pg_lsn`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: {reason}")]
pub struct LsnParseError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Lsn {
    /// The invalid position PostgreSQL uses for "none" (`InvalidXLogRecPtr`).
    pub const INVALID: Lsn = Lsn(0);

    /// Number of the segment holding this position (`XLByteToSeg`).
    ///
    /// # Panics
    /// If `seg_size` is zero, like any division by zero.
    #[must_use]
    pub fn segment_number(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// Offset of this position inside its segment (`XLogSegmentOffset`).
    ///
    /// # Panics
    /// If `seg_size` is zero, like any division by zero.
    #[must_use]
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// `self + n`, or `None` past the end of the 64-bit WAL space.
    #[must_use]
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses `HI/LO`, each half 1 to 8 hex digits. Lower-case digits are accepted because
    /// PostgreSQL's own `pg_lsn` input accepts them and people type them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| LsnParseError {
            input: s.to_owned(),
            reason,
        };
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| fail("expected HI/LO with a '/'"))?;
        let hi = parse_half(hi).map_err(fail)?;
        let lo = parse_half(lo).map_err(fail)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// One half of an LSN. Checks the characters itself because `from_str_radix` would also take a
/// leading `+`.
fn parse_half(half: &str) -> Result<u32, &'static str> {
    if half.is_empty() {
        return Err("each half needs at least one hex digit");
    }
    if half.len() > 8 {
        return Err("each half has at most 8 hex digits");
    }
    if !half.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected hex digits");
    }
    u32::from_str_radix(half, 16).map_err(|_| "expected hex digits")
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1_0000_00A0).to_string(), "1/A0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_both_cases() {
        assert_eq!("0/16B3748".parse(), Ok(Lsn(0x16B_3748)));
        assert_eq!("0/16b3748".parse(), Ok(Lsn(0x16B_3748)));
        assert_eq!("00000001/000000A0".parse(), Ok(Lsn(0x1_0000_00A0)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "123456789/0",
            "0/123456789",
            "g/0",
            "0/+1",
            "+0/1",
            " 0/1",
            "0/1 ",
            "0x1/0",
            "-1/0",
        ] {
            let err = bad.parse::<Lsn>().expect_err(bad);
            assert!(err.to_string().starts_with("invalid LSN"), "{err}");
        }
    }

    #[test]
    fn error_names_the_input() {
        let err = "0/xyz".parse::<Lsn>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid LSN \"0/xyz\": expected hex digits"
        );
    }

    #[test]
    fn segment_arithmetic() {
        let seg = 16 * 1024 * 1024;
        let lsn: Lsn = "1/A0000028".parse().unwrap();
        assert_eq!(lsn.segment_number(seg), 0x1A0);
        assert_eq!(lsn.segment_offset(seg), 0x28);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(1).checked_add(2), Some(Lsn(3)));
    }

    #[test]
    fn serde_as_string() {
        let json = serde_json::to_string(&Lsn(0x1_0000_00A0)).unwrap();
        assert_eq!(json, "\"1/A0\"");
        assert_eq!(
            serde_json::from_str::<Lsn>(&json).unwrap(),
            Lsn(0x1_0000_00A0)
        );
        assert!(serde_json::from_str::<Lsn>("\"1-A0\"").is_err());
        assert!(serde_json::from_str::<Lsn>("160").is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(n in any::<u64>()) {
            let text = Lsn(n).to_string();
            prop_assert_eq!(text.parse::<Lsn>(), Ok(Lsn(n)));
            prop_assert_eq!(text.to_lowercase().parse::<Lsn>(), Ok(Lsn(n)));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Lsn>();
        }

        #[test]
        fn offset_and_number_recompose(n in any::<u64>(), shift in 20u32..=30) {
            let seg = 1u64 << shift;
            let lsn = Lsn(n);
            prop_assert_eq!(lsn.segment_number(seg) * seg + lsn.segment_offset(seg), n);
        }
    }
}
