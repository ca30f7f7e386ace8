//! Tests of WAL file names: parsing, formatting, arithmetic and serde, with properties.

#![allow(clippy::unwrap_used)]

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
