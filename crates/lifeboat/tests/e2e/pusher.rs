//! The background WAL pusher on real clusters: a backlog of `.ready` files drains through it,
//! every segment reaches the repository and the pusher leaves once done; a pusher killed with
//! kill -9 mid-drain is replaced and nothing is missing; a pusher's failure makes PostgreSQL's
//! call fail with the pusher's message, and archiving completes once the cause is gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;
use lifeboat_testkit::cluster::TestCluster;

/// A cluster whose archiving is off while `segments` segments are written, then switched to
/// `cp %p ARCH/%f && lifeboat wal-push %p` into `setup`: PostgreSQL finds a backlog. Returns the
/// cluster and the last segment switched out.
fn backlog(setup: &Setup, segments: usize) -> (TestCluster, String) {
    let cluster = TestCluster::start_new(
        "archive_mode = on\narchive_command = 'false'\narchive_timeout = 0\n",
    )
    .expect("cluster");
    cluster.psql("create table b(x int)").expect("table");
    for i in 0..segments {
        cluster
            .psql(&format!("insert into b values ({i})"))
            .expect("insert");
        cluster.switch_wal().expect("switch");
    }
    cluster
        .psql(&format!(
            "alter system set archive_command = 'cp %p {}/%f && {BIN} --config {} wal-push %p'",
            setup.arch.display(),
            setup.config.display()
        ))
        .expect("set archive_command");
    cluster.psql("select pg_reload_conf()").expect("reload");
    cluster.psql("insert into b values (-1)").expect("insert");
    let last = cluster.switch_wal().expect("switch");
    (cluster, last)
}

/// Process ids of the background pushers working for `setup` (found by their command line).
fn pushers(setup: &Setup) -> Vec<i32> {
    let config = setup.config.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.iter().any(|a| a == "wal-push-ahead") && args.contains(&config)).then_some(pid)
        })
        .collect()
}

fn wait_no_pusher(setup: &Setup, within: Duration) {
    let deadline = Instant::now() + within;
    while !pushers(setup).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pusher is still running {within:?} after the backlog was gone: {:?}",
            pushers(setup)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every segment copied to ARCH is in the repository, byte-identical, and `info` sees no gap.
fn all_segments_stored(setup: &Setup) -> usize {
    let segments: Vec<PathBuf> = setup
        .archived_copies()
        .into_iter()
        .filter(|p| file_name(p).len() == 24)
        .collect();
    let dest_dir = setup.scratch("fetched");
    for copy in &segments {
        let name = file_name(copy);
        let dest = dest_dir.join(&name);
        let out = setup.run(&[
            "wal-fetch",
            "--prefetch",
            "0",
            &name,
            dest.to_str().expect("utf8"),
        ]);
        assert_success(&out, &format!("wal-fetch {name}"));
        assert!(
            fs::read(&dest).expect("fetched") == fs::read(copy).expect("copy"),
            "{name} differs"
        );
    }
    let info = setup.info_json();
    let tl = &info["timelines"][0];
    assert_eq!(tl["gaps"].as_array().map(Vec::len), Some(0), "gaps: {info}");
    assert_eq!(
        tl["segments"].as_u64(),
        Some(segments.len() as u64),
        "{info}"
    );
    segments.len()
}

/// The pusher's logs of `cluster` (one per repository).
fn pusher_log(cluster: &TestCluster) -> String {
    let dir = cluster
        .datadir
        .join("pg_wal")
        .join("lifeboat")
        .join("pusher");
    fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| fs::read_to_string(e.path().join("pusher.log")).unwrap_or_default())
        .collect()
}

/// Stored counts of the pusher runs the log records.
fn stored_by_pushers(log: &str) -> usize {
    log.lines()
        .filter_map(|l| {
            l.split("exiting: ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

#[test]
fn a_backlog_drains_through_the_background_pusher_which_then_exits() {
    let setup = Setup::new(Backend::Local, true);
    let (cluster, last) = backlog(&setup, 20);
    cluster.wait_archived(&last, WAIT).expect("archived");
    let segments = all_segments_stored(&setup);
    assert!(segments >= 20, "{segments} segments");
    wait_no_pusher(&setup, Duration::from_secs(15));
    let log = pusher_log(&cluster);
    assert!(
        stored_by_pushers(&log) >= segments / 2,
        "most segments should have gone through the pusher: {log}"
    );
    // By hand (no .ready): the synchronous push, as before.
    let copy = setup.archived_copies()[0].clone();
    let staged = setup.scratch("by-hand").join(file_name(&copy));
    fs::copy(&copy, &staged).expect("stage");
    lifeboat_testkit::cluster::chown_to_owner(&staged).expect("chown");
    assert_success(
        &setup.run(&["wal-push", staged.to_str().expect("utf8")]),
        "wal-push by hand",
    );
    assert!(
        pushers(&setup).is_empty(),
        "a push by hand started a pusher"
    );
}

#[test]
fn kill9_of_the_pusher_mid_drain_loses_nothing() {
    let setup = Setup::new(Backend::Local, false);
    let (cluster, last) = backlog(&setup, 20);
    let mut killed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while killed.len() < 2 && Instant::now() < deadline {
        if let Some(pid) = pushers(&setup).into_iter().find(|p| !killed.contains(p)) {
            std::thread::sleep(Duration::from_millis(30 * killed.len() as u64 + 10));
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .expect("kill");
            if status.success() {
                killed.push(pid);
            }
        }
        if cluster
            .psql("select last_archived_wal from pg_stat_archiver")
            .expect("psql")
            == last
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!killed.is_empty(), "no pusher was seen to kill");
    cluster
        .wait_archived(&last, WAIT)
        .expect("archived after kill -9");
    let segments = all_segments_stored(&setup);
    assert!(segments >= 20, "{segments} segments");
    wait_no_pusher(&setup, Duration::from_secs(15));
}

/// Make every directory under `dir` read-only (or writable again) for its owner.
fn set_writable(dir: &Path, writable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if writable { 0o700 } else { 0o500 };
    for entry in fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
        if entry.file_type().expect("type").is_dir() {
            set_writable(&entry.path(), writable);
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_pusher_failure_fails_postgres_call_with_its_message_until_fixed() {
    let setup = Setup::new(Backend::Local, false);
    let repo = setup.repo_dir.clone().expect("local repository");
    set_writable(&repo, false);
    let (cluster, last) = backlog(&setup, 4);
    let deadline = Instant::now() + WAIT;
    loop {
        let failed: u64 = cluster
            .psql("select failed_count from pg_stat_archiver")
            .expect("psql")
            .parse()
            .expect("count");
        if failed >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", cluster.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let archived = cluster
        .psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
        .expect("psql");
    assert_eq!(archived, "", "nothing may be reported archived");
    let log = fs::read_to_string(cluster.log_file()).unwrap_or_default();
    assert!(
        log.contains("the background pusher's error; PostgreSQL will retry"),
        "{}",
        cluster.log_tail(30)
    );
    assert_eq!(setup.info_json()["wal_files"].as_u64(), Some(0));

    set_writable(&repo, true);
    // A new segment wakes the archiver from its wait after the failures.
    cluster.psql("insert into b values (-2)").expect("insert");
    let newest = cluster.switch_wal().expect("switch");
    cluster
        .wait_archived(&newest, WAIT)
        .expect("archived once writable");
    cluster.wait_archived(&last, WAIT).expect("archived");
    all_segments_stored(&setup);
    wait_no_pusher(&setup, Duration::from_secs(15));
}

/// A file the pusher refuses (not what its name says) fails PostgreSQL's call for it with the
/// refusal's exit code and message; nothing of it is stored.
#[test]
fn a_file_the_pusher_refuses_fails_postgres_call_with_exit_4() {
    let setup = Setup::new(Backend::Local, false);
    let (cluster, last) = backlog(&setup, 2);
    cluster.wait_archived(&last, WAIT).expect("archived");
    let stored = setup.info_json()["wal_files"].as_u64();
    let wal = cluster.datadir.join("pg_wal");
    let bogus = "0000000100000000000000F0";
    fs::copy(setup.arch.join(&last), wal.join(bogus)).expect("plant");
    let ready = wal.join("archive_status").join(format!("{bogus}.ready"));
    fs::write(&ready, "").expect("ready");
    for path in [wal.join(bogus), ready.clone()] {
        lifeboat_testkit::cluster::chown_to_owner(&path).expect("chown");
    }
    // A new segment wakes the archiver, which then finds the planted file too.
    cluster.psql("insert into b values (-2)").expect("insert");
    cluster.switch_wal().expect("switch");
    let deadline = Instant::now() + WAIT;
    loop {
        let log = fs::read_to_string(cluster.log_file()).unwrap_or_default();
        if log.contains("failed with exit code 4") {
            assert!(
                log.contains(&format!("{bogus} is not a valid WAL file"))
                    && log.contains("the background pusher's error"),
                "{}",
                cluster.log_tail(30)
            );
            break;
        }
        assert!(Instant::now() < deadline, "{}", cluster.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::remove_file(&ready).expect("unplant");
    fs::remove_file(wal.join(bogus)).expect("unplant");
    assert_eq!(
        setup.info_json()["wal_files"].as_u64(),
        stored.map(|n| n + 1),
        "only the new segment may be stored"
    );
}
