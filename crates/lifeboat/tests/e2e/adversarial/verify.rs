//! Adversarial tests: verify.
//!
//! Also the WAL check's memory bound (`restore --target-lsn FFFFFFFF/FFFFFFFF`), stray keys under
//! `backups/`, and `init` on an existing directory. Most run on a copy of the small clean
//! repository in `tests/fixtures/verify-repo/` (see `tests/fixtures/README.md`): no cluster needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};
use lifeboat_testkit::cluster::{TestDir, chown_to_owner};
use serde_json::Value;

use crate::support::fixture::{FixtureRepo, findings, flip_byte, keys_under, last_segment};
use crate::support::*;

fn next_segment(s: &WalSegmentName) -> WalSegmentName {
    let n = s.segno(DEFAULT_WAL_SEGMENT_SIZE).expect("segno");
    WalSegmentName::from_segno(s.timeline, n + 1, DEFAULT_WAL_SEGMENT_SIZE)
}

// ---------------------------------------------------------------------------------------------
// Issue 13, defect 6: the WAL check is bounded whatever the target
// ---------------------------------------------------------------------------------------------

/// `--target-lsn FFFFFFFF/FFFFFFFF` once made the WAL check allocate 13 TB (abort, exit 134).
/// Now: exit 4, naming the first segment the repository lacks, quickly and without a panic.
#[test]
fn restore_to_the_last_possible_lsn_is_refused_naming_the_first_missing_segment() {
    let repo = FixtureRepo::new("");
    let target = repo.dir.path().join("target");
    let started = std::time::Instant::now();
    let out = repo.run(&[
        "restore",
        "--target-lsn",
        "FFFFFFFF/FFFFFFFF",
        "--dry-run",
        "--target-dir",
        &target.to_string_lossy(),
    ]);
    let all = text(&out);
    assert_code(&out, 4, "restore --target-lsn FFFFFFFF/FFFFFFFF --dry-run");
    assert!(
        !all.contains("panicked") && !all.contains("memory allocation"),
        "{all}"
    );
    let first_missing = next_segment(&last_segment(&repo.path)).to_string();
    assert!(
        all.contains(&first_missing),
        "the refusal names the first missing segment {first_missing}: {all}"
    );
    assert!(all.contains("HINT"), "{all}");
    assert!(!target.exists(), "a dry run created {}", target.display());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// The same bound in verify: a segment stored far ahead (here the last name there is) makes a
/// gap of 2^40 segments, which verify reports by its ends and count instead of naming (and
/// allocating) every one.
#[test]
fn verify_with_a_segment_far_ahead_reports_the_gap_without_listing_it() {
    let repo = FixtureRepo::new("");
    let last = last_segment(&repo.path);
    let far: WalSegmentName = "00000001FFFFFFFF000000FF".parse().expect("name");
    let key = lifeboat_repo::keys::wal(&WalFileName::Segment(far));
    fs::create_dir_all(repo.object(&key).parent().expect("parent")).expect("mkdir");
    fs::copy(
        repo.object(&lifeboat_repo::keys::wal(&WalFileName::Segment(last))),
        repo.object(&key),
    )
    .expect("copy");
    chown_to_owner(&repo.path).expect("chown");
    let report = repo.verify(&[], 6);
    let gaps = findings(&report, "wal_gap");
    assert_eq!(gaps.len(), 1, "{report}");
    let gap = &gaps[0]["gap"];
    assert_eq!(
        gap["first_missing"],
        next_segment(&last).to_string().as_str(),
        "{gap}"
    );
    assert_eq!(gap["last_missing"], "00000001FFFFFFFF000000FF", "{gap}");
    assert!(gap["count"].as_u64().is_some_and(|c| c > 1 << 39), "{gap}");
    assert!(
        gap["missing"].as_array().is_some_and(|m| m.len() <= 1000),
        "the gap's names are bounded"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 13, defect 10: verify re-reads a rotating share and checks sizes
// ---------------------------------------------------------------------------------------------

/// A byte flipped inside a chunk after a clean run keeps the object's size; an incremental run at
/// `reread_percent = 50` re-reads half of what it verified before, so the flip is found within
/// the announced cycle (2 runs).
#[test]
fn a_flip_after_a_clean_run_is_found_within_the_announced_cycle() {
    let repo = FixtureRepo::new("[verify]\nreread_percent = 50\n");
    let first = repo.verify(&[], 0);
    assert_eq!(first["reread"]["percent"], 50, "{first}");
    assert_eq!(first["reread"]["cycle_runs"], 2, "{first}");
    let chunk = keys_under(&repo.path, "data")
        .into_iter()
        .next()
        .expect("a chunk");
    flip_byte(&repo.object(&chunk), 7);
    let mut found = false;
    for run in 0..2 {
        let out = repo.run(&["verify", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        if out.status.code() == Some(6) {
            let damaged = findings(&report, "damaged_chunk");
            assert!(
                damaged.iter().any(|f| f["object"] == chunk.as_str()),
                "run {run}: {report}"
            );
            found = true;
            break;
        }
        assert_code(&out, 0, "verify before the damaged chunk's turn");
        assert!(
            report["counters"]["chunks_read"].as_u64().unwrap_or(0) > 0,
            "run {run} re-read nothing: {report}"
        );
    }
    assert!(
        found,
        "the flipped chunk {chunk} was not found within 2 runs"
    );

    // The text report says how long a whole cycle takes.
    let out = repo.run(&["verify"]);
    assert!(
        text(&out).contains("every 2 runs"),
        "the text report names the cycle: {}",
        text(&out)
    );
}

/// With the default (5%), a cycle is 20 runs, and the report says so.
#[test]
fn the_default_reread_share_and_its_cycle_are_reported() {
    let repo = FixtureRepo::new("");
    let report = repo.verify(&[], 0);
    assert_eq!(report["reread"]["percent"], 5, "{report}");
    assert_eq!(report["reread"]["cycle_runs"], 20, "{report}");
    let off = repo.verify(&["--reread-percent", "0"], 0);
    assert_eq!(off["counters"]["chunks_read"], 0, "{off}");
    assert_eq!(off["reread"]["cycle_runs"], Value::Null, "{off}");
}

/// An out-of-range share is a configuration error, in the file and as a flag.
#[test]
fn reread_percent_out_of_range_is_a_configuration_error() {
    let repo = FixtureRepo::new("[verify]\nreread_percent = 101\n");
    let out = repo.run(&["verify"]);
    assert_code(&out, 3, "verify with reread_percent = 101");
    assert!(text(&out).contains("reread_percent"), "{}", text(&out));
    let repo = FixtureRepo::new("");
    let out = repo.run(&["verify", "--reread-percent", "250"]);
    assert!(
        matches!(out.status.code(), Some(2) | Some(3)),
        "verify --reread-percent 250: {:?} {}",
        out.status.code(),
        text(&out)
    );
}

/// A WAL object truncated to 0 bytes after a clean run: its listed size shows it, whatever the
/// rotation (off here), and verify exits 6 naming it.
#[test]
fn a_wal_object_truncated_to_zero_bytes_after_a_clean_run_is_flagged() {
    let repo = FixtureRepo::new("[verify]\nreread_percent = 0\n");
    repo.verify(&[], 0);
    let victim = WalFileName::Segment(last_segment(&repo.path));
    let key = lifeboat_repo::keys::wal(&victim);
    fs::write(repo.object(&key), b"").expect("truncate");
    let report = repo.verify(&[], 6);
    let damaged = findings(&report, "damaged_wal");
    assert!(
        damaged.iter().any(|f| f["object"] == key.as_str()),
        "{report}"
    );
}

/// A 0-byte WAL object is no segment for restore's WAL check either: refused (exit 4) naming it,
/// instead of a restore that PostgreSQL's recovery then stops on.
#[test]
fn restore_counts_a_zero_byte_wal_object_as_missing() {
    let repo = FixtureRepo::new("");
    let victim = last_segment(&repo.path);
    let key = lifeboat_repo::keys::wal(&WalFileName::Segment(victim));
    fs::write(repo.object(&key), b"").expect("truncate");
    let target = repo.dir.path().join("target");
    let out = repo.run(&[
        "restore",
        "--dry-run",
        "--target-dir",
        &target.to_string_lossy(),
    ]);
    assert_code(&out, 4, "restore with a 0-byte WAL object");
    assert!(text(&out).contains(&victim.to_string()), "{}", text(&out));
}

/// Same for a WAL object truncated to a size it never had (but longer than a header).
#[test]
fn a_wal_object_whose_size_changed_after_a_clean_run_is_flagged() {
    let repo = FixtureRepo::new("[verify]\nreread_percent = 0\n");
    repo.verify(&[], 0);
    let victim = WalFileName::Segment(last_segment(&repo.path));
    let key = lifeboat_repo::keys::wal(&victim);
    let bytes = fs::read(repo.object(&key)).expect("read");
    fs::write(repo.object(&key), &bytes[..bytes.len() - 100]).expect("truncate");
    let report = repo.verify(&[], 6);
    let damaged = findings(&report, "damaged_wal");
    assert!(
        damaged.iter().any(|f| f["object"] == key.as_str()),
        "{report}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 13, smaller ones: stray keys, init
// ---------------------------------------------------------------------------------------------

/// A stray key under `backups/` whose name lifeboat could never have written made `list`,
/// `verify` and `expire` fail for the whole repository. It is skipped with a warning, and nothing
/// deletes it.
#[test]
fn a_stray_key_under_backups_is_skipped_with_a_warning() {
    let repo = FixtureRepo::new("");
    let stray = repo.path.join("backups/not a backup");
    fs::create_dir_all(&stray).expect("mkdir");
    fs::write(stray.join("manifest"), b"junk").expect("write");
    chown_to_owner(&repo.path).expect("chown");

    let out = repo.run(&["list"]);
    assert_code(&out, 0, "list with a stray key");
    assert!(text(&out).contains("not a backup"), "{}", text(&out));
    assert!(text(&out).contains("20261123T135712Z"), "{}", text(&out));

    let out = repo.run(&["verify", "--reread-percent", "0"]);
    assert_code(&out, 0, "verify with a stray key");
    assert!(text(&out).contains("not a backup"), "{}", text(&out));

    let target = repo.dir.path().join("target");
    let out = repo.run(&[
        "restore",
        "--dry-run",
        "--target-dir",
        &target.to_string_lossy(),
    ]);
    assert_code(&out, 0, "restore --dry-run with a stray key");

    let out = repo.run(&["expire", "--keep-last", "5"]);
    assert_code(&out, 0, "expire with a stray key");
    assert!(
        stray.join("manifest").exists(),
        "expire deleted a key it does not own"
    );
}

/// `init` on an existing empty directory makes it 0700, as the docs say repository directories are.
#[test]
fn init_on_an_existing_empty_directory_makes_it_private() {
    let dir = TestDir::new().expect("test dir");
    let repo = dir.path().join("repo");
    fs::create_dir(&repo).expect("mkdir");
    fs::set_permissions(&repo, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new(BIN)
        .args(["--repo", &repo.to_string_lossy(), "init", "--unencrypted"])
        .env_remove("LIFEBOAT_CONFIG")
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .output()
        .expect("run init");
    assert_success(&out, "init into an empty directory");
    let mode = fs::metadata(&repo).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "repository directory mode {mode:o}");
}

/// `init` on a non-empty directory: refused with a HINT and a correct count.
#[test]
fn init_on_a_non_empty_directory_has_a_hint_and_counts_right() {
    let dir = TestDir::new().expect("test dir");
    let repo = dir.path().join("repo");
    fs::create_dir(&repo).expect("mkdir");
    fs::write(repo.join("thesis.txt"), b"precious").expect("write");
    let out = Command::new(BIN)
        .args(["--repo", &repo.to_string_lossy(), "init", "--unencrypted"])
        .env_remove("LIFEBOAT_CONFIG")
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .output()
        .expect("run init");
    assert_code(&out, 4, "init into a non-empty directory");
    let err = stderr(&out);
    assert!(
        err.contains("1 object,") || err.contains("1 object "),
        "{err}"
    );
    assert!(!err.contains("1 objects"), "{err}");
    assert!(err.contains("HINT:"), "{err}");
    assert_eq!(
        fs::read(repo.join("thesis.txt")).expect("read"),
        b"precious",
        "init changed a file"
    );
}
