//! A repository written by an earlier release still works: a copy of the fixture
//! `tests/fixtures/verify-repo/` (made by a real PostgreSQL 15 cluster through lifeboat; see
//! `tests/fixtures/README.md`) verifies clean, and each of its backups restores with the real
//! binary into a cluster that starts and holds table `big` as it was. The byte-for-byte check of
//! its manifests is in `crates/repo/tests/fixture_format.rs`.
//!
//! The restored copies run with `--archive-mode off`, so they never write into the copy.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;
use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner, copy_tree, run_as_owner};

const START: Duration = Duration::from_secs(180);

/// `lifeboat --config CONFIG ARGS`, as the cluster owner.
pub(crate) fn lifeboat(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    run_as_owner(&mut cmd);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .env_remove("LIFEBOAT_REPO");
    cmd.output().expect("run lifeboat")
}

/// Restore `label` (with `args`, without archiving) into a fresh directory, start it and wait
/// until recovery has ended; the cluster is stopped when dropped.
pub(crate) fn restore_and_start(config: &Path, label: &str, args: &[&str]) -> TestCluster {
    let dir = TestDir::new().expect("test dir");
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let mut all = vec!["restore", "--target-dir", &data, "--archive-mode", "off"];
    all.extend_from_slice(&["--backup", label]);
    all.extend_from_slice(args);
    assert_success(
        &lifeboat(config, &all),
        &format!("lifeboat {}", all.join(" ")),
    );
    TestCluster::start_restored(dir, START)
        .unwrap_or_else(|e| panic!("backup {label} restored with {args:?}: {e:#}"))
}

pub(crate) fn rows_of_big(cluster: &LocalCluster) -> u64 {
    cluster
        .psql("select count(*) from big")
        .expect("read table big")
        .trim()
        .parse()
        .expect("a count")
}

/// A copy of the fixture repository in `dir/repo`, changed by `alter` (given its path) before
/// it is given to the cluster owner; returns the path of a config naming it.
pub(crate) fn fixture_copy(dir: &TestDir, alter: impl FnOnce(&Path)) -> std::path::PathBuf {
    let repo = dir.path().join("repo");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verify-repo"),
        &repo,
    )
    .expect("copy the fixture");
    alter(&repo);
    let config = dir.path().join("lifeboat.toml");
    fs::write(&config, format!("repo = \"{}\"\n", repo.display())).expect("config");
    chown_to_owner(dir.path()).expect("chown");
    config
}

/// The labels of the fixture's two backups, oldest first.
pub(crate) fn backup_labels(config: &Path) -> Vec<String> {
    let out = lifeboat(config, &["list", "--json"]);
    let listing = json_of(&out, "lifeboat list --json");
    let labels: Vec<String> = listing["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json without backups: {listing}"))
        .iter()
        .map(|b| b["label"].as_str().expect("label").to_string())
        .collect();
    assert_eq!(labels.len(), 2, "the fixture holds two backups: {listing}");
    labels
}

/// Each backup of the fixture, restored to its end, holds its rows (tests/fixtures/README.md:
/// 8000 at backup 1, two more before backup 2, three more before the end of the archive).
pub(crate) fn each_backup_restores_to_its_end(config: &Path, labels: &[String], how: &str) {
    for (label, at_backup) in labels.iter().zip([8000, 8002]) {
        let copy = restore_and_start(config, label, &["--target", "immediate"]);
        assert_eq!(
            rows_of_big(&copy),
            at_backup,
            "backup {label}{how}, restored to its end"
        );
    }
}

#[test]
fn old_format_fixture_verifies_and_every_backup_restores() {
    let dir = TestDir::new().expect("test dir");
    let config = fixture_copy(&dir, |_| {});

    let out = lifeboat(&config, &["verify"]);
    assert_success(&out, "lifeboat verify of the old-format fixture");

    let labels = backup_labels(&config);

    each_backup_restores_to_its_end(&config, &labels, "");
    let copy = restore_and_start(&config, &labels[0], &[]);
    assert_eq!(
        rows_of_big(&copy),
        8005,
        "backup {} restored to the end of the archive",
        labels[0]
    );
}
