//! Chunks in packs restore like loose ones, and a repository holding both layouts (a version 1
//! repository upgraded in place keeps its loose chunks) restores every backup: a copy of the
//! old-format fixture has some of its loose chunks moved into packs located by an index, then
//! each backup is restored with the real binary into a cluster that starts and holds its rows.

use std::path::Path;

use lifeboat_repo::Repository;
use lifeboat_repo::pack::PackBuilder;
use lifeboat_testkit::cluster::TestDir;

use crate::old_format::{backup_labels, each_backup_restores_to_its_end, fixture_copy};

/// Move every other loose chunk of the repository at `dir` into packs of about `pack_size`
/// bytes, index them, and delete their loose objects; returns (chunks moved, packs written).
pub(crate) async fn move_half_into_packs(dir: &Path, pack_size: usize) -> (usize, usize) {
    let store =
        lifeboat_storage::open_or_create(dir.to_str().expect("utf-8 path"), &Default::default())
            .expect("open the repository's store");
    let repo = Repository::open(store, None)
        .await
        .expect("open the repository");
    let mut loose = repo.list_chunks(0).await.expect("list chunks");
    loose.sort();
    let mut sealed = Vec::new();
    let mut pack = PackBuilder::new(pack_size).expect("pack");
    let mut moved = Vec::new();
    for (id, _) in loose.into_iter().step_by(2) {
        let raw = repo
            .store()
            .get(&id.key())
            .await
            .expect("read a loose chunk");
        pack.push(id, &raw).expect("push");
        moved.push(id);
        if pack.is_full() {
            let full = std::mem::replace(&mut pack, PackBuilder::new(pack_size).expect("pack"));
            sealed.push(full.seal(&repo).expect("seal"));
        }
    }
    if !pack.is_empty() {
        sealed.push(pack.seal(&repo).expect("seal"));
    }
    let mut entries = Vec::new();
    for p in &sealed {
        repo.put_pack(p).await.expect("store a pack");
        entries.extend(p.entries.iter().copied());
    }
    repo.put_index(&entries).await.expect("store the index");
    for id in &moved {
        repo.store()
            .delete(&id.key())
            .await
            .expect("delete a moved chunk");
    }
    (moved.len(), sealed.len())
}

#[test]
fn backups_whose_chunks_lie_partly_in_packs_restore() {
    let dir = TestDir::new().expect("test dir");
    let config = fixture_copy(&dir, |repo| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (moved, packs) = runtime.block_on(move_half_into_packs(repo, 64 << 10));
        assert!(moved > 0 && packs > 1, "{moved} chunks into {packs} packs");
    });
    let labels = backup_labels(&config);
    each_backup_restores_to_its_end(&config, &labels, " from packs and loose chunks");
}
