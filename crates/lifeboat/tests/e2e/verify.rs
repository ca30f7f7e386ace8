//! `lifeboat verify` end to end: it finds every missing or damaged chunk, WAL segment and manifest,
//! names the backups each one makes unrestorable, and an incremental run reads only what is new.
//!
//! Most tests run against a copy of one small, clean repository kept in
//! `tests/fixtures/verify-repo/` (made by a real PostgreSQL 15 cluster; see
//! `tests/fixtures/README.md` and [`regenerate_fixture`]), damage the copy exactly as described in
//! each test, and check what a user sees: the exit code, the problem line naming the object or
//! segment and the backups it affects, and the report's counters. One test runs on a live cluster
//! to show that a second run reads only what a new backup added.

use std::fs;
use std::path::Path;

use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};
use lifeboat_repo::backup::{ChunkId, Entry, Manifest};
use lifeboat_testkit::cluster::TestCluster;
use serde_json::Value;

use crate::support::fixture::{
    FixtureRepo, copy_tree, findings, fixture_dir, flip_byte, last_segment, verify_json,
};
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// No re-read rotation: these tests count exactly what an incremental run reads (the rotation has
/// its own tests in `adversarial::verify`).
const NO_REREAD: &str = "[verify]\nreread_percent = 0\n";

fn counter(report: &Value, name: &str) -> u64 {
    report["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {report}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn verdict<'a>(report: &'a Value, label: &str) -> &'a Value {
    report["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["label"] == label)
        .unwrap_or_else(|| panic!("no verdict for backup {label} in {report}"))
}

/// The fixture's manifests, read the way a user of an unencrypted repository could: decode the
/// object and parse the JSON. Oldest first (the fixture's labels are in time order).
fn manifests(repo: &Path) -> Vec<Manifest> {
    let codec = lifeboat_repo::Codec::new(lifeboat_repo::CompressionSettings::default(), None);
    let mut labels: Vec<String> = fs::read_dir(repo.join("backups"))
        .expect("backups dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    labels.sort();
    labels
        .iter()
        .map(|label| {
            let raw = fs::read(repo.join(lifeboat_repo::keys::manifest(label))).expect("manifest");
            let (_, plain) = codec.decode(&raw).expect("decode manifest");
            serde_json::from_slice(&plain).expect("manifest JSON")
        })
        .collect()
}

fn file_entry<'a>(m: &'a Manifest, path: &str) -> &'a lifeboat_repo::backup::FileEntry {
    m.entries
        .iter()
        .find_map(|e| match e {
            Entry::File(f) if f.path == path => Some(f),
            _ => None,
        })
        .unwrap_or_else(|| panic!("backup {} has no file {path}", m.label))
}

/// The relation file of table `big` (over 1 MiB, so stored as blocks), from the fixture's notes.
fn big_table_path() -> String {
    let notes = fs::read_to_string(fixture_dir().join("../README.md")).expect("fixtures README");
    notes
        .lines()
        .find_map(|l| {
            l.strip_prefix("- table `big`: `")
                .and_then(|r| r.split('`').next())
        })
        .expect("README names the file of table big")
        .to_string()
}

fn labels_referencing(ms: &[Manifest], id: &ChunkId) -> Vec<String> {
    ms.iter()
        .filter(|m| m.chunks().any(|c| c == *id))
        .map(|m| m.label.clone())
        .collect()
}

fn segment(name: &str) -> WalSegmentName {
    name.parse().expect("segment name")
}

fn seg_after(name: &str, n: u64) -> String {
    let s = segment(name);
    let segno = s.segno(DEFAULT_WAL_SEGMENT_SIZE).expect("segno");
    WalSegmentName::from_segno(s.timeline, segno + n, DEFAULT_WAL_SEGMENT_SIZE).to_string()
}

fn wal_key(name: &str) -> String {
    lifeboat_repo::keys::wal(&WalFileName::parse(name).expect("WAL name"))
}

fn remove(path: &Path) {
    fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// A clean repository; incremental and --full runs
// ---------------------------------------------------------------------------------------------

#[test]
fn clean_fixture_verifies_then_reads_only_what_is_new_and_full_reads_all() {
    let repo = FixtureRepo::new(NO_REREAD);
    let ms = manifests(&repo.path);
    assert_eq!(ms.len(), 2, "the fixture holds two backups");
    let last = last_segment(&repo.path).to_string();

    // First run: everything is read.
    let first = repo.verify(&[], 0);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(counter(&first, "backups_checked"), 2);
    let referenced = counter(&first, "chunks_referenced");
    assert!(referenced > 3, "{first}");
    assert_eq!(counter(&first, "chunks_read"), referenced, "{first}");
    assert_eq!(counter(&first, "chunks_skipped"), 0, "{first}");
    let wal_files = counter(&first, "wal_files");
    assert!(wal_files >= 6, "{first}");
    assert_eq!(counter(&first, "wal_read"), wal_files, "{first}");
    assert!(counter(&first, "bytes_read") > 500_000, "{first}");
    for m in &ms {
        let v = verdict(&first, &m.label);
        assert_eq!(v["restorable"], true, "{v}");
        assert_eq!(v["restores_to"].as_str(), Some(last.as_str()), "{v}");
    }
    assert_eq!(first["state"]["saved"], true, "{first}");
    // The state: a JSON line, then 40 bytes per verified chunk (encoded, so plus a header).
    let state = fs::metadata(repo.object("verify/state")).expect("verify/state written");
    assert!(repo.object("verify/state.copy").exists());
    assert!(
        state.len() < 2048 + 40 * referenced,
        "state of {} bytes for {referenced} chunks",
        state.len()
    );

    // Second run: nothing new, nothing read; presence still checked.
    let second = repo.verify(&[], 0);
    assert_eq!(counter(&second, "chunks_read"), 0, "{second}");
    assert_eq!(counter(&second, "chunks_skipped"), referenced, "{second}");
    assert_eq!(counter(&second, "wal_read"), 0, "{second}");
    assert_eq!(counter(&second, "wal_skipped"), wal_files, "{second}");
    assert_eq!(counter(&second, "bytes_read"), 0, "{second}");
    assert_eq!(second["state"]["saved"], false, "nothing changed: {second}");

    // --full: everything again.
    let full = repo.verify(&["--full"], 0);
    assert_eq!(counter(&full, "chunks_read"), referenced, "{full}");
    assert_eq!(counter(&full, "wal_read"), wal_files, "{full}");
    assert_eq!(
        counter(&full, "bytes_read"),
        counter(&first, "bytes_read"),
        "{full}"
    );

    // The text a user reads: a line per backup and the summary.
    let out = repo.run(&["verify"]);
    assert_success(&out, "lifeboat verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for m in &ms {
        assert!(
            stdout.contains(&format!(
                "backup {}: intact, restores to any moment from its end ({}) up to the end of WAL segment {last}",
                m.label,
                lifeboat_repo::timestamp::text(m.stop_time)
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("2 backups checked in")
            && stdout.contains(&format!("0 chunks read, {referenced} skipped"))
            && stdout.contains("no problems"),
        "{stdout}"
    );

    // One backup only; an unknown label is refused.
    let one = repo.verify(&["--backup", &ms[1].label], 0);
    assert_eq!(counter(&one, "backups_checked"), 1, "{one}");
    assert_eq!(one["backups"].as_array().map(Vec::len), Some(1), "{one}");
    let out = repo.run(&["verify", "--backup", "19990101T000000Z"]);
    assert_code(&out, 4, "verify of a backup that does not exist");
    assert!(
        stderr(&out).contains("no backup labelled 19990101T000000Z"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Damage: each kind is found, named, and makes verify exit 6
// ---------------------------------------------------------------------------------------------

/// Damage: the chunk holding the first 1 MiB block of table `big` in backup 1 (in today's fixture
/// backup 2 shares it) is deleted after a clean run recorded it as verified. The listing finds it
/// gone.
#[test]
fn deleted_chunk_is_found_even_after_it_was_verified() {
    let repo = FixtureRepo::new(NO_REREAD);
    repo.verify(&[], 0);
    let ms = manifests(&repo.path);
    let big = big_table_path();
    let id = file_entry(&ms[0], &big).blocks[0];
    let expected = labels_referencing(&ms, &id);
    assert!(!expected.is_empty());
    remove(&repo.object(&id.key()));

    let report = repo.verify(&[], 6);
    assert_eq!(report["ok"], false);
    let missing = findings(&report, "missing_chunk");
    assert_eq!(missing.len(), 1, "{report}");
    assert_eq!(missing[0]["object"].as_str(), Some(id.key().as_str()));
    assert_eq!(strings(&missing[0]["backups"]), expected);
    assert_eq!(counter(&report, "chunks_missing"), 1);
    for label in &expected {
        let v = verdict(&report, label);
        assert_eq!(v["restorable"], false, "{v}");
        assert_eq!(v["chunks_missing"], 1, "{v}");
    }

    let out = repo.run(&["verify"]);
    assert_code(&out, 6, "verify with a deleted chunk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM:") && l.contains(&id.key()))
        .unwrap_or_else(|| panic!("no problem line names {}:\n{stdout}", id.key()));
    assert!(
        line.contains("is missing")
            && line.contains(&format!("backups affected: {}", expected.join(", ")))
            && line.contains("FIX:"),
        "{line}"
    );
    assert!(stdout.contains("1 PROBLEM"), "{stdout}");
}

/// Damage: one byte flipped in the last byte of the chunk that packs `PG_VERSION` in the older
/// backup (the payload, so the hash check fails; the object keeps its size).
#[test]
fn flipped_byte_in_chunk_is_found() {
    let repo = FixtureRepo::new(NO_REREAD);
    let ms = manifests(&repo.path);
    let packed = file_entry(&ms[0], "PG_VERSION")
        .packed
        .clone()
        .expect("PG_VERSION is packed");
    let id = packed.chunk;
    let expected = labels_referencing(&ms, &id);
    flip_byte(&repo.object(&id.key()), 1);

    let report = repo.verify(&[], 6);
    let damaged = findings(&report, "damaged_chunk");
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["object"].as_str(), Some(id.key().as_str()));
    assert_eq!(strings(&damaged[0]["backups"]), expected);
    assert_eq!(counter(&report, "chunks_damaged"), 1);
    // The damaged chunk is not recorded as verified: the next run reads it again and finds it
    // again.
    let again = repo.verify(&[], 6);
    assert_eq!(findings(&again, "damaged_chunk").len(), 1, "{again}");
    assert_eq!(counter(&again, "chunks_read"), 1, "{again}");

    let out = repo.run(&["verify"]);
    assert_code(&out, 6, "verify with a damaged chunk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("PROBLEM:")
            && l.contains(&id.key())
            && l.contains("is damaged")),
        "{stdout}"
    );
}

/// Damage after a clean run: a byte flipped inside a chunk keeps the object's size, so an
/// incremental run (which trusts what it read before and only lists) does not see it; `--full`
/// reads it again and does. This is the documented trade-off of incremental verification.
#[test]
fn damage_inside_a_verified_chunk_is_found_by_full() {
    let repo = FixtureRepo::new(NO_REREAD);
    repo.verify(&[], 0);
    let ms = manifests(&repo.path);
    let id = file_entry(&ms[1], "global/pg_control")
        .packed
        .clone()
        .expect("pg_control is packed")
        .chunk;
    flip_byte(&repo.object(&id.key()), 7);
    let incremental = repo.verify(&[], 0);
    assert_eq!(counter(&incremental, "chunks_read"), 0, "{incremental}");
    let full = repo.verify(&["--full"], 6);
    let damaged = findings(&full, "damaged_chunk");
    assert_eq!(damaged.len(), 1, "{full}");
    assert_eq!(damaged[0]["object"].as_str(), Some(id.key().as_str()));
    assert_eq!(strings(&damaged[0]["backups"]), vec![ms[1].label.clone()]);
}

/// Damage: the second segment after the newer backup's stop segment is deleted. Both backups
/// restore up to the end of the segment before it; the gap names it exactly.
#[test]
fn missing_wal_segment_is_named_with_the_window_that_remains() {
    let repo = FixtureRepo::new(NO_REREAD);
    repo.verify(&[], 0);
    let ms = manifests(&repo.path);
    let newest = &ms[1];
    let gone = seg_after(&newest.stop_wal.to_string(), 2);
    let window_end = seg_after(&newest.stop_wal.to_string(), 1);
    assert!(
        last_segment(&repo.path).to_string() > gone,
        "the fixture holds segments after {gone}"
    );
    remove(&repo.object(&wal_key(&gone)));

    let report = repo.verify(&[], 6);
    let gaps = findings(&report, "wal_gap");
    assert_eq!(gaps.len(), 1, "{report}");
    let gap = &gaps[0]["gap"];
    assert_eq!(strings(&gap["missing"]), vec![gone.clone()], "{gap}");
    assert_eq!(gap["count"], 1);
    assert_eq!(
        strings(&gaps[0]["backups"]),
        ms.iter().map(|m| m.label.clone()).collect::<Vec<_>>()
    );
    for m in &ms {
        let v = verdict(&report, &m.label);
        assert_eq!(
            v["restorable"], true,
            "still restorable, to an earlier end: {v}"
        );
        assert_eq!(v["restores_to"].as_str(), Some(window_end.as_str()), "{v}");
    }
    assert_eq!(counter(&report, "wal_missing"), 1);

    let out = repo.run(&["verify"]);
    assert_code(&out, 6, "verify with a missing WAL segment");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM:") && l.contains(&gone))
        .unwrap_or_else(|| panic!("no problem line names {gone}:\n{stdout}"));
    assert!(
        line.contains(&format!(
            "backup {} restores to any moment up to the end of segment {window_end}",
            newest.label
        )),
        "{line}"
    );
}

/// Not damage: `wal-push` stores ready segments in parallel, so while PostgreSQL archives, one of
/// the newest segments can be missing for a moment with later ones already stored. Here the
/// segment after backup 2's stop is taken away, and put back (as the archiver would store it)
/// once verify says it is looking again: no problem is reported.
#[test]
fn a_recent_segment_still_being_archived_is_no_gap() {
    use std::io::{BufRead, BufReader};
    let repo = FixtureRepo::new(NO_REREAD);
    let ms = manifests(&repo.path);
    let late = seg_after(&ms[1].stop_wal.to_string(), 1);
    let object = repo.object(&wal_key(&late));
    let aside = repo.path.join("aside");
    fs::rename(&object, &aside).expect("move the segment aside");

    let mut child = repo
        .cmd()
        .args(["--log-level", "info", "verify", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lifeboat verify");
    let stderr = child.stderr.take().expect("stderr");
    let mut log = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        log.push_str(&line);
        log.push('\n');
        if line.contains("looking again") {
            assert!(line.contains(&late), "{line}");
            fs::rename(&aside, &object).expect("put the segment in place");
        }
    }
    let out = child.wait_with_output().expect("wait for verify");
    assert!(object.exists(), "verify never said it looks again:\n{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(counter(&report, "wal_missing"), 0, "{report}");
}

/// Damage: the newer backup's stop segment is deleted. That backup cannot be restored at all;
/// the older one still restores, up to the end of the segment before the hole.
#[test]
fn missing_wal_inside_a_backup_makes_it_unrestorable() {
    let repo = FixtureRepo::new(NO_REREAD);
    let ms = manifests(&repo.path);
    let (older, newest) = (&ms[0], &ms[1]);
    let gone = newest.stop_wal.to_string();
    remove(&repo.object(&wal_key(&gone)));

    let report = repo.verify(&[], 6);
    let missing = findings(&report, "backup_wal_missing");
    assert_eq!(missing.len(), 1, "{report}");
    let gap = &missing[0]["gap"];
    assert_eq!(strings(&gap["missing"]), vec![gone.clone()]);
    assert_eq!(strings(&gap["unrestorable"]), vec![newest.label.clone()]);
    let v = verdict(&report, &newest.label);
    assert_eq!(v["restorable"], false, "{v}");
    assert_eq!(v["wal_complete"], false, "{v}");
    let before = {
        let s = segment(&gone);
        let n = s.segno(DEFAULT_WAL_SEGMENT_SIZE).expect("segno");
        WalSegmentName::from_segno(s.timeline, n - 1, DEFAULT_WAL_SEGMENT_SIZE).to_string()
    };
    let v = verdict(&report, &older.label);
    assert_eq!(v["restorable"], true, "{v}");
    assert_eq!(v["restores_to"].as_str(), Some(before.as_str()), "{v}");
    let out = repo.run(&["verify"]);
    assert_code(&out, 6, "verify with a backup's own WAL missing");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "backup {}: NOT RESTORABLE (WAL {} .. {} incomplete)",
            newest.label, newest.start_wal, newest.stop_wal
        )),
        "{}",
        text(&out)
    );
}

/// Damage: one byte flipped in a stored WAL segment (the last one): found by its hash, and the
/// segment counts as missing for the restore window.
#[test]
fn damaged_wal_segment_is_found() {
    let repo = FixtureRepo::new(NO_REREAD);
    let last = last_segment(&repo.path).to_string();
    flip_byte(&repo.object(&wal_key(&last)), 3);
    let report = repo.verify(&[], 6);
    let damaged = findings(&report, "damaged_wal");
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["object"].as_str(), Some(wal_key(&last).as_str()));
    let gaps = findings(&report, "wal_gap");
    assert_eq!(gaps.len(), 1, "{report}");
    assert_eq!(strings(&gaps[0]["gap"]["missing"]), vec![last.clone()]);
    assert!(
        gaps[0]["what"]
            .as_str()
            .is_some_and(|w| w.contains("missing or damaged")),
        "{report}"
    );
}

/// Damage: one byte flipped in the older backup's manifest. That backup is reported unreadable;
/// the newer one is still checked in full.
#[test]
fn corrupted_manifest_is_a_finding_and_the_other_backups_are_checked() {
    let repo = FixtureRepo::new(NO_REREAD);
    let ms = manifests(&repo.path);
    let (older, newest) = (&ms[0], &ms[1]);
    let key = lifeboat_repo::keys::manifest(&older.label);
    flip_byte(&repo.object(&key), 10);

    let report = repo.verify(&[], 6);
    let bad = findings(&report, "damaged_manifest");
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["object"].as_str(), Some(key.as_str()));
    assert_eq!(strings(&bad[0]["backups"]), vec![older.label.clone()]);
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(counter(&report, "backups_checked"), 2);
    assert_eq!(counter(&report, "manifests_damaged"), 1);
    let newest_chunks: std::collections::HashSet<ChunkId> = newest.chunks().collect();
    assert_eq!(
        counter(&report, "chunks_read"),
        newest_chunks.len() as u64,
        "every chunk of the readable backup is read: {report}"
    );
    assert_eq!(verdict(&report, &older.label)["manifest_ok"], false);
    assert_eq!(verdict(&report, &newest.label)["restorable"], true);

    let out = repo.run(&["verify"]);
    assert_code(&out, 6, "verify with a damaged manifest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("PROBLEM:")
            && l.contains(&key)
            && l.contains(&format!("backups affected: {}", older.label))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "backup {}: NOT RESTORABLE (its manifest is unreadable)",
            older.label
        )),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// A live cluster: a new backup is verified incrementally (encrypted repository)
// ---------------------------------------------------------------------------------------------

#[test]
fn second_run_reads_only_what_a_new_backup_added() {
    let setup = Setup::new(Backend::Local, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source
        .psql("create table t as select g, md5(g::text) as h from generate_series(1, 20000) g")
        .expect("table");
    setup.backup(&source);
    let first = verify_json(|a| setup.run(a), &[], 0);
    let referenced1 = counter(&first, "chunks_referenced");
    assert_eq!(counter(&first, "chunks_read"), referenced1, "{first}");
    let wal1 = counter(&first, "wal_files");

    // New data, a new backup, more WAL.
    source
        .psql(
            "create table u as select g, md5((g * 7)::text) as h from generate_series(1, 40000) g",
        )
        .expect("table u");
    let report = setup.backup(&source);
    let last = source.switch_wal().expect("switch");
    source.wait_archived(&last, WAIT).expect("archived");

    // Without the re-read rotation (it has its own tests), so that exactly the new is read.
    let second = verify_json(|a| setup.run(a), &["--reread-percent", "0"], 0);
    let referenced2 = counter(&second, "chunks_referenced");
    assert!(referenced2 > referenced1, "{second}");
    // Exactly the chunks the new backup added are read; every chunk verified before is skipped.
    assert_eq!(counter(&second, "chunks_skipped"), referenced1, "{second}");
    assert_eq!(
        counter(&second, "chunks_read"),
        referenced2 - referenced1,
        "{second}"
    );
    assert!(
        counter(&second, "chunks_read") < referenced2,
        "an incremental run reads less than everything: {second}"
    );
    assert_eq!(counter(&second, "wal_skipped"), wal1, "{second}");
    assert_eq!(
        counter(&second, "wal_read"),
        counter(&second, "wal_files") - wal1,
        "{second}"
    );
    let label = report["label"].as_str().expect("label");
    assert_eq!(verdict(&second, label)["restorable"], true, "{second}");

    let full = verify_json(|a| setup.run(a), &["--full"], 0);
    assert_eq!(counter(&full, "chunks_read"), referenced2, "{full}");
    assert_eq!(counter(&full, "chunks_skipped"), 0, "{full}");
    assert_eq!(
        counter(&full, "wal_read"),
        counter(&full, "wal_files"),
        "{full}"
    );
}

// ---------------------------------------------------------------------------------------------
// The fixture itself
// ---------------------------------------------------------------------------------------------

/// Builds a repository like `tests/fixtures/verify-repo/` from a real cluster and checks that it
/// verifies clean. With `LIFEBOAT_REGENERATE_FIXTURE=1` it also replaces the committed fixture
/// (see tests/fixtures/README.md):
/// `LIFEBOAT_REGENERATE_FIXTURE=1 cargo nextest run -p lifeboat --test e2e verify::regenerate_fixture`.
#[test]
fn regenerate_fixture() {
    let write_fixture = std::env::var_os("LIFEBOAT_REGENERATE_FIXTURE").is_some_and(|v| v == "1");
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    // Over 1 MiB and very compressible: stored as blocks, and small in the repository.
    source
        .psql("create table big as select g, repeat('lifeboat', 20) as filler from generate_series(1, 8000) g")
        .expect("table big");
    let big = source
        .psql("select pg_relation_filepath('big')")
        .expect("filepath");
    let first = setup.backup(&source);
    for i in 0..2 {
        source
            .psql(&format!(
                "insert into big values ({i}, 'after the first backup')"
            ))
            .expect("insert");
        source.switch_wal().expect("switch");
    }
    let second = setup.backup(&source);
    for i in 0..3 {
        source
            .psql(&format!(
                "insert into big values ({i}, 'after the second backup')"
            ))
            .expect("insert");
        source.switch_wal().expect("switch");
    }
    let last = source.switch_wal().expect("switch");
    source.wait_archived(&last, WAIT).expect("archived");
    source
        .stop(lifeboat_pg::cluster::StopMode::Fast)
        .expect("stop");

    let repo = setup.repo_dir.clone().expect("local repository");
    // WAL from before the first backup's start is of no use to any backup: drop it, as expire
    // would, to keep the fixture small.
    let start = first["start_wal"].as_str().expect("start_wal").to_string();
    for dir in fs::read_dir(repo.join("wal")).expect("wal") {
        let dir = dir.expect("entry").path();
        for f in fs::read_dir(&dir).expect("wal dir") {
            let f = f.expect("entry");
            let name = f.file_name().to_string_lossy().into_owned();
            if name.len() >= 24 && name[..24] < *start {
                fs::remove_file(f.path()).expect("remove old WAL");
            }
        }
    }
    let out = setup.run(&["verify"]);
    assert_success(&out, "lifeboat verify of the freshly built fixture");
    if !write_fixture {
        return;
    }
    let target = fixture_dir();
    if target.exists() {
        fs::remove_dir_all(&target).expect("remove the old fixture");
    }
    copy_tree(&repo, &target);
    // Lock directories left empty by released locks are not part of the fixture.
    remove_empty_dirs(&target);
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/README.md");
    let notes = fs::read_to_string(&readme).expect("fixtures README");
    let mut out = String::new();
    let mut skipping = false;
    for line in notes.lines() {
        if line.starts_with("<!-- generated:begin") {
            skipping = true;
            out.push_str(line);
            out.push('\n');
            out.push_str(&format!(
                "- backups: `{}` (WAL {} .. {}) and `{}` (WAL {} .. {})\n- table `big`: `{big}`\n- last segment: `{last}`\n",
                first["label"].as_str().unwrap_or("-"),
                first["start_wal"].as_str().unwrap_or("-"),
                first["stop_wal"].as_str().unwrap_or("-"),
                second["label"].as_str().unwrap_or("-"),
                second["start_wal"].as_str().unwrap_or("-"),
                second["stop_wal"].as_str().unwrap_or("-"),
            ));
            continue;
        }
        if line.starts_with("<!-- generated:end") {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    fs::write(&readme, out).expect("write README");
    eprintln!("fixture written to {}", target.display());
}

fn remove_empty_dirs(dir: &Path) -> bool {
    let mut empty = true;
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if remove_empty_dirs(&path) {
                fs::remove_dir(&path).expect("remove empty dir");
            } else {
                empty = false;
            }
        } else {
            empty = false;
        }
    }
    empty
}

/// A repository whose chunks lie partly in packs (the fixture with every other chunk moved into
/// indexed packs, as `packs.rs` does for restore) verifies clean, every chunk read; a byte
/// flipped inside one packed chunk is that chunk's damage alone, named with its pack and the
/// backups that reference it.
#[test]
fn chunks_in_packs_are_read_and_a_flipped_byte_in_a_pack_is_that_chunk_damaged() {
    let repo = FixtureRepo::new(NO_REREAD);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (moved, packs) = runtime.block_on(crate::packs::move_half_into_packs(&repo.path, 64 << 10));
    assert!(moved > 0 && packs > 1, "{moved} chunks into {packs} packs");
    lifeboat_testkit::cluster::chown_to_owner(repo.dir.path()).expect("chown");

    let first = repo.verify(&[], 0);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(
        counter(&first, "chunks_read"),
        counter(&first, "chunks_referenced"),
        "{first}"
    );
    assert_eq!(counter(&first, "packs"), packs as u64, "{first}");
    assert_eq!(counter(&first, "indexes"), 1, "{first}");
    let (read, requests) = (
        counter(&first, "chunks_read"),
        counter(&first, "chunk_requests"),
    );
    eprintln!("{read} chunks, {moved} of them in {packs} packs, read in {requests} requests");
    assert!(requests < read, "{first}");
    assert_eq!(
        first["warnings"].as_array().map(Vec::len),
        Some(0),
        "{first}"
    );

    // A chunk of the first pack: the index says where it lies.
    let entry = runtime.block_on(async {
        let store = lifeboat_storage::open(repo.path.to_str().expect("utf-8"), &Default::default())
            .expect("open the store");
        let r = lifeboat_repo::Repository::open(store, None)
            .await
            .expect("open the repository");
        let keys = r
            .store()
            .list(lifeboat_repo::keys::INDEX_PREFIX)
            .await
            .expect("list indexes");
        let entries = r.read_index(&keys[0].key).await.expect("read the index");
        entries[0]
    });
    let ms = manifests(&repo.path);
    let expected = labels_referencing(&ms, &entry.chunk);
    let pack = repo.object(&entry.location.pack.key());
    let end = fs::metadata(&pack).expect("pack").len();
    let middle = entry.location.offset + u64::from(entry.location.length) / 2;
    flip_byte(&pack, (end - middle) as usize);

    let report = repo.verify(&["--full"], 6);
    let damaged = findings(&report, "damaged_chunk");
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(
        damaged[0]["object"].as_str(),
        Some(entry.location.pack.key().as_str())
    );
    let what = damaged[0]["what"].as_str().expect("what");
    assert!(what.contains(&entry.chunk.to_string()), "{what}");
    assert_eq!(strings(&damaged[0]["backups"]), expected);
    assert_eq!(
        counter(&report, "chunks_read"),
        counter(&report, "chunks_referenced")
    );
}
