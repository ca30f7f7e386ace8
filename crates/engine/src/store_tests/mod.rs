//! Engine tests on an in-memory object store: what the operations decide from what a repository
//! holds (restore's backup choice and WAL check, expire's plan and its packs, WAL gap analysis), without a
//! PostgreSQL cluster. Helpers here write manifests, WAL and chunks as the real commands would
//! leave them; the end-to-end tests (crates/lifeboat/tests) cover the same paths with PostgreSQL.

mod backup_packs;
mod expire_packs;
mod expire_plan;
mod restore_choice;
mod stream_pieces;
mod verify_packs;
mod wal_gaps;

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};
use lifeboat_repo::backup::testing::ManifestBuilder;
use lifeboat_repo::backup::{ChunkId, Entry, FileEntry, Manifest, Root};
use lifeboat_repo::{ClusterIdentity, ContentHash, InitOptions, Repository};
use lifeboat_storage::PutMode;
use lifeboat_storage::cloud::CloudStore;

pub const SEG: u64 = DEFAULT_WAL_SEGMENT_SIZE;

/// An empty unencrypted repository in memory, bound to a cluster with 16 MiB segments.
pub async fn repo() -> Repository {
    let store = CloudStore::from_object_store(
        Arc::new(object_store::memory::InMemory::new()),
        "",
        "memory://engine-test".into(),
    )
    .unwrap();
    let repo = Repository::init(Arc::new(store), InitOptions::default())
        .await
        .unwrap();
    bind(&repo).await;
    repo
}

/// Bind `repo` to the tests' cluster: system identifier 1, PostgreSQL 15, 16 MiB segments.
pub async fn bind(repo: &Repository) {
    repo.bind_identity(&ClusterIdentity {
        system_identifier: 1,
        pg_major: 15,
        wal_segment_size: SEG,
    })
    .await
    .unwrap();
}

pub fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

/// Segment number `segno` of timeline `timeline`.
pub fn seg(timeline: u32, segno: u64) -> WalSegmentName {
    WalSegmentName::from_segno(tli(timeline), segno, SEG)
}

/// Archive segments `segnos` of `timeline` (their content is not looked at here).
pub async fn archive(repo: &Repository, timeline: u32, segnos: impl IntoIterator<Item = u64>) {
    for n in segnos {
        put_wal(repo, WalFileName::Segment(seg(timeline, n))).await;
    }
}

pub async fn put_wal(repo: &Repository, name: WalFileName) {
    repo.put_wal(&name, Bytes::from(vec![7u8; 64]))
        .await
        .unwrap();
}

/// A chunk id made of one repeated byte.
pub fn chunk(b: u8) -> ChunkId {
    ChunkId(ContentHash([b; 32]))
}

/// Store an object under the chunk's key (expire only lists and deletes chunks).
pub async fn put_chunk(repo: &Repository, id: ChunkId) {
    repo.store()
        .put(&id.key(), Bytes::from(vec![1u8; 100]), PutMode::Create)
        .await
        .unwrap();
}

/// A backup on `timeline` that starts in segment `start` and stops in `stop` at `stop_time`, with
/// one file stored in `chunks`.
pub fn manifest(
    label: &str,
    timeline: u32,
    (start, stop): (u64, u64),
    stop_time: &str,
    chunks: &[ChunkId],
) -> Manifest {
    ManifestBuilder::new(label)
        .timeline(timeline)
        .segments(start, stop)
        .time(stop_time)
        .entries(vec![Entry::File(FileEntry {
            path: "base/1/1".into(),
            root: Root::Pgdata,
            mode: 0o600,
            size: 1048576 * chunks.len() as u64,
            mtime: 0,
            blocks: chunks.to_vec(),
            packed: None,
        })])
        .build()
}

/// Store a backup: its chunks, then its manifest.
pub async fn backup(repo: &Repository, m: &Manifest) {
    for id in m.chunks() {
        if !repo.has_chunk(&id).await.unwrap() {
            put_chunk(repo, id).await;
        }
    }
    repo.put_manifest(m).await.unwrap();
}

/// Backups a (segments 2-3, chunks 1 and 2), b (5-6, chunks 2 and 3) and c (8-9, chunks 3 and 4),
/// a month apart.
pub fn three_backups() -> [Manifest; 3] {
    [
        manifest(
            "a",
            1,
            (2, 3),
            "2026-01-01T12:00:00Z",
            &[chunk(1), chunk(2)],
        ),
        manifest(
            "b",
            1,
            (5, 6),
            "2026-02-01T12:00:00Z",
            &[chunk(2), chunk(3)],
        ),
        manifest(
            "c",
            1,
            (8, 9),
            "2026-03-01T12:00:00Z",
            &[chunk(3), chunk(4)],
        ),
    ]
}

pub fn keep_last(n: u32, dry_run: bool) -> crate::expire::ExpireOptions {
    crate::expire::ExpireOptions {
        keep_last: Some(n),
        keep_days: None,
        dry_run,
        dumps: None,
    }
}

pub async fn keys_under(repo: &Repository, prefix: &str) -> std::collections::BTreeSet<String> {
    repo.store()
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}
