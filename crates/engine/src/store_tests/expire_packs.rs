//! Expire with packs: dead and unindexed packs go, partly live ones stay whole, the indexes are
//! replaced by one that locates every live chunk, an unreadable index stops pack deletion, and a
//! run stopped after any single write or delete leaves every live chunk locatable.

use std::collections::{BTreeSet, HashSet};

use lifeboat_repo::keys;
use lifeboat_repo::pack::PackBuilder;
use lifeboat_repo::stored::{ChunkPlace, ChunkScope};
use lifeboat_storage::PutMode;

use super::*;
use crate::expire::packs::{PackOp, PackPlan, apply};
use crate::expire::{ExpireReport, expire};

/// Store a pack of `ids` (each chunk an encoded object of a few bytes) and, when `indexed`, an
/// index naming it.
async fn pack(repo: &Repository, ids: &[ChunkId], indexed: bool) -> String {
    let mut builder = PackBuilder::new(1 << 20).unwrap();
    for id in ids {
        let (_, encoded) = repo.encode("chunk", &[id.0.0[0]; 100]).unwrap();
        builder.push(*id, &encoded).unwrap();
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
    /// Chunks 2 (a's and b's) and 9 (nobody's): partly live, kept whole.
    shared: String,
    /// Chunk 3 (b's and c's).
    b: String,
    /// Chunk 6, in no index (an interrupted backup's).
    unindexed: String,
}

/// [`three_backups`] with chunks 1, 2, 3 in packs, chunk 4 loose, chunk 7 loose and nobody's,
/// and a pack no index names.
async fn repository() -> (Repository, Packs) {
    let repo = repo().await;
    let packs = Packs {
        only_a: pack(&repo, &[chunk(1)], true).await,
        shared: pack(&repo, &[chunk(2), chunk(9)], true).await,
        b: pack(&repo, &[chunk(3)], true).await,
        unindexed: pack(&repo, &[chunk(6)], false).await,
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
    assert_eq!((p.count, p.unindexed, p.remaining), (2, 1, 2), "{p:?}");
    assert_eq!(p.indexes_replaced, 3, "{p:?}");
    assert!(p.bytes > 0 && p.remaining_bytes > 0);
    assert!(p.skipped.is_none());
    assert!(r.bytes_freed >= p.bytes + r.chunks.bytes + r.manifest_bytes);
}

#[tokio::test]
async fn dead_and_unindexed_packs_go_live_ones_stay_under_one_index() {
    let (repo, packs) = repository().await;
    let report = expire(&repo, &keep_last(2, false)).await.unwrap();
    check_report(&report, false);
    let want: BTreeSet<String> = [&packs.shared, &packs.b].into_iter().cloned().collect();
    assert_eq!(keys_under(&repo, keys::PACK_PREFIX).await, want);
    assert!(!want.contains(&packs.only_a) && !want.contains(&packs.unindexed));
    let indexes = keys_under(&repo, keys::INDEX_PREFIX).await;
    assert_eq!(indexes.len(), 1, "one consolidated index: {indexes:?}");
    let entries = repo
        .read_index(indexes.iter().next().unwrap())
        .await
        .unwrap();
    let located: BTreeSet<u8> = entries.iter().map(|e| e.chunk.0.0[0]).collect();
    assert_eq!(located, [2, 3, 9].into(), "live packs' chunks only");
    assert_locatable(&repo, &live(), "after the run").await;
    assert_eq!(
        keys_under(&repo, keys::CHUNK_PREFIX).await,
        [chunk(4).key()].into()
    );

    // Nothing left to do: the single index stays as it is.
    let again = expire(&repo, &keep_last(2, false)).await.unwrap();
    assert_eq!(again.packs.count, 0);
    assert_eq!(again.packs.indexes_replaced, 0);
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
    assert_eq!((report.packs.count, report.packs.remaining), (0, 4));
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
    for id in &ids {
        pack(&repo, &[*id], true).await;
    }
    repo.put_manifest(&manifest("a", 1, (2, 3), "2026-01-01T12:00:00Z", &ids))
        .await
        .unwrap();
    archive(&repo, 1, 1..=4).await;
    let report = expire(&repo, &keep_last(1, false)).await.unwrap();
    assert_eq!(report.packs.count, 0);
    assert_eq!(report.packs.indexes_replaced, 17);
    assert_eq!(keys_under(&repo, keys::INDEX_PREFIX).await.len(), 1);
    assert_locatable(&repo, &ids.into_iter().collect(), "after consolidation").await;
}

/// Stop after each single write or delete of the packs step (a fresh repository each time, as the
/// names are random), check that every live chunk is still locatable, then let a full run finish.
#[tokio::test]
async fn a_stop_after_any_pack_operation_leaves_every_live_chunk_locatable() {
    let count = {
        let (repo, _) = repository().await;
        plan(&repo).await.operations().len()
    };
    // A consolidated index, three old indexes, two dead packs.
    assert_eq!(count, 1 + 3 + 2);
    for done in 0..=count {
        let (repo, packs) = repository().await;
        let ops = plan(&repo).await.operations();
        assert!(matches!(ops[0], PackOp::WriteIndex(_)));
        for op in &ops[..done] {
            apply(&repo, op).await.unwrap();
        }
        let when = format!("stopped after {done} of {count} operations");
        assert_locatable(&repo, &live(), &when).await;

        let report = expire(&repo, &keep_last(2, false)).await.unwrap();
        assert_locatable(&repo, &live(), &format!("{when}, then a full run")).await;
        assert_eq!(
            keys_under(&repo, keys::PACK_PREFIX).await,
            [packs.shared, packs.b].into(),
            "{when}: {:?}",
            report.packs
        );
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
        .stored_chunks(ChunkScope::All { expected: 8 })
        .await
        .unwrap();
    PackPlan::new(repo, stored, &live()).await.unwrap()
}
