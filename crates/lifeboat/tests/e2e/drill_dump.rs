//! Dump drills end to end on real PostgreSQL: `lifeboat drill --dump` restores the newest logical
//! dump's databases into a fresh scratch cluster, runs pg_amcheck and the `[drill] checks`,
//! records the result (kind `dump`), and leaves nothing behind. A failing check fails the drill
//! (exit 9, the check named); a damaged chunk fails it at the restore step.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::support::chunks::corrupt_largest_chunk;
use crate::support::*;
use lifeboat_testkit::cluster::TestCluster;
use serde_json::Value;

const PASSING: &str = "select count(*) = 100000 from pgbench_accounts";
const FAILING: &str = "select count(*) > 0 from pgbench_accounts where abalance = 12345";

fn drill(setup: &Setup, scratch: &Path, args: &[&str]) -> (std::process::Output, Value) {
    let mut cmd = setup.cmd();
    cmd.arg("drill")
        .arg("--dump")
        .arg("--scratch-dir")
        .arg(scratch)
        .args(["--trigger", "schedule", "--json"])
        .args(args);
    let out = cmd.output().expect("run lifeboat drill --dump");
    let record: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill --dump --json printed no record ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, record)
}

fn assert_nothing_left(scratch: &Path) {
    let left: Vec<_> = fs::read_dir(scratch)
        .expect("read the scratch directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "scratch directories left behind: {left:?}");
}

fn recorded(setup: &Setup) -> usize {
    let dir = setup
        .repo_dir
        .as_ref()
        .expect("local repository")
        .join("records/drills");
    fs::read_dir(dir).map_or(0, |l| l.count())
}

#[test]
fn the_newest_dump_restores_and_checks_pass_or_fail() {
    let began = Instant::now();
    let setup = Setup::new(Backend::Local, true);
    let mut config = fs::OpenOptions::new()
        .append(true)
        .open(&setup.config)
        .expect("open config");
    writeln!(
        config,
        "\n[drill]\ndatabase = \"postgres\"\nchecks = [\"{PASSING}\"]"
    )
    .expect("append [drill]");
    drop(config);
    let source = TestCluster::start_new("").expect("PostgreSQL 15 starts");
    source.pgbench_init(1).expect("pgbench -i -s 1");
    source
        .psql("create database app")
        .expect("create database app");
    source
        .psql_db(
            "app",
            "create table orders(id int primary key, note text); \
             insert into orders select g, md5(g::text) from generate_series(1, 500) g",
        )
        .expect("a table in app");
    let out = setup.run(&["dump", "--from", &source.conninfo(), "--json"]);
    let dumped = json_of(&out, "lifeboat dump");
    let label = dumped["label"].as_str().expect("label").to_string();
    let scratch = setup.scratch("drills");

    // The newest dump: both databases restore, pg_amcheck and the check pass.
    let t = Instant::now();
    let (out, record) = drill(&setup, &scratch, &[]);
    let passed_secs = t.elapsed().as_secs_f64();
    assert_success(&out, "drill --dump");
    assert_eq!(record["kind"], "dump", "{record}");
    assert_eq!(record["backup"], label.as_str(), "{record}");
    assert_eq!(record["trigger"], "schedule");
    assert_eq!(record["target"], "dump");
    assert_eq!(record["passed"], true, "{record}");
    let dbs: Vec<&str> = record["databases"]
        .as_array()
        .expect("databases")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dbs.contains(&"postgres") && dbs.contains(&"app"),
        "{record}"
    );
    let restore = record["restore_seconds"].as_f64().expect("restore_seconds");
    assert!(record["bytes_restored"].as_u64().unwrap_or(0) > 1_000_000);
    assert!(record["data_loss_seconds"].as_f64().is_some(), "{record}");
    let checks = record["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2, "pg_amcheck and the query: {record}");
    assert_eq!(checks[0]["name"], "pg_amcheck");
    assert!(checks.iter().all(|c| c["passed"] == true), "{record}");
    assert_eq!(recorded(&setup), 1, "the record is stored");
    assert_nothing_left(&scratch);
    eprintln!(
        "dump drill of {label}: {} bytes restored in {restore} s, whole drill {passed_secs:.1} s",
        record["bytes_restored"]
    );

    // One database only, a failing check: exit 9, the check named.
    let text = fs::read_to_string(&setup.config).expect("read config");
    fs::write(
        &setup.config,
        text.replace(PASSING, FAILING).replace(
            "database = \"postgres\"",
            "database = \"postgres\"\namcheck = false",
        ),
    )
    .expect("write config");
    let (out, record) = drill(&setup, &scratch, &["--db", "postgres", "--label", &label]);
    assert_code(&out, 9, "drill --dump with a failing check");
    assert_eq!(record["passed"], false);
    assert_eq!(record["failed_step"], "check", "{record}");
    assert_eq!(record["databases"], serde_json::json!(["postgres"]));
    assert!(
        record["failure"].as_str().unwrap_or("").contains(FAILING),
        "{record}"
    );
    assert!(stderr(&out).contains("drill of dump"), "{}", stderr(&out));
    assert_nothing_left(&scratch);

    // A damaged chunk: the restore step fails, naming the verification.
    let victim = corrupt_largest_chunk(&setup, 0x40);
    let (out, record) = drill(&setup, &scratch, &[]);
    assert_code(&out, 9, "drill --dump of a damaged dump");
    assert_eq!(record["failed_step"], "restore", "{record}");
    let failure = record["failure"].as_str().unwrap_or("");
    assert!(
        failure.contains("failed verification") && failure.contains(&victim),
        "{record}"
    );
    assert_eq!(recorded(&setup), 3, "a record for each finished drill");
    assert_nothing_left(&scratch);

    // A dump that is not there fails at `choose`; --label without --dump is a usage error.
    let (out, record) = drill(&setup, &scratch, &["--label", "20200101T000000Z"]);
    assert_code(&out, 9, "drill --dump of a missing dump");
    assert_eq!(record["failed_step"], "choose", "{record}");
    assert_nothing_left(&scratch);
    let out = setup.run(&["drill", "--label", &label]);
    assert_code(&out, 2, "--label without --dump");
    eprintln!("dump drill test: {:.1} s", began.elapsed().as_secs_f64());
}
