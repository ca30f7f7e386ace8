//! Unit tests of the restore's file handling: links, delta, vanished chunks.

use super::finish::read_restored;
use super::*;
use lifeboat_repo::backup::Packed;
use lifeboat_repo::{Codec, CompressionSettings};

#[test]
fn write_file_never_writes_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::write(&outside, "precious").unwrap();
    let path = dir.path().join("postgresql.auto.conf");
    std::os::unix::fs::symlink(&outside, &path).unwrap();
    write_file(&path, "restore_command = 'x'\n").unwrap();
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
    assert!(fs::symlink_metadata(&path).unwrap().is_file());
    assert_eq!(read_restored(&path), "restore_command = 'x'\n");
}

#[test]
fn piece_writer_refuses_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::write(&outside, vec![7u8; 8192]).unwrap();
    let path = dir.path().join("f");
    std::os::unix::fs::symlink(&outside, &path).unwrap();
    for direct_io in [true, false] {
        let writer = direct::PieceWriter::new(direct_io);
        assert!(writer.write(&path, &[0u8; 4096], 0).is_err());
    }
    assert_eq!(fs::read(&outside).unwrap(), vec![7u8; 8192]);
}

/// Delta over a target whose `base` is a link to an outside directory holding the very file
/// the backup has: the plan must not take the outside file as "kept", and applying it
/// replaces the link with a directory and leaves the outside alone.
#[test]
fn delta_never_keeps_or_writes_a_file_under_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("data");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("f"), "hello").unwrap();
    fs::set_permissions(outside.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("base")).unwrap();
    fs::write(target.join("stray"), "x").unwrap();

    let codec = Codec::new(CompressionSettings::default(), None);
    let hash = ChunkId(codec.hash(b"hello"));
    let file = FileEntry {
        path: "base/f".into(),
        root: Root::Pgdata,
        mode: 0o600,
        size: 5,
        mtime: 0,
        blocks: Vec::new(),
        packed: Some(Packed {
            chunk: hash,
            offset: 0,
            hash,
        }),
    };
    let entries = vec![
        Entry::Dir {
            path: "base".into(),
            mode: 0o700,
            root: Root::Pgdata,
        },
        Entry::File(file.clone()),
    ];
    let manifest = lifeboat_repo::backup::testing::ManifestBuilder::new("L")
        .block_size(8192)
        .entries(entries)
        .build();
    let layout = Layout {
        target_dir: target.clone(),
        tablespaces: BTreeMap::new(),
    };
    let targets = file_targets(&manifest, &target, &layout.tablespaces);
    let plan = plan_files(&manifest, &layout, &targets, 8192, true, &codec, 2).unwrap();
    assert_eq!(plan.actions, vec![FileAction::Create]);
    assert_eq!(plan.remove, vec![target.join("stray")]);
    apply(
        &manifest,
        &layout,
        &targets,
        &plan.actions,
        &plan.remove,
        "",
        2,
    )
    .unwrap();
    assert!(fs::symlink_metadata(target.join("base")).unwrap().is_dir());
    assert_eq!(fs::metadata(target.join("base/f")).unwrap().len(), 5);
    assert!(!target.join("stray").exists());
    assert_eq!(fs::read_to_string(outside.join("f")).unwrap(), "hello");
}

#[test]
fn a_chunk_that_vanishes_is_corruption_not_not_found() {
    let id = ChunkId(lifeboat_repo::ContentHash([3; 32]));
    let gone = fetch::vanished(
        lifeboat_storage::StorageError::not_found(&id.key()),
        &id.key(),
        "L",
    );
    assert!(
        matches!(&gone, EngineError::Corrupt { message, .. } if message.contains(&id.to_string()) && message.contains("L")),
        "{gone:?}"
    );
    let other = fetch::vanished(
        lifeboat_storage::StorageError::new(lifeboat_storage::ErrorKind::Transient, "slow"),
        &id.key(),
        "L",
    );
    assert!(matches!(other, EngineError::Repo(_)), "{other:?}");
}

/// A repository on local disk holding `plain` as one chunk in an indexed pack, and where a
/// restore that started before an expire repacked it had located the chunk: in a pack that is
/// gone now.
async fn repacked_chunk(
    dir: &Path,
    plain: &[u8],
) -> (Repository, ChunkId, lifeboat_repo::stored::StoredChunks) {
    use lifeboat_repo::pack::{IndexEntry, PackBuilder};
    let store =
        lifeboat_storage::open_or_create(dir.to_str().unwrap(), &Default::default()).unwrap();
    let repo = Repository::init(store, Default::default()).await.unwrap();
    let (hash, encoded) = repo.encode("chunk", plain).unwrap();
    let chunk = ChunkId(hash);
    let mut before = PackBuilder::new(1 << 20).unwrap();
    let gone = before.push(chunk, &encoded).unwrap();
    let mut after = PackBuilder::new(1 << 20).unwrap();
    after.push(chunk, &encoded).unwrap();
    let after = after.seal(&repo).unwrap();
    repo.put_pack(&after).await.unwrap();
    repo.put_index(&after.entries).await.unwrap();
    let mut stale = lifeboat_repo::stored::StoredChunks::default();
    stale.packed.extend([IndexEntry {
        chunk,
        location: gone,
    }]);
    (repo, chunk, stale)
}

/// One file of `len` bytes made of `chunk`, ready to be written by `fetch`.
fn one_file(
    dest: &Path,
    chunk: ChunkId,
    len: u64,
) -> (HashMap<ChunkId, Vec<Placement>>, fetch::Sink) {
    fs::write(dest, b"").unwrap();
    let entry = FileEntry {
        path: "f".into(),
        root: Root::default(),
        mode: 0o600,
        size: len,
        mtime: 0,
        blocks: vec![chunk],
        packed: None,
    };
    let placements = HashMap::from([(
        chunk,
        vec![Placement {
            file: 0,
            file_offset: 0,
            chunk_offset: 0,
            len,
        }],
    )]);
    let sink = fetch::Sink {
        targets: Arc::new(vec![Target {
            entry,
            dest: dest.to_path_buf(),
        }]),
        progress: Arc::new(write::FileProgress {
            pieces_left: vec![AtomicUsize::new(1)],
            synced: vec![AtomicBool::new(false)],
        }),
        writer: Arc::new(direct::PieceWriter::new(false)),
        label: "L".into(),
        parallel: 1,
    };
    (placements, sink)
}

#[tokio::test]
async fn a_pack_repacked_under_a_restore_is_read_where_its_chunks_now_lie() {
    let dir = tempfile::tempdir().unwrap();
    let plain = vec![5u8; 8192];
    let (repo, chunk, stale) = repacked_chunk(&dir.path().join("repo"), &plain).await;
    let dest = dir.path().join("f");
    let (placements, sink) = one_file(&dest, chunk, plain.len() as u64);
    let mut written = 0;
    let requests = fetch::fetch_and_write(&repo, &stale, placements, sink, |n| written += n)
        .await
        .unwrap();
    assert_eq!(written, plain.len() as u64);
    assert_eq!(
        requests, 2,
        "the read of the gone pack, then the one where the chunk lies"
    );
    assert_eq!(fs::read(&dest).unwrap(), plain);
}

#[tokio::test]
async fn a_chunk_gone_from_every_pack_under_a_restore_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let plain = vec![6u8; 8192];
    let (repo, chunk, stale) = repacked_chunk(&dir.path().join("repo"), &plain).await;
    for key in ["packs/", "index/"] {
        for object in repo.store().list(key).await.unwrap() {
            repo.store().delete(&object.key).await.unwrap();
        }
    }
    let (placements, sink) = one_file(&dir.path().join("f"), chunk, plain.len() as u64);
    let err = fetch::fetch_and_write(&repo, &stale, placements, sink, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Corrupt { message, .. } if message.contains("vanished")),
        "{err:?}"
    );
}
