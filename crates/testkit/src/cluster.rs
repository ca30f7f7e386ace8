//! Throwaway PostgreSQL clusters for tests, in temporary directories the cluster owner can use.
//!
//! [`TestDir`] is a temporary directory given to the cluster owner (the `postgres` OS user when we
//! are root); [`TestCluster`] is a small, fresh cluster inside one, stopped (immediately) when it is
//! dropped so a server never outlives its test, even one that panics. Set
//! `LIFEBOAT_KEEP_TEST_DIRS=1` to keep the directories (data, server log) for a post-mortem.

use std::fs;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};
use lifeboat_pg::cluster::{self as pgc, InitOptions, LocalCluster, StopMode};

use crate::free_port;

/// How long a test cluster may take to start on a busy 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings that keep a test cluster small and quick; `extra_conf` comes after and can override.
const TEST_CONF: &str = "\
max_connections = 20
shared_buffers = 16MB
max_worker_processes = 4
max_parallel_workers = 2
";

/// Make `cmd` run as the cluster owner (the `postgres` OS user when we are root, else ourselves).
///
/// # Panics
/// When we are root and there is no `postgres` OS user: no cluster could run either.
pub fn run_as_owner(cmd: &mut Command) -> &mut Command {
    match pgc::cluster_owner() {
        Ok(owner) => pgc::run_as(cmd, owner.as_ref()),
        Err(e) => panic!("{e}"),
    }
}

/// Give `path` and everything below it to the cluster owner (a no-op unless we are root).
pub fn chown_to_owner(path: &Path) -> anyhow::Result<()> {
    if let Some(owner) = pgc::cluster_owner()? {
        pgc::chown_recursive(path, &owner)?;
    }
    Ok(())
}

/// Copy the tree `from` (a repository fixture) to `to` with the modes a repository has, 0700 for
/// directories and 0600 for files (git keeps neither); give it to the cluster owner afterwards.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(from).with_context(|| format!("could not read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("could not copy {}", entry.path().display()))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// The server programs of PostgreSQL `major` (as a drill on this host would find them). The
/// error says how to install them: `scripts/setup.sh` puts 13 to 18 in `/usr/lib/postgresql`.
pub fn major_bindir(major: u32) -> anyhow::Result<PathBuf> {
    pgc::bindir_for_major(major).with_context(|| {
        format!("PostgreSQL {major} is needed by this test: run `bash scripts/setup.sh`, which installs it")
    })
}

/// A temporary directory under [`std::env::temp_dir`] that the cluster owner owns (mode 0700),
/// removed on drop unless `LIFEBOAT_KEEP_TEST_DIRS=1`.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-")
            .tempdir_in(&base)
            .with_context(|| {
                format!(
                    "could not create a temporary directory in {}; check TMPDIR",
                    base.display()
                )
            })?;
        let path = dir.path().to_path_buf();
        chown_to_owner(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("could not set mode 0700 on {}", path.display()))?;
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("LIFEBOAT_KEEP_TEST_DIRS").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "keeping test directory {} (LIFEBOAT_KEEP_TEST_DIRS=1)",
                kept.display()
            );
        }
    }
}

/// A small, fresh PostgreSQL cluster in its own [`TestDir`]: data in `dir/data`, Unix socket in
/// `dir/sock`, server log at `dir/postgres.log`, on a free port. Derefs to [`LocalCluster`].
/// Dropping it stops the server with `immediate` (then SIGKILL if that fails).
#[derive(Debug)]
pub struct TestCluster {
    // Field order matters: the cluster is stopped (in Drop) before the directory goes.
    cluster: LocalCluster,
    dir: TestDir,
}

impl TestCluster {
    /// initdb (with data checksums) and start a new cluster; `extra_conf` is appended to
    /// postgresql.conf.
    pub fn start_new(extra_conf: &str) -> anyhow::Result<Self> {
        let cluster = Self::stopped_new(extra_conf)?;
        cluster.start(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// initdb (with data checksums) a new cluster without starting it.
    pub fn stopped_new(extra_conf: &str) -> anyhow::Result<Self> {
        Self::stopped_new_in(&pgc::pg_bindir()?, extra_conf)
    }

    /// [`start_new`](Self::start_new) with the server programs in `bindir`, e.g. another
    /// major's ([`major_bindir`]). Client programs it lacks (psql, pgbench) come from the
    /// newest install, which talks to every supported major.
    pub fn start_new_in(bindir: &Path, extra_conf: &str) -> anyhow::Result<Self> {
        let cluster = Self::stopped_new_in(bindir, extra_conf)?;
        cluster.start(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// [`stopped_new`](Self::stopped_new) with the server programs in `bindir`.
    pub fn stopped_new_in(bindir: &Path, extra_conf: &str) -> anyhow::Result<Self> {
        let dir = TestDir::new()?;
        let opts = InitOptions {
            data_checksums: true,
            wal_segsize_mb: None,
            port: free_port(),
            socket_dir: dir.path().join("sock"),
            extra_conf: format!("{TEST_CONF}{extra_conf}"),
        };
        let cluster = LocalCluster::initdb_in(bindir, &dir.path().join("data"), &opts)?
            .with_log_file(dir.path().join("postgres.log"));
        Ok(Self { cluster, dir })
    }

    /// Take charge of a cluster made another way (say a restore into `dir`), so that it too is
    /// stopped on drop and its directory removed.
    pub fn adopt(dir: TestDir, cluster: LocalCluster) -> Self {
        Self { cluster, dir }
    }

    /// Start the data directory `dir/data` that a restore made (as the cluster owner, on a free
    /// port, its log in `dir/postgres.log`) and wait until recovery has ended; the error says
    /// why it did not, with the end of the server log.
    pub fn start_restored(dir: TestDir, timeout: Duration) -> anyhow::Result<Self> {
        let data = dir.path().join("data");
        let cluster =
            LocalCluster::existing(&data, free_port(), dir.path(), pgc::cluster_owner()?)?
                .with_log_file(dir.path().join("postgres.log"));
        let cluster = Self { cluster, dir };
        cluster.start(timeout)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = match cluster.psql("select pg_is_in_recovery()") {
                Ok(row) if row == "f" => return Ok(cluster),
                Ok(row) => row,
                Err(e) => e.to_string(),
            };
            if !cluster.is_running() || std::time::Instant::now() > deadline {
                bail!(
                    "recovery of {} did not end within {timeout:?} (last: {last}):\n{}",
                    data.display(),
                    cluster.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The test directory holding `data/`, `sock/` and `postgres.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Force a WAL switch; returns the name of the segment that was switched out (the one that
    /// will be archived next). If nothing was written since the last switch PostgreSQL does not
    /// switch, and this names the segment switched out last time.
    pub fn switch_wal(&self) -> anyhow::Result<String> {
        let name = self.psql("select pg_walfile_name(pg_switch_wal())")?;
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "pg_walfile_name(pg_switch_wal()) returned {name:?}, which is not a WAL segment name"
            );
        }
        Ok(name)
    }

    /// `pgbench -i -s scale`: the pgbench tables, `scale` × 100 000 rows in pgbench_accounts.
    pub fn pgbench_init(&self, scale: u32) -> anyhow::Result<()> {
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()])?;
        Ok(())
    }
}

impl Deref for TestCluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "test panicked; last lines of the server log {}:\n{}",
                self.cluster.log_file().display(),
                self.cluster.log_tail(30)
            );
        }
        if self.cluster.stop(StopMode::Immediate).is_err() || self.cluster.is_running() {
            let _ = self.cluster.kill9();
        }
    }
}
