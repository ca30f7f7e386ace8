//! Shared setup for end-to-end tests: a repository (local or on a real S3-compatible server,
//! encrypted or not) with a config file, and the `lifeboat` binary run as the cluster owner, as
//! PostgreSQL's archiver and startup process would run it.

pub mod chunks;
pub mod daemon;
pub mod fixture;
pub mod ha;
pub mod ha_load;
pub mod ha_trials;
pub mod receivers;
pub mod stream;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestDir, chown_to_owner, run_as_owner};
use lifeboat_testkit::s3::MotoServer;

pub const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");
pub const WAIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

pub struct Setup {
    pub dir: TestDir,
    pub config: PathBuf,
    /// Where `cp %p` puts a second copy of every archived file, to compare against.
    pub arch: PathBuf,
    pub repo_dir: Option<PathBuf>,
    pub encrypted: bool,
    _moto: Option<MotoServer>,
}

impl Setup {
    pub fn new(backend: Backend, encrypted: bool) -> Self {
        let dir = TestDir::new().expect("test dir");
        let root = dir.path().to_path_buf();
        let arch = root.join("arch");
        fs::create_dir_all(&arch).expect("arch dir");
        let mut config = String::new();
        let (moto, repo_dir) = match backend {
            Backend::Local => {
                let repo = root.join("repo");
                config.push_str(&format!("repo = \"{}\"\n", repo.display()));
                (None, Some(repo))
            }
            Backend::S3 => {
                let moto = MotoServer::start()
                    .expect("moto S3 server must start (pip install 'moto[server]')");
                moto.create_bucket("lifeboat-test").expect("bucket");
                config.push_str("repo = \"s3://lifeboat-test/some/prefix\"\n");
                config.push_str(&format!(
                    "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
                    moto.endpoint
                ));
                (Some(moto), None)
            }
        };
        if encrypted {
            let pass = root.join("passphrase");
            fs::write(&pass, "correct horse battery staple\n").expect("passphrase");
            fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).expect("chmod");
            config.insert_str(0, &format!("passphrase_file = \"{}\"\n", pass.display()));
        }
        let config_path = root.join("lifeboat.toml");
        fs::write(&config_path, config).expect("config");
        chown_to_owner(&root).expect("chown");
        let setup = Setup {
            dir,
            config: config_path,
            arch,
            repo_dir,
            encrypted,
            _moto: moto,
        };
        let mut init = setup.cmd();
        init.arg("init");
        if !encrypted {
            init.arg("--unencrypted");
        }
        let out = init.output().expect("run lifeboat init");
        assert_success(&out, "lifeboat init");
        setup
    }

    /// `lifeboat --config <this setup's config>` run as the cluster owner.
    pub fn cmd(&self) -> Command {
        self.cmd_with(&self.config)
    }

    /// `lifeboat --config <config>` run as the cluster owner (a second node's config).
    pub fn cmd_with(&self, config: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        run_as_owner(&mut cmd);
        cmd.arg("--config").arg(config);
        cmd.env_remove("LIFEBOAT_PASSPHRASE")
            .env_remove("LIFEBOAT_PASSPHRASE_FILE")
            .env_remove("LIFEBOAT_REPO");
        cmd
    }

    /// `lifeboat backup --json` of `cluster`, not yet run.
    pub fn backup_cmd(&self, cluster: &LocalCluster) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("backup")
            .arg("--db")
            .arg(cluster.conninfo())
            .arg("--pgdata")
            .arg(&cluster.datadir)
            .arg("--json");
        cmd
    }

    /// `lifeboat backup --json` of `cluster`, which must succeed; its report.
    pub fn backup(&self, cluster: &LocalCluster) -> serde_json::Value {
        let out = self
            .backup_cmd(cluster)
            .output()
            .expect("run lifeboat backup");
        let report = json_of(&out, "lifeboat backup");
        assert!(
            report["label"].as_str().is_some_and(|l| !l.is_empty()),
            "backup report without a label: {report}"
        );
        report
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run lifeboat")
    }

    pub fn archive_conf(&self) -> String {
        format!(
            "archive_mode = on\narchive_command = 'cp %p {}/%f && {BIN} --config {} wal-push %p'\narchive_timeout = 0\n",
            self.arch.display(),
            self.config.display()
        )
    }

    pub fn restore_command(&self) -> String {
        format!("{BIN} --config {} wal-fetch %f %p", self.config.display())
    }

    pub fn archived_copies(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.arch)
            .expect("read arch")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    }

    pub fn info_json(&self) -> serde_json::Value {
        let out = self.run(&["info", "--json"]);
        assert_success(&out, "lifeboat info --json");
        serde_json::from_slice(&out.stdout).expect("info JSON")
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).expect("scratch dir");
        chown_to_owner(&p).expect("chown");
        p
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parse a command's stdout as JSON after checking it succeeded.
pub fn json_of(out: &Output, what: &str) -> serde_json::Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON object ({e}):\n{}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A command's stdout and stderr together, for messages and searches.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn file_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .expect("file name")
        .to_string()
}

/// Ids of table `t`, in order.
pub fn ids(cluster: &LocalCluster) -> Vec<i64> {
    let out = cluster
        .psql("select coalesce(string_agg(id::text, ',' order by id), '') from t")
        .expect("read t");
    out.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("id"))
        .collect()
}

/// The ids 1 to `n`: table `t` after `n` inserts.
pub fn first_n(n: i64) -> Vec<i64> {
    (1..=n).collect()
}

/// Asserts that everything under `dir` has a repository's modes: directories 0700, files 0600.
pub fn assert_private(dir: &Path) {
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("meta");
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", entry.path().display());
            assert_private(&entry.path());
        } else {
            assert_eq!(mode, 0o600, "{}", entry.path().display());
        }
    }
}
