//! `verify` on a repository of packs, on a real local store: packs and indexes written with
//! `PackBuilder`, `put_pack` and `put_index` as a backup writes them, then damaged on disk the
//! ways a store damages them (a flipped byte, a pack deleted or cut short, an index garbled, a
//! pack left without an index).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::pack::{IndexEntry, PackBuilder, SealedPack};
use lifeboat_repo::{InitOptions, Repository};

use super::{bind, manifest};
use crate::verify::{FindingKind, VerifyOptions, VerifyReport, verify};

/// A version 2 repository on local disk at `dir`.
async fn local_repo(dir: &Path) -> Repository {
    let store = lifeboat_storage::open_or_create(dir.to_str().unwrap(), &Default::default())
        .expect("open the local store");
    let repo = Repository::init(store, InitOptions::default())
        .await
        .unwrap();
    bind(&repo).await;
    assert!(repo.writes_packs());
    repo
}

/// `n` chunks of distinct, incompressible content, 20 KiB each: hashes of (chunk, counter).
fn contents(first: u32, n: u32) -> Vec<Vec<u8>> {
    let codec = lifeboat_repo::Codec::new(Default::default(), None);
    (first..first + n)
        .map(|i| {
            (0..640u32)
                .flat_map(|j| codec.hash(&[i.to_le_bytes(), j.to_le_bytes()].concat()).0)
                .collect()
        })
        .collect()
}

/// One sealed pack of `plain`'s chunks, stored, with the ids in pack order.
async fn store_pack(repo: &Repository, plain: &[Vec<u8>]) -> (SealedPack, Vec<ChunkId>) {
    let mut builder = PackBuilder::new(8 << 20).unwrap();
    let mut ids = Vec::new();
    for p in plain {
        let (hash, encoded) = repo.encode("chunk", p).unwrap();
        let id = ChunkId(hash);
        builder.push(id, &encoded).unwrap();
        ids.push(id);
    }
    let sealed = builder.seal(repo).unwrap();
    repo.put_pack(&sealed).await.unwrap();
    (sealed, ids)
}

/// Two packs of 12 chunks each (both named by one index) and a loose chunk, and a backup
/// referencing them all.
struct Packed {
    packs: Vec<SealedPack>,
    ids: Vec<Vec<ChunkId>>,
    loose: ChunkId,
    index: String,
    manifest: Manifest,
}

async fn packed_backup(repo: &Repository) -> Packed {
    let (a, a_ids) = store_pack(repo, &contents(0, 12)).await;
    let (b, b_ids) = store_pack(repo, &contents(100, 12)).await;
    let entries: Vec<IndexEntry> = a.entries.iter().chain(&b.entries).copied().collect();
    let index = repo.put_index(&entries).await.unwrap();
    let (hash, encoded) = repo.encode("chunk", &contents(500, 1)[0]).unwrap();
    let loose = ChunkId(hash);
    repo.put_chunk(&loose, encoded.into()).await.unwrap();
    let all: Vec<ChunkId> = a_ids.iter().chain(&b_ids).copied().chain([loose]).collect();
    let m = manifest("20261206T000000Z", 1, (2, 2), "2026-12-06T00:00:00Z", &all);
    repo.put_manifest(&m).await.unwrap();
    Packed {
        packs: vec![a, b],
        ids: vec![a_ids, b_ids],
        loose,
        index,
        manifest: m,
    }
}

async fn run(repo: &Repository, full: bool) -> VerifyReport {
    let opts = VerifyOptions {
        full,
        reread_percent: 0,
        ..VerifyOptions::default()
    };
    verify(repo, &opts, Arc::new(|_| {})).await.unwrap()
}

/// The findings about chunks, packs and indexes (the WAL of these made-up backups is not there,
/// and not what these tests look at).
fn chunk_findings(report: &VerifyReport) -> Vec<(FindingKind, String, String)> {
    report
        .findings
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                FindingKind::MissingChunk
                    | FindingKind::DamagedChunk
                    | FindingKind::MissingPack
                    | FindingKind::DamagedIndex
            )
        })
        .map(|f| (f.kind, f.object.clone(), f.what.clone()))
        .collect()
}

fn path(dir: &Path, key: &str) -> std::path::PathBuf {
    dir.join(key)
}

#[tokio::test]
async fn a_clean_packed_repository_verifies_clean_and_remembers_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let p = packed_backup(&repo).await;

    let report = run(&repo, false).await;
    assert_eq!(chunk_findings(&report), vec![], "{:#?}", report.findings);
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    let c = &report.counters;
    assert_eq!((c.chunks_referenced, c.chunks_read), (25, 25));
    // One ranged read per pack (12 neighbours of 20 KiB each), one GET for the loose chunk.
    assert_eq!(c.chunk_requests, 3);
    assert_eq!((c.packs, c.indexes), (2, 1));
    let verdict = &report.backups[0];
    assert_eq!((verdict.chunks_missing, verdict.chunks_damaged), (0, 0));

    // The next run skips what the state records as read where it still lies.
    let again = run(&repo, false).await;
    assert_eq!(
        (again.counters.chunks_read, again.counters.chunks_skipped),
        (0, 25)
    );
    assert_eq!(again.state.chunks_verified, 25);
    // Moved to another pack (as a repack would): read again, the others still skipped.
    let moved = p.ids[0][3];
    let (c, _) = store_pack(&repo, &contents(3, 1)).await;
    std::fs::remove_file(path(dir.path(), &p.index)).unwrap();
    let entries: Vec<IndexEntry> = p.packs[0]
        .entries
        .iter()
        .filter(|e| e.chunk != moved)
        .chain(&p.packs[1].entries)
        .chain(&c.entries)
        .copied()
        .collect();
    repo.put_index(&entries).await.unwrap();
    let after_move = run(&repo, false).await;
    assert_eq!(chunk_findings(&after_move), vec![]);
    assert_eq!(
        (
            after_move.counters.chunks_read,
            after_move.counters.chunks_skipped
        ),
        (1, 24)
    );
    assert!(p.loose != moved);
}

#[tokio::test]
async fn a_flipped_byte_in_a_pack_damages_that_chunk_only() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let p = packed_backup(&repo).await;
    assert!(chunk_findings(&run(&repo, false).await).is_empty());

    let victim = p.packs[1].entries[5];
    let file = path(dir.path(), &victim.location.pack.key());
    let mut bytes = std::fs::read(&file).unwrap();
    let at = (victim.location.offset + u64::from(victim.location.length) / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    // Same size: only a full run (or the rotation) reads it again.
    let report = run(&repo, true).await;
    let found = chunk_findings(&report);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, FindingKind::DamagedChunk);
    assert_eq!(found[0].1, victim.location.pack.key());
    assert!(
        found[0].2.contains(&victim.chunk.to_string()),
        "{}",
        found[0].2
    );
    assert_eq!(report.counters.chunks_read, 25);
    assert_eq!(report.counters.chunks_damaged, 1);
    let verdict = &report.backups[0];
    assert_eq!((verdict.chunks_missing, verdict.chunks_damaged), (0, 1));
    assert!(!verdict.restorable);
    assert_eq!(report.state.chunks_verified, 24);
}

#[tokio::test]
async fn a_deleted_pack_is_one_finding_naming_its_backups() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let p = packed_backup(&repo).await;
    let gone = p.packs[0].id;
    std::fs::remove_file(path(dir.path(), &gone.key())).unwrap();

    let report = run(&repo, false).await;
    let found = chunk_findings(&report);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, FindingKind::MissingPack);
    assert_eq!(found[0].1, gone.key());
    assert!(found[0].2.contains(&p.index), "{}", found[0].2);
    assert!(found[0].2.contains("12 chunks"), "{}", found[0].2);
    let f = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::MissingPack)
        .unwrap();
    assert_eq!(f.backups, vec![p.manifest.label.clone()]);
    assert_eq!(report.counters.chunks_missing, 12);
    assert_eq!(report.counters.chunks_read, 13);
    assert_eq!(report.backups[0].chunks_missing, 12);
}

#[tokio::test]
async fn a_pack_no_index_names_is_a_warning_not_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let _p = packed_backup(&repo).await;
    let (orphan, _) = store_pack(&repo, &contents(900, 3)).await;

    let report = run(&repo, false).await;
    assert_eq!(chunk_findings(&report), vec![]);
    assert_eq!(report.warnings.len(), 1, "{:#?}", report.warnings);
    let w = &report.warnings[0];
    assert_eq!(w.kind, FindingKind::UnindexedPack);
    assert_eq!(w.object, orphan.id.key());
    assert!(w.what.contains("interrupted backup"), "{}", w.what);
    assert!(w.action.contains("expire"), "{}", w.action);
    assert_eq!(report.counters.packs_unindexed, 1);
}

#[tokio::test]
async fn a_damaged_index_is_named_and_its_chunks_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let p = packed_backup(&repo).await;
    let file = path(dir.path(), &p.index);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();

    let report = run(&repo, false).await;
    let found = chunk_findings(&report);
    assert_eq!(found[0].0, FindingKind::DamagedIndex, "{found:#?}");
    assert_eq!(found[0].1, p.index);
    let missing: HashSet<String> = found
        .iter()
        .filter(|f| f.0 == FindingKind::MissingChunk)
        .map(|f| f.1.clone())
        .collect();
    assert_eq!(missing.len(), 24);
    assert!(
        found
            .iter()
            .all(|f| f.0 != FindingKind::MissingChunk || f.2.contains("unreadable index"))
    );
    // Its packs are named by no readable index now: kept, not offered to expire.
    assert_eq!(report.warnings.len(), 2);
    assert!(
        report
            .warnings
            .iter()
            .all(|w| w.action.contains("leave it in place"))
    );
    assert_eq!(report.counters.chunks_read, 1);
}

#[tokio::test]
async fn a_pack_cut_short_damages_the_chunks_past_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let p = packed_backup(&repo).await;
    let pack = &p.packs[0];
    let keep = pack.entries[10].location.offset + 10;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path(dir.path(), &pack.id.key()))
        .unwrap();
    file.set_len(keep).unwrap();

    let report = run(&repo, false).await;
    let found = chunk_findings(&report);
    let damaged: Vec<&(FindingKind, String, String)> = found
        .iter()
        .filter(|f| f.0 == FindingKind::DamagedChunk)
        .collect();
    assert_eq!(damaged.len(), 2, "{found:#?}");
    assert!(
        damaged
            .iter()
            .all(|f| f.2.contains("shorter than its index says")),
        "{damaged:#?}"
    );
    assert_eq!(found.len(), 2);
    assert_eq!(report.counters.chunks_read, 23);
}

/// The re-read rotation takes packed chunks by pack: a run re-reads whole packs (one ranged
/// read each here), and every chunk is read again within the cycle (two runs at 50 %).
#[tokio::test]
async fn the_rotation_rereads_whole_packs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path()).await;
    let p = packed_backup(&repo).await;
    let opts = VerifyOptions {
        reread_percent: 50,
        ..VerifyOptions::default()
    };
    let first = verify(&repo, &opts, Arc::new(|_| {})).await.unwrap();
    assert_eq!(first.counters.chunks_read, 25);
    let mut reread = 0;
    for _ in 0..2 {
        let run = verify(&repo, &opts, Arc::new(|_| {})).await.unwrap();
        let c = &run.counters;
        assert_eq!(c.chunks_read, c.chunks_reread);
        let now = c.chunks_reread;
        // Whole packs of 12, plus the loose chunk when its bucket comes.
        assert!(
            now % 12 == 0 || now % 12 == 1,
            "{c:?} with packs of {} and {} chunks",
            p.ids[0].len(),
            p.ids[1].len()
        );
        assert!(c.chunk_requests <= 3, "{c:?}");
        reread += c.chunks_reread;
    }
    assert_eq!(reread, 25, "every chunk read again within the cycle");
}
