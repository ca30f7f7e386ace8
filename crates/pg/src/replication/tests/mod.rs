//! The replication client against real PostgreSQL clusters (a fresh one per test): identity and
//! slots here, streaming (`stream`), a timeline switch on a promoted standby (`timeline`),
//! password authentication (`auth`).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::cluster::{self as pgc, InitOptions, LocalCluster, StopMode};
use crate::session::Session;
use crate::walname::WalSegmentName;

mod auth;
mod stream;
mod timeline;

pub(super) const TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const SEG_SIZE: u64 = 16 << 20;

/// A fresh cluster in a temporary directory the cluster owner can use, stopped on drop (like
/// the session tests' one; `LocalCluster::initdb` sets `wal_level = replica` and
/// `max_wal_senders`, and initdb's pg_hba.conf trusts local and 127.0.0.1 replication
/// connections).
pub(super) struct Scratch {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
    /// Other clusters made from this one (standbys), stopped first.
    pub others: Vec<LocalCluster>,
}

impl Scratch {
    pub fn start(extra_conf: &str) -> Scratch {
        Scratch::start_in(None, extra_conf)
    }

    /// With the server programs in `bindir` (another major), or the default ones.
    pub fn start_in(bindir: Option<&Path>, extra_conf: &str) -> Scratch {
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
        let datadir = dir.path().join("data");
        let cluster = match bindir {
            Some(bindir) => LocalCluster::initdb_in(bindir, &datadir, &opts),
            None => LocalCluster::initdb(&datadir, &opts),
        }
        .unwrap()
        .with_log_file(dir.path().join("postgres.log"));
        cluster.start(TIMEOUT).unwrap();
        Scratch {
            cluster,
            dir,
            others: Vec::new(),
        }
    }

    pub fn spec(&self) -> ConnSpec {
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

pub(super) async fn connect(spec: &ConnSpec) -> ReplicationConnection {
    ReplicationConnection::connect(spec, "lifeboat_test", TIMEOUT)
        .await
        .unwrap()
}

pub(super) fn segment_start(lsn: Lsn) -> Lsn {
    Lsn(lsn.0 - lsn.segment_offset(SEG_SIZE))
}

/// `restart_lsn` of the slot named `lifeboat`, through SQL.
pub(super) fn slot_restart_lsn(cluster: &LocalCluster) -> Lsn {
    cluster
        .psql("select restart_lsn from pg_replication_slots where slot_name = 'lifeboat'")
        .unwrap()
        .parse()
        .unwrap()
}

pub(super) fn segment_file(cluster: &LocalCluster, tli: TimelineId, lsn: Lsn) -> PathBuf {
    let name = WalSegmentName::from_lsn(tli, lsn, SEG_SIZE);
    cluster.datadir.join("pg_wal").join(name.to_string())
}

#[tokio::test]
async fn identity_and_slots() {
    let scratch = Scratch::start("");
    let spec = scratch.spec();
    // Hosts are tried in order: a socket directory without a server first.
    let cluster = &scratch.cluster;
    let two_hosts = ConnSpec::with_env(
        Some(&format!(
            "host=/nonexistent,{} port={} user=postgres",
            cluster.socket_dir.display(),
            cluster.port
        )),
        &|_| None,
    )
    .unwrap();
    let mut conn = connect(&two_hosts).await;
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
    assert_eq!(conn.wal_segment_size().await.unwrap(), 16 << 20);
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

/// 13 and 14 (when installed): no READ_REPLICATION_SLOT (refused before asking: those servers
/// answer "cannot execute SQL commands in WAL sender for physical replication"), slots
/// created all the same, streaming from them works.
#[tokio::test]
async fn older_servers() {
    for major in [13, 14] {
        let Ok(bindir) = pgc::bindir_for_major(major) else {
            eprintln!("PostgreSQL {major} is not installed: skipped");
            continue;
        };
        let scratch = Scratch::start_in(Some(&bindir), "");
        let mut conn = connect(&scratch.spec()).await;
        assert_eq!(conn.server_version_num() / 10_000, major);
        let err = conn.read_replication_slot("lifeboat").await.unwrap_err();
        assert!(
            matches!(err, ReplicationError::Unsupported { needs: 15, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("pg_replication_slots"), "{err}");
        let SlotCreated::Created { lsn } = conn.create_physical_slot("lifeboat").await.unwrap()
        else {
            panic!("the slot was not created")
        };
        let restart: Lsn = slot_restart_lsn(&scratch.cluster);
        assert_eq!(
            lsn.segment_number(SEG_SIZE),
            restart.segment_number(SEG_SIZE),
            "{lsn} vs {restart}"
        );
        let mut stream = conn
            .start_physical(Some("lifeboat"), segment_start(lsn), TimelineId::ONE)
            .await
            .unwrap();
        loop {
            match stream.next().await.unwrap() {
                StreamMessage::XLogData { start, data, .. } => {
                    assert_eq!(start, segment_start(lsn));
                    assert!(!data.is_empty());
                    break;
                }
                StreamMessage::Keepalive { .. } => {}
                StreamMessage::End { .. } => panic!("the stream ended"),
            }
        }
    }
}
