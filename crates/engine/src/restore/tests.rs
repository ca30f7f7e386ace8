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
