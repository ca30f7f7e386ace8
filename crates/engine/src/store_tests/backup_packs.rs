//! The copy pipeline on an in-memory store, without PostgreSQL: a repository that writes packs
//! gets packs and indexes that locate every chunk copied, a version 1 repository gets loose
//! chunks as before, and the next backup's dedup finds packed chunks through the indexes.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::{ChunkLocation, plan_range_reads};
use lifeboat_repo::stored::{ChunkPlace, ChunkScope};
use lifeboat_repo::{Repository, keys};
use lifeboat_storage::PutMode;

use crate::backup::chunks::{Copier, Done, plan_items};
use crate::backup::packer::PackWriter;
use crate::backup::reuse::known_chunks;
use crate::backup::scan::PlannedFile;
use crate::store_tests;

const BLOCK: u64 = 64 * 1024;

/// Files of incompressible bytes (each encoded chunk is about its plain size): one of `blocks`
/// blocks and three small ones, packed into one chunk.
fn write_files(dir: &std::path::Path, blocks: u64, seed: u8) -> Vec<PlannedFile> {
    let sizes = [blocks * BLOCK, 1000, 5000, 0];
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut bytes = vec![0u8; size as usize];
            let mut hasher = blake3::Hasher::new();
            hasher.update(&[seed, i as u8]);
            hasher.finalize_xof().fill(&mut bytes);
            let abs = dir.join(format!("f{seed}-{i}"));
            std::fs::write(&abs, &bytes).unwrap();
            PlannedFile {
                rel: format!("base/1/{seed}{i}"),
                abs,
                root: Default::default(),
                size,
                mode: 0o600,
                mtime: 0,
                relation_segno: None,
            }
        })
        .collect()
}

/// Copy `files` as a backup does (without pg_control) and finish its packs; the chunks named.
async fn copy(
    repo: &Repository,
    files: Vec<PlannedFile>,
    known: HashSet<ChunkId>,
    packs: Option<Arc<PackWriter>>,
) -> (HashSet<ChunkId>, u64) {
    let (chunks, mut stored) = copy_unfinished(repo, files, known, packs.clone()).await;
    if let Some(packs) = packs {
        stored += packs.finish().await.unwrap().pack_bytes;
    }
    (chunks, stored)
}

/// Copy `files` as a backup killed before its last pack and index would (full packs are stored,
/// and checkpoint indexes written); the chunks named and the loose bytes stored.
async fn copy_unfinished(
    repo: &Repository,
    files: Vec<PlannedFile>,
    known: HashSet<ChunkId>,
    packs: Option<Arc<PackWriter>>,
) -> (HashSet<ChunkId>, u64) {
    let copier = Arc::new(Copier {
        repo: repo.clone(),
        files: Arc::new(files),
        block_size: BLOCK,
        checksums: false,
        start_lsn: lifeboat_pg::lsn::Lsn(0),
        known: Arc::new(known),
        claimed: Default::default(),
        bytes_read: Default::default(),
        bytes_stored: Default::default(),
        bad_pages: Default::default(),
        cpu: Arc::new(tokio::sync::Semaphore::new(2)),
        requests: Arc::new(tokio::sync::Semaphore::new(4)),
        storage_packs: packs,
    });
    let items = plan_items(&copier.files, BLOCK);
    let mut chunks = HashSet::new();
    copier
        .run(items, 6, |done, _| match done {
            Done::Block { chunk, .. } | Done::Pack { chunk, .. } => {
                chunks.insert(chunk);
            }
        })
        .await
        .unwrap();
    let stored = copier
        .bytes_stored
        .load(std::sync::atomic::Ordering::Relaxed);
    (chunks, stored)
}

async fn count(repo: &Repository, prefix: &str) -> usize {
    repo.store().list(prefix).await.unwrap().len()
}

async fn bytes_under(repo: &Repository, prefix: &str) -> u64 {
    let list = repo.store().list(prefix).await.unwrap();
    list.iter().map(|m| m.size).sum()
}

/// The same repository, rewritten as format version 1 (loose chunks only).
async fn version_1(repo: &Repository) -> Repository {
    let mut config = repo.config().clone();
    config.version = 1;
    let json = Bytes::from(serde_json::to_vec_pretty(&config).unwrap());
    for key in [keys::CONFIG, keys::CONFIG_COPY] {
        repo.store()
            .put(key, json.clone(), PutMode::Overwrite)
            .await
            .unwrap();
    }
    Repository::open(repo.store().clone(), None).await.unwrap()
}

/// Read every chunk of `ids` back through the indexes and ranged reads of packs, decoding each
/// (which checks its content is the chunk named).
async fn read_back_from_packs(repo: &Repository, ids: &HashSet<ChunkId>) {
    let stored = repo.stored_chunks(ChunkScope::Wanted(ids)).await.unwrap();
    assert!(stored.loose.is_empty(), "no chunk is loose, so no listing");
    let located: Vec<(ChunkId, ChunkLocation)> = ids
        .iter()
        .map(|id| match stored.locate(id) {
            Some(ChunkPlace::Packed(location)) => (*id, location),
            other => panic!("chunk {id} is not in a pack: {other:?}"),
        })
        .collect();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    for read in plan_range_reads(located, 256 * 1024, 4 << 20) {
        let fetched = repo.fetch_range(&read).await.unwrap();
        for (i, (id, _)) in read.chunks.iter().enumerate() {
            let raw = read.chunk_bytes(&fetched, i).unwrap();
            let plain = repo.decode_chunk_aligned(id, raw, &mut buf, 1).unwrap();
            assert_eq!(ChunkId(repo.codec().hash(plain)), *id);
            seen.insert(*id);
        }
    }
    assert_eq!(&seen, ids);
}

#[tokio::test]
async fn a_packed_repository_gets_packs_and_indexes_that_locate_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let repo = store_tests::repo().await;
    assert!(repo.writes_packs());
    // 40 chunks of ~64 KiB in packs of 256 KiB: 10 packs, a checkpoint index every 4.
    let writer = Arc::new(PackWriter::with_sizes(&repo, 256 * 1024, 2, 4).unwrap());
    let (ids, stored) = copy(
        &repo,
        write_files(dir.path(), 40, 1),
        HashSet::new(),
        Some(writer),
    )
    .await;
    assert_eq!(ids.len(), 41);
    assert_eq!(count(&repo, keys::CHUNK_PREFIX).await, 0, "no loose chunk");
    let packs = count(&repo, keys::PACK_PREFIX).await;
    assert!((10..=11).contains(&packs), "{packs} packs");
    // Two checkpoints (after packs 4 and 8), then the rest.
    assert_eq!(count(&repo, keys::INDEX_PREFIX).await, 3);
    assert_eq!(stored, bytes_under(&repo, keys::PACK_PREFIX).await);
    read_back_from_packs(&repo, &ids).await;
}

#[tokio::test]
async fn a_version_1_repository_still_gets_loose_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = version_1(&store_tests::repo().await).await;
    assert!(!repo.writes_packs());
    let (ids, stored) = copy(&repo, write_files(dir.path(), 40, 1), HashSet::new(), None).await;
    assert_eq!(count(&repo, keys::CHUNK_PREFIX).await, ids.len());
    assert_eq!(count(&repo, keys::PACK_PREFIX).await, 0);
    assert_eq!(count(&repo, keys::INDEX_PREFIX).await, 0);
    assert_eq!(stored, bytes_under(&repo, keys::CHUNK_PREFIX).await);
    for id in &ids {
        assert_eq!(
            ChunkId(repo.codec().hash(&repo.get_chunk(id).await.unwrap())),
            *id
        );
    }
}

#[tokio::test]
async fn packs_cut_the_object_count_of_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_files(dir.path(), 300, 2);
    let loose = version_1(&store_tests::repo().await).await;
    copy(&loose, files.clone(), HashSet::new(), None).await;
    let packed = store_tests::repo().await;
    let writer = Arc::new(PackWriter::new(&packed, 8).unwrap());
    copy(&packed, files, HashSet::new(), Some(writer)).await;
    let loose_objects = count(&loose, keys::CHUNK_PREFIX).await;
    let packed_objects =
        count(&packed, keys::PACK_PREFIX).await + count(&packed, keys::INDEX_PREFIX).await;
    // 301 chunks of ~64 KiB (~19 MiB): 3 packs of 8 MiB and one index.
    assert_eq!(loose_objects, 301);
    assert_eq!(
        packed_objects, 4,
        "{packed_objects} objects in packs/ and index/"
    );
}

#[tokio::test]
async fn the_next_backup_finds_packed_chunks_through_the_indexes_and_stores_only_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let repo = store_tests::repo().await;
    let files = write_files(dir.path(), 10, 3);
    let writer = Arc::new(PackWriter::with_sizes(&repo, 256 * 1024, 2, 64).unwrap());
    let (first, _) = copy(&repo, files.clone(), HashSet::new(), Some(writer)).await;
    let newest = store_tests::manifest(
        "20261201T000000Z",
        1,
        (1, 1),
        "2026-12-01T00:00:00Z",
        &first.iter().copied().collect::<Vec<_>>(),
    );
    let known = known_chunks(&repo, Some(&newest)).await.unwrap();
    assert_eq!(known, first);
    let packs_before = count(&repo, keys::PACK_PREFIX).await;

    // Unchanged files plus one new one: only the new one's chunks are stored.
    let mut more = files;
    more.extend(write_files(dir.path(), 2, 4).into_iter().take(1));
    let writer = Arc::new(PackWriter::with_sizes(&repo, 256 * 1024, 2, 64).unwrap());
    let (second, stored) = copy(&repo, more, known, Some(writer)).await;
    assert_eq!(second.len(), first.len() + 2);
    assert!(stored > 2 * BLOCK && stored < 3 * BLOCK, "{stored} bytes");
    assert_eq!(count(&repo, keys::PACK_PREFIX).await, packs_before + 1);
    read_back_from_packs(&repo, &second).await;
}

#[tokio::test]
async fn chunks_of_an_unreadable_index_are_not_known() {
    let dir = tempfile::tempdir().unwrap();
    let repo = store_tests::repo().await;
    let writer = Arc::new(PackWriter::with_sizes(&repo, 256 * 1024, 2, 64).unwrap());
    let (first, _) = copy(
        &repo,
        write_files(dir.path(), 3, 5),
        HashSet::new(),
        Some(writer),
    )
    .await;
    let index = repo.store().list(keys::INDEX_PREFIX).await.unwrap();
    assert_eq!(index.len(), 1);
    repo.store()
        .put(
            &index[0].key,
            Bytes::from_static(b"damaged"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let newest = store_tests::manifest(
        "20261201T000000Z",
        1,
        (1, 1),
        "2026-12-01T00:00:00Z",
        &first.iter().copied().collect::<Vec<_>>(),
    );
    assert!(known_chunks(&repo, Some(&newest)).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_interrupted_backups_checkpointed_packs_are_known_to_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let repo = store_tests::repo().await;
    let files = write_files(dir.path(), 20, 6);
    // 21 chunks, 4 of 64 KiB fill a pack: 5 full packs stored, a checkpoint index after packs 2
    // and 4, and the interruption loses the fifth pack's index and the last partial pack (the
    // small files' chunk lands in any of them: it does not fill a pack alone).
    let writer = Arc::new(PackWriter::with_sizes(&repo, 256 * 1024, 1, 2).unwrap());
    let (all, _) = copy_unfinished(&repo, files.clone(), HashSet::new(), Some(writer)).await;
    assert_eq!(count(&repo, keys::PACK_PREFIX).await, 5);
    assert_eq!(count(&repo, keys::INDEX_PREFIX).await, 2);
    let known = known_chunks(&repo, None).await.unwrap();
    assert!(
        (16..=17).contains(&known.len()),
        "the chunks of the four indexed packs: {}",
        known.len()
    );
    assert!(known.is_subset(&all));

    // The next backup stores only what no index names, and its index completes the set.
    let writer = Arc::new(PackWriter::with_sizes(&repo, 256 * 1024, 1, 2).unwrap());
    let (again, _) = copy(&repo, files, known, Some(writer)).await;
    assert_eq!(again, all);
    let packs = count(&repo, keys::PACK_PREFIX).await;
    assert!((6..=7).contains(&packs), "{packs} packs");
    read_back_from_packs(&repo, &all).await;
}
