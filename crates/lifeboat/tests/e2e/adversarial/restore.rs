//! Adversarial tests: restore.
//!
//! Issue 13: `--delta` into a directory that is not a data directory of the repository's cluster
//! (defect 1), a recovery target found invalid only after the data was written (defect 3), a
//! missing chunk found only part-way (defect 9).

use std::fs;
use std::path::Path;

use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner};
use serde_json::Value;

use super::manifest::{Backed, snapshot};
use crate::support::*;

fn nothing_in(dir: &Path) -> bool {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) == 0
}

#[test]
fn delta_refuses_a_directory_that_is_not_a_data_directory_of_this_cluster() {
    let b = Backed::new();

    // A plain directory holding a file.
    let plain = b.setup.scratch("plain");
    fs::write(plain.join("thesis.txt"), "precious\n").expect("file");
    chown_to_owner(&plain).expect("chown");
    // Another cluster's data directory, and its parent (which holds it).
    let other = TestCluster::stopped_new("").expect("other cluster");
    let parent = other.dir().to_path_buf();

    for (what, dir) in [
        ("a plain directory with a file", plain.as_path()),
        ("a parent holding a data directory", parent.as_path()),
        ("another cluster's data directory", other.datadir.as_path()),
    ] {
        let before = snapshot(dir);
        assert!(!before.is_empty());
        for extra in [&[][..], &["--dry-run"][..]] {
            let mut args = vec!["--backup", b.label.as_str(), "--delta"];
            args.extend_from_slice(extra);
            let out = b.restore(dir, &args);
            assert_code(&out, 4, &format!("restore {args:?} into {what}"));
            let msg = stderr(&out);
            assert!(
                msg.contains(dir.to_str().expect("UTF-8")) && msg.contains("HINT"),
                "{what}: the message names the directory and what to do: {msg}"
            );
            assert_eq!(snapshot(dir), before, "{what}: every file still there");
        }
    }

    // A data directory of this cluster (a restored copy): the dry run lists what would go.
    let copy = TestDir::new().expect("test dir");
    let data = copy.path().join("data");
    assert_success(
        &b.restore(&data, &["--backup", &b.label]),
        "restore into a new directory",
    );
    fs::write(data.join("stray-file"), "not in the backup").expect("stray");
    fs::write(data.join("PG_VERSION"), "99\n").expect("alter PG_VERSION");
    let before = snapshot(&data);
    let out = b.restore(
        &data,
        &["--backup", &b.label, "--delta", "--dry-run", "--json"],
    );
    let report = json_of(&out, "restore --delta --dry-run --json");
    assert_eq!(snapshot(&data), before, "a dry run writes nothing");
    let plan = &report["plan"];
    let paths = |key: &str| -> Vec<String> {
        plan[key]
            .as_array()
            .unwrap_or_else(|| panic!("plan without {key}: {report}"))
            .iter()
            .map(|v| v.as_str().expect("path").to_string())
            .collect()
    };
    let removed = paths("remove");
    let rewritten = paths("rewrite");
    assert!(
        removed.iter().any(|p| p.ends_with("/stray-file")),
        "the stray file is listed for removal: {report}"
    );
    assert!(
        rewritten.iter().any(|p| p.ends_with("/PG_VERSION")),
        "PG_VERSION is listed to be rewritten: {report}"
    );
    assert_eq!(plan["files_to_remove"], Value::from(removed.len()));
    // Without --json or --verbose: the counts.
    let out = b.restore(&data, &["--backup", &b.label, "--delta", "--dry-run"]);
    assert_success(&out, "restore --delta --dry-run");
    let said = text(&out);
    assert!(
        said.contains(&format!("{} to remove", removed.len())) && !said.contains("stray-file"),
        "the dry run counts what would be removed: {said}"
    );
    let out = b.restore(
        &data,
        &["--backup", &b.label, "--delta", "--dry-run", "--verbose"],
    );
    assert!(
        text(&out).contains("stray-file"),
        "--verbose lists the paths: {}",
        text(&out)
    );
    assert_eq!(snapshot(&data), before, "a dry run writes nothing");
}

#[test]
fn invalid_recovery_target_is_refused_before_anything_is_written() {
    let b = Backed::new();
    for args in [
        &["--target-xid", "abc"][..],
        &["--target-name", ""][..],
        &["--target-time", "now"][..],
    ] {
        let t = TestDir::new().expect("test dir");
        let data = t.path().join("data");
        let out = b.restore(&data, args);
        assert_code(&out, 4, &format!("restore {args:?}"));
        assert!(
            !data.exists(),
            "restore {args:?} created {}",
            data.display()
        );
        // Into an existing empty directory: it stays empty.
        fs::create_dir(&data).expect("mkdir");
        chown_to_owner(&data).expect("chown");
        let out = b.restore(&data, args);
        assert_code(
            &out,
            4,
            &format!("restore {args:?} into an empty directory"),
        );
        assert!(nothing_in(&data), "restore {args:?} wrote into the target");
    }
}

#[test]
fn missing_chunk_is_corruption_named_before_anything_is_written() {
    let b = Backed::new();
    let manifest = b.manifest();
    let chunk = manifest["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["type"] == "file")
        .find_map(|e| {
            e["blocks"]
                .get(0)
                .or_else(|| e["packed"].get("chunk"))
                .and_then(|c| c.as_str())
        })
        .expect("a file stored in a chunk")
        .to_string();
    crate::support::chunks::remove_chunk(&b.setup, &chunk);

    let t = TestDir::new().expect("test dir");
    let data = t.path().join("data");
    let out = b.restore(&data, &["--backup", &b.label]);
    assert_code(&out, 6, "restore with a chunk missing");
    let msg = stderr(&out);
    assert!(
        msg.contains(&chunk) && msg.contains(&b.label) && msg.contains("HINT"),
        "the message names the chunk and the backup that needs it: {msg}"
    );
    assert!(
        nothing_in(&data),
        "nothing is written when a chunk is missing"
    );
    let out = b.restore(&data, &["--backup", &b.label, "--dry-run"]);
    assert_code(&out, 6, "restore --dry-run with a chunk missing");
}

/// A restore killed with -9 at any moment, even before `PG_VERSION` exists, leaves a directory
/// that a plain restore refuses (pointing at `--delta`) and `restore --delta` finishes; the result
/// starts and holds every row.
#[test]
fn a_killed_restore_is_finished_by_delta() {
    use std::process::Stdio;
    use std::thread;
    use std::time::{Duration, Instant};

    use lifeboat_pg::cluster::LocalCluster;
    use lifeboat_testkit::free_port;

    let b = Backed::new();
    let t = TestDir::new().expect("test dir");
    let data = t.path().join("data");
    // Killed as soon as the restore created the directory, then later and later.
    let mut killed = 0;
    for delay_ms in [0u64, 30, 150] {
        let mut child = b
            .setup
            .cmd()
            .args(["restore", "--backup", &b.label, "--target-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start restore");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !data.exists() && matches!(child.try_wait(), Ok(None)) {
            assert!(
                Instant::now() < deadline,
                "the restore never started writing"
            );
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().expect("wait for restore");
        // The kill may land after the restore's last step (the marker removed) or before its
        // first write (the directory still empty): neither is an interrupted restore. Start
        // again from no directory.
        let holds_anything = fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some());
        let marker = data.join("lifeboat_restore_incomplete");
        if status.success() || !holds_anything || !marker.exists() {
            let _ = fs::remove_dir_all(&data);
            continue;
        }
        killed += 1;
        let out = b.restore(&data, &["--backup", &b.label]);
        assert_code(&out, 4, "a plain restore into an interrupted one");
        assert!(
            stderr(&out).contains("did not finish") && stderr(&out).contains("--delta"),
            "the refusal says the restore did not finish and how to finish it: {}",
            stderr(&out)
        );
        let out = b.restore(&data, &["--backup", &b.label, "--delta"]);
        assert_success(
            &out,
            &format!("restore --delta after a kill at +{delay_ms} ms"),
        );
        assert!(
            !data.join("lifeboat_restore_incomplete").exists(),
            "a finished restore leaves no marker"
        );
        if delay_ms != 150 {
            fs::remove_dir_all(&data).expect("remove for the next round");
        }
    }
    assert!(killed > 0, "no restore was killed before it finished");
    if !data.exists() {
        assert_success(
            &b.restore(&data, &["--backup", &b.label]),
            "restore into an empty directory",
        );
    }
    chown_to_owner(&data).expect("chown");
    let owner = b._source.owner.clone();
    let cluster = LocalCluster::existing(&data, free_port(), t.path(), owner)
        .expect("restored cluster")
        .with_log_file(t.path().join("postgres.log"));
    let restored = TestCluster::adopt(t, cluster);
    restored
        .start(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the finished restore did not start: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match restored.psql("select pg_is_in_recovery(), count(*) from t") {
            Ok(row) if row == "f|1000" => break,
            other => assert!(
                Instant::now() < deadline,
                "recovery did not end with the 1000 rows ({other:?}):\n{}",
                restored.log_tail(40)
            ),
        }
        thread::sleep(Duration::from_millis(200));
    }
}
