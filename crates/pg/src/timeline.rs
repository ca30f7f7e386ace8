//! Timeline identifiers: which history of the cluster a piece of WAL belongs to.
//!
//! This module owns [`TimelineId`], a non-zero `u32` (PostgreSQL never uses timeline 0). Its
//! `Display` and `FromStr` use the 8-digit upper-case hex of WAL file names (`00000002`); history
//! files and `recovery_target_timeline` spell it in decimal, read with
//! [`TimelineId::parse_decimal`]; serde uses the decimal number.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PostgreSQL timeline ID (`TimeLineID`), never zero.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimelineId(NonZeroU32);

/// Why a string is not a timeline ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline ID {input:?}: {reason}")]
pub struct TimelineParseError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TimelineId {
    /// The timeline `initdb` starts a cluster on.
    pub const ONE: TimelineId = TimelineId(NonZeroU32::MIN);

    /// The timeline with this number, or `None` for 0.
    #[must_use]
    pub const fn new(id: u32) -> Option<Self> {
        match NonZeroU32::new(id) {
            Some(id) => Some(TimelineId(id)),
            None => None,
        }
    }

    /// The timeline number.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Parses the decimal spelling used in history files and `recovery_target_timeline`.
    pub fn parse_decimal(s: &str) -> Result<Self, TimelineParseError> {
        let fail = |reason| TimelineParseError {
            input: s.to_owned(),
            reason,
        };
        // Checked by hand: `u32::from_str` would also take a leading '+'.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("expected a decimal number"));
        }
        let id: u32 = s.parse().map_err(|_| fail("does not fit in 32 bits"))?;
        TimelineId::new(id).ok_or_else(|| fail("timeline 0 does not exist"))
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.get())
    }
}

impl FromStr for TimelineId {
    type Err = TimelineParseError;

    /// Parses 1 to 8 hex digits, as in WAL and history file names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| TimelineParseError {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() || s.len() > 8 {
            return Err(fail("expected 1 to 8 hex digits"));
        }
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("expected hex digits"));
        }
        let id = u32::from_str_radix(s, 16).map_err(|_| fail("expected hex digits"))?;
        TimelineId::new(id).ok_or_else(|| fail("timeline 0 does not exist"))
    }
}

impl From<TimelineId> for u32 {
    fn from(tli: TimelineId) -> u32 {
        tli.get()
    }
}

impl Serialize for TimelineId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.get())
    }
}

impl<'de> Deserialize<'de> for TimelineId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = u32::deserialize(deserializer)?;
        TimelineId::new(id).ok_or_else(|| serde::de::Error::custom("invalid timeline ID 0"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_is_not_a_timeline() {
        assert_eq!(TimelineId::new(0), None);
        assert_eq!(TimelineId::new(1), Some(TimelineId::ONE));
        assert_eq!(TimelineId::ONE.get(), 1);
    }

    #[test]
    fn hex_text_form() {
        let tli = TimelineId::new(0x1A).unwrap();
        assert_eq!(tli.to_string(), "0000001A");
        assert_eq!("0000001A".parse(), Ok(tli));
        assert_eq!("1a".parse(), Ok(tli));
        for bad in ["", "0", "00000000", "123456789", "+1", "g", " 1", "-1"] {
            assert!(bad.parse::<TimelineId>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "0".parse::<TimelineId>().unwrap_err().to_string(),
            "invalid timeline ID \"0\": timeline 0 does not exist"
        );
    }

    #[test]
    fn decimal_form() {
        assert_eq!(TimelineId::parse_decimal("26").unwrap().get(), 26);
        assert_eq!(
            TimelineId::parse_decimal("4294967295").unwrap().get(),
            u32::MAX
        );
        for bad in ["", "0", "4294967296", "+3", "1a", " 1", "-1"] {
            assert!(TimelineId::parse_decimal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_as_decimal_number() {
        let tli = TimelineId::new(26).unwrap();
        assert_eq!(serde_json::to_string(&tli).unwrap(), "26");
        assert_eq!(serde_json::from_str::<TimelineId>("26").unwrap(), tli);
        assert!(serde_json::from_str::<TimelineId>("0").is_err());
        assert!(serde_json::from_str::<TimelineId>("\"0000001A\"").is_err());
    }

    #[test]
    fn orders_numerically() {
        assert!(TimelineId::new(2).unwrap() < TimelineId::new(10).unwrap());
    }

    proptest! {
        #[test]
        fn round_trips(id in 1u32..) {
            let tli = TimelineId::new(id).unwrap();
            prop_assert_eq!(tli.to_string().parse::<TimelineId>(), Ok(tli));
            prop_assert_eq!(TimelineId::parse_decimal(&id.to_string()), Ok(tli));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,20}") {
            let _ = s.parse::<TimelineId>();
            let _ = TimelineId::parse_decimal(&s);
        }
    }
}
