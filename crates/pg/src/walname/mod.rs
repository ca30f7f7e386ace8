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
mod tests;
