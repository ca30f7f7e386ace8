//! Data pages of relation files: their size, the LSN and checksum in their header, and
//! PostgreSQL's page checksum algorithm.
//!
//! This module owns [`checksum_page`] (the algorithm of PostgreSQL's `checksum_impl.h`, written
//! anew for Rust) and the rules a base backup applies when it verifies a page ([`check_page`]).
//! Only clusters built with the default 8 KiB block size and 1 GiB segments are supported; those
//! are what every packaged PostgreSQL uses. Pages are read in the byte order of the machine we run
//! on, as PostgreSQL writes them in its own: backups are taken on the database host.

use crate::lsn::Lsn;

/// Size of a page (`BLCKSZ`).
pub const BLCKSZ: usize = 8192;

/// Pages per relation segment file (`RELSEG_SIZE`): 1 GiB files. Segment `N` of a relation
/// (the file `<relfilenode>.N`) starts at block `N * RELSEG_BLOCKS`.
pub const RELSEG_BLOCKS: u32 = 131_072;

/// Bytes of the page header fields we read: pd_lsn (8), pd_checksum (2), pd_flags (2),
/// pd_lower (2), pd_upper (2).
const HEADER_READ: usize = 16;

/// Offset of `pd_checksum` in the page header.
const PD_CHECKSUM: usize = 8;

/// Offset of `pd_upper` in the page header.
const PD_UPPER: usize = 14;

/// Number of interleaved sums the algorithm keeps. Part of the algorithm: another number gives
/// other checksums.
const N_SUMS: usize = 32;

/// Bytes consumed per round: one 32-bit word for each sum.
const ROW: usize = N_SUMS * 4;

/// The FNV-1a 32-bit prime.
const FNV_PRIME: u32 = 16_777_619;

/// Starting values of the 32 sums, fixed by PostgreSQL's on-disk format.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F_36E9,
    0xB852_5960,
    0x02AB_50AA,
    0x1DE6_6D2A,
    0x79FF_467A,
    0x9BB9_F8A3,
    0x217E_7CD2,
    0x83E1_3D2C,
    0xF8D4_474F,
    0xE39E_B970,
    0x42C6_AE16,
    0x9932_16FA,
    0x7B09_3B5D,
    0x98DA_FF3C,
    0xF718_902A,
    0x0B1C_9CDB,
    0xE58F_764B,
    0x1876_36BC,
    0x5D7B_3BB1,
    0xE73D_E7DE,
    0x92BE_C979,
    0xCCA6_C0B2,
    0x304A_0979,
    0x85AA_43D4,
    0x7831_25BB,
    0x6CA8_EAA2,
    0xE407_EAC6,
    0x4B5C_FC3E,
    0x9FBF_8C76,
    0x15CA_20BE,
    0xF2CA_9FD3,
    0x959B_D756,
];

/// The page's LSN (`pd_lsn`): where the WAL record of its last change ends.
///
/// # Panics
/// If `page` is shorter than a page header (16 bytes).
#[must_use]
pub fn page_lsn(page: &[u8]) -> Lsn {
    let header = header(page);
    // pd_lsn is two 32-bit halves (xlogid, then xrecoff), not one 64-bit integer, so the
    // high half comes first whatever the byte order.
    let hi = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
    let lo = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    Lsn((u64::from(hi) << 32) | u64::from(lo))
}

/// The checksum stored in the page header (`pd_checksum`).
///
/// # Panics
/// If `page` is shorter than a page header (16 bytes).
#[must_use]
pub fn page_checksum_field(page: &[u8]) -> u16 {
    let header = header(page);
    u16::from_ne_bytes([header[PD_CHECKSUM], header[PD_CHECKSUM + 1]])
}

/// `pd_upper`, the end of free space; 0 on a page that was never initialised (`PageIsNew`).
fn page_upper(page: &[u8]) -> u16 {
    let header = header(page);
    u16::from_ne_bytes([header[PD_UPPER], header[PD_UPPER + 1]])
}

fn header(page: &[u8]) -> &[u8; HEADER_READ] {
    match page.first_chunk::<HEADER_READ>() {
        Some(header) => header,
        None => panic!(
            "a page header needs {HEADER_READ} bytes, got {}: pass whole pages",
            page.len()
        ),
    }
}

/// One round of the hash on one sum: FNV-1a with the high bits folded back in, so that they
/// reach the low 16 bits that survive the final reduction.
#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// Folds one 128-byte row into the 32 sums. The sums are independent, so LLVM turns this into
/// vector multiplies when the loop is fully known, as here (fixed-size arrays, no bounds checks).
#[inline(always)]
fn mix_row(sums: &mut [u32; N_SUMS], row: &[u8; ROW]) {
    let (words, _) = row.as_chunks::<4>();
    for (sum, word) in sums.iter_mut().zip(words) {
        *sum = mix(*sum, u32::from_ne_bytes(*word));
    }
}

/// PostgreSQL's checksum of `page` as block `blkno` of its relation fork (`pg_checksum_page`),
/// computed as if `pd_checksum` were zero, so a correct page gives back its stored checksum.
///
/// `blkno` counts from the start of the fork, not of the segment file: for a page at offset `o`
/// of segment `N` it is `N * RELSEG_BLOCKS + o / BLCKSZ`.
///
/// # Panics
/// If `page` is not exactly [`BLCKSZ`] bytes: callers hand over whole pages (a short read at
/// the end of a file that is being extended is not a page).
#[must_use]
pub fn checksum_page(page: &[u8], blkno: u32) -> u16 {
    let Ok(page) = <&[u8; BLCKSZ]>::try_from(page) else {
        panic!(
            "a page is {BLCKSZ} bytes, got {}: pass whole pages",
            page.len()
        );
    };
    let (rows, _) = page.as_chunks::<ROW>();
    let mut sums = BASE_OFFSETS;

    // The first row holds pd_checksum: hash it with those two bytes zeroed, without touching
    // the caller's buffer.
    let (first, rest) = rows.split_at(1);
    let mut first_row = first[0];
    first_row[PD_CHECKSUM] = 0;
    first_row[PD_CHECKSUM + 1] = 0;
    mix_row(&mut sums, &first_row);
    for row in rest {
        mix_row(&mut sums, row);
    }

    // Two rounds of zeros spread the last words' bits through each sum.
    for _ in 0..2 {
        for sum in &mut sums {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0, |acc, sum| acc ^ sum) ^ blkno;

    // Offset by one so that a valid checksum is never 0. The result is at most 65535.
    u16::try_from(folded % 65_535 + 1).unwrap_or(u16::MAX)
}

/// What a backup makes of one page of a relation file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// The stored checksum matches.
    Valid,
    /// An all-zero page: allocated by extending the file but never written, which is normal.
    Zero,
    /// Changed after the backup started (its LSN is at or past the start): it may be torn in
    /// the copy and is not judged, because WAL replay from the backup start rewrites it whole.
    NewerThanBackup,
    /// Corrupt, or torn by a concurrent write while it was read. `computed` is what the checksum
    /// should be for the block number given.
    Bad {
        /// `pd_checksum` as found on the page.
        stored: u16,
        /// The checksum of the page's contents.
        computed: u16,
    },
}

/// Judges one page as PostgreSQL does when it reads a page in (`PageIsVerified`) and when a base
/// backup verifies one: an all-zero page is fine; a page with `pd_upper` 0 that is not all zeros
/// is bad (PostgreSQL never writes one); a page whose LSN is at or past `backup_start` is not
/// judged; any other page must carry its checksum.
///
/// A page being written while it is read can look bad. Like `pg_basebackup`, read a `Bad` page
/// again before reporting it: if the second read is newer than the backup or valid, it was torn.
///
/// # Panics
/// If `page` is not exactly [`BLCKSZ`] bytes.
#[must_use]
pub fn check_page(page: &[u8], blkno: u32, backup_start: Lsn) -> PageCheck {
    if page.len() != BLCKSZ {
        panic!(
            "a page is {BLCKSZ} bytes, got {}: pass whole pages",
            page.len()
        );
    }
    if page_upper(page) == 0 {
        if is_all_zero(page) {
            return PageCheck::Zero;
        }
        return PageCheck::Bad {
            stored: page_checksum_field(page),
            computed: checksum_page(page, blkno),
        };
    }
    if page_lsn(page) >= backup_start {
        return PageCheck::NewerThanBackup;
    }
    let stored = page_checksum_field(page);
    let computed = checksum_page(page, blkno);
    if stored == computed {
        PageCheck::Valid
    } else {
        PageCheck::Bad { stored, computed }
    }
}

/// Whether every byte is zero; 8 bytes at a time so it stays cheap next to the checksum.
fn is_all_zero(page: &[u8]) -> bool {
    let (words, tail) = page.as_chunks::<8>();
    words.iter().all(|w| u64::from_ne_bytes(*w) == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A page that looks initialised: pd_lower 24, pd_upper and pd_special at the end, some
    /// payload, then its correct checksum for `blkno`.
    fn sample_page(lsn: Lsn, blkno: u32) -> Vec<u8> {
        let mut page = vec![0u8; BLCKSZ];
        let hi = u32::try_from(lsn.0 >> 32).unwrap();
        let lo = u32::try_from(lsn.0 & 0xFFFF_FFFF).unwrap();
        page[0..4].copy_from_slice(&hi.to_ne_bytes());
        page[4..8].copy_from_slice(&lo.to_ne_bytes());
        page[12..14].copy_from_slice(&24u16.to_ne_bytes());
        page[14..16].copy_from_slice(&8000u16.to_ne_bytes());
        page[16..18].copy_from_slice(&8192u16.to_ne_bytes());
        for (i, b) in page[8000..].iter_mut().enumerate() {
            *b = u8::try_from(i % 251).unwrap();
        }
        let sum = checksum_page(&page, blkno);
        page[8..10].copy_from_slice(&sum.to_ne_bytes());
        page
    }

    #[test]
    fn all_zero_page_is_zero() {
        let page = vec![0u8; BLCKSZ];
        assert_eq!(check_page(&page, 0, Lsn(0x100)), PageCheck::Zero);
        assert_eq!(check_page(&page, 7, Lsn(0)), PageCheck::Zero);
        assert_eq!(page_lsn(&page), Lsn(0));
        assert_eq!(page_checksum_field(&page), 0);
    }

    #[test]
    fn header_fields() {
        let page = sample_page(Lsn(0x1_0000_00A0), 3);
        assert_eq!(page_lsn(&page), Lsn(0x1_0000_00A0));
        assert_eq!(page_checksum_field(&page), checksum_page(&page, 3));
    }

    #[test]
    fn checksum_ignores_its_own_field_and_mixes_in_blkno() {
        let mut page = sample_page(Lsn(0x10), 0);
        let sum = checksum_page(&page, 0);
        page[8] ^= 0xFF;
        page[9] ^= 0x0F;
        assert_eq!(checksum_page(&page, 0), sum);
        assert_ne!(checksum_page(&page, 1), sum);
        // pd_flags shares a 32-bit word with pd_checksum but is hashed.
        page[10] ^= 1;
        assert_ne!(checksum_page(&page, 0), sum);
    }

    #[test]
    fn checksum_is_never_zero() {
        let mut page = sample_page(Lsn(0x10), 0);
        for blkno in 0..2000 {
            page[100] = u8::try_from(blkno % 256).unwrap();
            assert_ne!(checksum_page(&page, blkno), 0);
        }
    }

    #[test]
    fn check_page_rules() {
        let start = Lsn(0x2000_0000);
        let page = sample_page(Lsn(0x1000), 5);
        assert_eq!(check_page(&page, 5, start), PageCheck::Valid);

        // Wrong block number: the page was moved.
        assert!(matches!(check_page(&page, 6, start), PageCheck::Bad { .. }));

        // A flipped byte in the payload.
        let mut bad = page.clone();
        bad[8100] ^= 0x40;
        let stored = page_checksum_field(&page);
        assert_eq!(
            check_page(&bad, 5, start),
            PageCheck::Bad {
                stored,
                computed: checksum_page(&bad, 5)
            }
        );

        // Changed after the backup started: not judged, even when the checksum is off.
        let newer = sample_page(start, 5);
        let mut newer_bad = newer.clone();
        newer_bad[8100] ^= 0x40;
        assert_eq!(check_page(&newer_bad, 5, start), PageCheck::NewerThanBackup);
        assert_eq!(
            check_page(&newer_bad, 5, Lsn(start.0 + 1)),
            PageCheck::Bad {
                stored: page_checksum_field(&newer),
                computed: checksum_page(&newer_bad, 5)
            }
        );

        // pd_upper 0 but not all zeros: PostgreSQL never writes that.
        let mut half_new = vec![0u8; BLCKSZ];
        half_new[4000] = 1;
        assert!(matches!(
            check_page(&half_new, 0, start),
            PageCheck::Bad { stored: 0, .. }
        ));
        // Even with an LSN past the start: an uninitialised page has no meaningful LSN.
        half_new[0] = 0xFF;
        assert!(matches!(
            check_page(&half_new, 0, start),
            PageCheck::Bad { .. }
        ));
    }

    #[test]
    #[should_panic(expected = "a page is 8192 bytes, got 100")]
    fn short_page_panics() {
        let _ = checksum_page(&[0u8; 100], 0);
    }
}
