//! The repository format is unchanged by typed records: every manifest of the fixture repository
//! (crates/lifeboat/tests/fixtures/verify-repo, written by an earlier release; see the README
//! there), read into a typed `Manifest` the way `restore` reads it and written again the way
//! `backup` writes it, has exactly the bytes stored.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use lifeboat_repo::Repository;
use lifeboat_repo::backup::Manifest;
use lifeboat_storage::local::LocalStore;

/// A private copy of the fixture (nothing here writes, but the fixture is never opened in place).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn fixture_manifests_read_and_write_back_byte_identical() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../lifeboat/tests/fixtures/verify-repo");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    let store = LocalStore::open(dir.path().to_path_buf()).unwrap();
    let repo = Repository::open(Arc::new(store), None).await.unwrap();

    let labels = repo.backup_labels().await.unwrap();
    assert_eq!(labels.len(), 2, "the fixture holds two backups: {labels:?}");
    for label in &labels {
        // The stored JSON (decoded, unencrypted fixture) and the typed manifest read from it.
        let (_, stored) = repo
            .get_object(&lifeboat_repo::keys::manifest(label))
            .await
            .unwrap();
        let manifest: Manifest = repo.manifest(label).await.unwrap();
        // Typed, not text: the fields hold what they say.
        assert_eq!(manifest.start_wal.timeline, manifest.timeline);
        assert!(manifest.start_time <= manifest.stop_time, "{label}");
        let written = manifest.to_json().unwrap();
        assert!(
            written == stored,
            "backup {label}: the manifest written back differs from the stored one\nstored:  {}\nwritten: {}",
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(&written)
        );
    }
}
