//! `wal-stream` end to end: WAL streamed over a replication slot into the repository reaches a
//! restore even when the primary dies before its segment is complete (so `archive_command` never
//! archived it), and in synchronous mode every acknowledged commit is in the repository even when
//! the receiver is killed with the primary.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::backup_restore::{archive_everything, restore_json, start_restored, target};
use crate::support::daemon::{Daemon, daemon_config};
use crate::support::fixture::{findings, flip_byte, keys_under, verify_json};
use crate::support::stream::{Receiver, streamed_cluster, streamed_cluster_with, wait_flushed};
use crate::support::*;
use lifeboat_pg::cluster::{LocalCluster, StopMode};
use lifeboat_testkit::cluster::{TestCluster, TestDir};
use lifeboat_testkit::free_port;

/// Restore to the end of the archive, which must use the streamed WAL, start the copy and count
/// the rows of `t`.
fn restored_count(setup: &Setup, source: &LocalCluster) -> String {
    let t = target();
    let report = restore_json(setup, &t.data, &[]);
    assert!(
        report["plan"]["streamed_wal_to"].is_string(),
        "the restore did not use the streamed WAL: {report}"
    );
    let restored = start_restored(t, source.owner.clone());
    restored.psql("select count(*) from t").expect("count rows")
}

/// With the receiver down, write six segments' worth of rows (ids 1000 to 1599) and switch WAL
/// after each, `then`, and checkpoint: past `max_slot_wal_keep_size = 32MB` the server drops the
/// slot's WAL (`wal_status = lost`).
fn write_past_the_slot_limit(cluster: &TestCluster, then: impl FnOnce()) {
    for round in 0..6 {
        cluster
            .psql(&format!(
                "insert into t select g, 'while down' from generate_series({}, {}) g",
                1000 + round * 100,
                1099 + round * 100
            ))
            .expect("insert");
        cluster.switch_wal().expect("switch WAL");
    }
    then();
    cluster.psql("checkpoint").expect("checkpoint");
    wait_for(
        cluster,
        "select wal_status from pg_replication_slots where slot_name = 'lifeboat'",
        "lost",
        "the slot invalidated",
    );
}

#[test]
fn streamed_wal_reaches_a_restore_after_the_primary_dies() {
    let setup = Setup::new(Backend::Local, true);
    let (cluster, receiver) = streamed_cluster(&setup, &["--flush-interval-ms", "100"]);
    cluster
        .psql("insert into t select g, 'streamed' from generate_series(1, 1000) g")
        .expect("insert");
    wait_flushed(&cluster, &receiver);
    // The primary dies with its current segment incomplete: archive_command never saw it.
    cluster.kill9().expect("kill -9 the primary");
    let status = receiver.terminate();
    assert!(status.success(), "wal-stream exit: {status}");
    let pieces = setup
        .repo_dir
        .as_ref()
        .map(|repo| keys_under(repo, "stream"))
        .unwrap_or_default();
    assert!(!pieces.is_empty(), "no streamed pieces in the repository");
    let info = setup.info_json();
    let streamed = &info["timelines"][0]["streamed_to"];
    assert!(
        streamed.is_string(),
        "info does not show the streamed position: {info}"
    );
    let listing = json_of(&setup.run(&["list", "--json"]), "lifeboat list --json");
    assert_eq!(
        listing["window"]["streamed_to"], *streamed,
        "list's restore window ends where the streamed WAL does"
    );

    assert_eq!(
        restored_count(&setup, &cluster),
        "1000",
        "rows committed before the crash"
    );

    // verify reads the pieces; a damaged one is a finding, not a silently shorter restore.
    let report = verify_json(|a| setup.run(a), &[], 0);
    assert!(
        report["counters"]["streamed_pieces_read"].as_u64() > Some(0),
        "{report}"
    );
    let repo = setup.repo_dir.as_ref().expect("local repository");
    let newest = pieces.iter().max().expect("a piece");
    flip_byte(&repo.join(newest), 10);
    let report = verify_json(|a| setup.run(a), &[], 6);
    assert_eq!(
        findings(&report, "damaged_streamed_wal").len(),
        1,
        "{report}"
    );
}

#[test]
fn synchronous_streaming_loses_no_acknowledged_commit() {
    let setup = Setup::new(Backend::Local, true);
    let (cluster, receiver) = streamed_cluster(&setup, &["--synchronous"]);

    // check explains what synchronous_standby_names = 'lifeboat' means, and refuses
    // remote_apply, which would make every commit wait forever for a receiver.
    let check = |code: i32| {
        let out = setup
            .cmd()
            .args(["check", "--json", "--db"])
            .arg(cluster.conninfo())
            .output()
            .expect("run lifeboat check");
        assert_code(&out, code, "lifeboat check");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("check JSON")
    };
    let report = check(0);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("needs the receiver lifeboat for every commit")
            && notes.contains("max_slot_wal_keep_size"),
        "{report}"
    );
    cluster
        .psql("alter system set synchronous_commit = remote_apply")
        .expect("alter system");
    cluster.psql("select pg_reload_conf()").expect("reload");
    let report = check(4);
    assert!(
        report["problems"].to_string().contains("remote_apply"),
        "{report}"
    );
    cluster
        .psql("alter system reset synchronous_commit")
        .expect("alter system");
    cluster.psql("select pg_reload_conf()").expect("reload");
    for i in 1..=20 {
        cluster
            .psql(&format!("insert into t values ({i}, 'acknowledged')"))
            .expect("a commit the receiver acknowledged");
    }
    // Both die at once: what the server acknowledged must already be in the repository.
    drop(receiver);
    cluster.kill9().expect("kill -9 the primary");

    assert_eq!(
        restored_count(&setup, &cluster),
        "20",
        "acknowledged commits"
    );
}

/// Wait until `sql` on `cluster` returns `want`.
fn wait_for(cluster: &LocalCluster, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = cluster.psql(sql).unwrap_or_else(|e| e.to_string());
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{sql}` returned {got:?}, not {want:?}:\n{}",
            cluster.log_tail(30)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_standby_from_the_repository_replays_it_then_streams_from_the_primary() {
    let setup = Setup::new(Backend::Local, true);
    let primary = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    primary
        .psql("create table t (id int primary key, note text)")
        .expect("create table");
    setup.backup(&primary);
    primary
        .psql("insert into t select g, 'archived' from generate_series(1, 100) g")
        .expect("insert");
    archive_everything(&primary);

    let dir = TestDir::new().expect("standby dir");
    let data = dir.path().join("replica1");
    let out = setup
        .cmd()
        .args(["standby", "create", "--json", "--primary"])
        .arg(primary.conninfo())
        .arg("--target-dir")
        .arg(&data)
        .output()
        .expect("run standby create");
    let report = json_of(&out, "lifeboat standby create");
    assert_eq!(report["name"], "replica1", "{report}");
    assert_eq!(report["slot_created"], true, "{report}");
    let conf = fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    for line in [
        "primary_slot_name = 'replica1'",
        "application_name=replica1",
        "recovery_target_timeline = 'latest'",
    ] {
        assert!(conf.contains(line), "{line} missing from:\n{conf}");
    }
    assert!(data.join("standby.signal").exists());

    // With the primary down, the standby replays what the repository holds.
    primary.stop(StopMode::Fast).expect("stop the primary");
    let standby = LocalCluster::existing(&data, free_port(), dir.path(), primary.owner.clone())
        .expect("standby")
        .with_log_file(dir.path().join("standby.log"));
    let standby = TestCluster::adopt(dir, standby);
    standby.start(WAIT).expect("start the standby");
    wait_for(
        &standby,
        "select count(*) from t",
        "100",
        "replay from the repository",
    );
    assert_eq!(
        standby
            .psql("select pg_is_in_recovery()")
            .expect("in recovery"),
        "t"
    );

    // The primary back: the standby streams from it over its slot.
    primary.start(WAIT).expect("start the primary again");
    primary
        .psql("insert into t select g, 'streamed' from generate_series(101, 150) g")
        .expect("insert");
    wait_for(&standby, "select count(*) from t", "150", "streaming");
    wait_for(
        &primary,
        "select state || ' ' || (select active::text from pg_replication_slots where slot_name = 'replica1') \
         from pg_stat_replication where application_name = 'replica1'",
        "streaming true",
        "the standby streaming over its slot",
    );

    // The daemon watching the primary shows the standby and its lag.
    let port = free_port();
    daemon_config(
        &setup,
        &primary,
        &format!("[serve]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"1s\"\n"),
    );
    let daemon = Daemon::start(&setup, port, "serve.log");
    daemon.wait_status(
        "the standby in the daemon's status",
        Duration::from_secs(60),
        |s| {
            s["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|c| c["application_name"] == "replica1"))
        },
    );
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("lifeboat_replica_lag_bytes{application_name=\"replica1\"}"),
        "{metrics}"
    );
}

#[test]
fn the_receiver_follows_a_promotion_and_a_restore_reaches_a_time_after_it() {
    let setup = Setup::new(Backend::Local, true);
    let primary = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    primary
        .psql("create table t (id int primary key, note text)")
        .expect("create table");
    setup.backup(&primary);

    // A standby from the repository, and the receiver streaming from the standby.
    let dir = TestDir::new().expect("standby dir");
    let data = dir.path().join("replica1");
    let out = setup
        .cmd()
        .args(["standby", "create", "--primary"])
        .arg(primary.conninfo())
        .arg("--target-dir")
        .arg(&data)
        .output()
        .expect("run standby create");
    assert_success(&out, "lifeboat standby create");
    let standby = LocalCluster::existing(&data, free_port(), dir.path(), primary.owner.clone())
        .expect("standby")
        .with_log_file(dir.path().join("standby.log"));
    let standby = TestCluster::adopt(dir, standby);
    standby.start(WAIT).expect("start the standby");
    let mut receiver = Receiver::start(&setup, &standby, &["--flush-interval-ms", "100"]);
    receiver.wait_streaming(&standby);

    primary
        .psql("insert into t select g, 'timeline 1' from generate_series(1, 100) g")
        .expect("insert");
    wait_for(
        &standby,
        "select count(*) from t",
        "100",
        "the standby replaying",
    );
    primary.kill9().expect("kill -9 the primary");
    standby
        .psql("select pg_promote()")
        .expect("promote the standby");
    wait_for(
        &standby,
        "select pg_is_in_recovery()",
        "f",
        "the standby promoting",
    );
    standby
        .psql("insert into t select g, 'timeline 2' from generate_series(101, 150) g")
        .expect("insert on the new timeline");
    thread::sleep(Duration::from_millis(1100));
    let target_time = standby.psql("select now()::text").expect("the target time");
    thread::sleep(Duration::from_millis(1100));
    standby
        .psql("insert into t select g, 'after the target' from generate_series(151, 200) g")
        .expect("insert after the target");
    wait_flushed(&standby, &receiver);
    standby.kill9().expect("kill -9 the new primary");
    assert!(receiver.terminate().success(), "wal-stream exit");
    let log = fs::read_to_string(setup.dir.path().join("wal-stream.log")).unwrap_or_default();
    assert!(
        log.contains("following timeline 2"),
        "the receiver did not follow the promotion:\n{log}"
    );

    let t = target();
    let report = restore_json(&setup, &t.data, &["--target-time", &target_time]);
    assert!(
        report["plan"]["streamed_wal_to"].is_string(),
        "the restore did not use the streamed WAL of timeline 2: {report}"
    );
    let restored = start_restored(t, primary.owner.clone());
    assert_eq!(
        restored.psql("select count(*) from t").expect("count"),
        "150",
        "rows up to the target time, across the promotion"
    );
}

#[test]
fn a_slot_invalidated_while_the_receiver_was_down_is_reported_and_made_anew() {
    let setup = Setup::new(Backend::Local, true);
    let (cluster, receiver) = streamed_cluster_with(
        &setup,
        &["--flush-interval-ms", "100"],
        "max_slot_wal_keep_size = 32MB\n",
    );
    cluster
        .psql("insert into t select g, 'streamed' from generate_series(1, 100) g")
        .expect("insert");
    wait_flushed(&cluster, &receiver);
    assert!(receiver.terminate().success(), "wal-stream exit");

    // While the receiver is down the server writes past max_slot_wal_keep_size: it drops the
    // slot's WAL (archive_command still stores every segment).
    write_past_the_slot_limit(&cluster, || archive_everything(&cluster));

    let mut receiver = Receiver::start(&setup, &cluster, &["--flush-interval-ms", "100"]);
    receiver.wait_streaming(&cluster);
    cluster
        .psql("insert into t select g, 'after' from generate_series(5001, 5050) g")
        .expect("insert");
    wait_flushed(&cluster, &receiver);
    let log = receiver.log_text();
    assert!(
        log.contains("was invalidated while the receiver was away"),
        "the receiver did not report the invalidated slot:\n{log}"
    );
    // Made anew, the slot holds WAL again.
    wait_for(
        &cluster,
        "select wal_status from pg_replication_slots where slot_name = 'lifeboat'",
        "reserved",
        "the slot made anew",
    );
    cluster.kill9().expect("kill -9 the primary");
    assert!(receiver.terminate().success(), "wal-stream exit");
    // archive_command stored what the slot lost: nothing is missing.
    assert_eq!(restored_count(&setup, &cluster), "750");
}

#[test]
fn wal_the_server_removed_before_it_was_streamed_is_a_reported_gap() {
    // No archive_command: the receiver alone feeds the repository (and binds it).
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new("max_slot_wal_keep_size = 32MB\n").expect("cluster");
    cluster
        .psql("create table t (id int primary key, note text)")
        .expect("create table");
    let mut receiver = Receiver::start(&setup, &cluster, &["--flush-interval-ms", "100"]);
    receiver.wait_streaming(&cluster);
    cluster.switch_wal().expect("switch WAL");
    wait_flushed(&cluster, &receiver);
    assert!(receiver.terminate().success(), "wal-stream exit");
    write_past_the_slot_limit(&cluster, || {});

    let mut receiver = Receiver::start(&setup, &cluster, &["--flush-interval-ms", "100"]);
    receiver.wait_streaming(&cluster);
    cluster.switch_wal().expect("switch WAL");
    wait_flushed(&cluster, &receiver);
    let log = receiver.log_text();
    assert!(
        log.contains("the server removed WAL from"),
        "the receiver did not report the removed WAL:\n{log}"
    );
    let info = setup.info_json();
    assert!(
        info["timelines"][0]["gaps"]
            .as_array()
            .is_some_and(|g| !g.is_empty()),
        "info does not show the gap: {info}"
    );
}
