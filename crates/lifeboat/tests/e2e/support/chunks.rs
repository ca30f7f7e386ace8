//! The chunks of a local test repository wherever they lie (loose `data/` objects, or ranges of
//! packs named by an index), for tests that damage or remove one the way a failing disk or a
//! careless hand would.

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::stored::ChunkScope;
use lifeboat_repo::{Passphrase, Repository};
use lifeboat_testkit::cluster::chown_to_owner;

use super::Setup;

/// One stored chunk: its id (hex) and the bytes of a file that hold its encoded object.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub chunk: ChunkId,
    pub id: String,
    pub file: PathBuf,
    pub offset: u64,
    pub length: u64,
}

fn repo_dir(setup: &Setup) -> &Path {
    setup.repo_dir.as_deref().expect("a local repository")
}

fn with_repo<T>(setup: &Setup, f: impl AsyncFnOnce(Repository) -> T) -> T {
    let dir = repo_dir(setup).to_str().expect("utf-8 path").to_string();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let store = lifeboat_storage::open_or_create(&dir, &Default::default())
            .expect("open the repository's store");
        // The passphrase Setup::new writes for an encrypted repository.
        let passphrase = setup
            .encrypted
            .then(|| Passphrase::new("correct horse battery staple"));
        let repo = Repository::open(store, passphrase.as_ref())
            .await
            .expect("open the repository");
        f(repo).await
    })
}

/// Every chunk of the repository at `setup` and where it lies.
pub fn stored_chunks(setup: &Setup) -> Vec<StoredChunk> {
    let dir = repo_dir(setup).to_path_buf();
    with_repo(setup, async move |repo| {
        let stored = repo
            .stored_chunks(ChunkScope::All { expected: 0 })
            .await
            .expect("locate the chunks");
        let mut out: Vec<StoredChunk> = stored
            .loose
            .iter()
            .map(|(id, size)| StoredChunk {
                chunk: *id,
                id: id.to_string(),
                file: dir.join(id.key()),
                offset: 0,
                length: *size,
            })
            .collect();
        for key in &stored.index_keys {
            for e in repo.read_index(key).await.expect("read an index") {
                out.push(StoredChunk {
                    chunk: e.chunk,
                    id: e.chunk.to_string(),
                    file: dir.join(e.location.pack.key()),
                    offset: e.location.offset,
                    length: u64::from(e.location.length),
                });
            }
        }
        out
    })
}

/// Flip a byte (`xor`) in the middle of the largest chunk, a block of a relation that a restore
/// needs; returns the chunk's id.
pub fn corrupt_largest_chunk(setup: &Setup, xor: u8) -> String {
    let victim = stored_chunks(setup)
        .into_iter()
        .max_by_key(|c| c.length)
        .expect("the repository holds a chunk");
    let mut bytes = fs::read(&victim.file).expect("read the chunk's object");
    bytes[(victim.offset + victim.length / 2) as usize] ^= xor;
    fs::write(&victim.file, bytes).expect("write the damaged object");
    victim.id
}

/// Make chunk `id` (hex) absent: delete its loose object, or rewrite each index that names it
/// without it (its bytes stay in a pack that no index locates for it).
pub fn remove_chunk(setup: &Setup, id: &str) {
    let chunk: ChunkId = stored_chunks(setup)
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.chunk)
        .unwrap_or_else(|| panic!("chunk {id} is not in the repository"));
    let loose = repo_dir(setup).join(chunk.key());
    if loose.exists() {
        fs::remove_file(&loose).expect("remove a loose chunk");
        return;
    }
    with_repo(setup, async move |repo| {
        let indexes = repo
            .stored_chunks(ChunkScope::All { expected: 0 })
            .await
            .expect("locate the chunks")
            .index_keys;
        for key in indexes {
            let entries = repo.read_index(&key).await.expect("read an index");
            if entries.iter().any(|e| e.chunk == chunk) {
                let kept: Vec<_> = entries.into_iter().filter(|e| e.chunk != chunk).collect();
                repo.put_index(&kept).await.expect("write the index anew");
                repo.store()
                    .delete(&key)
                    .await
                    .expect("delete the old index");
            }
        }
    });
    // Objects written here belong to root; the binary runs as the cluster owner.
    chown_to_owner(repo_dir(setup)).expect("chown");
}
