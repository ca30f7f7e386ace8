//! Names of the files PostgreSQL hands to `archive_command` and asks of `restore_command`.
//!
//! This module owns the WAL segment name `TTTTTTTTLLLLLLLLSSSSSSSS` ([`WalSegmentName`]), the other
//! archived names built on it ([`WalFileName`]: `.partial` segments, `.history` files and
//! `.backup` labels), and the arithmetic between segment names, segment numbers and LSNs for a
//! given WAL segment size. Only upper-case hex is accepted, as PostgreSQL writes it, so that one
//! file has exactly one name in the repository; `Display` gives back that exact spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// WAL segment size of a cluster made by `initdb` without `--wal-segsize`: 16 MiB.
pub const DEFAULT_WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Smallest WAL segment size `initdb` accepts: 1 MiB.
pub const MIN_WAL_SEGMENT_SIZE: u64 = 1024 * 1024;

/// Largest WAL segment size `initdb` accepts: 1 GiB.
pub const MAX_WAL_SEGMENT_SIZE: u64 = 1024 * 1024 * 1024;

/// Whether `size` is a WAL segment size PostgreSQL can use: a power of two from 1 MiB to 1 GiB
/// (`IsValidWalSegSize`).
#[must_use]
pub fn is_valid_wal_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_WAL_SEGMENT_SIZE..=MAX_WAL_SEGMENT_SIZE).contains(&size)
}

/// Segments per 4 GiB "log" (`XLogSegmentsPerXLogId`): the middle 8 hex digits of a segment name
/// count 4 GiB units, the last 8 count segments within one.
fn segments_per_log(seg_size: u64) -> Result<u64, NameError> {
    if is_valid_wal_segment_size(seg_size) {
        Ok(0x1_0000_0000 / seg_size)
    } else {
        Err(NameError::InvalidSegmentSize(seg_size))
    }
}

/// Why a name is not a WAL file name, or a segment name does not fit a segment size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The text is not spelled like any file PostgreSQL archives.
    #[error("invalid WAL file name {name:?}: {reason}")]
    Invalid {
        /// The rejected text.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A segment size PostgreSQL cannot have.
    #[error("invalid WAL segment size {0}: expected a power of two from 1 MiB to 1 GiB")]
    InvalidSegmentSize(u64),
    /// The last 8 hex digits are too large for the segment size, so no such segment exists.
    #[error(
        "WAL segment name {name} does not fit {seg_size}-byte segments: its last 8 digits must be below {limit:X}"
    )]
    SegmentOutOfRange {
        /// The segment name.
        name: String,
        /// The segment size it was read with.
        seg_size: u64,
        /// The first value the last 8 digits may not reach.
        limit: u64,
    },
    /// A segment number whose segment would start past the end of the 64-bit WAL space.
    #[error("WAL segment number {segno} is out of range for {seg_size}-byte segments")]
    SegnoOutOfRange {
        /// The segment number.
        segno: u64,
        /// The segment size.
        seg_size: u64,
    },
    /// The segment ends the 64-bit WAL space.
    #[error("WAL segment {name} is the last one possible: it has no successor")]
    NoNextSegment {
        /// The segment name.
        name: String,
    },
}

/// The name of one WAL segment file, as the three 8-hex-digit fields of
/// `TTTTTTTTLLLLLLLLSSSSSSSS`.
///
/// Ordering is that of the names as text: by timeline, then position.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct WalSegmentName {
    /// The timeline the segment was written on (first 8 digits).
    pub timeline: TimelineId,
    /// Which 4 GiB of the WAL space (middle 8 digits).
    pub log: u32,
    /// Which segment within those 4 GiB (last 8 digits).
    pub seg: u32,
}

impl WalSegmentName {
    /// The segment number (`XLogSegNo`): position of the segment in the WAL space.
    pub fn segno(&self, seg_size: u64) -> Result<u64, NameError> {
        let per_log = segments_per_log(seg_size)?;
        if u64::from(self.seg) >= per_log {
            return Err(NameError::SegmentOutOfRange {
                name: self.to_string(),
                seg_size,
                limit: per_log,
            });
        }
        Ok(u64::from(self.log) * per_log + u64::from(self.seg))
    }

    /// The name of segment number `segno` on `timeline`, or an error if `seg_size` is invalid or
    /// the segment would start past the end of the 64-bit WAL space.
    pub fn checked_from_segno(
        timeline: TimelineId,
        segno: u64,
        seg_size: u64,
    ) -> Result<Self, NameError> {
        let per_log = segments_per_log(seg_size)?;
        let log = u32::try_from(segno / per_log)
            .map_err(|_| NameError::SegnoOutOfRange { segno, seg_size })?;
        let seg = u32::try_from(segno % per_log)
            .map_err(|_| NameError::SegnoOutOfRange { segno, seg_size })?;
        Ok(WalSegmentName { timeline, log, seg })
    }

    /// The name of segment number `segno` on `timeline` (`XLogFileName`).
    ///
    /// # Panics
    /// If `seg_size` is not a valid WAL segment size or `segno * seg_size` overflows 64 bits:
    /// both are caller bugs, as sizes come from a validated header or control file and segment
    /// numbers from LSNs. Use [`WalSegmentName::checked_from_segno`] for untrusted input.
    #[must_use]
    pub fn from_segno(timeline: TimelineId, segno: u64, seg_size: u64) -> Self {
        match Self::checked_from_segno(timeline, segno, seg_size) {
            Ok(name) => name,
            Err(err) => panic!("{err}"),
        }
    }

    /// The name of the segment on `timeline` holding `lsn` (`XLByteToSeg` + `XLogFileName`).
    ///
    /// # Panics
    /// If `seg_size` is not a valid WAL segment size (a caller bug, see
    /// [`WalSegmentName::from_segno`]).
    #[must_use]
    pub fn from_lsn(timeline: TimelineId, lsn: Lsn, seg_size: u64) -> Self {
        if !is_valid_wal_segment_size(seg_size) {
            panic!("{}", NameError::InvalidSegmentSize(seg_size));
        }
        // Cannot overflow: a valid size is at least 1 MiB, so at most 2^44 segments.
        Self::from_segno(timeline, lsn.segment_number(seg_size), seg_size)
    }

    /// The next segment on the same timeline.
    pub fn next(&self, seg_size: u64) -> Result<Self, NameError> {
        let no_next = || NameError::NoNextSegment {
            name: self.to_string(),
        };
        let segno = self.segno(seg_size)?.checked_add(1).ok_or_else(no_next)?;
        Self::checked_from_segno(self.timeline, segno, seg_size).map_err(|_| no_next())
    }

    /// The LSN of the segment's first byte (`XLogSegNoOffsetToRecPtr` with offset 0).
    pub fn start_lsn(&self, seg_size: u64) -> Result<Lsn, NameError> {
        // Cannot overflow: segno() checked seg < 2^32 / seg_size, so
        // segno * seg_size < 2^32 * 2^32.
        Ok(Lsn(self.segno(seg_size)? * seg_size))
    }
}

impl fmt::Display for WalSegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl FromStr for WalSegmentName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| NameError::Invalid {
            name: s.to_owned(),
            reason,
        };
        if s.contains(['/', '\\']) {
            return Err(invalid(PATH_SEPARATOR));
        }
        if s.len() != 24 {
            return Err(invalid("expected 24 hex digits"));
        }
        parse_segment(s).map_err(invalid)
    }
}

const PATH_SEPARATOR: &str = "a WAL file name cannot contain a path separator";

/// Eight upper-case hex digits. Checks every byte before converting, so it never slices inside a
/// multi-byte character and never accepts a sign.
fn hex8(text: Option<&str>) -> Result<u32, &'static str> {
    let text = text.ok_or("expected hex digits")?;
    if text.len() != 8 {
        return Err("expected hex digits");
    }
    for b in text.bytes() {
        if b.is_ascii_lowercase() && b.is_ascii_hexdigit() {
            return Err("hex digits must be upper case, as PostgreSQL writes them");
        }
        if !matches!(b, b'0'..=b'9' | b'A'..=b'F') {
            return Err("expected hex digits");
        }
    }
    u32::from_str_radix(text, 16).map_err(|_| "expected hex digits")
}

fn timeline8(text: Option<&str>) -> Result<TimelineId, &'static str> {
    TimelineId::new(hex8(text)?).ok_or("timeline 0 does not exist")
}

/// A 24-digit segment name; the caller has checked the length.
fn parse_segment(s: &str) -> Result<WalSegmentName, &'static str> {
    Ok(WalSegmentName {
        timeline: timeline8(s.get(0..8))?,
        log: hex8(s.get(8..16))?,
        seg: hex8(s.get(16..24))?,
    })
}

/// Any file PostgreSQL archives through `archive_command`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WalFileName {
    /// A complete segment: `TTTTTTTTLLLLLLLLSSSSSSSS`.
    Segment(WalSegmentName),
    /// The last, incomplete segment of a timeline a standby was promoted away from:
    /// `TTTTTTTTLLLLLLLLSSSSSSSS.partial`. It is full size, the tail zero-filled.
    Partial(WalSegmentName),
    /// The history of a timeline: `TTTTTTTT.history`.
    History(TimelineId),
    /// The label of a base backup: `TTTTTTTTLLLLLLLLSSSSSSSS.OOOOOOOO.backup`, naming the segment
    /// and offset where the backup started.
    Backup {
        /// Segment holding the backup's start LSN.
        segment: WalSegmentName,
        /// Offset of the start LSN within that segment.
        offset: u32,
    },
}

impl WalFileName {
    /// Parses an archived file's name. Accepts only the exact spelling PostgreSQL produces.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let invalid = |reason| NameError::Invalid {
            name: s.to_owned(),
            reason,
        };
        if s.contains(['/', '\\']) {
            return Err(invalid(PATH_SEPARATOR));
        }
        let parsed = if s.len() == 24 {
            parse_segment(s).map(WalFileName::Segment)
        } else if let Some(base) = s.strip_suffix(".partial") {
            if base.len() == 24 {
                parse_segment(base).map(WalFileName::Partial)
            } else {
                Err("expected 24 hex digits before .partial")
            }
        } else if let Some(base) = s.strip_suffix(".history") {
            if base.len() == 8 {
                timeline8(Some(base)).map(WalFileName::History)
            } else {
                Err("expected 8 hex digits before .history")
            }
        } else if let Some(base) = s.strip_suffix(".backup") {
            match base.split_once('.') {
                Some((segment, offset)) if segment.len() == 24 && offset.len() == 8 => {
                    parse_segment(segment).and_then(|segment| {
                        Ok(WalFileName::Backup {
                            segment,
                            offset: hex8(Some(offset))?,
                        })
                    })
                }
                _ => Err("expected 24 hex digits, a dot and 8 hex digits before .backup"),
            }
        } else {
            Err(
                "expected 24 hex digits, optionally with .partial or .XXXXXXXX.backup, \
                 or 8 hex digits with .history",
            )
        };
        parsed.map_err(invalid)
    }

    /// The timeline the file belongs to.
    #[must_use]
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(name) | WalFileName::Partial(name) => name.timeline,
            WalFileName::Backup { segment, .. } => segment.timeline,
            WalFileName::History(tli) => *tli,
        }
    }

    /// The segment the file is or refers to; `None` for a history file.
    #[must_use]
    pub fn segment(&self) -> Option<&WalSegmentName> {
        match self {
            WalFileName::Segment(name) | WalFileName::Partial(name) => Some(name),
            WalFileName::Backup { segment, .. } => Some(segment),
            WalFileName::History(_) => None,
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(name) => write!(f, "{name}"),
            WalFileName::Partial(name) => write!(f, "{name}.partial"),
            WalFileName::History(tli) => write!(f, "{tli}.history"),
            WalFileName::Backup { segment, offset } => write!(f, "{segment}.{offset:08X}.backup"),
        }
    }
}

impl FromStr for WalFileName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WalFileName::parse(s)
    }
}

impl From<WalSegmentName> for WalFileName {
    fn from(name: WalSegmentName) -> Self {
        WalFileName::Segment(name)
    }
}

/// Serialized as the file name, the only spelling a name has.
macro_rules! serde_as_display {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_display!(WalSegmentName);
serde_as_display!(WalFileName);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB16: u64 = DEFAULT_WAL_SEGMENT_SIZE;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn seg(tl: u32, log: u32, seg: u32) -> WalSegmentName {
        WalSegmentName {
            timeline: tli(tl),
            log,
            seg,
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(is_valid_wal_segment_size(DEFAULT_WAL_SEGMENT_SIZE));
        assert!(is_valid_wal_segment_size(1 << 20));
        assert!(is_valid_wal_segment_size(1 << 30));
        for bad in [0, 1, 1 << 19, 1 << 31, 3 << 20, u64::MAX] {
            assert!(!is_valid_wal_segment_size(bad), "{bad}");
        }
    }

    #[test]
    fn segment_name_text() {
        let name: WalSegmentName = "0000000200000001000000A3".parse().unwrap();
        assert_eq!(name, seg(2, 1, 0xA3));
        assert_eq!(name.to_string(), "0000000200000001000000A3");
    }

    #[test]
    fn segment_name_errors() {
        let err = "0001".parse::<WalSegmentName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WAL file name \"0001\": expected 24 hex digits"
        );
        let err = "00000002000000010000000a"
            .parse::<WalSegmentName>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WAL file name \"00000002000000010000000a\": \
             hex digits must be upper case, as PostgreSQL writes them"
        );
        let err = "000000000000000100000001"
            .parse::<WalSegmentName>()
            .unwrap_err();
        assert!(err.to_string().contains("timeline 0"), "{err}");
        for bad in [
            "",
            "00000001000000010000000G",
            "+0000001000000010000000A",
            "00000001 00000010000000A",
            "0000000100000001000000010",
            "00000001/0000001000000A0",
            // 24 bytes with a multi-byte character across the field boundaries.
            "0000000é0000000100000001",
        ] {
            assert!(bad.parse::<WalSegmentName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn segno_and_lsn() {
        let name = seg(1, 1, 0xA3);
        assert_eq!(name.segno(MIB16).unwrap(), 0x1A3);
        assert_eq!(
            name.start_lsn(MIB16).unwrap(),
            "1/A3000000".parse().unwrap()
        );
        assert_eq!(WalSegmentName::from_segno(tli(1), 0x1A3, MIB16), name);
        let lsn: Lsn = "1/A3FFFFFF".parse().unwrap();
        assert_eq!(WalSegmentName::from_lsn(tli(1), lsn, MIB16), name);
        // With 1 GiB segments there are 4 per log, with 1 MiB 4096.
        assert_eq!(seg(1, 2, 3).segno(1 << 30).unwrap(), 11);
        assert_eq!(seg(1, 2, 0xFFF).segno(1 << 20).unwrap(), 2 * 4096 + 0xFFF);
    }

    #[test]
    fn segno_rejects_segments_that_do_not_exist() {
        let err = seg(1, 0, 0x100).segno(MIB16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WAL segment name 000000010000000000000100 does not fit 16777216-byte segments: \
             its last 8 digits must be below 100"
        );
        assert!(seg(1, 0, 0x100).start_lsn(MIB16).is_err());
        assert_eq!(
            seg(1, 0, 1).segno(1000).unwrap_err(),
            NameError::InvalidSegmentSize(1000)
        );
    }

    #[test]
    fn next_crosses_log_boundary() {
        assert_eq!(seg(3, 0, 0xFE).next(MIB16).unwrap(), seg(3, 0, 0xFF));
        assert_eq!(seg(3, 0, 0xFF).next(MIB16).unwrap(), seg(3, 1, 0));
        assert_eq!(seg(3, 7, 3).next(1 << 30).unwrap(), seg(3, 8, 0));
        let last = seg(3, u32::MAX, 0xFF);
        assert_eq!(last.start_lsn(MIB16).unwrap(), Lsn(u64::MAX - (MIB16 - 1)));
        assert!(matches!(
            last.next(MIB16),
            Err(NameError::NoNextSegment { .. })
        ));
    }

    #[test]
    fn checked_from_segno_rejects_overflow() {
        let max = u64::MAX / MIB16;
        assert!(WalSegmentName::checked_from_segno(tli(1), max, MIB16).is_ok());
        assert!(WalSegmentName::checked_from_segno(tli(1), max + 1, MIB16).is_err());
        assert!(WalSegmentName::checked_from_segno(tli(1), 1, 12345).is_err());
    }

    #[test]
    #[should_panic(expected = "invalid WAL segment size 0")]
    fn from_lsn_panics_on_invalid_size() {
        let _ = WalSegmentName::from_lsn(tli(1), Lsn(0), 0);
    }

    #[test]
    fn file_names() {
        let cases = [
            (
                "000000010000000000000001",
                WalFileName::Segment(seg(1, 0, 1)),
            ),
            (
                "000000010000000000000004.partial",
                WalFileName::Partial(seg(1, 0, 4)),
            ),
            ("0000000A.history", WalFileName::History(tli(10))),
            (
                "000000010000000000000002.00000028.backup",
                WalFileName::Backup {
                    segment: seg(1, 0, 2),
                    offset: 0x28,
                },
            ),
        ];
        for (text, want) in cases {
            let got = WalFileName::parse(text).unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), text);
            assert_eq!(text.parse::<WalFileName>().unwrap(), want);
        }
        assert_eq!(WalFileName::History(tli(10)).timeline(), tli(10));
        assert_eq!(WalFileName::History(tli(10)).segment(), None);
        assert_eq!(cases[3].1.segment(), Some(&seg(1, 0, 2)));
        assert_eq!(cases[3].1.timeline(), tli(1));
        assert_eq!(cases[1].1.segment(), Some(&seg(1, 0, 4)));
    }

    #[test]
    fn file_name_errors() {
        for bad in [
            "",
            "00000001.history.partial",
            "00000000.history",
            "0000000a.history",
            "1.history",
            "000000010000000000000001.partial.partial",
            "00000001000000000000001.partial",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.00000028.Backup",
            "000000010000000000000002.00000028.BACKUP",
            "000000010000000000000002.0000002g.backup",
            "000000010000000000000002..backup",
            "000000010000000000000002.backup",
            "000000010000000000000001.gz",
            "archive_status/000000010000000000000001.ready",
            "pg_wal/000000010000000000000001",
            "..\\000000010000000000000001",
            "00000001.history\n",
            ".history",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad:?}");
        }
        let err = WalFileName::parse("pg_wal/000000010000000000000001").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WAL file name \"pg_wal/000000010000000000000001\": \
             a WAL file name cannot contain a path separator"
        );
    }

    #[test]
    fn serde_as_names() {
        let name = WalFileName::Partial(seg(1, 0, 4));
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"000000010000000000000004.partial\"");
        assert_eq!(serde_json::from_str::<WalFileName>(&json).unwrap(), name);
        let json = serde_json::to_string(&seg(2, 0, 1)).unwrap();
        assert_eq!(json, "\"000000020000000000000001\"");
        assert_eq!(
            serde_json::from_str::<WalSegmentName>(&json).unwrap(),
            seg(2, 0, 1)
        );
        assert!(serde_json::from_str::<WalSegmentName>("\"00000002000000000000001\"").is_err());
    }

    #[test]
    fn ordering_matches_text() {
        let mut names = [seg(2, 0, 1), seg(1, 1, 0), seg(1, 0, 0xFF), seg(10, 0, 0)];
        let mut texts: Vec<String> = names.iter().map(ToString::to_string).collect();
        names.sort();
        texts.sort();
        let sorted: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, texts);
    }

    fn any_segment() -> impl Strategy<Value = WalSegmentName> {
        (1u32.., any::<u32>(), any::<u32>()).prop_map(|(t, log, s)| seg(t, log, s))
    }

    fn any_file_name() -> impl Strategy<Value = WalFileName> {
        prop_oneof![
            any_segment().prop_map(WalFileName::Segment),
            any_segment().prop_map(WalFileName::Partial),
            (1u32..).prop_map(|t| WalFileName::History(tli(t))),
            (any_segment(), any::<u32>())
                .prop_map(|(segment, offset)| WalFileName::Backup { segment, offset }),
        ]
    }

    proptest! {
        #[test]
        fn segment_name_round_trip(name in any_segment()) {
            let text = name.to_string();
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(text.parse::<WalSegmentName>(), Ok(name));
        }

        #[test]
        fn file_name_round_trip(name in any_file_name()) {
            let text = name.to_string();
            prop_assert_eq!(WalFileName::parse(&text), Ok(name));
            // Lower case is another spelling of the same file: refused.
            let lower = text.to_lowercase();
            if lower != text {
                prop_assert!(WalFileName::parse(&lower).is_err());
            }
        }

        #[test]
        fn segno_round_trip(t in 1u32.., segno in any::<u64>(), shift in 20u32..=30) {
            let size = 1u64 << shift;
            match WalSegmentName::checked_from_segno(tli(t), segno, size) {
                Ok(name) => {
                    prop_assert_eq!(name.segno(size), Ok(segno));
                    let start = name.start_lsn(size).unwrap();
                    prop_assert_eq!(WalSegmentName::from_lsn(tli(t), start, size), name);
                    if let Ok(next) = name.next(size) {
                        prop_assert_eq!(next.segno(size), Ok(segno + 1));
                    }
                }
                Err(_) => prop_assert!(segno.checked_mul(size).is_none()),
            }
        }

        #[test]
        fn lsn_lands_in_its_segment(t in 1u32.., lsn in any::<u64>(), shift in 20u32..=30) {
            let size = 1u64 << shift;
            let name = WalSegmentName::from_lsn(tli(t), Lsn(lsn), size);
            let start = name.start_lsn(size).unwrap().0;
            prop_assert!(start <= lsn && lsn - start < size);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,48}") {
            let _ = WalFileName::parse(&s);
            let _ = s.parse::<WalSegmentName>();
        }

        #[test]
        fn near_miss_text_never_panics(
            s in "[0-9A-Fa-fé./\\\\]{0,24}(\\.partial|\\.history|\\.backup|\\.[0-9A-F]{0,9}\\.backup)?"
        ) {
            if let Ok(name) = WalFileName::parse(&s) {
                prop_assert_eq!(name.to_string(), s.as_str());
            }
            let _ = s.parse::<WalSegmentName>();
        }
    }
}
