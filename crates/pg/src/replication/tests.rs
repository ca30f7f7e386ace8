//! The replication client against real PostgreSQL clusters (a fresh one per test): identity,
//! slots, streaming a whole segment (also through cancelled reads), a timeline switch on a
//! promoted standby, and password authentication.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::cluster::{self as pgc, InitOptions, LocalCluster, StopMode};
use crate::history::TimelineHistory;
use crate::session::Session;
use crate::walname::WalSegmentName;

const TIMEOUT: Duration = Duration::from_secs(30);
const SEG_SIZE: u64 = 16 << 20;

/// A fresh cluster in a temporary directory the cluster owner can use, stopped on drop (like
/// the session tests' one; `LocalCluster::initdb` sets `wal_level = replica` and
/// `max_wal_senders`, and initdb's pg_hba.conf trusts local and 127.0.0.1 replication
/// connections).
struct Scratch {
    cluster: LocalCluster,
    dir: tempfile::TempDir,
    /// Other clusters made from this one (standbys), stopped first.
    others: Vec<LocalCluster>,
}

impl Scratch {
    fn start(extra_conf: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-replication-")
            .tempdir()
            .unwrap();
        let owner = pgc::cluster_owner().unwrap();
        if let Some(owner) = &owner {
            pgc::chown_recursive(dir.path(), owner).unwrap();
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let opts = InitOptions {
            port: crate::net::free_port().unwrap(),
            socket_dir: dir.path().join("sock"),
            extra_conf: format!("max_connections = 20\n{extra_conf}\n"),
            ..InitOptions::default()
        };
        let cluster = LocalCluster::initdb(&dir.path().join("data"), &opts)
            .unwrap()
            .with_log_file(dir.path().join("postgres.log"));
        cluster.start(TIMEOUT).unwrap();
        Scratch {
            cluster,
            dir,
            others: Vec::new(),
        }
    }

    fn spec(&self) -> ConnSpec {
        ConnSpec::with_env(Some(&self.cluster.conninfo()), &|_| None).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for cluster in self.others.iter().chain([&self.cluster]) {
            if std::thread::panicking() {
                eprintln!(
                    "server log of {}:\n{}",
                    cluster.datadir.display(),
                    cluster.log_tail(30)
                );
            }
            if cluster.stop(StopMode::Immediate).is_err() || cluster.is_running() {
                let _ = cluster.kill9();
            }
        }
    }
}

async fn connect(spec: &ConnSpec) -> ReplicationConnection {
    ReplicationConnection::connect(spec, "lifeboat_test", TIMEOUT)
        .await
        .unwrap()
}

fn segment_start(lsn: Lsn) -> Lsn {
    Lsn(lsn.0 - lsn.segment_offset(SEG_SIZE))
}

fn segment_file(cluster: &LocalCluster, tli: TimelineId, lsn: Lsn) -> PathBuf {
    let name = WalSegmentName::from_lsn(tli, lsn, SEG_SIZE);
    cluster.datadir.join("pg_wal").join(name.to_string())
}

#[tokio::test]
async fn identity_and_slots() {
    let scratch = Scratch::start("");
    let spec = scratch.spec();
    let mut conn = connect(&spec).await;
    assert!(conn.server_version_num() >= 150_000);
    assert_eq!(
        conn.server_version_num().to_string(),
        scratch.cluster.psql("show server_version_num").unwrap()
    );

    let id = conn.identify_system().await.unwrap();
    let session = Session::connect(&spec, TIMEOUT).await.unwrap();
    assert_eq!(
        id.system_identifier,
        session.system_identifier().await.unwrap()
    );
    assert_eq!(id.timeline, TimelineId::ONE);
    assert!(id.xlogpos > Lsn::INVALID);
    // The connection shows up as a WAL sender under our application name.
    assert_eq!(
        scratch
            .cluster
            .psql(
                "select backend_type from pg_stat_activity where application_name = 'lifeboat_test'"
            )
            .unwrap(),
        "walsender"
    );

    assert_eq!(conn.read_replication_slot("lifeboat").await.unwrap(), None);
    let SlotCreated::Created { lsn } = conn.create_physical_slot("lifeboat").await.unwrap() else {
        panic!("the slot was not created")
    };
    // The slot reserves WAL from about the current position (PostgreSQL picks a point a little
    // before IDENTIFY_SYSTEM's flush position).
    assert!(
        lsn > Lsn::INVALID && lsn.segment_number(SEG_SIZE) == id.xlogpos.segment_number(SEG_SIZE)
    );
    assert_eq!(
        conn.create_physical_slot("lifeboat").await.unwrap(),
        SlotCreated::AlreadyExists
    );
    let position = conn
        .read_replication_slot("lifeboat")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(position.restart_lsn, Some(lsn));
    assert_eq!(position.restart_tli, Some(TimelineId::ONE));
    assert_eq!(
        scratch
            .cluster
            .psql("select restart_lsn from pg_replication_slots where slot_name = 'lifeboat'")
            .unwrap(),
        lsn.to_string()
    );
    assert!(conn.read_replication_slot("Bad Name").await.is_err());

    // A failed command leaves the connection usable.
    let err = conn.timeline_history(TimelineId::ONE).await.unwrap_err();
    assert!(err.server_error().is_some(), "{err}");
    assert_eq!(
        conn.identify_system().await.unwrap().timeline,
        TimelineId::ONE
    );
}

/// Reads the stream until `want` bytes from `start` have arrived, checking that the pieces
/// follow each other; with `cancel`, every read runs under a 1 ms timeout that often fires
/// half-way through a message.
async fn collect(stream: &mut WalStream, start: Lsn, want: u64, cancel: bool) -> (Vec<u8>, u32) {
    let mut bytes = Vec::new();
    let mut cancelled = 0;
    let deadline = Instant::now() + TIMEOUT;
    while (bytes.len() as u64) < want {
        assert!(
            Instant::now() < deadline,
            "only {} bytes arrived",
            bytes.len()
        );
        let message = if cancel {
            match tokio::time::timeout(Duration::from_millis(1), stream.next()).await {
                Ok(message) => message.unwrap(),
                Err(_) => {
                    cancelled += 1;
                    continue;
                }
            }
        } else {
            stream.next().await.unwrap()
        };
        match message {
            StreamMessage::XLogData {
                start: at, data, ..
            } => {
                assert_eq!(at, Lsn(start.0 + bytes.len() as u64), "a gap or overlap");
                bytes.extend_from_slice(&data);
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::End { .. } => panic!("the stream ended after {} bytes", bytes.len()),
        }
    }
    (bytes, cancelled)
}

/// Streams the current segment on a slot while rows are written and WAL switched; the bytes
/// must equal the segment file. Then the slot follows our flush position.
async fn stream_one_segment(cancel: bool) {
    let scratch = Scratch::start("");
    let spec = scratch.spec();
    let mut conn = connect(&spec).await;
    let SlotCreated::Created { lsn } = conn.create_physical_slot("lifeboat").await.unwrap() else {
        panic!("the slot was not created")
    };
    let id = conn.identify_system().await.unwrap();
    let start = segment_start(lsn);
    let mut stream = conn
        .start_physical(Some("lifeboat"), start, id.timeline)
        .await
        .unwrap();

    // A second receiver on the same slot is refused.
    let other = connect(&spec).await;
    let err = other
        .start_physical(Some("lifeboat"), start, id.timeline)
        .await
        .unwrap_err();
    assert!(err.is_slot_in_use(), "{err}");
    assert!(err.to_string().contains("stop it or wait"), "{err}");

    // Several MB of WAL while we read, then the rest of the segment by a switch.
    let cluster = scratch.cluster.clone();
    let writer = tokio::task::spawn_blocking(move || {
        cluster
            .psql("create table t as select g, repeat('x', 200) as pad from generate_series(1, 20000) g")
            .unwrap();
        cluster.psql("select pg_switch_wal()").unwrap();
    });
    let (bytes, cancelled) = collect(&mut stream, start, SEG_SIZE, cancel).await;
    writer.await.unwrap();
    let file = fs::read(segment_file(&scratch.cluster, id.timeline, start)).unwrap();
    assert_eq!(bytes.len(), file.len());
    assert!(
        bytes[..SEG_SIZE as usize] == file[..],
        "streamed bytes differ from the file"
    );
    if cancel {
        eprintln!("{cancelled} reads were cancelled");
        assert!(
            cancelled > 0,
            "no read was ever cancelled: the test proves nothing"
        );
    }

    // The slot advances to what we report as flushed.
    let end = Lsn(start.0 + SEG_SIZE);
    stream.send_status(end, end, end, true).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let restart: Lsn = scratch
            .cluster
            .psql("select restart_lsn from pg_replication_slots where slot_name = 'lifeboat'")
            .unwrap()
            .parse()
            .unwrap();
        if restart >= end {
            break;
        }
        assert!(Instant::now() < deadline, "restart_lsn stays at {restart}");
        // Keep reading so the server is never blocked on a full socket.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    }

    // Stopping the stream ourselves gives the connection back.
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(next, None);
    assert_eq!(
        conn.identify_system().await.unwrap().timeline,
        TimelineId::ONE
    );
}

#[tokio::test]
async fn streams_a_segment_and_advances_the_slot() {
    stream_one_segment(false).await;
}

#[tokio::test]
async fn cancelled_reads_lose_nothing() {
    stream_one_segment(true).await;
}

#[tokio::test]
async fn removed_wal_is_reported() {
    let scratch = Scratch::start("min_wal_size = 32MB\nmax_wal_size = 64MB\n");
    let spec = scratch.spec();
    let mut conn = connect(&spec).await;
    let first = conn.identify_system().await.unwrap();
    for _ in 0..4 {
        scratch
            .cluster
            .psql("create table if not exists t (x int); insert into t values (1); select pg_switch_wal()")
            .unwrap();
    }
    scratch.cluster.psql("checkpoint").unwrap();
    scratch.cluster.psql("checkpoint").unwrap();
    let old = segment_file(&scratch.cluster, TimelineId::ONE, first.xlogpos);
    assert!(!old.exists(), "{} is still there", old.display());
    // The server accepts the command and fails once in copy mode, on its first read.
    let mut stream = conn
        .start_physical(None, segment_start(first.xlogpos), TimelineId::ONE)
        .await
        .unwrap();
    let err = stream.next().await.unwrap_err();
    assert!(err.is_wal_removed(), "{err}");
    assert!(!err.is_slot_in_use() && !err.is_connection_lost(), "{err}");
    assert!(
        err.to_string().contains("restart from the archive"),
        "{err}"
    );
    // The connection survives an ERROR.
    assert_eq!(
        stream.next().await.unwrap(),
        StreamMessage::End {
            next_timeline: None
        }
    );
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(next, None);
    conn.identify_system().await.unwrap();
}

/// Makes a role and puts a pg_hba.conf line for it before initdb's trust lines.
fn add_role(cluster: &LocalCluster, role: &str, encryption: &str, method: &str) {
    cluster
        .psql(&format!(
            "set password_encryption = '{encryption}'; \
             create role {role} login replication password 'sekrit-{role}'"
        ))
        .unwrap();
    let hba = cluster.datadir.join("pg_hba.conf");
    let old = fs::read_to_string(&hba).unwrap();
    fs::write(
        &hba,
        format!("host replication {role} 127.0.0.1/32 {method}\n{old}"),
    )
    .unwrap();
    cluster.psql("select pg_reload_conf()").unwrap();
}

#[tokio::test]
async fn password_authentication() {
    let scratch = Scratch::start("");
    let cluster = &scratch.cluster;
    add_role(cluster, "rep_scram", "scram-sha-256", "scram-sha-256");
    add_role(cluster, "rep_md5", "md5", "md5");
    add_role(cluster, "rep_plain", "scram-sha-256", "password");
    cluster.psql("create role norep login").unwrap();
    let spec = |user: &str, password: Option<&str>| {
        let password = password
            .map(|p| format!(" password={p}"))
            .unwrap_or_default();
        ConnSpec::with_env(
            Some(&format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres{password}",
                cluster.port
            )),
            &|_| None,
        )
        .unwrap()
    };

    for user in ["rep_scram", "rep_md5", "rep_plain"] {
        let password = format!("sekrit-{user}");
        let mut conn = ReplicationConnection::connect(&spec(user, Some(&password)), "t", TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        conn.identify_system().await.unwrap();

        let err = ReplicationConnection::connect(&spec(user, Some("wrong")), "t", TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.is_wrong_password(), "{user}: {err}");
        let text = err.to_string();
        assert!(text.contains("check the password"), "{text}");
        assert!(
            !text.contains("wrong") && !format!("{err:?}").contains("wrong"),
            "{text}"
        );

        let err = ReplicationConnection::connect(&spec(user, None), "t", TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("PGPASSWORD"), "{err}");
    }

    // A role without REPLICATION (trusted by initdb's lines).
    let err = ReplicationConnection::connect(&spec("norep", None), "t", TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("REPLICATION attribute"), "{err}");

    // No pg_hba.conf line: replace them all by one that does not cover replication.
    fs::write(
        cluster.datadir.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    cluster.psql("select pg_reload_conf()").unwrap();
    let err = ReplicationConnection::connect(&spec("rep_scram", None), "t", TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`replication`"), "{err}");
    let _ = &scratch.dir;
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {said}");
}

/// A standby made by pg_basebackup from the scratch cluster and started.
fn start_standby(scratch: &mut Scratch) -> LocalCluster {
    let datadir = scratch.dir.path().join("standby");
    run(scratch
        .cluster
        .command("pg_basebackup")
        .arg("-D")
        .arg(&datadir)
        .args(["-R", "-X", "stream", "-c", "fast"]));
    let standby = LocalCluster::existing(
        &datadir,
        crate::net::free_port().unwrap(),
        &scratch.cluster.socket_dir,
        scratch.cluster.owner.clone(),
    )
    .unwrap()
    .with_log_file(scratch.dir.path().join("standby.log"));
    standby.start(TIMEOUT).unwrap();
    scratch.others.push(standby.clone());
    standby
}

#[tokio::test]
async fn timeline_switch_ends_the_stream() {
    let mut scratch = Scratch::start("");
    scratch
        .cluster
        .psql("create table t as select g from generate_series(1, 1000) g")
        .unwrap();
    let standby = start_standby(&mut scratch);
    // Let the standby stream some WAL so the switch point lies inside a segment it has.
    scratch
        .cluster
        .psql("insert into t select g from generate_series(1, 1000) g")
        .unwrap();
    let target = scratch.cluster.psql("select pg_current_wal_lsn()").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while standby
        .psql(&format!("select pg_last_wal_replay_lsn() >= '{target}'"))
        .unwrap()
        != "t"
    {
        assert!(Instant::now() < deadline, "the standby does not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run(standby
        .command("pg_ctl")
        .arg("-D")
        .arg(&standby.datadir)
        .args(["-w", "-t", "60", "promote"]));
    let spec = ConnSpec::with_env(Some(&standby.conninfo()), &|_| None).unwrap();
    let mut conn = connect(&spec).await;
    let two = TimelineId::new(2).unwrap();
    assert_eq!(conn.identify_system().await.unwrap().timeline, two);
    let (name, content) = conn.timeline_history(two).await.unwrap();
    assert_eq!(name, "00000002.history");
    let history = TimelineHistory::parse(two, std::str::from_utf8(&content).unwrap()).unwrap();
    let switch = history.switch_point_of(TimelineId::ONE).unwrap();

    // From before the switch on timeline 1: WAL up to the switch point, then the end.
    let start = if switch.segment_offset(SEG_SIZE) == 0 {
        Lsn(switch.0 - SEG_SIZE)
    } else {
        segment_start(switch)
    };
    let mut stream = conn
        .start_physical(None, start, TimelineId::ONE)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let next = loop {
        match tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            StreamMessage::XLogData {
                start: at, data, ..
            } => {
                assert_eq!(at, Lsn(start.0 + bytes.len() as u64));
                bytes.extend_from_slice(&data);
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::End { next_timeline } => break next_timeline,
        }
    };
    assert_eq!(next, Some((two, switch)));
    assert_eq!(Lsn(start.0 + bytes.len() as u64), switch);
    // The next call says the same; sending status after the end is harmless.
    assert_eq!(
        stream.next().await.unwrap(),
        StreamMessage::End {
            next_timeline: Some((two, switch))
        }
    );
    stream
        .send_status(switch, switch, switch, false)
        .await
        .unwrap();
    let old = segment_file(&standby, TimelineId::ONE, start);
    if let Ok(file) = fs::read(&old) {
        assert!(
            file[..bytes.len()] == bytes[..],
            "streamed bytes differ from {}",
            old.display()
        );
    }
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(next, Some((two, switch)));
    let (name, again) = conn.timeline_history(two).await.unwrap();
    assert_eq!((name.as_str(), &again), ("00000002.history", &content));

    // Exactly at the switch point the server skips copy mode and answers at once.
    let mut stream = conn
        .start_physical(None, switch, TimelineId::ONE)
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap(),
        StreamMessage::End {
            next_timeline: Some((two, switch))
        }
    );
    let (mut conn, _) = stream.finish().await.unwrap();
    assert_eq!(conn.identify_system().await.unwrap().timeline, two);
}
