//! Storage request concurrency end to end (issue 18): backups and restores through a real
//! S3-compatible server with one request in flight and with many, set by `--concurrency` or by
//! `[storage] concurrency`, must give back the same data; out-of-range values are configuration
//! errors (exit 3) that name the flag or key.

use std::fs;
use std::io::Write as _;
use std::time::Duration;

use crate::support::*;
use lifeboat_testkit::cluster::{TestCluster, TestDir};

/// How long a restored copy may take to start and then to finish recovery.
const START: Duration = Duration::from_secs(180);

/// What the restored copy must hold exactly as the source did.
const FINGERPRINT: &str = "select (select count(*) || ':' || sum(abalance) from pgbench_accounts) \
     || '/' || (select md5(string_agg(body, ',' order by id)) from notes)";

/// Back up and restore through moto with `flags` (e.g. `--concurrency 1`) on every command, or
/// `storage.concurrency = N` in the config file when `config` is set; the restored copy must hold
/// the source's rows, and `verify` must find the backup intact.
fn round_trip(flags: &[&str], config: Option<usize>) {
    let setup = Setup::new(Backend::S3, true);
    if let Some(n) = config {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&setup.config)
            .expect("open config");
        writeln!(file, "[storage]\nconcurrency = {n}").expect("append to config");
    }
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source.pgbench_init(2).expect("pgbench -i");
    source
        .psql(
            "create table notes(id int primary key, body text); \
             insert into notes select g, repeat(md5(g::text), 1 + g % 500) \
             from generate_series(1, 2000) g",
        )
        .expect("notes");
    let expected = source.psql(FINGERPRINT).expect("fingerprint");

    let out = setup
        .backup_cmd(&source)
        .args(["--parallel", "1"])
        .args(flags)
        .output()
        .expect("run lifeboat backup");
    let report = json_of(&out, "lifeboat backup");
    assert!(report["label"].is_string(), "{report}");

    let target = TestDir::new().expect("test dir");
    let data = target.path().join("data");
    let mut restore = setup.cmd();
    restore
        .arg("restore")
        .arg("--target-dir")
        .arg(&data)
        // The copy must not archive its new timeline into the source's repository.
        .args(["--parallel", "1", "--archive-mode", "off", "--json"])
        .args(flags);
    let restored = json_of(
        &restore.output().expect("run lifeboat restore"),
        "lifeboat restore",
    );
    assert!(
        restored["chunks_fetched"].as_u64().is_some_and(|n| n > 10),
        "{restored}"
    );

    let mut verify = setup.cmd();
    verify.args(["verify", "--json"]).args(flags);
    let verified = json_of(
        &verify.output().expect("run lifeboat verify"),
        "lifeboat verify",
    );
    assert_eq!(verified["ok"].as_bool(), Some(true), "{verified}");

    let copy = TestCluster::start_restored(target, START)
        .unwrap_or_else(|e| panic!("the restored copy did not recover: {e:#}"));
    assert_eq!(copy.psql(FINGERPRINT).expect("fingerprint"), expected);
}

#[test]
fn s3_round_trip_one_request_at_a_time() {
    round_trip(&["--concurrency", "1"], None);
}

#[test]
fn s3_round_trip_many_requests_in_flight() {
    round_trip(&["--concurrency", "64"], None);
}

#[test]
fn s3_round_trip_concurrency_from_the_config_file() {
    round_trip(&[], Some(48));
}

#[test]
fn out_of_range_concurrency_is_a_configuration_error() {
    let dir = TestDir::new().expect("test dir");
    let repo = dir.path().join("repo");
    let repo = repo.to_str().expect("utf-8 path");
    let out = std::process::Command::new(BIN)
        .args(["--repo", repo, "list", "--concurrency", "0"])
        .output()
        .expect("run lifeboat");
    assert_code(&out, 3, "lifeboat list --concurrency 0");
    assert!(stderr(&out).contains("--concurrency"), "{}", stderr(&out));

    let config = dir.path().join("lifeboat.toml");
    fs::write(&config, "[storage]\nconcurrency = 5000\n").expect("config");
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["--repo", repo, "list"])
        .output()
        .expect("run lifeboat");
    assert_code(&out, 3, "lifeboat list with storage.concurrency = 5000");
    let err = stderr(&out);
    assert!(
        err.contains("storage.concurrency") && err.contains("1 to 1024"),
        "{err}"
    );
}
