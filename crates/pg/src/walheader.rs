//! The long page header at the start of every WAL segment file, and the checks it allows.
//!
//! This module owns the layout of `XLogLongPageHeaderData` and the table of `XLOG_PAGE_MAGIC`
//! values by PostgreSQL major version. Before Lifeboat stores a segment it reads the header to
//! learn the PostgreSQL version, system identifier and segment size, and checks that the file is
//! the segment its name says ([`validate_segment`]): right length, right start address, and a
//! timeline no newer than the name's.
//!
//! Layout (little-endian, identical in PostgreSQL 10 to 18):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 2 | `xlp_magic` |
//! | 2  | 2 | `xlp_info` (flags) |
//! | 4  | 4 | `xlp_tli` |
//! | 8  | 8 | `xlp_pageaddr` |
//! | 16 | 4 | `xlp_rem_len` |
//! | 24 | 8 | `xlp_sysid` (long header only) |
//! | 32 | 4 | `xlp_seg_size` (long header only) |
//! | 36 | 4 | `xlp_xlog_blcksz` (long header only) |

use crate::lsn::Lsn;
use crate::timeline::TimelineId;
use crate::walname::{NameError, WalFileName, WalSegmentName, is_valid_wal_segment_size};

/// Size of `XLogLongPageHeaderData` (already a multiple of `MAXALIGN`).
pub const LONG_PAGE_HEADER_SIZE: usize = 40;

/// `xlp_info` flag: the page begins with the continuation of a record.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `xlp_info` flag: the page has the long header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `xlp_info` flag: full-page images on the page may be removed.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `xlp_info` flag: a record was overwritten after a missing continuation (added to all branches
/// from 10 in the 2021 minor releases).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// All `xlp_info` flags PostgreSQL defines (`XLP_ALL_FLAGS`).
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` of each major version. It changes whenever the WAL format does, so it tells
/// which server wrote a segment.
const WAL_MAGICS: [(u16, u32); 9] = [
    (0xD097, 10),
    (0xD098, 11),
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version (10 to 18) whose WAL pages carry `magic`.
#[must_use]
pub fn pg_major_from_wal_magic(magic: u16) -> Option<u32> {
    WAL_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, major)| *major)
}

/// What the long header of a segment's first page says.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LongPageHeader {
    /// `XLOG_PAGE_MAGIC` of the writing server.
    pub magic: u16,
    /// PostgreSQL major version derived from `magic`.
    pub pg_major: u32,
    /// Timeline of the first record on the page. After a timeline switch the first segment of the
    /// new timeline is a copy of the old one, so this can be older than the file name's.
    pub timeline: TimelineId,
    /// LSN of the page's first byte: the segment's start.
    pub page_address: Lsn,
    /// System identifier of the cluster (as in `pg_control`).
    pub system_identifier: u64,
    /// WAL segment size of the cluster, in bytes.
    pub segment_size: u32,
    /// WAL page size (`XLOG_BLCKSZ`), in bytes.
    pub block_size: u32,
}

/// Why a WAL file's header is unreadable or does not match its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalHeaderError {
    /// Fewer bytes than a long page header.
    #[error("WAL file too short: {len} bytes, the long page header needs {LONG_PAGE_HEADER_SIZE}")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// A magic number no supported PostgreSQL version writes.
    #[error(
        "unknown WAL page magic {magic:#06X}: not a WAL file of a known PostgreSQL version (10 to 18)"
    )]
    UnknownMagic {
        /// The magic found.
        magic: u16,
    },
    /// The first page lacks `XLP_LONG_HEADER`.
    #[error(
        "WAL page info flags {info:#06X} lack the long-header flag 0x0002: not the first page of a segment"
    )]
    NotLongHeader {
        /// The `xlp_info` found.
        info: u16,
    },
    /// `xlp_info` has bits PostgreSQL never sets.
    #[error("WAL page info flags {info:#06X} have bits outside {XLP_ALL_FLAGS:#06X}")]
    UnknownFlags {
        /// The `xlp_info` found.
        info: u16,
    },
    /// The header's segment size is not one PostgreSQL can use.
    #[error(
        "invalid WAL segment size {size} in page header: expected a power of two from 1 MiB to 1 GiB"
    )]
    InvalidSegmentSize {
        /// The size found.
        size: u32,
    },
    /// The header's WAL block size is not one PostgreSQL can be built with.
    #[error(
        "invalid WAL block size {size} in page header: expected a power of two from 1 KiB to 64 KiB"
    )]
    InvalidBlockSize {
        /// The size found.
        size: u32,
    },
    /// The header's timeline is 0.
    #[error("WAL page header has timeline 0, which does not exist")]
    ZeroTimeline,
    /// The file is not as long as the segment size in its header.
    #[error(
        "WAL file {name}: expected {expected} bytes (the segment size in its header), found {found}"
    )]
    LengthMismatch {
        /// The file's name.
        name: String,
        /// The header's segment size.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// The first page is not at the LSN the file name implies.
    #[error("WAL file {name}: expected page address {expected} from its name, found {found}")]
    AddressMismatch {
        /// The file's name.
        name: String,
        /// Start LSN of the named segment.
        expected: Lsn,
        /// `xlp_pageaddr` found.
        found: Lsn,
    },
    /// The header's timeline is newer than the name's: the file belongs to a later timeline.
    #[error(
        "WAL file {name}: expected header timeline {expected} or older from its name, found {found}"
    )]
    TimelineMismatch {
        /// The file's name.
        name: String,
        /// The name's timeline.
        expected: TimelineId,
        /// The header's timeline.
        found: TimelineId,
    },
    /// The name does not fit the header's segment size.
    #[error(transparent)]
    Name(#[from] NameError),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the long page header at the start of `first_page` (at least its first 40 bytes).
pub fn parse_long_page_header(first_page: &[u8]) -> Result<LongPageHeader, WalHeaderError> {
    let too_short = || WalHeaderError::TooShort {
        len: first_page.len(),
    };
    if first_page.len() < LONG_PAGE_HEADER_SIZE {
        return Err(too_short());
    }
    let magic = u16_at(first_page, 0).ok_or_else(too_short)?;
    let info = u16_at(first_page, 2).ok_or_else(too_short)?;
    let tli = u32_at(first_page, 4).ok_or_else(too_short)?;
    let page_address = Lsn(u64_at(first_page, 8).ok_or_else(too_short)?);
    let system_identifier = u64_at(first_page, 24).ok_or_else(too_short)?;
    let segment_size = u32_at(first_page, 32).ok_or_else(too_short)?;
    let block_size = u32_at(first_page, 36).ok_or_else(too_short)?;

    // Magic first: on a file that is not WAL at all, every later complaint would mislead.
    let pg_major = pg_major_from_wal_magic(magic).ok_or(WalHeaderError::UnknownMagic { magic })?;
    if info & !XLP_ALL_FLAGS != 0 {
        return Err(WalHeaderError::UnknownFlags { info });
    }
    if info & XLP_LONG_HEADER == 0 {
        return Err(WalHeaderError::NotLongHeader { info });
    }
    if !is_valid_wal_segment_size(u64::from(segment_size)) {
        return Err(WalHeaderError::InvalidSegmentSize { size: segment_size });
    }
    if !(block_size.is_power_of_two() && (1024..=65536).contains(&block_size)) {
        return Err(WalHeaderError::InvalidBlockSize { size: block_size });
    }
    let timeline = TimelineId::new(tli).ok_or(WalHeaderError::ZeroTimeline)?;
    Ok(LongPageHeader {
        magic,
        pg_major,
        timeline,
        page_address,
        system_identifier,
        segment_size,
        block_size,
    })
}

/// Checks that `file`, the whole content of a file named `name`, is that WAL segment.
///
/// Its length must equal the header's segment size, its first page must start at the name's LSN,
/// and the header's timeline must be the name's or older: when PostgreSQL switches timelines it
/// copies the old timeline's last segment under the new name, and the copied pages keep the old
/// timeline.
pub fn validate_segment(
    file: &[u8],
    name: &WalSegmentName,
) -> Result<LongPageHeader, WalHeaderError> {
    validate(file, len_u64(file), WalFileName::Segment(*name), name)
}

/// As [`validate_segment`] for `NAME.partial`, the last segment of a timeline a standby was
/// promoted away from. PostgreSQL writes it at full segment size, the tail zero-filled, so the
/// same checks hold; `name` is the segment name without `.partial`.
pub fn validate_partial(
    file: &[u8],
    name: &WalSegmentName,
) -> Result<LongPageHeader, WalHeaderError> {
    validate(file, len_u64(file), WalFileName::Partial(*name), name)
}

/// As [`validate_segment`] from the file's first page and length alone, for callers that stream
/// a segment instead of holding it in memory.
pub fn validate_segment_header(
    first_page: &[u8],
    file_len: u64,
    name: &WalSegmentName,
) -> Result<LongPageHeader, WalHeaderError> {
    validate(first_page, file_len, WalFileName::Segment(*name), name)
}

/// As [`validate_partial`] from the file's first page and length alone.
pub fn validate_partial_header(
    first_page: &[u8],
    file_len: u64,
    name: &WalSegmentName,
) -> Result<LongPageHeader, WalHeaderError> {
    validate(first_page, file_len, WalFileName::Partial(*name), name)
}

fn len_u64(file: &[u8]) -> u64 {
    // usize is at most 64 bits on every platform Rust supports.
    u64::try_from(file.len()).unwrap_or(u64::MAX)
}

/// `file_name` is the whole name, for messages; `name` the segment it holds.
fn validate(
    first_page: &[u8],
    file_len: u64,
    file_name: WalFileName,
    name: &WalSegmentName,
) -> Result<LongPageHeader, WalHeaderError> {
    let header = parse_long_page_header(first_page)?;
    let seg_size = u64::from(header.segment_size);
    if file_len != seg_size {
        return Err(WalHeaderError::LengthMismatch {
            name: file_name.to_string(),
            expected: seg_size,
            found: file_len,
        });
    }
    let expected = name.start_lsn(seg_size)?;
    if header.page_address != expected {
        return Err(WalHeaderError::AddressMismatch {
            name: file_name.to_string(),
            expected,
            found: header.page_address,
        });
    }
    if header.timeline > name.timeline {
        return Err(WalHeaderError::TimelineMismatch {
            name: file_name.to_string(),
            expected: name.timeline,
            found: header.timeline,
        });
    }
    Ok(header)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::walname::DEFAULT_WAL_SEGMENT_SIZE;
    use proptest::prelude::*;

    const SYSID: u64 = 7_311_319_182_177_296_960;

    /// A synthetic first page as PostgreSQL 15 writes it.
    fn page(magic: u16, info: u16, tli: u32, addr: u64, seg_size: u32, blcksz: u32) -> Vec<u8> {
        let mut p = vec![0u8; 8192];
        p[0..2].copy_from_slice(&magic.to_le_bytes());
        p[2..4].copy_from_slice(&info.to_le_bytes());
        p[4..8].copy_from_slice(&tli.to_le_bytes());
        p[8..16].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&SYSID.to_le_bytes());
        p[32..36].copy_from_slice(&seg_size.to_le_bytes());
        p[36..40].copy_from_slice(&blcksz.to_le_bytes());
        p
    }

    fn good(tli: u32, addr: u64) -> Vec<u8> {
        page(0xD110, XLP_LONG_HEADER, tli, addr, 16 << 20, 8192)
    }

    fn segment(mut first_page: Vec<u8>) -> Vec<u8> {
        first_page.resize(usize::try_from(DEFAULT_WAL_SEGMENT_SIZE).unwrap(), 0);
        first_page
    }

    fn name(text: &str) -> WalSegmentName {
        text.parse().unwrap()
    }

    #[test]
    fn magic_table() {
        assert_eq!(pg_major_from_wal_magic(0xD110), Some(15));
        assert_eq!(pg_major_from_wal_magic(0xD097), Some(10));
        assert_eq!(pg_major_from_wal_magic(0xD118), Some(18));
        assert_eq!(pg_major_from_wal_magic(0xD093), None);
        assert_eq!(pg_major_from_wal_magic(0), None);
        let majors: Vec<u32> = WAL_MAGICS.iter().map(|(_, v)| *v).collect();
        assert_eq!(majors, (10..=18).collect::<Vec<_>>());
        assert!(WAL_MAGICS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn parses_synthetic_header() {
        let h = parse_long_page_header(&good(3, 0x1_A300_0000)).unwrap();
        assert_eq!(
            h,
            LongPageHeader {
                magic: 0xD110,
                pg_major: 15,
                timeline: TimelineId::new(3).unwrap(),
                page_address: Lsn(0x1_A300_0000),
                system_identifier: SYSID,
                segment_size: 16 << 20,
                block_size: 8192,
            }
        );
        // Exactly 40 bytes suffice.
        assert!(parse_long_page_header(&good(3, 0)[..40]).is_ok());
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            parse_long_page_header(&good(1, 0)[..39]),
            Err(WalHeaderError::TooShort { len: 39 })
        );
        let err = parse_long_page_header(&page(0x1234, 2, 1, 0, 16 << 20, 8192)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown WAL page magic 0x1234: not a WAL file of a known PostgreSQL version (10 to 18)"
        );
        assert_eq!(
            parse_long_page_header(&page(0xD110, 0x0001, 1, 0, 16 << 20, 8192)),
            Err(WalHeaderError::NotLongHeader { info: 1 })
        );
        assert_eq!(
            parse_long_page_header(&page(0xD110, 0x0012, 1, 0, 16 << 20, 8192)),
            Err(WalHeaderError::UnknownFlags { info: 0x12 })
        );
        assert_eq!(
            parse_long_page_header(&page(0xD110, 2, 1, 0, 3 << 20, 8192)),
            Err(WalHeaderError::InvalidSegmentSize { size: 3 << 20 })
        );
        assert_eq!(
            parse_long_page_header(&page(0xD110, 2, 1, 0, 16 << 20, 100)),
            Err(WalHeaderError::InvalidBlockSize { size: 100 })
        );
        assert_eq!(
            parse_long_page_header(&page(0xD110, 2, 0, 0, 16 << 20, 8192)),
            Err(WalHeaderError::ZeroTimeline)
        );
    }

    #[test]
    fn validates_matching_segment() {
        let file = segment(good(2, 0x1_A300_0000));
        let h = validate_segment(&file, &name("0000000200000001000000A3")).unwrap();
        assert_eq!(h.timeline.get(), 2);
        let h = validate_partial(&file, &name("0000000200000001000000A3")).unwrap();
        assert_eq!(h.page_address, Lsn(0x1_A300_0000));
        let h = validate_segment_header(
            &file[..8192],
            DEFAULT_WAL_SEGMENT_SIZE,
            &name("0000000200000001000000A3"),
        )
        .unwrap();
        assert_eq!(h.segment_size, 16 << 20);
    }

    #[test]
    fn older_header_timeline_is_accepted() {
        // The first segment of timeline 3 is a copy of timeline 1's last one.
        let file = segment(good(1, 0x1_A300_0000));
        assert!(validate_segment(&file, &name("0000000300000001000000A3")).is_ok());
    }

    #[test]
    fn newer_header_timeline_is_refused() {
        let file = segment(good(4, 0x1_A300_0000));
        let err = validate_segment(&file, &name("0000000300000001000000A3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WAL file 0000000300000001000000A3: expected header timeline 00000003 or older \
             from its name, found 00000004"
        );
    }

    #[test]
    fn wrong_address_is_refused() {
        let file = segment(good(1, 0x1_A400_0000));
        let err = validate_partial(&file, &name("0000000100000001000000A3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WAL file 0000000100000001000000A3.partial: expected page address 1/A3000000 \
             from its name, found 1/A4000000"
        );
    }

    #[test]
    fn wrong_length_is_refused() {
        let file = good(1, 0x1_A300_0000);
        let err = validate_segment(&file, &name("0000000100000001000000A3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WAL file 0000000100000001000000A3: expected 16777216 bytes (the segment size in \
             its header), found 8192"
        );
    }

    #[test]
    fn name_out_of_range_for_header_size() {
        let file = segment(good(1, 0));
        let err = validate_segment(&file, &name("000000010000000000000100")).unwrap_err();
        assert!(matches!(
            err,
            WalHeaderError::Name(NameError::SegmentOutOfRange { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_long_page_header(&bytes);
            let _ = validate_segment(&bytes, &name("000000010000000000000001"));
        }

        #[test]
        fn any_header_with_known_magic_parses(
            idx in 0usize..9, tli in 1u32.., addr in any::<u64>(), shift in 20u32..=30,
        ) {
            let magic = WAL_MAGICS[idx].0;
            let p = page(magic, XLP_LONG_HEADER | XLP_BKP_REMOVABLE, tli, addr, 1 << shift, 8192);
            let h = parse_long_page_header(&p).unwrap();
            prop_assert_eq!(h.pg_major, WAL_MAGICS[idx].1);
            prop_assert_eq!(h.timeline.get(), tli);
            prop_assert_eq!(h.page_address, Lsn(addr));
        }
    }
}
