//! The parsers against files a real PostgreSQL 15 wrote (see fixtures/pg15/README.md).
#![allow(clippy::unwrap_used)]

use lifeboat_pg::control::{ControlError, DbState, parse_control_file};
use lifeboat_pg::history::TimelineHistory;
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walheader::{
    WalHeaderError, parse_long_page_header, validate_partial, validate_segment,
    validate_segment_header,
};
use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};

const PG_CONTROL: &[u8] = include_bytes!("fixtures/pg15/pg_control");
const PG_CONTROLDATA: &str = include_str!("fixtures/pg15/pg_controldata.txt");
const SEG_1_1: &[u8] = include_bytes!("fixtures/pg15/000000010000000000000001.head");
const SEG_2_4: &[u8] = include_bytes!("fixtures/pg15/000000020000000000000004.head");
const PARTIAL_1_4: &[u8] = include_bytes!("fixtures/pg15/000000010000000000000004.partial.head");
const HISTORY_2: &str = include_str!("fixtures/pg15/00000002.history");

/// The system identifier `initdb` chose for the fixture cluster.
const SYSID: u64 = 7_711_319_182_177_296_960;

/// A value `pg_controldata` printed for the fixture.
fn controldata(key: &str) -> &'static str {
    PG_CONTROLDATA
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap()
}

/// The fixture's first page followed by zeros up to the segment size, as the real file was.
fn full_segment(head: &[u8]) -> Vec<u8> {
    let mut file = head.to_vec();
    file.resize(usize::try_from(DEFAULT_WAL_SEGMENT_SIZE).unwrap(), 0);
    file
}

fn name(text: &str) -> WalSegmentName {
    text.parse().unwrap()
}

#[test]
fn control_file_matches_pg_controldata() {
    let c = parse_control_file(PG_CONTROL).unwrap();
    assert_eq!(c.control_version, 1300);
    assert_eq!(c.catalog_version, 202_209_061);
    assert_eq!(c.pg_major, 15);
    assert_eq!(
        c.system_identifier.to_string(),
        controldata("Database system identifier")
    );
    assert_eq!(c.system_identifier, SYSID);
    assert_eq!(c.db_state(), DbState::ShutDown);
    assert_eq!(
        c.db_state().to_string(),
        controldata("Database cluster state")
    );
    assert_eq!(
        c.checkpoint_lsn.to_string(),
        controldata("Latest checkpoint location")
    );
    assert_eq!(
        c.timeline.get().to_string(),
        controldata("Latest checkpoint's TimeLineID")
    );
    assert_eq!(c.block_size.to_string(), controldata("Database block size"));
    assert_eq!(
        c.wal_segment_size.to_string(),
        controldata("Bytes per WAL segment")
    );
    assert_eq!(
        c.data_checksum_version.to_string(),
        controldata("Data page checksum version")
    );
    assert!(c.data_checksums());
    // The REDO file pg_controldata names is where the checkpoint lies.
    assert_eq!(
        WalSegmentName::from_lsn(c.timeline, c.checkpoint_lsn, c.wal_segment_size.into())
            .to_string(),
        controldata("Latest checkpoint's REDO WAL file")
    );
}

#[test]
fn corrupted_control_file_fails_crc() {
    let mut bytes = PG_CONTROL.to_vec();
    bytes[40] ^= 0x01; // inside checkPointCopy.redo
    let err = parse_control_file(&bytes).unwrap_err();
    assert!(
        matches!(err, ControlError::CrcMismatch { covered: 288, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("CRC mismatch"), "{err}");

    // Bytes after the CRC are padding: changing them is harmless.
    let mut bytes = PG_CONTROL.to_vec();
    bytes[4000] ^= 0xFF;
    assert!(parse_control_file(&bytes).is_ok());
}

#[test]
fn first_segment_header() {
    let h = parse_long_page_header(SEG_1_1).unwrap();
    assert_eq!(h.magic, 0xD110);
    assert_eq!(h.pg_major, 15);
    assert_eq!(h.timeline, TimelineId::ONE);
    assert_eq!(h.page_address, "0/1000000".parse::<Lsn>().unwrap());
    assert_eq!(h.system_identifier, SYSID);
    assert_eq!(u64::from(h.segment_size), DEFAULT_WAL_SEGMENT_SIZE);
    assert_eq!(h.block_size, 8192);

    let file = full_segment(SEG_1_1);
    assert_eq!(
        validate_segment(&file, &name("000000010000000000000001")).unwrap(),
        h
    );
    assert_eq!(
        validate_segment_header(
            SEG_1_1,
            DEFAULT_WAL_SEGMENT_SIZE,
            &name("000000010000000000000001")
        )
        .unwrap(),
        h
    );
}

#[test]
fn segment_checked_against_the_wrong_name() {
    let file = full_segment(SEG_1_1);
    let err = validate_segment(&file, &name("000000010000000000000002")).unwrap_err();
    assert!(
        matches!(err, WalHeaderError::AddressMismatch { .. }),
        "{err}"
    );
    // The fixture itself is only the first page.
    let err = validate_segment(SEG_1_1, &name("000000010000000000000001")).unwrap_err();
    assert!(
        matches!(err, WalHeaderError::LengthMismatch { .. }),
        "{err}"
    );
}

#[test]
fn first_segment_of_new_timeline_keeps_old_header_timeline() {
    // At promotion PostgreSQL copied segment 4 of timeline 1 to timeline 2: the copied first page
    // still says timeline 1.
    let h = parse_long_page_header(SEG_2_4).unwrap();
    assert_eq!(h.timeline, TimelineId::ONE);
    let file = full_segment(SEG_2_4);
    let h = validate_segment(&file, &name("000000020000000000000004")).unwrap();
    assert_eq!(h.page_address, "0/4000000".parse::<Lsn>().unwrap());
}

#[test]
fn partial_segment() {
    let file = full_segment(PARTIAL_1_4);
    let parsed = WalFileName::parse("000000010000000000000004.partial").unwrap();
    let segment = parsed.segment().unwrap();
    let h = validate_partial(&file, segment).unwrap();
    assert_eq!(h.timeline, TimelineId::ONE);
    assert_eq!(h.system_identifier, SYSID);
}

#[test]
fn history_file() {
    let parsed = WalFileName::parse("00000002.history").unwrap();
    let h = TimelineHistory::parse(parsed.timeline(), HISTORY_2).unwrap();
    assert_eq!(h.entries.len(), 1);
    assert_eq!(h.entries[0].parent, TimelineId::ONE);
    assert_eq!(
        h.entries[0].switch_point,
        "0/40000A0".parse::<Lsn>().unwrap()
    );
    assert_eq!(h.entries[0].reason, "no recovery target specified");
    assert_eq!(h.to_string(), HISTORY_2);
    // The switch point lies in segment 4, the one copied to timeline 2.
    assert_eq!(
        WalSegmentName::from_lsn(
            TimelineId::ONE,
            h.entries[0].switch_point,
            DEFAULT_WAL_SEGMENT_SIZE
        ),
        name("000000010000000000000004")
    );
}

#[test]
fn archived_names_from_the_fixture_run() {
    // Every name the fixture cluster's archive_command received.
    for text in [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003",
        "000000010000000000000004.partial",
        "00000002.history",
        "000000020000000000000004",
    ] {
        assert_eq!(WalFileName::parse(text).unwrap().to_string(), text);
    }
}
