//! Expire with packs: dead and unindexed packs go, mostly live ones stay whole, mostly dead ones
//! are repacked, the indexes are replaced by one that locates every live chunk, an unreadable
//! index stops pack deletion, and a run stopped after any single step leaves every live chunk
//! locatable.

use std::collections::{BTreeSet, HashSet};

use lifeboat_repo::keys;
use lifeboat_repo::pack::PackBuilder;
use lifeboat_repo::stored::{ChunkPlace, ChunkScope};
use lifeboat_storage::PutMode;

use super::*;
use crate::expire::packs::{PackOp, PackPlan, apply};
use crate::expire::repack::{Repacked, repack};
use crate::expire::{ExpireReport, expire};

/// `len` bytes that do not compress, different for each chunk: blake3's output stream.
fn content(id: ChunkId, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&id.0.0)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Store a pack of `chunks` (id, plaintext length) and, when `indexed`, an index naming it.
async fn pack(repo: &Repository, chunks: &[(u8, usize)], indexed: bool) -> String {
    let mut builder = PackBuilder::new(1 << 20).unwrap();
    for &(b, len) in chunks {
        let (_, encoded) = repo.encode("chunk", &content(chunk(b), len)).unwrap();
        builder.push(chunk(b), &encoded).unwrap();
    }
    let sealed = builder.seal(repo).unwrap();
    repo.put_pack(&sealed).await.unwrap();
    if indexed {
        repo.put_index(&sealed.entries).await.unwrap();
    }
    sealed.id.key()
}

struct Packs {
    /// Chunk 1, only backup a's: dead once a expires.
    only_a: String,
    /// Chunks 2 (a's and b's, 3000 bytes) and 9 (nobody's, 1000): mostly live, kept whole.
    shared: String,
    /// Chunks 3 (b's and c's, 500 bytes) and 8 (nobody's, 3000): mostly dead, repacked.
    sparse: String,
    /// Chunk 6, in no index (an interrupted backup's).
    unindexed: String,
}

/// [`three_backups`] with chunks 1, 2, 3 in packs, chunk 4 loose, chunk 7 loose and nobody's,
/// and a pack no index names.
async fn repository() -> (Repository, Packs) {
    let repo = repo().await;
    let packs = Packs {
        only_a: pack(&repo, &[(1, 1000)], true).await,
        shared: pack(&repo, &[(2, 3000), (9, 1000)], true).await,
        sparse: pack(&repo, &[(3, 500), (8, 3000)], true).await,
        unindexed: pack(&repo, &[(6, 1000)], false).await,
    };
    put_chunk(&repo, chunk(4)).await;
    put_chunk(&repo, chunk(7)).await;
    for m in three_backups() {
        repo.put_manifest(&m).await.unwrap();
    }
    archive(&repo, 1, 1..=10).await;
    (repo, packs)
}

/// The chunks b and c reference.
fn live() -> HashSet<ChunkId> {
    three_backups()[1..]
        .iter()
        .flat_map(Manifest::chunks)
        .collect()
}

/// Every chunk of `chunks` is located by a stored index in a stored pack, within its size, or is
/// a loose object; and no stored index names a pack that is gone.
async fn assert_locatable(repo: &Repository, chunks: &HashSet<ChunkId>, when: &str) {
    let stored = repo
        .stored_chunks(ChunkScope::All { expected: 8 })
        .await
        .unwrap();
    assert!(stored.unreadable_indexes.is_empty(), "{when}");
    let packs = keys_under(repo, keys::PACK_PREFIX).await;
    for index in &stored.index_keys {
        for e in repo.read_index(index).await.unwrap() {
            assert!(
                packs.contains(&e.location.pack.key()),
                "{when}: {index} names {}, which is gone",
                e.location.pack
            );
        }
    }
    for c in chunks {
        match stored.locate(c) {
            Some(ChunkPlace::Packed(loc)) => {
                let size = repo.store().head(&loc.pack.key()).await.map(|m| m.size);
                assert!(
                    size.is_ok_and(|s| loc.offset + u64::from(loc.length) <= s),
                    "{when}: chunk {c} is located in {}, which is gone or too short",
                    loc.pack
                );
            }
            Some(ChunkPlace::Loose { .. }) => {}
            None => panic!("{when}: chunk {c} is located nowhere"),
        }
    }
}

fn check_report(r: &ExpireReport, dry_run: bool) {
    assert_eq!(r.dry_run, dry_run);
    assert_eq!(r.expired.len(), 1);
    assert_eq!(r.chunks.count, 1, "loose chunk 7");
    assert_eq!(r.chunks.remaining, 1, "loose chunk 4");
    let p = &r.packs;
    assert_eq!((p.count, p.unindexed, p.remaining), (2, 1, 1), "{p:?}");
    assert_eq!(p.indexes_replaced, 3, "{p:?}");
    assert_eq!(p.repacked, 1, "{p:?}");
    // Chunk 3's encoded object: its 500 bytes and a header.
    assert!((500..600).contains(&p.copied_bytes), "{p:?}");
    assert!(p.repacked_bytes > 3500, "{p:?}");
    assert!(p.bytes > 0 && p.remaining_bytes > 0);
    assert!(p.skipped.is_none());
    assert_eq!(
        r.bytes_freed,
        r.manifest_bytes + r.wal.bytes + r.chunks.bytes + p.bytes + p.repacked_bytes
            - p.copied_bytes
    );
}

#[tokio::test]
async fn dead_and_unindexed_packs_go_live_ones_stay_under_one_index() {
    let (repo, packs) = repository().await;
    let report = expire(&repo, &keep_last(2, false)).await.unwrap();
    check_report(&report, false);
    let stored_packs = keys_under(&repo, keys::PACK_PREFIX).await;
    assert_eq!(stored_packs.len(), 2, "{stored_packs:?}");
    assert!(stored_packs.contains(&packs.shared));
    for gone in [&packs.only_a, &packs.sparse, &packs.unindexed] {
        assert!(!stored_packs.contains(gone), "{gone} is still there");
    }
    let indexes = keys_under(&repo, keys::INDEX_PREFIX).await;
    assert_eq!(indexes.len(), 1, "one consolidated index: {indexes:?}");
    let entries = repo
        .read_index(indexes.iter().next().unwrap())
        .await
        .unwrap();
    let located: BTreeSet<u8> = entries.iter().map(|e| e.chunk.0.0[0]).collect();
    assert_eq!(
        located,
        [2, 3, 9].into(),
        "the kept pack's chunks and the repacked one"
    );
    // Chunk 3 was copied as it was: its bytes in the new pack decode to its content.
    let moved = entries.iter().find(|e| e.chunk == chunk(3)).unwrap();
    assert_ne!(moved.location.pack.key(), packs.sparse);
    let raw = repo
        .store()
        .get_range(
            &moved.location.pack.key(),
            moved.location.offset,
            moved.location.offset + u64::from(moved.location.length),
        )
        .await
        .unwrap();
    assert_eq!(
        repo.decode("chunk", &raw).unwrap().1,
        content(chunk(3), 500)
    );
    assert_locatable(&repo, &live(), "after the run").await;
    assert_eq!(
        keys_under(&repo, keys::CHUNK_PREFIX).await,
        [chunk(4).key()].into()
    );

    // Nothing left to do: the single index stays as it is.
    let again = expire(&repo, &keep_last(2, false)).await.unwrap();
    assert_eq!(again.packs.count, 0);
    assert_eq!(again.packs.indexes_replaced, 0);
    assert_eq!(again.packs.repacked, 0);
    assert_eq!(again.packs.remaining, 2);
    assert_eq!(keys_under(&repo, keys::INDEX_PREFIX).await, indexes);
}

#[tokio::test]
async fn a_dry_run_reports_the_same_and_changes_nothing() {
    let (repo, _) = repository().await;
    let before = keys_under(&repo, "").await;
    let report = expire(&repo, &keep_last(2, true)).await.unwrap();
    check_report(&report, true);
    assert_eq!(keys_under(&repo, "").await, before);
}

#[tokio::test]
async fn an_unreadable_index_keeps_every_pack_and_says_so() {
    let (repo, _) = repository().await;
    repo.store()
        .put(
            &keys::index(&"ab".repeat(16)),
            Bytes::from_static(b"not an index"),
            PutMode::Create,
        )
        .await
        .unwrap();
    let packs_before = keys_under(&repo, keys::PACK_PREFIX).await;
    let indexes_before = keys_under(&repo, keys::INDEX_PREFIX).await;
    let report = expire(&repo, &keep_last(2, false)).await.unwrap();
    assert_eq!(report.expired.len(), 1, "backups still expire");
    assert_eq!(report.chunks.count, 1, "loose chunks still expire");
    assert_eq!(
        (
            report.packs.count,
            report.packs.repacked,
            report.packs.remaining
        ),
        (0, 0, 4)
    );
    let why = report.packs.skipped.as_deref().unwrap();
    assert!(
        why.contains("unreadable") && why.contains("lifeboat verify"),
        "{why}"
    );
    assert!(report.warnings.iter().any(|w| w == why));
    assert_eq!(keys_under(&repo, keys::PACK_PREFIX).await, packs_before);
    assert_eq!(keys_under(&repo, keys::INDEX_PREFIX).await, indexes_before);
}

#[tokio::test]
async fn many_indexes_are_consolidated_even_when_no_pack_dies() {
    let repo = repo().await;
    let ids: Vec<ChunkId> = (1..=17).map(chunk).collect();
    for b in 1..=17 {
        pack(&repo, &[(b, 1000)], true).await;
    }
    repo.put_manifest(&manifest("a", 1, (2, 3), "2026-01-01T12:00:00Z", &ids))
        .await
        .unwrap();
    archive(&repo, 1, 1..=4).await;
    let report = expire(&repo, &keep_last(1, false)).await.unwrap();
    assert_eq!((report.packs.count, report.packs.repacked), (0, 0));
    assert_eq!(report.packs.indexes_replaced, 17);
    assert_eq!(keys_under(&repo, keys::INDEX_PREFIX).await.len(), 1);
    assert_locatable(&repo, &ids.into_iter().collect(), "after consolidation").await;
}

/// Stop after the repacking and after each single write or delete that follows (a fresh
/// repository each time, as the names are random), check that every live chunk is still
/// locatable, then let a full run finish.
#[tokio::test]
async fn a_stop_after_any_pack_operation_leaves_every_live_chunk_locatable() {
    let held = || async { Ok(()) };
    // The repacking, a consolidated index, three old indexes, two dead packs and the sparse one.
    let steps = 1 + 1 + 3 + 3;
    for done in 0..=steps {
        let (repo, packs) = repository().await;
        let plan = plan(&repo).await;
        let repacked = if done > 0 {
            repack(&repo, &plan.repack, &held).await.unwrap()
        } else {
            Repacked::default()
        };
        let ops = plan.operations(&repacked);
        assert_eq!(ops.len() + 1, steps);
        assert!(matches!(ops[0], PackOp::WriteIndex(_)));
        for op in &ops[..done.saturating_sub(1)] {
            apply(&repo, op).await.unwrap();
        }
        let when = format!("stopped after {done} of {steps} steps");
        assert_locatable(&repo, &live(), &when).await;

        let report = expire(&repo, &keep_last(2, false)).await.unwrap();
        assert_locatable(&repo, &live(), &format!("{when}, then a full run")).await;
        let stored_packs = keys_under(&repo, keys::PACK_PREFIX).await;
        assert_eq!(stored_packs.len(), 2, "{when}: {:?}", report.packs);
        assert!(stored_packs.contains(&packs.shared), "{when}");
        assert!(!stored_packs.contains(&packs.sparse), "{when}");
        assert_eq!(
            keys_under(&repo, keys::INDEX_PREFIX).await.len(),
            1,
            "{when}"
        );
    }
}

/// The packs step's plan for keeping backups b and c.
async fn plan(repo: &Repository) -> PackPlan {
    let stored = repo
        .stored_chunks(ChunkScope::Wanted(&live()))
        .await
        .unwrap();
    PackPlan::new(repo, stored, &live()).await.unwrap()
}

/// A chunk indexed twice, first (by index name) in a pack that is gone, then in a stored one:
/// the stored pack is the chunk's only copy and stays, and the entry naming the lost pack goes.
#[tokio::test]
async fn a_live_chunk_whose_first_entry_names_a_lost_pack_keeps_its_stored_pack() {
    let (repo, _) = repository().await;
    let lost = pack(&repo, &[(3, 500)], false).await;
    let lost_id = lifeboat_repo::pack::PackId::from_key(&lost).unwrap();
    let trailer = repo.read_pack_trailer(lost_id).await.unwrap();
    // The index naming the lost pack sorts before every random name.
    let written = repo.put_index(&trailer).await.unwrap();
    let raw = repo.store().get(&written).await.unwrap();
    let first = keys::index(&"0".repeat(32));
    repo.store()
        .put(&first, raw, PutMode::Create)
        .await
        .unwrap();
    repo.store().delete(&written).await.unwrap();
    repo.store().delete(&lost).await.unwrap();
    let all = repo
        .stored_chunks(ChunkScope::All { expected: 8 })
        .await
        .unwrap();
    assert_eq!(
        all.packed.locate(&chunk(3)).map(|l| l.pack),
        Some(lost_id),
        "the setup: the lost pack's entry is found first"
    );

    expire(&repo, &keep_last(2, false)).await.unwrap();
    assert_locatable(&repo, &live(), "after the run").await;
}

/// A sparse pack shorter than its index says cannot be repacked: it stays, named by the new
/// index, with a warning; a dead pack goes all the same.
#[tokio::test]
async fn a_damaged_sparse_pack_is_kept_and_the_rest_collected() {
    let repo = repo().await;
    let dead = pack(&repo, &[(1, 1000)], true).await;
    // A pack of chunk 8 (nobody's) whose index also places chunk 3 (the backup's) across its end.
    let mut builder = PackBuilder::new(1 << 20).unwrap();
    let (_, encoded) = repo.encode("chunk", &content(chunk(8), 3000)).unwrap();
    builder.push(chunk(8), &encoded).unwrap();
    let sealed = builder.seal(&repo).unwrap();
    repo.put_pack(&sealed).await.unwrap();
    let damaged = sealed.id.key();
    let size = sealed.bytes.len() as u64;
    let mut entries = sealed.entries.clone();
    entries.push(lifeboat_repo::pack::IndexEntry {
        chunk: chunk(3),
        location: lifeboat_repo::pack::ChunkLocation {
            pack: sealed.id,
            offset: size - 100,
            length: 500,
        },
    });
    repo.put_index(&entries).await.unwrap();
    repo.put_manifest(&manifest(
        "a",
        1,
        (2, 3),
        "2026-01-01T12:00:00Z",
        &[chunk(3)],
    ))
    .await
    .unwrap();
    archive(&repo, 1, 1..=4).await;

    let report = expire(&repo, &keep_last(1, false)).await.unwrap();
    let p = &report.packs;
    assert_eq!((p.count, p.repacked, p.remaining), (1, 0, 1), "{p:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(&damaged) && w.contains("lifeboat verify")),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        keys_under(&repo, keys::PACK_PREFIX).await,
        [damaged.clone()].into(),
        "{dead} goes, the damaged pack stays"
    );
    let indexes = keys_under(&repo, keys::INDEX_PREFIX).await;
    assert_eq!(indexes.len(), 1);
    let entries = repo
        .read_index(indexes.iter().next().unwrap())
        .await
        .unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.chunk == chunk(3) && e.location.pack.key() == damaged),
        "the damaged pack is still indexed, for verify to report"
    );
}
