//! The planner's rules: what the target lacks travels, by key or by content; backups the
//! target's retention removed, and the WAL before its oldest backup, do not; order.

use std::collections::{HashMap, HashSet};

use lifeboat_repo::backup::testing::ManifestBuilder;
use lifeboat_repo::backup::{ChunkId, Entry, FileEntry, Manifest};
use lifeboat_repo::codec::ContentHash;
use lifeboat_repo::dump::{
    Chunking, DUMP_FORMAT, DUMP_VERSION, DumpChunk, DumpManifest, DumpStream,
};
use lifeboat_repo::keys;
use lifeboat_repo::pack::{ChunkLocation, IndexEntry, PackId};
use lifeboat_storage::ObjectMeta;

use super::{PlanInput, plan};

fn chunk(n: u8) -> ChunkId {
    ChunkId(ContentHash([n; 32]))
}

fn pack(n: u8) -> PackId {
    PackId([n; 16])
}

fn meta(key: &str, size: u64) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size,
    }
}

fn backup(label: &str, start: u64, stop: u64, chunks: &[u8]) -> Manifest {
    let entries = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Entry::File(FileEntry {
                path: format!("f{i}"),
                root: Default::default(),
                mode: 0o600,
                size: 1,
                mtime: 0,
                blocks: vec![chunk(*c)],
                packed: None,
            })
        })
        .collect();
    ManifestBuilder::new(label)
        .segments(start, stop)
        .entries(entries)
        .build()
}

fn entries_of(p: u8, chunks: &[u8]) -> Vec<IndexEntry> {
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| IndexEntry {
            chunk: chunk(*c),
            location: ChunkLocation {
                pack: pack(p),
                offset: i as u64 * 100,
                length: 100,
            },
        })
        .collect()
}

fn wal(segno: u64) -> String {
    let tl = lifeboat_pg::timeline::TimelineId::new(1).unwrap();
    let seg = lifeboat_pg::walname::WalSegmentName::from_segno(
        tl,
        segno,
        lifeboat_repo::backup::testing::SEGMENT,
    );
    keys::wal(&lifeboat_pg::walname::WalFileName::Segment(seg))
}

/// A source with two backups (chunks 1-2 in pack 1, chunk 3 in pack 2), WAL 1-4 and a history file.
fn source() -> PlanInput {
    let mut listing = vec![
        meta(keys::CONFIG, 10),
        meta(keys::IDENTITY, 20),
        meta("wal/history/00000002.history", 5),
        meta("locks/backup-1", 5),
        meta("records/alerts", 5),
        meta(keys::VERIFY_STATE, 5),
        meta(&pack(1).key(), 1000),
        meta(&pack(2).key(), 2000),
        meta(&pack(9).key(), 3000), // no index names it
        meta(&keys::manifest("b1"), 50),
        meta(&keys::manifest("b2"), 60),
    ];
    for s in (1..=4).rev() {
        listing.push(meta(&wal(s), 100));
    }
    let mut packs = HashMap::new();
    packs.insert(pack(1), entries_of(1, &[1, 2]));
    packs.insert(pack(2), entries_of(2, &[3]));
    PlanInput {
        source_listing: listing,
        source_packs: packs,
        source_backups: vec![backup("b1", 1, 1, &[1, 2]), backup("b2", 3, 3, &[1, 3])],
        ..PlanInput::default()
    }
}

#[test]
fn an_empty_target_receives_everything_in_order() {
    let p = plan(&source());
    assert_eq!(
        p.identity.as_ref().map(|m| m.key.as_str()),
        Some(keys::IDENTITY)
    );
    let wal_keys: Vec<&str> = p.wal.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(wal_keys[0], "wal/history/00000002.history", "history first");
    assert_eq!(
        &wal_keys[1..],
        &[wal(1), wal(2), wal(3), wal(4)],
        "segments in order"
    );
    let packs: Vec<PackId> = p.packs.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        packs,
        vec![pack(1), pack(2)],
        "the unindexed pack stays behind"
    );
    assert_eq!(p.backups, vec!["b1".to_string(), "b2".to_string()]);
    assert_eq!(p.objects(), 1 + 5 + 2 + 2);
    assert_eq!(p.bytes(), 20 + 5 + 400 + 3000);
    assert_eq!(p.skipped_objects, 0);
}

#[test]
fn a_second_run_copies_only_what_is_new() {
    let mut input = source();
    input.target_listing = input.source_listing.clone();
    input.target_backups = input.source_backups.clone();
    input.target_chunks = [1, 2, 3].into_iter().map(chunk).collect();
    // New in the source: WAL 5, a third backup whose new chunk 4 is in pack 3.
    input.source_listing.push(meta(&wal(5), 100));
    input.source_listing.push(meta(&pack(3).key(), 700));
    input.source_listing.push(meta(&keys::manifest("b3"), 70));
    input.source_packs.insert(pack(3), entries_of(3, &[1, 4]));
    input.source_backups.push(backup("b3", 5, 5, &[1, 4]));
    let p = plan(&input);
    assert!(p.identity.is_none());
    assert_eq!(
        p.wal.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
        vec![wal(5)]
    );
    assert_eq!(p.packs.len(), 1);
    assert_eq!(p.packs[0].0, pack(3));
    assert_eq!(p.backups, vec!["b3".to_string()]);
    // identity, history, 4 segments, 2 packs, 2 manifests: 10 already there.
    assert_eq!(p.skipped_objects, 10);
}

#[test]
fn packs_the_target_repacked_are_not_copied_again() {
    let mut input = source();
    // The target's expire rewrote packs 1 and 2 into pack 7: other names, same chunks.
    input.target_listing = input
        .source_listing
        .iter()
        .filter(|m| PackId::from_key(&m.key).is_none())
        .cloned()
        .collect();
    input.target_listing.push(meta(&pack(7).key(), 2500));
    input.target_chunks = [1, 2, 3].into_iter().map(chunk).collect();
    input.target_backups = input.source_backups.clone();
    let p = plan(&input);
    assert!(p.packs.is_empty(), "{:?}", p.packs);
    assert_eq!(p.objects(), 0);
}

#[test]
fn backups_the_target_expired_and_their_wal_stay_behind() {
    let mut input = source();
    // The target kept only b2 (its own retention): b1 and WAL 1-2 are gone from it.
    input.target_listing = input
        .source_listing
        .iter()
        .filter(|m| m.key != keys::manifest("b1") && m.key != wal(1) && m.key != wal(2))
        .cloned()
        .collect();
    input.target_backups = vec![input.source_backups[1].clone()];
    input.target_chunks = [1, 3].into_iter().map(chunk).collect();
    let p = plan(&input);
    assert!(p.backups.is_empty());
    assert_eq!(p.older_than_target, vec!["b1".to_string()]);
    assert!(p.wal.is_empty(), "{:?}", p.wal);
    assert_eq!(p.wal_below_boundary, 2);
    assert!(p.packs.is_empty(), "chunk 2 is only b1's: {:?}", p.packs);
}

#[test]
fn chunks_no_copied_backup_needs_do_not_pull_their_pack() {
    let mut input = source();
    input.source_backups.remove(0); // b1 expired in the source; pack 1 still holds chunk 2
    input
        .source_listing
        .retain(|m| m.key != keys::manifest("b1"));
    input.target_chunks = [1].into_iter().map(chunk).collect();
    let p = plan(&input);
    let packs: HashSet<PackId> = p.packs.iter().map(|(id, _)| *id).collect();
    assert_eq!(packs, [pack(2)].into_iter().collect());
}

fn dump(label: &str, chunks: &[u8]) -> DumpManifest {
    let stream = |name: &str, chunks: &[u8]| DumpStream {
        name: name.into(),
        format: "custom".into(),
        program_version: "pg_dump (PostgreSQL) 15.10".into(),
        server_major: 15,
        start_time: time::OffsetDateTime::UNIX_EPOCH,
        stop_time: time::OffsetDateTime::UNIX_EPOCH,
        size: chunks.len() as u64,
        stored_size: 0,
        chunks: chunks
            .iter()
            .map(|c| DumpChunk {
                id: chunk(*c),
                len: 1,
            })
            .collect(),
    };
    DumpManifest {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        label: label.into(),
        server_version_num: 150010,
        start_time: time::OffsetDateTime::UNIX_EPOCH,
        stop_time: time::OffsetDateTime::UNIX_EPOCH,
        duration_seconds: 1.0,
        chunking: Chunking {
            algorithm: "fastcdc-v2020".into(),
            min_size: 1,
            avg_size: 2,
            max_size: 3,
        },
        globals: stream("", &[]),
        databases: vec![stream("app", chunks)],
        size: chunks.len() as u64,
        stored_size: 0,
    }
}

#[test]
fn dumps_travel_like_backups_their_chunks_wanted() {
    let mut input = source();
    // No backup to copy: only the dumps' chunks are wanted.
    input.source_backups.clear();
    input.source_packs.insert(pack(3), entries_of(3, &[7]));
    input.source_listing.push(meta(&pack(3).key(), 500));
    for label in ["d0", "d1", "d2"] {
        input
            .source_listing
            .push(meta(&keys::dump_manifest(label), 10));
    }
    input.source_dumps = vec![dump("d0", &[3]), dump("d1", &[3]), dump("d2", &[7, 3])];
    // The target holds d1 (and so, by its retention, nothing older: d0 stays behind).
    input
        .target_listing
        .push(meta(&keys::dump_manifest("d1"), 10));
    let p = plan(&input);
    assert_eq!(p.dumps, vec!["d2".to_string()]);
    assert_eq!(p.dumps_older_than_target, vec!["d0".to_string()]);
    let packs: Vec<PackId> = p.packs.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        packs,
        vec![pack(2), pack(3)],
        "pack 1 holds no dump's chunk"
    );
    assert_eq!(p.skipped_objects, 2, "pack 1 (unwanted) and d1's manifest");
}

#[test]
fn streamed_pieces_of_a_segment_the_target_completes_stay_behind() {
    let mut input = source();
    let seg5 = lifeboat_pg::walname::WalSegmentName::from_segno(
        lifeboat_pg::timeline::TimelineId::new(1).unwrap(),
        5,
        lifeboat_repo::backup::testing::SEGMENT,
    );
    let seg4 = lifeboat_pg::walname::WalSegmentName::from_segno(
        lifeboat_pg::timeline::TimelineId::new(1).unwrap(),
        4,
        lifeboat_repo::backup::testing::SEGMENT,
    );
    input
        .source_listing
        .push(meta(&keys::stream_piece(&seg5, 0x2000, 0x4000), 9));
    input
        .source_listing
        .push(meta(&keys::stream_piece(&seg5, 0, 0x2000), 9));
    input
        .source_listing
        .push(meta(&keys::stream_piece(&seg4, 0, 0x2000), 9));
    let p = plan(&input);
    let keys: Vec<String> = p.stream.iter().map(|m| m.key.clone()).collect();
    assert_eq!(
        keys,
        vec![
            keys::stream_piece(&seg5, 0, 0x2000),
            keys::stream_piece(&seg5, 0x2000, 0x4000)
        ],
        "segment 4 is complete in the copy; segment 5's pieces from offset 0 on"
    );
}
