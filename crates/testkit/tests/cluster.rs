//! Real PostgreSQL clusters through `lifeboat_pg::cluster` and the test harness built on it.

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use lifeboat_pg::cluster::{
    InitOptions, LocalCluster, StopMode, cluster_owner, pg_bindir, pid_alive,
};
use lifeboat_testkit::{TestCluster, TestDir, free_port};

const START: Duration = Duration::from_secs(60);

#[test]
fn pg_bindir_finds_initdb() -> anyhow::Result<()> {
    let bindir = pg_bindir()?;
    for program in [
        "initdb",
        "postgres",
        "pg_ctl",
        "psql",
        "pg_isready",
        "pgbench",
    ] {
        assert!(
            bindir.join(program).is_file(),
            "{program} missing in {}",
            bindir.display()
        );
    }
    Ok(())
}

#[test]
fn free_port_never_repeats() {
    let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len());
    assert!(!ports.contains(&0));
}

#[test]
fn test_dir_is_owned_by_the_cluster_owner_and_removed_on_drop() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new()?;
    let path = dir.path().to_path_buf();
    let meta = std::fs::metadata(&path)?;
    assert_eq!(meta.mode() & 0o777, 0o700);
    if let Some(owner) = cluster_owner()? {
        assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid));
    }
    std::fs::write(path.join("f"), "x")?;
    drop(dir);
    if std::env::var_os("LIFEBOAT_KEEP_TEST_DIRS").is_none() {
        assert!(!path.exists(), "{} survived its TestDir", path.display());
    }
    Ok(())
}

#[test]
fn start_query_switch_wal_and_stop() -> anyhow::Result<()> {
    let pg = TestCluster::start_new("")?;
    assert!(pg.is_running());
    assert_eq!(pg.psql("select 1")?, "1");
    assert_eq!(pg.psql("show data_checksums")?, "on");
    assert_eq!(pg.psql("show fsync")?, "on");
    assert_eq!(pg.psql("show wal_level")?, "replica");
    assert_eq!(pg.psql("show listen_addresses")?, "127.0.0.1");
    assert_eq!(pg.psql("show shared_buffers")?, "16MB");
    assert_eq!(pg.psql("show port")?, pg.port.to_string());

    pg.psql("create table t (id int primary key, v text)")?;
    pg.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g")?;
    assert_eq!(pg.psql("select count(*) from t")?, "1000");
    pg.psql("create database other")?;
    assert_eq!(pg.psql_db("other", "select current_database()")?, "other");

    let before = pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())")?;
    let switched = pg.switch_wal()?;
    assert!(
        switched >= before,
        "switched out {switched}, was writing {before}"
    );
    let after = pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())")?;
    assert!(
        after > switched,
        "still writing {after} after switching out {switched}"
    );

    // The conninfo string and the prepared command reach the same server.
    let out = pg
        .command("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &pg.conninfo(),
            "-c",
            "select count(*) from t",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");

    let err = pg
        .psql("select * from no_such_table")
        .err()
        .context("query on a missing table succeeded")?;
    let msg = err.to_string();
    assert!(
        msg.contains("no_such_table") && msg.contains("does not exist"),
        "{msg}"
    );

    pg.stop(StopMode::Fast)?;
    assert!(!pg.is_running());
    // PostgreSQL removes postmaster.pid (what `pg_ctl stop -w` waits for) just before it logs
    // this line (miscinit.c, UnlinkLockFiles): give the exiting postmaster a moment to write it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pg.log_tail(5).contains("database system is shut down")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        pg.log_tail(5).contains("database system is shut down"),
        "{}",
        pg.log_tail(20)
    );
    pg.stop(StopMode::Fast)?; // stopping a stopped cluster is fine
    Ok(())
}

#[test]
fn kill9_then_start_recovers() -> anyhow::Result<()> {
    let pg = TestCluster::start_new("")?;
    pg.psql("create table t (i int); insert into t select generate_series(1, 500)")?;
    let pid = pg.postmaster_pid().context("no postmaster.pid")?;

    pg.kill9()?;
    assert!(!pid_alive(pid), "postmaster {pid} survived kill9");
    assert!(!pg.is_running());
    assert!(
        pg.datadir.join("postmaster.pid").exists(),
        "a crash leaves postmaster.pid behind"
    );
    assert!(pg.psql("select 1").is_err());

    pg.start(START)?;
    assert_eq!(pg.psql("select count(*) from t")?, "500");
    let log = pg.log_tail(200);
    assert!(
        log.contains("not properly shut down"),
        "no crash recovery in the log:\n{log}"
    );

    // An immediate stop also leaves work for recovery, and loses nothing committed.
    pg.psql("insert into t select generate_series(501, 600)")?;
    pg.stop(StopMode::Immediate)?;
    pg.start(START)?;
    assert_eq!(pg.psql("select count(*) from t")?, "600");
    Ok(())
}

#[test]
fn stopped_new_is_not_running_until_started() -> anyhow::Result<()> {
    let pg = TestCluster::stopped_new("work_mem = '8MB'")?;
    assert!(!pg.is_running());
    assert!(pg.datadir.join("PG_VERSION").is_file());
    let err = pg
        .psql("select 1")
        .err()
        .context("query on a stopped cluster succeeded")?;
    assert!(err.to_string().contains("is the server running"), "{err}");
    let err = pg
        .wait_ready(Duration::from_millis(300))
        .err()
        .context("a stopped cluster was ready")?;
    assert!(
        err.to_string().contains("did not accept connections"),
        "{err}"
    );
    pg.start(START)?;
    pg.wait_ready(Duration::from_secs(10))?;
    assert_eq!(pg.psql("show work_mem")?, "8MB");
    let err = pg.start(START).err().context("second start succeeded")?;
    assert!(err.to_string().contains("already running"), "{err}");
    Ok(())
}

#[test]
fn initdb_refuses_a_non_empty_directory() -> anyhow::Result<()> {
    let dir = TestDir::new()?;
    let datadir = dir.path().join("data");
    std::fs::create_dir(&datadir)?;
    std::fs::write(datadir.join("precious"), "keep me")?;
    let opts = InitOptions {
        port: free_port(),
        ..InitOptions::default()
    };
    let err = LocalCluster::initdb(&datadir, &opts)
        .err()
        .context("initdb into a non-empty directory succeeded")?;
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(datadir.join("precious"))?,
        "keep me"
    );
    Ok(())
}

#[test]
fn drop_stops_the_server() -> anyhow::Result<()> {
    let pg = TestCluster::start_new("")?;
    let pid = pg.postmaster_pid().context("no postmaster.pid")?;
    let dir = pg.dir().to_path_buf();
    assert!(pid_alive(pid));
    drop(pg);
    assert!(!pid_alive(pid), "postmaster {pid} outlived its TestCluster");
    if std::env::var_os("LIFEBOAT_KEEP_TEST_DIRS").is_none() {
        assert!(!dir.exists(), "{} outlived its TestCluster", dir.display());
    }
    Ok(())
}

#[test]
fn drop_stops_the_server_when_the_test_panics() -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let result = thread::spawn(move || {
        let pg = TestCluster::start_new("").expect("start a cluster");
        tx.send(pg.postmaster_pid())
            .expect("report the postmaster pid");
        panic!("deliberate panic with a running cluster");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv()?.context("no postmaster.pid")?;
    assert!(
        !pid_alive(pid),
        "postmaster {pid} outlived a panicking test"
    );
    Ok(())
}

#[test]
fn archived_wal_is_waited_for_and_failures_are_reported() -> anyhow::Result<()> {
    let archive = TestDir::new()?;
    let conf = format!(
        "archive_mode = on\narchive_command = 'cp %p {}/%f'\n",
        archive.path().display()
    );
    let pg = TestCluster::start_new(&conf)?;
    pg.psql("create table t as select generate_series(1, 1000) i")?;
    let segment = pg.switch_wal()?;
    pg.wait_archived(&segment, Duration::from_secs(30))?;
    assert!(
        archive.path().join(&segment).is_file(),
        "{segment} not in the archive"
    );

    // A broken archive_command: the error says so.
    pg.append_conf("archive_command = 'false'")?;
    pg.psql("select pg_reload_conf()")?;
    pg.psql("insert into t select generate_series(1, 1000)")?;
    let segment = pg.switch_wal()?;
    let err = pg
        .wait_archived(&segment, Duration::from_secs(3))
        .err()
        .context("archiving with `false` succeeded")?;
    let msg = err.to_string();
    assert!(
        msg.contains(&segment) && msg.contains("failed attempts"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn pgbench_and_basebackup_into_an_existing_cluster() -> anyhow::Result<()> {
    let src = TestCluster::start_new("")?;
    src.pgbench_init(1)?;
    let out = src.pgbench(&["-n", "-c", "2", "-t", "50"])?;
    assert!(out.contains("100/100"), "{out}");
    let history = src.psql("select count(*) from pgbench_history")?;
    assert_eq!(history, "100");

    // Copy it with pg_basebackup, as a restore would, and run the copy on another port.
    let target = TestDir::new()?;
    let datadir = target.path().join("data");
    let out = src
        .command("pg_basebackup")
        .arg("-D")
        .arg(&datadir)
        .args(["-X", "stream", "-c", "fast"])
        .output()?;
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sock = target.path().to_path_buf();
    let copy = LocalCluster::existing(&datadir, free_port(), &sock, cluster_owner()?)?;
    let copy = TestCluster::adopt(target, copy);
    copy.start(START)?;
    assert_eq!(copy.psql("show port")?, copy.port.to_string());
    assert_ne!(copy.port, src.port);
    assert_eq!(copy.psql("select count(*) from pgbench_history")?, history);
    assert_eq!(copy.psql("show data_checksums")?, "on");
    Ok(())
}
