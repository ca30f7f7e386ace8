//! The state's format: round trips, what it forgets, older layouts it still reads.

use super::*;
use lifeboat_pg::walname::DEFAULT_WAL_SEGMENT_SIZE;

fn id(b: u8) -> ChunkId {
    ChunkId(ContentHash([b; 32]))
}

const SEG: u64 = DEFAULT_WAL_SEGMENT_SIZE;

fn loose(size: u64) -> ChunkPlace {
    ChunkPlace::Loose { size }
}

fn packed(pack: u8, offset: u64, length: u32) -> ChunkPlace {
    ChunkPlace::Packed(lifeboat_repo::pack::ChunkLocation {
        pack: PackId([pack; 16]),
        offset,
        length,
    })
}

/// The version and record length a state is written with.
fn layout(state: &State) -> (u64, u64) {
    let bytes = state.to_bytes(SEG).unwrap();
    let newline = bytes.iter().position(|&b| b == b'\n').unwrap();
    let header: serde_json::Value = serde_json::from_slice(&bytes[..newline]).unwrap();
    let field = |name: &str| header[name].as_u64().unwrap();
    (field("version"), field("chunk_record_len"))
}

/// A packed chunk's record names its pack: the state is written as version 2 then, reads back
/// the same, and a chunk that moved to another pack (a repack) or out of packs counts as not
/// verified; a state of loose chunks only stays version 1 (40-byte records).
#[test]
fn packed_records_name_their_pack() {
    let mut state = State {
        updated: Some("2026-12-06T00:00:00Z".into()),
        ..State::default()
    };
    state.chunks.insert(id(1), ChunkRecord::new(&loose(100), 7));
    assert_eq!(layout(&state), (1, 40));

    state
        .chunks
        .insert(id(2), ChunkRecord::new(&packed(9, 4096, 300), 8));
    assert_eq!(layout(&state), (2, 48));
    let bytes = state.to_bytes(SEG).unwrap();
    let newline = bytes.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(bytes.len() - newline - 1, 2 * PACKED_RECORD_LEN);
    let back = State::parse(&bytes, SEG).unwrap();
    assert_eq!(back, state);
    assert!(back.chunk_verified(&id(1), &loose(100)));
    assert!(back.chunk_verified(&id(2), &packed(9, 4096, 300)));
    assert!(
        back.chunk_verified(&id(2), &packed(9, 0, 300)),
        "the offset is not recorded"
    );
    assert!(
        !back.chunk_verified(&id(2), &packed(10, 4096, 300)),
        "moved to another pack"
    );
    assert!(
        !back.chunk_verified(&id(2), &loose(300)),
        "moved out of packs"
    );
    assert!(
        !back.chunk_verified(&id(1), &packed(9, 0, 100)),
        "moved into a pack"
    );
}

#[test]
fn state_round_trips_and_stays_compact() {
    let mut state = State {
        updated: Some("2026-11-23T10:15:00Z".into()),
        ..State::default()
    };
    for b in [9u8, 1, 5] {
        state.chunks.insert(
            id(b),
            ChunkRecord {
                stored_size: 1000 + u32::from(b),
                verified_at: 7,
                pack: 0,
            },
        );
    }
    for n in 2..=200 {
        let name = WalFileName::Segment(WalSegmentName::from_segno(TimelineId::ONE, n, SEG));
        state.add_wal(&name, if n < 100 { 10 } else { 20 }, Some(1000 + n), SEG);
    }
    state.add_wal(
        &WalFileName::parse("00000002.history").unwrap(),
        20,
        Some(40),
        SEG,
    );
    state.runs = 3;
    state.runs_since = Some(5);
    let bytes = state.to_bytes(SEG).unwrap();
    let newline = bytes.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(bytes.len() - newline - 1, 3 * CHUNK_RECORD_LEN);
    let header: serde_json::Value = serde_json::from_slice(&bytes[..newline]).unwrap();
    // 199 segments verified by two runs: two ranges.
    assert_eq!(
        header["wal_segments"].as_array().unwrap().len(),
        2,
        "{header}"
    );
    // Records sorted by id.
    assert_eq!(bytes[newline + 1], 1);
    assert_eq!(bytes[newline + 1 + CHUNK_RECORD_LEN], 5);
    let back = State::parse(&bytes, SEG).unwrap();
    assert_eq!(back, state);
}

#[test]
fn state_forgets_what_is_gone_or_changed() {
    let mut state = State::default();
    for b in [1u8, 2, 3] {
        state.chunks.insert(
            id(b),
            ChunkRecord {
                stored_size: 100,
                verified_at: 1,
                pack: 0,
            },
        );
    }
    let seg = |n| WalFileName::Segment(WalSegmentName::from_segno(TimelineId::ONE, n, SEG));
    for n in 1..=5 {
        state.add_wal(&seg(n), 1, Some(10), SEG);
    }
    let present: HashMap<ChunkId, u64> = [(id(1), 100), (id(2), 99)].into_iter().collect();
    let wal = vec![(seg(1), 10), (seg(2), 10), (seg(4), 10), (seg(5), 0)];
    let vanished: HashSet<WalFileName> = [seg(4)].into_iter().collect();
    state.retain_present(
        |c| present.get(c).map(|&size| loose(size)),
        &wal,
        &vanished,
        SEG,
    );
    assert!(state.chunk_verified(&id(1), &loose(100)));
    assert!(!state.chunk_verified(&id(2), &loose(99)), "changed size");
    assert!(!state.chunk_verified(&id(3), &loose(100)), "deleted");
    assert!(state.wal_verified(&seg(1), 10, SEG));
    assert!(
        !state.wal_verified(&seg(1), 11, SEG),
        "listed at another size"
    );
    assert!(!state.wal_verified(&seg(3), 10, SEG), "deleted");
    assert!(!state.wal_verified(&seg(4), 10, SEG), "vanished while read");
    assert!(!state.wal_verified(&seg(5), 0, SEG), "changed size");
    assert!(!state.wal_verified(&seg(5), 10, SEG), "forgotten");
}

/// A state written before stored sizes and the rotation were recorded still reads: its chunk
/// records stand, its WAL records count as not verified (read again, then recorded with
/// their size), and the rotation starts at run 0.
#[test]
fn a_state_without_sizes_still_reads() {
    let header = serde_json::json!({
        "format": STATE_FORMAT, "version": 1, "updated": "2026-11-23T10:15:00Z",
        "chunk_record_len": 40, "chunks": 1,
        "wal_segments": [{"first": "000000010000000000000002", "last": "000000010000000000000004", "verified_at": 7}],
        "wal_files": [{"name": "00000002.history", "verified_at": 7}]
    });
    let mut bytes = serde_json::to_vec(&header).unwrap();
    bytes.push(b'\n');
    bytes.extend_from_slice(&[3u8; 32]);
    bytes.extend_from_slice(&500u32.to_le_bytes());
    bytes.extend_from_slice(&7u32.to_le_bytes());
    let state = State::parse(&bytes, SEG).unwrap();
    assert!(state.chunk_verified(&id(3), &loose(500)));
    assert_eq!(state.wal_count(), 4);
    let seg = WalFileName::Segment(WalSegmentName::from_segno(TimelineId::ONE, 3, SEG));
    assert!(!state.wal_verified(&seg, 100, SEG));
    assert_eq!((state.runs, state.runs_since), (0, None));
    // Written again with what it holds, it reads back the same.
    let again = State::parse(&state.to_bytes(SEG).unwrap(), SEG).unwrap();
    assert_eq!(again, state);
}

/// A state that claims more segments than any archive holds is refused, not expanded.
#[test]
fn a_state_claiming_every_segment_is_refused() {
    let header = serde_json::json!({
        "format": STATE_FORMAT, "version": 1, "updated": "x",
        "chunk_record_len": 40, "chunks": 0,
        "wal_segments": [{"first": "000000010000000000000000", "last": "00000001FFFFFFFF000000FF", "verified_at": 7}],
        "wal_files": []
    });
    let mut bytes = serde_json::to_vec(&header).unwrap();
    bytes.push(b'\n');
    assert!(State::parse(&bytes, SEG).is_err());
}

#[test]
fn damaged_state_is_refused() {
    assert!(State::parse(b"not json\n", SEG).is_err());
    let mut state = State::default();
    state.chunks.insert(
        id(1),
        ChunkRecord {
            stored_size: 1,
            verified_at: 1,
            pack: 0,
        },
    );
    let mut bytes = state.to_bytes(SEG).unwrap();
    bytes.pop();
    assert!(State::parse(&bytes, SEG).is_err());
}
