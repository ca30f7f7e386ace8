//! The version matrix: for each supported PostgreSQL major (13 to 18), a cluster of that major
//! archives into a repository (`wal-push`), is backed up, restored to a point in time (the restored
//! server started and its rows counted) and drilled. `scripts/setup.sh` installs the server
//! programs of 13, 14, 16, 17 and 18 into `/usr/lib/postgresql/<major>/bin` beside Debian's 15, as
//! on a Debian host in the middle of an upgrade; the client programs (psql, pgbench, pg_amcheck)
//! are 15's, which talk to all of them. A major whose programs are missing fails its test, never
//! skips it.
//!
//! The drill and the restored copy find their server programs by the backup's major alone, so
//! these tests also prove that a drill of a 13 backup does not start the 15 server on it. Each
//! test is small (300 rows, one backup, short waits) so that the six run beside the rest of the
//! suite within CI's budget.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner, major_bindir, run_as_owner};
use lifeboat_testkit::free_port;
use serde_json::Value;

const START: Duration = Duration::from_secs(60);

#[test]
fn postgresql_13() {
    matrix(13, DrillBindir::Found);
}

#[test]
fn postgresql_14() {
    matrix(14, DrillBindir::Configured);
}

#[test]
fn postgresql_15() {
    matrix(15, DrillBindir::Found);
}

#[test]
fn postgresql_16() {
    matrix(16, DrillBindir::Found);
}

#[test]
fn postgresql_17() {
    matrix(17, DrillBindir::Found);
}

#[test]
fn postgresql_18() {
    matrix(18, DrillBindir::Found);
}

/// How the drill finds the server programs of the backup's major.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DrillBindir {
    /// Looked up by the backup's major, as on a host with several majors installed.
    Found,
    /// Named by `[drill] bindir` in the config file.
    Configured,
}

fn matrix(major: u32, how: DrillBindir) {
    let began = Instant::now();
    let bindir = major_bindir(major).unwrap_or_else(|e| panic!("{e:#}"));
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new_in(&bindir, &setup.archive_conf())
        .unwrap_or_else(|e| panic!("a PostgreSQL {major} cluster did not start: {e:#}"));
    assert_eq!(
        major_of(&source),
        major,
        "the source runs PostgreSQL {major}"
    );
    source
        .psql("create table t(id int primary key, v text)")
        .expect("create t");
    insert(&source, 1, 100);
    let backup = setup.backup(&source);
    let label = backup["label"].as_str().expect("label").to_string();
    insert(&source, 101, 200);
    let target_time = source
        .psql(
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        )
        .expect("the time after row 200");
    insert(&source, 201, 300);
    let last = source.switch_wal().expect("switch WAL");
    source.wait_archived(&last, WAIT).expect("archived");
    let archived = Instant::now();

    // The drill of that backup, to the end of the archive: every row, on a server of `major`.
    let scratch = setup.scratch("drills");
    let mut drill_conf = format!(
        "\n[drill]\ntimeout = \"3m\"\nchecks = [\"select count(*) = 300 from t\", \
         \"select current_setting('server_version_num')::int / 10000 = {major}\"]\n"
    );
    if how == DrillBindir::Configured {
        drill_conf.push_str(&format!("bindir = \"{}\"\n", bindir.display()));
    }
    let config = config_with(&setup, "drill.toml", &drill_conf);
    let out = drill(&config, &scratch, &label);
    assert_success(&out, &format!("drill of a PostgreSQL {major} backup"));
    let record: Value = serde_json::from_slice(&out.stdout).expect("drill record");
    assert_eq!(record["passed"], Value::Bool(true), "{record}");
    assert_eq!(record["backup"].as_str(), Some(label.as_str()), "{record}");
    let checks = record["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 3, "pg_amcheck and two queries: {record}");
    assert!(
        checks.iter().all(|c| c["passed"] == Value::Bool(true)),
        "{record}"
    );
    let left: Vec<PathBuf> = fs::read_dir(&scratch)
        .expect("read scratch")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");
    let drilled = Instant::now();

    // Point in time: the rows committed before `target_time`, on a server of `major` found by
    // the restored PG_VERSION.
    let dir = TestDir::new().expect("test dir");
    let data = dir.path().join("data");
    let out = setup
        .cmd()
        .arg("restore")
        .arg("--target-dir")
        .arg(&data)
        .args(["--target-time", &target_time, "--json"])
        .output()
        .expect("run lifeboat restore");
    let report = json_of(
        &out,
        &format!("restore of PostgreSQL {major} to {target_time}"),
    );
    assert_eq!(report["backup"].as_str(), Some(label.as_str()), "{report}");
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("restored postgresql.conf");
    conf.write_all(b"\narchive_mode = off\n")
        .expect("append to postgresql.conf");
    let log = dir.path().join("postgres.log");
    let copy = LocalCluster::existing(&data, free_port(), dir.path(), source.owner.clone())
        .expect("the restored cluster")
        .with_log_file(log);
    assert_eq!(
        copy.bindir, bindir,
        "the restored copy runs the programs of its own major"
    );
    let copy = TestCluster::adopt(dir, copy);
    copy.start(START)
        .unwrap_or_else(|e| panic!("the restored PostgreSQL {major} copy did not start: {e}"));
    wait_promoted(&copy);
    assert_eq!(major_of(&copy), major);
    assert_eq!(
        copy.psql("select count(*), max(id) from t")
            .expect("count rows"),
        "200|200",
        "PITR of PostgreSQL {major} to {target_time}"
    );

    if major == 13 {
        wrong_drill_bindirs(&setup, &scratch, &label);
    }
    eprintln!(
        "PostgreSQL {major}: archive and backup {:.1} s, drill {:.1} s, PITR {:.1} s, total {:.1} s",
        (archived - began).as_secs_f64(),
        (drilled - archived).as_secs_f64(),
        drilled.elapsed().as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}

/// A `[drill] bindir` of another major fails the drill before anything is restored (exit 9,
/// recorded), naming the major needed and what the directory holds; one without PostgreSQL in it
/// is a configuration error (exit 3).
fn wrong_drill_bindirs(setup: &Setup, scratch: &Path, label: &str) {
    let other = major_bindir(15).unwrap_or_else(|e| panic!("{e:#}"));
    let config = config_with(
        setup,
        "other.toml",
        &format!("\n[drill]\nbindir = \"{}\"\n", other.display()),
    );
    let out = drill(&config, scratch, label);
    assert_code(&out, 9, "drill with the bindir of another major");
    let err = stderr(&out);
    assert!(
        err.contains("failed at step start")
            && err.contains("PostgreSQL 13")
            && err.contains(&format!("{} holds PostgreSQL 15", other.display())),
        "{err}"
    );
    assert!(
        err.contains("HINT: ") && err.contains("[drill] bindir"),
        "{err}"
    );
    let record: Value = serde_json::from_slice(&out.stdout).expect("drill record");
    assert_eq!(record["failed_step"].as_str(), Some("start"), "{record}");
    assert!(
        record["restore_seconds"].is_null(),
        "nothing restored: {record}"
    );

    let empty = setup.scratch("no-postgres-here");
    let config = config_with(
        setup,
        "empty.toml",
        &format!("\n[drill]\nbindir = \"{}\"\n", empty.display()),
    );
    let out = drill(&config, scratch, label);
    assert_code(&out, 3, "drill with a bindir without PostgreSQL");
    let err = stderr(&out);
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("HINT: "),
        "{err}"
    );
}

/// A copy of the setup's config file with `extra` appended, readable by the cluster owner.
fn config_with(setup: &Setup, name: &str, extra: &str) -> PathBuf {
    let path = setup.dir.path().join(name);
    let mut text = fs::read_to_string(&setup.config).expect("read config");
    text.push_str(extra);
    fs::write(&path, text).expect("write config");
    chown_to_owner(&path).expect("chown config");
    path
}

/// `lifeboat --config CONFIG drill --backup LABEL --json` as the cluster owner.
fn drill(config: &Path, scratch: &Path, label: &str) -> Output {
    let mut cmd = Command::new(BIN);
    run_as_owner(&mut cmd);
    cmd.arg("--config")
        .arg(config)
        .arg("drill")
        .arg("--scratch-dir")
        .arg(scratch)
        .args(["--backup", label, "--json"])
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .env_remove("LIFEBOAT_REPO");
    cmd.output().expect("run lifeboat drill")
}

fn insert(cluster: &TestCluster, from: u32, to: u32) {
    cluster
        .psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({from}, {to}) g"
        ))
        .expect("insert rows");
}

fn major_of(cluster: &LocalCluster) -> u32 {
    let num: u32 = cluster
        .psql("show server_version_num")
        .expect("server_version_num")
        .parse()
        .expect("a number");
    num / 10_000
}

/// Wait (60 s at most) until recovery has ended and the copy promoted.
fn wait_promoted(cluster: &LocalCluster) {
    let deadline = Instant::now() + START;
    loop {
        match cluster.psql("select pg_is_in_recovery()") {
            Ok(state) if state == "f" => return,
            state => assert!(
                Instant::now() < deadline,
                "the restored copy did not promote within {START:?} ({state:?}); last lines of its log:\n{}",
                cluster.log_tail(30)
            ),
        }
        thread::sleep(Duration::from_millis(100));
    }
}
