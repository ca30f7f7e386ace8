//! `expire` on a repository of packs: a copy of the old-format fixture with half its chunks moved
//! into small packs under one index, plus a pack of nobody's chunks, a pack no index names and a
//! mostly dead pack holding one chunk of the newest backup, then `expire --keep-last 1`: the dry
//! run and the run report the same, the first two go, the third is repacked, the indexes become
//! one, and the kept backup restores (its chunk from the new pack).

use std::path::Path;

use lifeboat_repo::Repository;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::pack::PackBuilder;
use lifeboat_testkit::cluster::TestDir;

use crate::old_format::{backup_labels, fixture_copy, lifeboat, restore_and_start, rows_of_big};
use crate::packs::{move_half_into_packs, open_unencrypted};
use crate::support::fixture::keys_under;
use crate::support::*;

fn objects(repo: &Path, sub: &str) -> usize {
    keys_under(repo, sub).len()
}

/// An encoded chunk of `len` bytes no backup references.
fn nobodys(repo: &Repository, n: u8, len: usize) -> (ChunkId, Vec<u8>) {
    let mut plain = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[n])
        .finalize_xof()
        .fill(&mut plain);
    let (hash, encoded) = repo.encode("chunk", &plain).expect("encode");
    (ChunkId(hash), encoded)
}

/// Store a pack of `chunks`, indexed by an index of its own when `indexed`.
async fn store_pack(repo: &Repository, chunks: &[(ChunkId, Vec<u8>)], indexed: bool) {
    let mut pack = PackBuilder::new(1 << 20).expect("pack");
    for (id, encoded) in chunks {
        pack.push(*id, encoded).expect("push");
    }
    let sealed = pack.seal(repo).expect("seal");
    repo.put_pack(&sealed).await.expect("store a pack");
    if indexed {
        repo.put_index(&sealed.entries)
            .await
            .expect("store an index");
    }
}

/// The three packs expire must deal with (see the module comment); the newest backup's chunk
/// moved into the mostly dead one loses its loose object, so that only that pack holds it.
async fn add_expirable_packs(dir: &Path) {
    let repo = open_unencrypted(dir).await;
    store_pack(&repo, &[nobodys(&repo, 1, 20_000)], true).await;
    store_pack(&repo, &[nobodys(&repo, 2, 20_000)], false).await;
    let newest = repo
        .manifests()
        .await
        .expect("manifests")
        .pop()
        .expect("a backup");
    let loose: std::collections::HashMap<ChunkId, u64> = repo
        .list_chunks(0)
        .await
        .expect("list chunks")
        .into_iter()
        .collect();
    let (id, size) = newest
        .chunks()
        .find_map(|c| loose.get(&c).map(|&size| (c, size)))
        .expect("a loose chunk of the newest backup");
    let raw = repo.store().get(&id.key()).await.expect("read the chunk");
    let filler = nobodys(&repo, 3, 4 * size as usize + 1000);
    store_pack(&repo, &[(id, raw.to_vec()), filler], true).await;
    repo.store()
        .delete(&id.key())
        .await
        .expect("delete the loose copy");
}

#[test]
fn expire_collects_and_repacks_packs_and_the_kept_backup_restores() {
    let dir = TestDir::new().expect("test dir");
    let repo = dir.path().join("repo");
    let config = fixture_copy(&dir, |repo| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (moved, packs) = runtime.block_on(move_half_into_packs(repo, 64 << 10));
        assert!(moved > 0 && packs > 1, "{moved} chunks into {packs} packs");
        runtime.block_on(add_expirable_packs(repo));
    });
    let packs_before = objects(&repo, "packs");
    let labels = backup_labels(&config);

    let dry = json_of(
        &lifeboat(
            &config,
            &["expire", "--keep-last", "1", "--dry-run", "--json"],
        ),
        "expire --dry-run --json",
    );
    assert_eq!(
        objects(&repo, "packs"),
        packs_before,
        "a dry run deletes nothing"
    );
    let report = json_of(
        &lifeboat(&config, &["expire", "--keep-last", "1", "--json"]),
        "expire --json",
    );
    eprintln!(
        "packs before: {packs_before}; expire's packs report: {}",
        report["packs"]
    );
    for field in [
        "count",
        "bytes",
        "repacked",
        "repacked_bytes",
        "copied_bytes",
        "remaining",
    ] {
        assert_eq!(
            report["packs"][field], dry["packs"][field],
            "{field}: the dry run said otherwise"
        );
    }
    let p = &report["packs"];
    let n = |f: &str| p[f].as_u64().unwrap_or_else(|| panic!("packs.{f}: {p}"));
    assert_eq!(
        n("count") + n("repacked") + n("remaining"),
        packs_before as u64,
        "{p}"
    );
    assert!(n("count") >= 2 && n("unindexed") >= 1, "{p}");
    assert!(n("repacked") >= 1 && n("copied_bytes") > 0, "{p}");
    assert!(p["skipped"].is_null(), "{p}");
    assert_eq!(objects(&repo, "index"), 1, "one consolidated index");
    // What is left: the packs kept as they are, plus the new ones repacking wrote.
    let left = objects(&repo, "packs") as u64;
    assert!(
        left >= n("remaining") && left <= n("remaining") + n("repacked").max(1),
        "{left} packs left: {p}"
    );

    let copy = restore_and_start(&config, &labels[1], &["--target", "immediate"]);
    assert_eq!(
        rows_of_big(&copy),
        8002,
        "the kept backup restored after expire"
    );
}
