//! Sessions against a real server: a fresh cluster per test.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

use crate::backup_label::BackupLabel;
use crate::cluster::{self as pgc, InitOptions, LocalCluster, StopMode};

/// A fresh cluster in a temporary directory the cluster owner can use, stopped on drop. The
/// test harness crate has a richer one but depends on this crate, so it cannot be used here.
struct Scratch {
    cluster: LocalCluster,
    dir: tempfile::TempDir,
}

impl Scratch {
    fn start() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-session-")
            .tempdir()
            .unwrap();
        let owner = pgc::cluster_owner().unwrap();
        if let Some(owner) = &owner {
            pgc::chown_recursive(dir.path(), owner).unwrap();
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let port = crate::net::free_port().unwrap();
        let opts = InitOptions {
            port,
            socket_dir: dir.path().join("sock"),
            extra_conf: "max_connections = 20\nshared_buffers = 16MB\n".to_owned(),
            ..InitOptions::default()
        };
        let cluster = LocalCluster::initdb(&dir.path().join("data"), &opts)
            .unwrap()
            .with_log_file(dir.path().join("postgres.log"));
        cluster.start(Duration::from_secs(60)).unwrap();
        Scratch { cluster, dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.cluster.log_tail(30));
        }
        if self.cluster.stop(StopMode::Immediate).is_err() || self.cluster.is_running() {
            let _ = self.cluster.kill9();
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn backup_cycle_on_a_real_server() {
    let scratch = Scratch::start();
    let cluster = &scratch.cluster;
    let spec = ConnSpec::with_env(Some(&cluster.conninfo()), &|_| None).unwrap();
    let session = Session::connect(&spec, TIMEOUT).await.unwrap();
    assert!(session.server_version_num() >= MIN_SERVER_VERSION_NUM);
    assert_eq!(
        session.server_version_num().to_string(),
        cluster.psql("show server_version_num").unwrap()
    );
    assert_eq!(session.setting("idle_session_timeout").await.unwrap(), "0");
    assert_eq!(
        session.setting("application_name").await.unwrap(),
        "lifeboat"
    );
    assert_eq!(
        fs::canonicalize(session.data_directory().await.unwrap()).unwrap(),
        fs::canonicalize(&cluster.datadir).unwrap()
    );
    let control = crate::control::parse_control_file(
        &fs::read(cluster.datadir.join("global/pg_control")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        session.system_identifier().await.unwrap(),
        control.system_identifier
    );
    assert!(!session.is_in_recovery().await.unwrap());
    assert!(session.tablespaces().await.unwrap().is_empty());

    // A tablespace in a directory of the cluster owner.
    let location = scratch.dir.path().join("ts one");
    fs::create_dir(&location).unwrap();
    if let Some(owner) = &cluster.owner {
        pgc::chown_recursive(&location, owner).unwrap();
    }
    cluster
        .psql(&format!(
            "create tablespace extra location '{}'",
            location.display()
        ))
        .unwrap();
    let spaces = session.tablespaces().await.unwrap();
    assert_eq!(spaces.len(), 1, "{spaces:?}");
    assert_eq!(spaces[0].name, "extra");
    assert_eq!(spaces[0].location, location);
    assert_eq!(
        spaces[0].oid.to_string(),
        cluster
            .psql("select oid from pg_tablespace where spcname = 'extra'")
            .unwrap()
    );

    // A backup without waiting for the archive (archiving is off).
    let start = session.backup_start("lifeboat test", true).await.unwrap();
    cluster.psql("create table t as select 1 as x").unwrap();
    let stopped = session.backup_stop(false).await.unwrap();
    assert!(stopped.lsn >= start, "{} < {start}", stopped.lsn);
    let label = BackupLabel::parse(&stopped.backup_label).unwrap();
    assert_eq!(label.label, "lifeboat test");
    assert_eq!(label.start_lsn, start);
    assert!(label.checkpoint_lsn >= start);
    assert_eq!(label.backup_method, "streamed");
    assert_eq!(label.backup_from, crate::backup_label::BackupFrom::Primary);
    let map = stopped.tablespace_map.unwrap();
    assert_eq!(
        map,
        format!("{} {}\n", spaces[0].oid, location.display()),
        "{map:?}"
    );

    // Stopping again: the server says there is no backup; the message carries its words.
    let err = session.backup_stop(false).await.unwrap_err().to_string();
    assert!(err.contains("stopping the backup failed on host="), "{err}");
    assert!(err.contains("backup is not in progress"), "{err}");

    // Waiting for the archive while archiving is off: the server says so in a notice.
    session.backup_start("second", false).await.unwrap();
    session.backup_stop(true).await.unwrap();
    let notices = session.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("WAL archiving is not enabled")),
        "{notices:?}"
    );
    assert!(session.take_notices().is_empty());

    // Labels with line breaks would break backup_label.
    let err = session.backup_start("a\nb", false).await.unwrap_err();
    assert!(matches!(err, SessionError::InvalidArgument(_)), "{err}");

    let (switch_lsn, name) = session.switch_wal().await.unwrap();
    assert_eq!(name.to_string().len(), 24);
    assert_eq!(
        name.to_string(),
        cluster
            .psql(&format!("select pg_walfile_name('{switch_lsn}')"))
            .unwrap()
    );
    let point = session.create_restore_point("before things").await.unwrap();
    assert!(point > switch_lsn);
    // pg_current_wal_lsn is the write position: the restore point record is inserted but
    // not necessarily written yet, so only the earlier switch is certainly behind it.
    assert!(session.current_wal_lsn().await.unwrap() >= switch_lsn);

    session
        .set_statement_timeout(Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(
        session.setting("statement_timeout").await.unwrap(),
        "1500ms"
    );
    session.set_statement_timeout(Duration::ZERO).await.unwrap();
    assert_eq!(session.setting("statement_timeout").await.unwrap(), "0");

    let err = session
        .setting("no_such_setting")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reading setting no_such_setting failed on host="),
        "{err}"
    );
    assert!(
        err.contains("unrecognized configuration parameter"),
        "{err}"
    );
}

#[tokio::test]
async fn a_backup_belongs_to_its_session() {
    let scratch = Scratch::start();
    let spec = ConnSpec::with_env(Some(&scratch.cluster.conninfo()), &|_| None).unwrap();
    let first = Session::connect(&spec, TIMEOUT).await.unwrap();
    let second = Session::connect(&spec, TIMEOUT).await.unwrap();
    first.backup_start("one", true).await.unwrap();
    // Another session has no backup to stop, and can run one of its own at the same time.
    assert!(second.backup_stop(false).await.is_err());
    second.backup_start("two", true).await.unwrap();
    let two = second.backup_stop(false).await.unwrap();
    assert_eq!(BackupLabel::parse(&two.backup_label).unwrap().label, "two");
    let one = first.backup_stop(false).await.unwrap();
    assert_eq!(BackupLabel::parse(&one.backup_label).unwrap().label, "one");

    // A session that is terminated reports the lost connection, not a bare "closed".
    first.backup_start("three", true).await.unwrap();
    scratch
        .cluster
        .psql(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where application_name = 'lifeboat'",
        )
        .unwrap();
    let err = first.backup_stop(false).await.unwrap_err().to_string();
    assert!(err.contains("stopping the backup failed"), "{err}");
    assert!(err.contains("terminat") || err.contains("lost"), "{err}");
}

#[tokio::test]
async fn connection_errors_say_where_and_hide_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "host={} port=1 user=someone password=sekrit dbname=x",
        dir.path().display()
    );
    let spec = ConnSpec::with_env(Some(&conninfo), &|_| None).unwrap();
    let err = Session::connect(&spec, TIMEOUT).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "could not connect to PostgreSQL at host={} port=1 user=someone dbname=x: ",
            dir.path().display()
        )),
        "{text}"
    );
    assert!(text.contains("is the server running"), "{text}");
    assert!(!text.contains("sekrit"), "{text}");
    assert!(!format!("{err:?}").contains("sekrit"));
}

#[tokio::test]
async fn wrong_database_is_named() {
    let scratch = Scratch::start();
    let conninfo = format!("{} dbname=nope", scratch.cluster.conninfo());
    let spec = ConnSpec::with_env(Some(&conninfo), &|_| None).unwrap();
    let err = Session::connect(&spec, TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("database \"nope\" does not exist"), "{err}");
    assert!(err.contains("connect to an existing database"), "{err}");
}

#[tokio::test]
async fn a_primary_reads_as_one() {
    let scratch = Scratch::start();
    let spec = ConnSpec::with_env(Some(&scratch.cluster.conninfo()), &|_| None).unwrap();
    let session = Session::connect(&spec, TIMEOUT).await.unwrap();
    let status = session.role_status().await.unwrap();
    assert!(!status.in_recovery);
    assert_eq!(status.timeline, Some(crate::timeline::TimelineId::ONE));
    assert!(
        status.flushed.is_some_and(|l| l > Lsn::INVALID),
        "{status:?}"
    );
    assert_eq!((status.received, status.replayed), (None, None));
    assert!(!status.streaming);
    assert_eq!(status.replay_lag_bytes(), None);
}
