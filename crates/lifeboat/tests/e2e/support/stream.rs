//! A `lifeboat wal-stream` process for tests: started as the cluster owner with its stderr in a
//! log file, stopped with SIGTERM (a clean stop) or SIGKILL (a crash), and waits on what the
//! server reports about it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::TestCluster;

use super::{Setup, WAIT};

/// A running `lifeboat wal-stream`, killed on drop if still running.
pub struct Receiver {
    pub child: Child,
    pub log: PathBuf,
}

impl Receiver {
    /// Start `wal-stream --db <cluster> EXTRA...` logging to `wal-stream.log`.
    pub fn start(setup: &Setup, cluster: &LocalCluster, extra: &[&str]) -> Receiver {
        Self::start_logged(setup, cluster, "wal-stream.log", extra)
    }

    /// Start `wal-stream --db <cluster> EXTRA...` logging to `log_name` in the setup's directory.
    pub fn start_logged(
        setup: &Setup,
        cluster: &LocalCluster,
        log_name: &str,
        extra: &[&str],
    ) -> Receiver {
        let log = setup.dir.path().join(log_name);
        let file = fs::File::create(&log).expect("receiver log");
        let child = setup
            .cmd()
            .arg("wal-stream")
            .arg("--db")
            .arg(cluster.conninfo())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start lifeboat wal-stream");
        Receiver { child, log }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the server lists the receiver as streaming.
    pub fn wait_streaming(&mut self, cluster: &LocalCluster) {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = cluster
                .psql("select state from pg_stat_replication where application_name = 'lifeboat'")
                .unwrap_or_default();
            if state == "streaming" {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wal-stream exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "wal-stream did not start streaming (state {state:?}):\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its exit status once it exits, or `None` if it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit status (0 expected: a clean stop flushes what it holds).
    pub fn terminate(mut self) -> ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        match self.wait_exit(Duration::from_secs(30)) {
            Some(status) => status,
            None => panic!("wal-stream did not stop on SIGTERM:\n{}", self.log_text()),
        }
    }

    /// SIGKILL: the receiver dies holding whatever it had not stored yet.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9 wal-stream");
        self.child.wait().expect("reap wal-stream");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until the receiver reports as flushed everything the server has written.
pub fn wait_flushed(cluster: &LocalCluster, receiver: &Receiver) {
    let lsn = cluster.psql("select pg_current_wal_lsn()").expect("lsn");
    let deadline = Instant::now() + WAIT;
    loop {
        let done = cluster
            .psql(&format!(
                "select flush_lsn >= '{lsn}' from pg_stat_replication where application_name = 'lifeboat'"
            ))
            .unwrap_or_default();
        if done == "t" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver never reported {lsn} flushed:\n{}",
            receiver.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster archiving into `setup`'s repository, `wal-stream EXTRA...` streaming from it, a
/// table `t (id bigint primary key, note text)` and a backup. With `--synchronous` in `extra` the
/// receiver is the server's only synchronous standby; it starts before the first commit in any
/// mode, since in that one every commit waits for it.
pub fn streamed_cluster(setup: &Setup, extra: &[&str]) -> (TestCluster, Receiver) {
    streamed_cluster_with(setup, extra, "")
}

/// [`streamed_cluster`] with `extra_conf` appended to the server's postgresql.conf.
pub fn streamed_cluster_with(
    setup: &Setup,
    extra: &[&str],
    extra_conf: &str,
) -> (TestCluster, Receiver) {
    let mut conf = format!("{}{extra_conf}", setup.archive_conf());
    if extra.contains(&"--synchronous") {
        conf.push_str("synchronous_standby_names = 'lifeboat'\nsynchronous_commit = on\n");
    }
    let cluster = TestCluster::start_new(&conf).expect("cluster");
    let mut receiver = Receiver::start(setup, &cluster, extra);
    receiver.wait_streaming(&cluster);
    cluster
        .psql("create table t (id bigint primary key, note text)")
        .expect("create table");
    setup.backup(&cluster);
    (cluster, receiver)
}
