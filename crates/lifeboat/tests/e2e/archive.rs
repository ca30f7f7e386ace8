//! WAL archiving end to end on real clusters: `wal-push` stores every segment PostgreSQL archives
//! (local or S3, encrypted or not, into one repository or two chained ones) and `wal-fetch`
//! returns it byte-identical, so recovery replays all of it; another cluster's WAL and a differing
//! duplicate are refused; a killed push succeeds when retried; a damaged, missing or undecryptable
//! segment stops recovery without leaving a file behind.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestCluster, TestDir, run_as_owner};
use lifeboat_testkit::free_port;

/// Whether the prefetch spool (any repository's subdirectory) holds a segment.
fn spool_has_segments(spool: &std::path::Path) -> bool {
    fs::read_dir(spool)
        .into_iter()
        .flatten()
        .flatten()
        .any(|repo_dir| {
            fs::read_dir(repo_dir.path())
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| f.file_name().len() == 24)
        })
}

/// pgbench load with `archive_command = 'cp %p ARCH/%f && lifeboat wal-push %p'`; then every file in
/// ARCH is in the repository and `wal-fetch` returns it byte-identical; `info` sees no gap.
fn archive_under_load(backend: Backend, encrypted: bool) {
    let setup = Setup::new(backend, encrypted);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster.pgbench_init(1).expect("pgbench -i");
    cluster
        .pgbench(&["-c", "2", "-j", "1", "-T", "4"])
        .expect("pgbench");
    cluster.switch_wal().expect("switch");
    cluster
        .pgbench(&["-c", "2", "-j", "1", "-t", "200"])
        .expect("pgbench");
    let last = cluster.switch_wal().expect("switch");
    cluster.wait_archived(&last, WAIT).expect("archived");

    let copies = setup.archived_copies();
    let segments = copies.iter().filter(|p| file_name(p).len() == 24).count();
    assert!(
        segments >= 3,
        "expected several archived segments, got {copies:?}"
    );
    let dest_dir = setup.scratch("pg_wal");
    let dest = dest_dir.join("RECOVERYXLOG");
    // A first fetch starts the prefetcher in the background; wait until it has filled the spool
    // (one subdirectory per repository), so that the next fetches come from it.
    let first_segment = copies
        .iter()
        .map(|p| file_name(p))
        .find(|n| n.len() == 24)
        .expect("a segment");
    let out = setup
        .cmd()
        .args(["wal-fetch", &first_segment, dest.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_success(&out, "first wal-fetch");
    let spool = dest_dir.join("lifeboat").join("prefetch");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !spool_has_segments(&spool) {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefetcher put nothing in {}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut from_spool = 0;
    for copy in &copies {
        let name = file_name(copy);
        let out = setup
            .cmd()
            .env("LIFEBOAT_LOG", "info")
            .args(["wal-fetch", &name, dest.to_str().expect("utf8")])
            .output()
            .expect("run");
        assert_success(&out, &format!("wal-fetch {name}"));
        from_spool += usize::from(stderr(&out).contains("(prefetched)"));
        let fetched = fs::read(&dest).expect("fetched file");
        assert!(
            fetched == fs::read(copy).expect("copy"),
            "{name} differs after the round trip"
        );
    }
    assert!(from_spool >= 1, "no fetch was served by the prefetch spool");

    let info = setup.info_json();
    assert_eq!(info["encrypted"], encrypted);
    let system_id = cluster
        .psql("select system_identifier from pg_control_system()")
        .expect("sysid");
    assert_eq!(info["cluster"]["system_identifier"].to_string(), system_id);
    let tl = &info["timelines"][0];
    assert_eq!(tl["gaps"].as_array().map(Vec::len), Some(0), "gaps: {info}");
    assert_eq!(tl["segments"].as_u64(), Some(segments as u64), "{info}");

    if let Some(repo) = &setup.repo_dir {
        assert_private(repo);
    }
}

#[test]
fn every_segment_archived_under_load_fetches_back_identical_local_unencrypted() {
    archive_under_load(Backend::Local, false);
}

#[test]
fn every_segment_archived_under_load_fetches_back_identical_local_encrypted() {
    archive_under_load(Backend::Local, true);
}

#[test]
fn every_segment_archived_under_load_fetches_back_identical_s3_unencrypted() {
    archive_under_load(Backend::S3, false);
}

#[test]
fn every_segment_archived_under_load_fetches_back_identical_s3_encrypted() {
    archive_under_load(Backend::S3, true);
}

/// One archived segment of a cluster (archiving into `setup`), returned as a path in ARCH.
fn archived_segment(cluster: &TestCluster, setup: &Setup) -> std::path::PathBuf {
    cluster
        .psql("create table if not exists t(x int); insert into t select generate_series(1, 1000)")
        .expect("insert");
    let name = cluster.switch_wal().expect("switch");
    cluster.wait_archived(&name, WAIT).expect("archived");
    setup.arch.join(name)
}

#[test]
fn wal_of_another_cluster_is_refused() {
    let setup = Setup::new(Backend::Local, false);
    let first = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    archived_segment(&first, &setup);
    let before = setup.info_json()["wal_files"].as_u64();

    let other_setup = Setup::new(Backend::Local, false);
    let second = TestCluster::start_new(&other_setup.archive_conf()).expect("second cluster");
    let foreign = archived_segment(&second, &other_setup);
    let staged = setup.scratch("foreign").join(file_name(&foreign));
    fs::copy(&foreign, &staged).expect("stage");
    lifeboat_testkit::cluster::chown_to_owner(&staged).expect("chown");
    let out = setup.run(&["wal-push", staged.to_str().expect("utf8")]);
    assert_code(&out, 4, "push of another cluster's WAL");
    assert!(stderr(&out).contains("another cluster"), "{}", stderr(&out));
    assert_eq!(
        setup.info_json()["wal_files"].as_u64(),
        before,
        "nothing may be stored"
    );
}

#[test]
fn pushing_a_segment_again_succeeds_if_identical_and_is_refused_if_different() {
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    let segment = archived_segment(&cluster, &setup);
    let name = file_name(&segment);
    let original = fs::read(&segment).expect("segment");

    let staging = setup.scratch("dup");
    let same = staging.join(&name);
    fs::write(&same, &original).expect("write");
    assert_success(
        &setup.run(&["wal-push", same.to_str().expect("utf8")]),
        "identical duplicate",
    );

    let mut altered = original.clone();
    altered[100_000] ^= 0xFF;
    fs::write(&same, &altered).expect("write");
    let out = setup.run(&["wal-push", same.to_str().expect("utf8")]);
    assert_code(&out, 4, "different duplicate");
    let msg = stderr(&out);
    assert!(
        msg.contains("different content") && msg.contains("HINT"),
        "{msg}"
    );
    let hex_words = msg
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .count();
    assert_eq!(hex_words, 2, "both checksums named: {msg}");

    let dest = staging.join("fetched");
    assert_success(
        &setup.run(&["wal-fetch", &name, dest.to_str().expect("utf8")]),
        "fetch",
    );
    assert!(
        fs::read(&dest).expect("fetched") == original,
        "stored copy must be unchanged"
    );
}

#[test]
fn wal_fetch_of_a_missing_corrupt_or_undecryptable_segment_writes_nothing() {
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    let segment = archived_segment(&cluster, &setup);
    let name = file_name(&segment);
    let dest_dir = setup.scratch("pg_wal");
    let dest = dest_dir.join("RECOVERYXLOG");
    let dest_s = dest.to_str().expect("utf8");

    // Missing segment: exit 1, nothing written.
    let out = setup.run(&["wal-fetch", "0000000100000099000000AA", dest_s]);
    assert_code(&out, 1, "missing segment");
    assert!(!dest.exists());

    // Wrong passphrase: a clear error; for wal-fetch the code that stops recovery.
    let bad_pass = setup.dir.path().join("wrong-passphrase");
    fs::write(&bad_pass, "not the passphrase\n").expect("write");
    lifeboat_testkit::cluster::chown_to_owner(&bad_pass).expect("chown");
    let out = setup
        .cmd()
        .env("LIFEBOAT_PASSPHRASE_FILE", &bad_pass)
        .args(["wal-fetch", &name, dest_s])
        .output()
        .expect("run");
    assert_code(&out, 200, "wrong passphrase on fetch");
    assert!(
        stderr(&out).contains("passphrase does not open"),
        "{}",
        stderr(&out)
    );
    let out = setup
        .cmd()
        .env("LIFEBOAT_PASSPHRASE_FILE", &bad_pass)
        .args(["info"])
        .output()
        .expect("run");
    assert_code(&out, 3, "wrong passphrase on info");
    assert!(!dest.exists());

    // A flipped byte in the stored object: the abort-recovery code and no file at the destination.
    let repo = setup.repo_dir.as_ref().expect("local repo");
    let object = repo.join("wal").join(&name[..16]).join(&name);
    let mut bytes = fs::read(&object).expect("object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&object, &bytes).expect("corrupt");
    let out = setup.run(&["wal-fetch", &name, dest_s, "--prefetch", "0"]);
    assert_code(&out, 200, "corrupt object");
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    assert!(!dest.exists(), "no file may be left at the destination");
    let leftovers: Vec<_> = fs::read_dir(&dest_dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.iter().all(|n| n == "lifeboat"),
        "temporary files left: {leftovers:?}"
    );
}

#[test]
fn kill9_during_push_then_retry_succeeds() {
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster
        .stop(lifeboat_pg::cluster::StopMode::Fast)
        .expect("stop");
    // Segments of the cluster, pushed by hand into a fresh repository: kill -9 at varying
    // moments, then retry as PostgreSQL would.
    let fresh = Setup::new(Backend::Local, true);
    let wal_dir = cluster.datadir.join("pg_wal");
    let mut segments: Vec<_> = fs::read_dir(&wal_dir)
        .expect("pg_wal")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| file_name(p).len() == 24)
        .collect();
    segments.sort();
    let segment = segments.first().expect("a segment").clone();
    let staging = fresh.scratch("push");
    let staged = staging.join(file_name(&segment));
    fs::copy(&segment, &staged).expect("stage");
    lifeboat_testkit::cluster::chown_to_owner(&staged).expect("chown");
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80] {
        let mut child = fresh
            .cmd()
            .args(["wal-push", staged.to_str().expect("utf8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_success(
        &fresh.run(&["wal-push", staged.to_str().expect("utf8")]),
        "retry after kill -9",
    );
    let dest = staging.join("back");
    assert_success(
        &fresh.run(&[
            "wal-fetch",
            &file_name(&segment),
            dest.to_str().expect("utf8"),
        ]),
        "fetch",
    );
    assert!(fs::read(&dest).expect("back") == fs::read(&segment).expect("orig"));
    let info = fresh.info_json();
    assert_eq!(info["wal_files"].as_u64(), Some(1), "{info}");
}

/// A copy taken with `pg_basebackup -X none`, started with `restore_command = 'lifeboat wal-fetch
/// %f %p'` and recovery.signal, replays every archived segment and has the last committed row.
#[test]
fn recovery_end_to_end_replays_all_archived_wal() {
    let setup = Setup::new(Backend::Local, true);
    let primary = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    primary
        .psql("create table events(id int primary key, note text)")
        .expect("create");

    let copy_dir = TestDir::new().expect("dir");
    let data = copy_dir.path().join("data");
    let mut bb = primary.command("pg_basebackup");
    bb.args(["-X", "none", "-c", "fast", "-D"]).arg(&data);
    let out = bb.output().expect("pg_basebackup");
    assert_success(&out, "pg_basebackup -X none");

    let mut last = 0;
    for batch in 0..6 {
        let from = batch * 1000 + 1;
        let to = from + 999;
        primary
            .psql(&format!(
                "insert into events select g, repeat('x', 200) from generate_series({from}, {to}) g"
            ))
            .expect("insert");
        last = to;
        if batch % 2 == 1 {
            primary.switch_wal().expect("switch");
        }
    }
    let final_segment = primary.switch_wal().expect("final switch");
    primary
        .wait_archived(&final_segment, WAIT)
        .expect("archived");
    primary
        .stop(lifeboat_pg::cluster::StopMode::Fast)
        .expect("stop primary");

    let port = free_port();
    fs::write(data.join("recovery.signal"), "").expect("recovery.signal");
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("conf");
    use std::io::Write;
    writeln!(
        conf,
        "port = {port}\nunix_socket_directories = '{}'\narchive_mode = off\nrestore_command = '{}'\n",
        copy_dir.path().display(),
        setup.restore_command()
    )
    .expect("write conf");
    drop(conf);
    let mut chown = std::process::Command::new("true");
    run_as_owner(&mut chown);
    lifeboat_testkit::cluster::chown_to_owner(copy_dir.path()).expect("chown");
    let restored = LocalCluster::existing(&data, port, copy_dir.path(), primary.owner.clone())
        .expect("existing")
        .with_log_file(copy_dir.path().join("postgres.log"));
    let restored = TestCluster::adopt(copy_dir, restored);
    restored
        .start(Duration::from_secs(120))
        .expect("start restored copy");
    // Recovery ends when wal-fetch reports the next segment not found; then the server promotes.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while restored.psql("select pg_is_in_recovery()").expect("psql") == "t" {
        assert!(
            std::time::Instant::now() < deadline,
            "recovery did not finish: {}",
            restored.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let count = restored
        .psql("select count(*), max(id) from events")
        .expect("count");
    assert_eq!(count, format!("{last}|{last}"), "{}", restored.log_tail(30));
    let log = fs::read_to_string(restored.log_file()).unwrap_or_default();
    assert!(
        log.contains(&format!(
            "restored log file \"{final_segment}\" from archive"
        )),
        "{log}"
    );
}

/// Two repositories fed by one cluster (`wal-push` chained twice in archive_command) with a
/// backlog of `.ready` files, so that push-ahead runs: each repository gets every segment. (The
/// spool's "pushed ahead" markers once were shared, and the second repository silently missed
/// segments the first had pushed ahead.)
#[test]
fn two_chained_repositories_each_get_every_segment() {
    let first = Setup::new(Backend::Local, false);
    let second = Setup::new(Backend::Local, false);
    let cluster = TestCluster::start_new(
        "archive_mode = on\narchive_command = 'false'\narchive_timeout = 0\n",
    )
    .expect("cluster");
    cluster.psql("create table b(x int)").expect("table");
    for i in 0..12 {
        cluster
            .psql(&format!("insert into b values ({i})"))
            .expect("insert");
        cluster.switch_wal().expect("switch");
    }
    // Now archive into both: PostgreSQL finds a backlog of .ready files.
    let command = format!(
        "cp %p {arch}/%f && {BIN} --config {a} wal-push %p && {BIN} --config {b} wal-push %p",
        arch = first.arch.display(),
        a = first.config.display(),
        b = second.config.display()
    );
    cluster
        .psql(&format!("alter system set archive_command = '{command}'"))
        .expect("set archive_command");
    cluster.psql("select pg_reload_conf()").expect("reload");
    cluster.psql("insert into b values (99)").expect("insert");
    let last = cluster.switch_wal().expect("switch");
    cluster.wait_archived(&last, WAIT).expect("archived");

    let segments: Vec<String> = first
        .archived_copies()
        .iter()
        .map(|p| file_name(p))
        .filter(|n| n.len() == 24)
        .collect();
    assert!(segments.len() >= 12, "{segments:?}");
    for setup in [&first, &second] {
        let dest_dir = setup.scratch("fetched");
        for name in &segments {
            let dest = dest_dir.join(name);
            let out = setup
                .cmd()
                .args([
                    "wal-fetch",
                    "--prefetch",
                    "0",
                    name,
                    dest.to_str().expect("utf8"),
                ])
                .output()
                .expect("run");
            assert_success(
                &out,
                &format!("wal-fetch {name} from {}", setup.config.display()),
            );
            assert!(
                fs::read(&dest).expect("fetched") == fs::read(first.arch.join(name)).expect("copy"),
                "{name} differs"
            );
        }
    }
}

/// Output into a pipe whose reader has gone (`lifeboat info | head -1`): a quiet exit with 141,
/// as a process stopped by SIGPIPE, never a panic.
#[test]
fn closed_stdout_is_a_quiet_exit_not_a_panic() {
    let setup = Setup::new(Backend::Local, false);
    // The reading end is closed before lifeboat starts, so its first write finds no reader.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = setup
        .cmd()
        .arg("info")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("panicked"),
        "it panicked: {}",
        stderr(&out)
    );
}
