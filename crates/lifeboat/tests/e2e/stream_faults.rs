//! `wal-stream` under faults and bad input (issue 15, must-shows 2 and 6): the receiver killed
//! with SIGKILL in the middle of a segment while `archive_command` feeds the same repository,
//! another cluster's server, a slot another receiver holds, a repository that cannot be written
//! in synchronous mode, and invalid options. Each ends in a clear error or a documented
//! behaviour, and a restore still holds every acknowledged row.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::backup_restore::{restore_json, start_restored, target};
use crate::support::fixture::keys_under;
use crate::support::stream::{Receiver, streamed_cluster, wait_flushed};
use crate::support::*;
use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::TestCluster;

/// Messages that would mean the receiver and `wal-push` disagreed about a WAL object's bytes.
const CONFLICTS: [&str; 3] = ["different content", "other bytes", "WalConflict"];

fn insert(cluster: &LocalCluster, from: i64, to: i64) {
    cluster
        .psql(&format!(
            "insert into t select g, repeat('x', 200) from generate_series({from}, {to}) g"
        ))
        .expect("insert");
}

fn count(cluster: &LocalCluster) -> i64 {
    cluster
        .psql("select count(*) from t")
        .expect("count")
        .parse()
        .expect("a count")
}

/// Restore to the end of the repository, start the copy and count its rows.
fn restored_count(setup: &Setup, source: &LocalCluster) -> i64 {
    let t = target();
    restore_json(setup, &t.data, &[]);
    count(&start_restored(t, source.owner.clone()))
}

/// Give every directory under `dir` (and `dir`) `mode`: 0o500 makes a local repository
/// unwritable for the cluster owner that runs the receiver, 0o700 gives it back.
fn chmod_dirs(dir: &Path, mode: u32) {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod");
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        if entry.file_type().expect("file type").is_dir() {
            chmod_dirs(&entry.path(), mode);
        }
    }
}

#[test]
fn stream_receiver_killed_mid_segment_leaves_no_gap_and_no_conflict() {
    let setup = Setup::new(Backend::Local, true);
    let (cluster, first) = streamed_cluster(&setup, &["--flush-interval-ms", "200"]);
    insert(&cluster, 1, 20_000);
    wait_flushed(&cluster, &first);
    let offset: u64 = cluster
        .psql("select file_offset from pg_walfile_name_offset(pg_current_wal_lsn())")
        .expect("segment offset")
        .parse()
        .expect("an offset");
    assert!(
        (1 << 20..15 << 20).contains(&offset),
        "the segment should be partly full when the receiver dies, it is at byte {offset}"
    );
    let first_log = first.log.clone();
    first.kill9();

    // Written while no receiver runs, then streamed again by the next one from the newest
    // complete segment, over the pieces the killed one left.
    insert(&cluster, 20_001, 30_000);
    let mut second = Receiver::start_logged(
        &setup,
        &cluster,
        "wal-stream-2.log",
        &["--flush-interval-ms", "200"],
    );
    second.wait_streaming(&cluster);
    insert(&cluster, 30_001, 40_000);
    let mut last = String::new();
    for i in 0..3 {
        insert(&cluster, 40_001 + i * 1000, 41_000 + i * 1000);
        last = cluster.switch_wal().expect("pg_switch_wal");
    }
    insert(&cluster, 50_001, 51_000);
    cluster
        .wait_archived(&last, WAIT)
        .expect("archive_command archived the switched segments");
    wait_flushed(&cluster, &second);

    let info = setup.info_json();
    for timeline in info["timelines"].as_array().expect("timelines") {
        assert_eq!(
            timeline["gaps"].as_array().map(Vec::len),
            Some(0),
            "gaps: {info}"
        );
    }
    let verify = setup.run(&["verify"]);
    assert_success(&verify, "lifeboat verify");
    let second_log = second.log.clone();
    assert!(second.terminate().success(), "wal-stream exit");
    let rows = count(&cluster);
    cluster.kill9().expect("kill -9 the primary");
    for log in [&first_log, &second_log, &cluster.log_file().to_path_buf()] {
        let text = fs::read_to_string(log).unwrap_or_default();
        for conflict in CONFLICTS {
            assert!(
                !text.contains(conflict),
                "{} says {conflict:?}:\n{text}",
                log.display()
            );
        }
    }
    assert_eq!(rows, 44_000, "rows inserted");
    assert_eq!(restored_count(&setup, &cluster), rows, "rows restored");
}

#[test]
fn stream_refuses_a_server_of_another_cluster() {
    let setup = Setup::new(Backend::Local, true);
    let ours = TestCluster::start_new(&setup.archive_conf()).expect("the repository's cluster");
    setup.backup(&ours);
    let other = TestCluster::start_new("").expect("another cluster");
    let id = |c: &LocalCluster| {
        c.psql("select system_identifier from pg_control_system()")
            .expect("system identifier")
    };
    let mut receiver = Receiver::start(&setup, &other, &[]);
    let status = receiver
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("wal-stream kept running:\n{}", receiver.log_text()));
    let log = receiver.log_text();
    assert!(!status.success(), "wal-stream exit {status}:\n{log}");
    for sysid in [id(&ours), id(&other)] {
        assert!(log.contains(&sysid), "{sysid} not named in:\n{log}");
    }
    let repo = setup.repo_dir.as_ref().expect("local repository");
    if repo.join("stream").exists() {
        assert_eq!(keys_under(repo, "stream"), Vec::<String>::new());
    }
    assert_eq!(
        other
            .psql("select count(*) from pg_replication_slots")
            .expect("slots"),
        "0",
        "a slot was created on the other cluster"
    );
    println!("another cluster: exit {status}, log:\n{log}");
}

#[test]
fn stream_second_receiver_on_a_slot_in_use_exits_promptly() {
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster
        .psql("create table t (id bigint primary key, note text)")
        .expect("create table");
    setup.backup(&cluster);
    let mut first = Receiver::start_logged(&setup, &cluster, "wal-stream-1.log", &[]);
    first.wait_streaming(&cluster);
    let started = Instant::now();
    let mut second = Receiver::start_logged(&setup, &cluster, "wal-stream-2.log", &[]);
    let status = second
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the second wal-stream kept running:\n{}", second.log_text()));
    let log = second.log_text();
    println!(
        "second receiver: exit {status} after {} ms, log:\n{log}",
        started.elapsed().as_millis()
    );
    assert!(!status.success(), "second wal-stream exit {status}:\n{log}");
    assert!(
        log.contains("\"lifeboat\"") && (log.contains("active") || log.contains("in use")),
        "the second receiver does not say that another one uses the slot:\n{log}"
    );
    // The first one is unharmed.
    insert(&cluster, 1, 100);
    wait_flushed(&cluster, &first);
    assert!(first.terminate().success(), "first wal-stream exit");
}

/// `psql -c SQL` against `cluster`, running in the background.
fn spawn_psql(cluster: &LocalCluster, sql: &str) -> Child {
    cluster
        .command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(cluster.conninfo())
        .args(["-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql")
}

#[test]
fn stream_synchronous_commits_wait_while_the_repository_cannot_be_written() {
    let setup = Setup::new(Backend::Local, true);
    let (cluster, receiver) = streamed_cluster(&setup, &["--synchronous"]);
    insert(&cluster, 1, 10);

    let repo = setup.repo_dir.clone().expect("local repository");
    chmod_dirs(&repo, 0o500);
    let mut waiting = spawn_psql(&cluster, "insert into t values (11, 'during the outage')");
    thread::sleep(Duration::from_secs(5));
    let waited = waiting.try_wait().expect("psql status");
    let state = cluster
        .psql("select string_agg(wait_event, ',') from pg_stat_activity where query like 'insert into t values (11%'")
        .unwrap_or_default();
    let log_during = receiver.log_text();
    chmod_dirs(&repo, 0o700);
    assert!(
        waited.is_none(),
        "a commit returned while the repository could not be written ({waited:?})"
    );
    assert_eq!(state, "SyncRep", "what the commit waits for");
    println!("receiver log during the outage:\n{log_during}");
    assert!(
        log_during.contains("ermission denied"),
        "the receiver's log does not say what failed:\n{log_during}"
    );

    let back = Instant::now();
    let deadline = back + WAIT;
    let status = loop {
        if let Some(status) = waiting.try_wait().expect("psql status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the commit never returned after the repository came back:\n{}",
            receiver.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    };
    println!(
        "the waiting commit returned {} ms after the repository came back",
        back.elapsed().as_millis()
    );
    assert!(status.success(), "the waiting insert failed: {status}");
    insert(&cluster, 12, 20);
    cluster.kill9().expect("kill -9 the primary");
    receiver.kill9();
    assert_eq!(restored_count(&setup, &cluster), 20, "acknowledged rows");
}

#[test]
fn stream_rejects_an_invalid_slot_name_and_flush_interval() {
    let setup = Setup::new(Backend::Local, true);
    for (args, fix) in [
        (&["--slot", "Bad-Slot"][..], "--slot"),
        (&["--flush-interval-ms", "5"][..], "between 10 and 60000"),
        (
            &["--flush-interval-ms", "60001"][..],
            "between 10 and 60000",
        ),
    ] {
        let mut all = vec!["wal-stream", "--db", "host=/nonexistent port=1"];
        all.extend_from_slice(args);
        let out = setup.run(&all);
        assert_code(&out, 3, &all.join(" "));
        assert!(
            stderr(&out).contains(fix),
            "{}: the message does not say {fix:?}:\n{}",
            all.join(" "),
            stderr(&out)
        );
    }
}
