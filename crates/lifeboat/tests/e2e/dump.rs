//! Logical dumps (docs/FORMAT.md, "Dumps"), against real PostgreSQL: a PostgreSQL 15 cluster
//! with pgbench tables is dumped twice around a small change (the second dump stores a small
//! fraction of the first, thanks to content-defined chunking), one table of the first dump is
//! restored into a PostgreSQL 17 server (rows equal to what they were), `expire` of backups
//! keeps the dumps' chunks, `dump expire` removes the older dump and what only it used, and
//! `verify` is clean. A damaged chunk stops `dump restore` before pg_restore reads it, and
//! `verify` reports the dump.

use std::time::Instant;

use lifeboat_testkit::cluster::{TestCluster, major_bindir};
use serde_json::Value;

use crate::support::chunks::corrupt_largest_chunk;
use crate::support::fixture::findings;
use crate::support::*;

fn dump(setup: &Setup, cluster: &TestCluster) -> Value {
    let out = setup.run(&[
        "dump",
        "--db",
        "postgres",
        "--from",
        &cluster.conninfo(),
        "--json",
    ]);
    json_of(&out, "lifeboat dump")
}

fn rows(cluster: &TestCluster, table: &str) -> String {
    cluster
        .psql(&format!("select * from {table} order by 1"))
        .unwrap_or_else(|e| panic!("read {table}: {e:#}"))
}

fn stored(report: &Value) -> u64 {
    report["stored_size"].as_u64().expect("stored_size")
}

#[test]
fn small_change_stores_little_and_a_table_restores_into_17() {
    let began = Instant::now();
    let setup = Setup::new(Backend::Local, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("PostgreSQL 15 starts");
    source.pgbench_init(5).expect("pgbench -i -s 5");
    setup.backup(&source);

    let t = Instant::now();
    let first = dump(&setup, &source);
    let first_secs = t.elapsed().as_secs_f64();
    let branches_then = rows(&source, "pgbench_branches");
    source
        .psql(
            "update pgbench_branches set bbalance = bbalance + 7 where bid = 2; \
             update pgbench_accounts set abalance = 42 where aid in (10, 200000, 450000); \
             insert into pgbench_history(tid, bid, aid, delta, mtime) \
               select 1, 1, g, g, now() from generate_series(1, 5) g",
        )
        .expect("a small change");
    let t = Instant::now();
    let second = dump(&setup, &source);
    let second_secs = t.elapsed().as_secs_f64();
    let (a, b) = (stored(&first), stored(&second));
    eprintln!(
        "first dump: {} bytes dumped, {a} stored, {first_secs:.1} s; second dump: {} bytes dumped, {b} stored ({:.1} %), {second_secs:.1} s",
        first["size"],
        second["size"],
        100.0 * b as f64 / a as f64
    );
    assert!(a > 100_000, "the first dump stores the data: {first}");
    assert!(
        b * 10 <= a,
        "the second dump must store at most 10 % of the first: {b} vs {a}"
    );

    // Backups expire; the dumps' chunks stay.
    setup.backup(&source);
    let out = setup.run(&["expire", "--keep-last", "1", "--json"]);
    let expired = json_of(&out, "lifeboat expire");
    assert_eq!(
        expired["expired"].as_array().map(Vec::len),
        Some(1),
        "{expired}"
    );
    assert_eq!(expired["dumps"]["kept"].as_array().map(Vec::len), Some(2));

    // One table of the first dump into PostgreSQL 17: the rows it had then.
    let bindir = major_bindir(17).unwrap_or_else(|e| panic!("{e:#}"));
    let target = TestCluster::start_new_in(&bindir, "").expect("PostgreSQL 17 starts");
    let label = first["label"].as_str().expect("label");
    let out = setup.run(&[
        "dump",
        "restore",
        "--db",
        "postgres",
        "--label",
        label,
        "--table",
        "pgbench_branches",
        "--to",
        &target.conninfo(),
        "--json",
    ]);
    let restored = json_of(&out, "lifeboat dump restore");
    assert_eq!(restored["target_major"], 17, "{restored}");
    assert_eq!(rows(&target, "pgbench_branches"), branches_then);
    assert_ne!(branches_then, rows(&source, "pgbench_branches"));

    // Dump retention: the older dump goes, and what only it used.
    let out = setup.run(&["dump", "expire", "--keep-last", "1", "--json"]);
    let report = json_of(&out, "lifeboat dump expire");
    assert_eq!(report["dumps"]["expired"][0]["label"], label, "{report}");
    assert_eq!(report["expired"].as_array().map(Vec::len), Some(0));
    assert!(
        report["bytes_freed"].as_u64().unwrap_or(0) > 0,
        "what only the first dump used is freed: {report}"
    );
    let out = setup.run(&["dump", "list", "--json"]);
    let list = json_of(&out, "lifeboat dump list");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["label"], second["label"]);
    let out = setup.run(&["verify", "--full", "--json"]);
    let verified = json_of(&out, "lifeboat verify");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["counters"]["dumps_checked"], 1);
    let out = setup.run(&["verify", "--full"]);
    assert!(text(&out).contains("dumps: 1 checked"), "{}", text(&out));
    eprintln!("whole test: {:.1} s", began.elapsed().as_secs_f64());
}

#[test]
fn a_failed_pg_dump_or_a_damaged_chunk_is_reported() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new("").expect("PostgreSQL 15 starts");
    source.pgbench_init(1).expect("pgbench -i -s 1");

    // pg_dump fails (a role that may not read the tables): its stderr, exit 8, no dump.
    source
        .psql("create role weak login")
        .expect("create a role without privileges");
    let weak = source.conninfo().replace("user=postgres", "user=weak");
    let out = setup.run(&["dump", "--db", "postgres", "--from", &weak]);
    assert_code(&out, 8, "dump as a role that cannot read the tables");
    let err = stderr(&out);
    assert!(err.contains("permission denied"), "pg_dump's stderr: {err}");
    let out = setup.run(&["dump", "list", "--json"]);
    assert_eq!(json_of(&out, "dump list"), serde_json::json!([]));
    let out = setup.run(&["dump", "--db", "nosuchdb", "--from", &source.conninfo()]);
    assert_code(&out, 4, "dump of a database the server lacks");

    dump(&setup, &source);
    let victim = corrupt_largest_chunk(&setup, 0x40);

    source
        .psql("create database restored")
        .expect("create the target database");
    let target = source
        .conninfo()
        .replace("dbname=postgres", "dbname=restored");
    let out = setup.run(&["dump", "restore", "--db", "postgres", "--to", &target]);
    assert_code(&out, 6, "dump restore of a damaged dump");
    let err = stderr(&out);
    assert!(
        err.contains("failed verification") && err.contains("pg_restore was stopped"),
        "{err}"
    );
    assert!(err.contains(&victim), "names the chunk {victim}: {err}");

    let out = setup.run(&["verify", "--json"]);
    assert_code(&out, 6, "verify of a damaged dump");
    let report: Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    let found = findings(&report, "damaged_dump");
    assert_eq!(found.len(), 1, "{report}");
    assert!(
        found[0]["what"]
            .as_str()
            .unwrap_or("")
            .contains("\"postgres\""),
        "{report}"
    );
    assert_eq!(report["counters"]["dumps_damaged"], 1);
}
