//! The cluster control file, `global/pg_control`: which cluster, which version, where it stands.
//!
//! This module owns the layout of `ControlFileData` for the PostgreSQL versions Lifeboat
//! supports, its CRC-32C check, and the table that maps (control version, catalog version) to a
//! major version. [`parse_control_file`] returns a [`ControlFile`] of plain values; nothing outside
//! this module knows an offset.
//!
//! The file is written in the server's native byte order; only little-endian clusters are
//! supported, and a big-endian one is recognised and refused by name.
//!
//! Offsets, identical in PostgreSQL 12 to 18 except for the CRC (PostgreSQL 18 added the one-byte
//! `default_char_signedness` before the nonce, which pushes the CRC from 288 to 292):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0   | 8 | `system_identifier` |
//! | 8   | 4 | `pg_control_version` |
//! | 12  | 4 | `catalog_version_no` |
//! | 16  | 4 | `state` (`DBState`) |
//! | 32  | 8 | `checkPoint` (LSN of the last checkpoint record) |
//! | 48  | 4 | `checkPointCopy.ThisTimeLineID` (the copy starts at 40) |
//! | 208 | 8 | `floatFormat`, always 1234567.0: a layout check |
//! | 216 | 4 | `blcksz` |
//! | 228 | 4 | `xlog_seg_size` |
//! | 252 | 4 | `data_checksum_version` |
//! | 288 / 292 | 4 | `crc`, CRC-32C of every byte before it |

use std::fmt;

use crate::lsn::Lsn;
use crate::timeline::TimelineId;
use crate::walname::is_valid_wal_segment_size;

/// Size of the `pg_control` file on disk; the structure fills only its start.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;

/// Supported versions: `(pg_control version, major, catalog after, catalog up to)`.
///
/// `pg_control_version` alone is ambiguous (1300 serves PostgreSQL 13 to 16), so the major is
/// read from `catalog_version_no`, which every major version bumps during development and never
/// in minor releases. A major owns the catalog versions after the previous major's release value
/// up to its own release value, betas included:
///
/// | major | pg_control | catalog version at release |
/// |------:|-----------:|---------------------------:|
/// | 12 | 1201 | 201909212 |
/// | 13 | 1300 | 202007201 |
/// | 14 | 1300 | 202107181 |
/// | 15 | 1300 | 202209061 |
/// | 16 | 1300 | 202307071 |
/// | 17 | 1700 | 202406281 |
/// | 18 | 1800 | 202506291 |
///
/// (PostgreSQL 11 released with catalog version 201809051.) Development snapshots of a later
/// version fall outside every range and are refused rather than misread.
const VERSIONS: [(u32, u32, u32, u32); 7] = [
    (1201, 12, 201_809_051, 201_909_212),
    (1300, 13, 201_909_212, 202_007_201),
    (1300, 14, 202_007_201, 202_107_181),
    (1300, 15, 202_107_181, 202_209_061),
    (1300, 16, 202_209_061, 202_307_071),
    (1700, 17, 202_307_071, 202_406_281),
    (1800, 18, 202_406_281, 202_506_291),
];

/// `offsetof(ControlFileData, crc)` for a `pg_control_version`.
fn crc_offset(control_version: u32) -> Option<usize> {
    match control_version {
        1201 | 1300 | 1700 => Some(288),
        1800 => Some(292),
        _ => None,
    }
}

/// The major version of a supported (control version, catalog version) pair.
fn pg_major(control_version: u32, catalog_version: u32) -> Option<u32> {
    VERSIONS
        .iter()
        .find(|(control, _, after, upto)| {
            *control == control_version && catalog_version > *after && catalog_version <= *upto
        })
        .map(|(_, major, _, _)| *major)
}

/// Value of `floatFormat` in every `pg_control` (`FLOATFORMAT_VALUE`).
const FLOAT_FORMAT: f64 = 1_234_567.0;

/// What Lifeboat needs from `pg_control`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ControlFile {
    /// Unique identifier of the cluster, fixed by `initdb`; also in every WAL segment header.
    pub system_identifier: u64,
    /// `pg_control_version`: the layout of this file (1300 for PostgreSQL 13 to 16).
    pub control_version: u32,
    /// `catalog_version_no`: the layout of the system catalogs.
    pub catalog_version: u32,
    /// PostgreSQL major version, derived from the two versions above.
    pub pg_major: u32,
    /// `state` as stored (`DBState`); see [`ControlFile::db_state`].
    pub state: u32,
    /// LSN of the last checkpoint record (`checkPoint`).
    pub checkpoint_lsn: Lsn,
    /// Timeline of the last checkpoint (`checkPointCopy.ThisTimeLineID`): the cluster's current
    /// timeline when it is shut down.
    pub timeline: TimelineId,
    /// Data page size (`blcksz`), in bytes.
    pub block_size: u32,
    /// WAL segment size (`xlog_seg_size`), in bytes.
    pub wal_segment_size: u32,
    /// Data checksum version: 0 when data checksums are off.
    pub data_checksum_version: u32,
}

impl ControlFile {
    /// The cluster state, decoded.
    #[must_use]
    pub fn db_state(&self) -> DbState {
        DbState::from_code(self.state)
    }

    /// Whether data pages carry checksums.
    #[must_use]
    pub fn data_checksums(&self) -> bool {
        self.data_checksum_version != 0
    }
}

/// The cluster state recorded in `pg_control` (`DBState`, the same in PostgreSQL 12 to 18).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DbState {
    /// `DB_STARTUP`.
    Startup,
    /// `DB_SHUTDOWNED`: cleanly shut down.
    ShutDown,
    /// `DB_SHUTDOWNED_IN_RECOVERY`: cleanly shut down while a standby.
    ShutDownInRecovery,
    /// `DB_SHUTDOWNING`.
    ShuttingDown,
    /// `DB_IN_CRASH_RECOVERY`.
    InCrashRecovery,
    /// `DB_IN_ARCHIVE_RECOVERY`: recovering from archive or running as a standby.
    InArchiveRecovery,
    /// `DB_IN_PRODUCTION`: running, or crashed while running.
    InProduction,
    /// A value PostgreSQL does not define.
    Unknown(u32),
}

impl DbState {
    /// Decodes a stored `DBState`.
    #[must_use]
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => DbState::Startup,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            other => DbState::Unknown(other),
        }
    }

    /// Whether the cluster was shut down cleanly (as primary or standby).
    #[must_use]
    pub fn is_shut_down(self) -> bool {
        matches!(self, DbState::ShutDown | DbState::ShutDownInRecovery)
    }
}

impl fmt::Display for DbState {
    /// The words `pg_controldata` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbState::Startup => f.write_str("starting up"),
            DbState::ShutDown => f.write_str("shut down"),
            DbState::ShutDownInRecovery => f.write_str("shut down in recovery"),
            DbState::ShuttingDown => f.write_str("shutting down"),
            DbState::InCrashRecovery => f.write_str("in crash recovery"),
            DbState::InArchiveRecovery => f.write_str("in archive recovery"),
            DbState::InProduction => f.write_str("in production"),
            DbState::Unknown(code) => write!(f, "unrecognized status code {code}"),
        }
    }
}

/// Why bytes are not a usable `pg_control`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Fewer bytes than the structure needs.
    #[error("pg_control too short: {len} bytes, expected at least {needed}")]
    TooShort {
        /// Bytes available.
        len: usize,
        /// Bytes the structure needs.
        needed: usize,
    },
    /// The file comes from a big-endian machine.
    #[error(
        "pg_control was written by a big-endian machine (pg_control version {control_version} \
         byte-swapped): only little-endian clusters are supported"
    )]
    ForeignByteOrder {
        /// The control version, read in the right byte order.
        control_version: u32,
    },
    /// A version whose layout this module does not know.
    #[error(
        "unsupported PostgreSQL version: pg_control version {control_version}, catalog version \
         {catalog_version} (supported: PostgreSQL 12 to 18)"
    )]
    UnsupportedVersion {
        /// `pg_control_version` found.
        control_version: u32,
        /// `catalog_version_no` found.
        catalog_version: u32,
    },
    /// The stored CRC does not match the content: a torn or corrupt file.
    #[error(
        "pg_control CRC mismatch: stored {stored:#010X}, computed {computed:#010X} over the \
         first {covered} bytes"
    )]
    CrcMismatch {
        /// CRC in the file.
        stored: u32,
        /// CRC of the content.
        computed: u32,
        /// Bytes the CRC covers.
        covered: usize,
    },
    /// `floatFormat` is not 1234567.0 although the CRC matched: the layout is not what the
    /// version promised.
    #[error(
        "pg_control has an unexpected layout: floatFormat is {found}, expected {FLOAT_FORMAT}",
        found = f64::from_bits(*.found_bits)
    )]
    UnexpectedLayout {
        /// Bits of the `floatFormat` found.
        found_bits: u64,
    },
    /// A WAL segment size PostgreSQL cannot have.
    #[error(
        "invalid WAL segment size {0} in pg_control: expected a power of two from 1 MiB to 1 GiB"
    )]
    InvalidSegmentSize(u32),
    /// A data block size PostgreSQL cannot be built with.
    #[error("invalid block size {0} in pg_control: expected a power of two from 1 KiB to 32 KiB")]
    InvalidBlockSize(u32),
    /// The checkpoint's timeline is 0.
    #[error("pg_control checkpoint timeline is 0, which does not exist")]
    ZeroTimeline,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses and checks the content of `global/pg_control`.
pub fn parse_control_file(bytes: &[u8]) -> Result<ControlFile, ControlError> {
    let too_short = |needed| ControlError::TooShort {
        len: bytes.len(),
        needed,
    };
    let control_version = u32_at(bytes, 8).ok_or_else(|| too_short(16))?;
    let catalog_version = u32_at(bytes, 12).ok_or_else(|| too_short(16))?;
    let unsupported = ControlError::UnsupportedVersion {
        control_version,
        catalog_version,
    };

    let Some(crc_at) = crc_offset(control_version) else {
        if crc_offset(control_version.swap_bytes()).is_some() {
            return Err(ControlError::ForeignByteOrder {
                control_version: control_version.swap_bytes(),
            });
        }
        return Err(unsupported);
    };
    let needed = crc_at + 4;
    let stored = u32_at(bytes, crc_at).ok_or_else(|| too_short(needed))?;
    let covered = bytes.get(..crc_at).ok_or_else(|| too_short(needed))?;
    let computed = crc32c::crc32c(covered);
    if computed != stored {
        return Err(ControlError::CrcMismatch {
            stored,
            computed,
            covered: crc_at,
        });
    }

    // Only now is the catalog version trustworthy enough to pick a major from.
    let pg_major = pg_major(control_version, catalog_version).ok_or(unsupported)?;

    // Every offset below is under crc_at, whose bytes exist.
    let field32 = |at| u32_at(bytes, at).ok_or_else(|| too_short(needed));
    let field64 = |at| u64_at(bytes, at).ok_or_else(|| too_short(needed));

    let float_bits = field64(208)?;
    if f64::from_bits(float_bits) != FLOAT_FORMAT {
        return Err(ControlError::UnexpectedLayout {
            found_bits: float_bits,
        });
    }
    let wal_segment_size = field32(228)?;
    if !is_valid_wal_segment_size(u64::from(wal_segment_size)) {
        return Err(ControlError::InvalidSegmentSize(wal_segment_size));
    }
    let block_size = field32(216)?;
    if !(block_size.is_power_of_two() && (1024..=32768).contains(&block_size)) {
        return Err(ControlError::InvalidBlockSize(block_size));
    }
    let timeline = TimelineId::new(field32(48)?).ok_or(ControlError::ZeroTimeline)?;

    Ok(ControlFile {
        system_identifier: field64(0)?,
        control_version,
        catalog_version,
        pg_major,
        state: field32(16)?,
        checkpoint_lsn: Lsn(field64(32)?),
        timeline,
        block_size,
        wal_segment_size,
        data_checksum_version: field32(252)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A synthetic control file with valid values and a correct CRC.
    fn control(control_version: u32, catalog_version: u32) -> Vec<u8> {
        let mut b = vec![0u8; PG_CONTROL_FILE_SIZE];
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        b[0..8].copy_from_slice(&42u64.to_le_bytes());
        put32(&mut b, 8, control_version);
        put32(&mut b, 12, catalog_version);
        put32(&mut b, 16, 6);
        b[32..40].copy_from_slice(&0x3_0000_0028u64.to_le_bytes());
        put32(&mut b, 48, 7);
        b[208..216].copy_from_slice(&FLOAT_FORMAT.to_le_bytes());
        put32(&mut b, 216, 8192);
        put32(&mut b, 228, 64 << 20);
        put32(&mut b, 252, 1);
        reseal(&mut b);
        b
    }

    fn reseal(b: &mut [u8]) {
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let at = crc_offset(version).unwrap_or(288);
        let crc = crc32c::crc32c(&b[..at]);
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn version_table_is_contiguous() {
        for w in VERSIONS.windows(2) {
            assert_eq!(w[0].3, w[1].2, "{w:?}");
            assert_eq!(w[0].1 + 1, w[1].1, "{w:?}");
        }
        for (control, _, _, _) in VERSIONS {
            assert!(crc_offset(control).is_some());
        }
    }

    #[test]
    fn every_supported_version_parses() {
        for (control_version, major, _, release) in VERSIONS {
            let c = parse_control_file(&control(control_version, release)).unwrap();
            assert_eq!(c.pg_major, major);
            assert_eq!(c.system_identifier, 42);
            assert_eq!(c.checkpoint_lsn, Lsn(0x3_0000_0028));
            assert_eq!(c.timeline.get(), 7);
            assert_eq!(c.block_size, 8192);
            assert_eq!(c.wal_segment_size, 64 << 20);
            assert_eq!(c.db_state(), DbState::InProduction);
            assert!(c.data_checksums());
        }
    }

    #[test]
    fn pg13_to_16_told_apart_by_catalog_version() {
        let major = |cat| parse_control_file(&control(1300, cat)).map(|c| c.pg_major);
        assert_eq!(major(202_007_201), Ok(13));
        assert_eq!(major(202_007_202), Ok(14));
        assert_eq!(major(202_204_071), Ok(15));
        assert_eq!(major(202_307_071), Ok(16));
        let err = major(202_307_072).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported PostgreSQL version: pg_control version 1300, catalog version 202307072 \
             (supported: PostgreSQL 12 to 18)"
        );
        assert!(major(201_909_212).is_err());
    }

    #[test]
    fn pg18_crc_is_four_bytes_later() {
        let mut b = control(1800, 202_506_291);
        assert!(parse_control_file(&b).is_ok());
        // A CRC at the PostgreSQL 17 position would not be accepted.
        let crc = crc32c::crc32c(&b[..288]);
        b[288..292].copy_from_slice(&crc.to_le_bytes());
        b[292..296].fill(0);
        assert!(matches!(
            parse_control_file(&b),
            Err(ControlError::CrcMismatch { covered: 292, .. })
        ));
    }

    #[test]
    fn unknown_versions_are_refused() {
        for (control_version, catalog) in [(1100, 201_809_051), (1002, 201_707_211), (1900, 1)] {
            let err = parse_control_file(&control(control_version, catalog)).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("unsupported PostgreSQL version"),
                "{err}"
            );
        }
    }

    #[test]
    fn big_endian_file_is_named() {
        let mut b = control(1300, 202_209_061);
        b[8..12].copy_from_slice(&1300u32.to_be_bytes());
        assert_eq!(
            parse_control_file(&b),
            Err(ControlError::ForeignByteOrder {
                control_version: 1300
            })
        );
    }

    #[test]
    fn crc_mismatch() {
        let mut b = control(1300, 202_209_061);
        b[100] ^= 1;
        let err = parse_control_file(&b).unwrap_err();
        assert!(matches!(
            err,
            ControlError::CrcMismatch { covered: 288, .. }
        ));
        assert!(
            err.to_string()
                .starts_with("pg_control CRC mismatch: stored 0x"),
            "{err}"
        );
    }

    #[test]
    fn truncated() {
        let b = control(1300, 202_209_061);
        assert_eq!(
            parse_control_file(&b[..200]),
            Err(ControlError::TooShort {
                len: 200,
                needed: 292
            })
        );
        assert_eq!(
            parse_control_file(&b[..10]),
            Err(ControlError::TooShort {
                len: 10,
                needed: 16
            })
        );
        // The structure alone, without the padding to 8 KiB, is enough.
        assert!(parse_control_file(&b[..292]).is_ok());
    }

    #[test]
    fn bad_fields_behind_a_good_crc() {
        let mut b = control(1300, 202_209_061);
        b[208..216].copy_from_slice(&1.5f64.to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            parse_control_file(&b).unwrap_err().to_string(),
            "pg_control has an unexpected layout: floatFormat is 1.5, expected 1234567"
        );

        let mut b = control(1300, 202_209_061);
        b[228..232].copy_from_slice(&12345u32.to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            parse_control_file(&b),
            Err(ControlError::InvalidSegmentSize(12345))
        );

        let mut b = control(1300, 202_209_061);
        b[216..220].copy_from_slice(&(64u32 << 10).to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            parse_control_file(&b),
            Err(ControlError::InvalidBlockSize(65536))
        );

        let mut b = control(1300, 202_209_061);
        b[48..52].fill(0);
        reseal(&mut b);
        assert_eq!(parse_control_file(&b), Err(ControlError::ZeroTimeline));
    }

    #[test]
    fn states() {
        assert_eq!(DbState::from_code(1), DbState::ShutDown);
        assert!(DbState::from_code(1).is_shut_down());
        assert!(DbState::from_code(2).is_shut_down());
        assert!(!DbState::from_code(6).is_shut_down());
        assert_eq!(DbState::from_code(6).to_string(), "in production");
        assert_eq!(DbState::from_code(9), DbState::Unknown(9));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_control_file(&bytes);
        }

        #[test]
        fn any_flipped_bit_is_caught(byte in 0usize..292, bit in 0u8..8) {
            let mut b = control(1300, 202_209_061);
            b[byte] ^= 1 << bit;
            prop_assert!(parse_control_file(&b).is_err());
        }
    }
}
