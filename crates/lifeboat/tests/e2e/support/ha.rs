//! A failover rig for end-to-end tests: a real etcd cluster, PostgreSQL members each run by its
//! own `lifeboat serve` with `[ha]` (the agent starts, stops, promotes and rewinds its server),
//! one repository they all archive into. The first member starts as the primary; the others are
//! standbys built from the repository (`standby create`) that their agents start.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestCluster, TestDir, run_as_owner};
use lifeboat_testkit::etcd::EtcdCluster;
use lifeboat_testkit::free_port;

use super::daemon::{request, tail};
use super::{BIN, Backend, Setup, json_of};

/// Timings of the tests (issue 16): ttl 10 s, loop_wait 2 s, retry_timeout 4 s.
pub const HA_TIMINGS: &str = "ttl = \"10s\"\nloop_wait = \"2s\"\nretry_timeout = \"4s\"\n";

/// One member: its server (stopped on drop), its config and its agent.
pub struct HaNode {
    pub name: String,
    pub cluster: TestCluster,
    pub config: PathBuf,
    pub api_port: u16,
    agent: Option<Child>,
    log: PathBuf,
}

impl HaNode {
    /// Start this member's agent (`lifeboat serve` as the cluster owner).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "{}: agent already running", self.name);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let err = out.try_clone().expect("agent log");
        let mut cmd = Command::new(BIN);
        run_as_owner(&mut cmd);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--log-level", "info", "serve"])
            .env_remove("LIFEBOAT_PASSPHRASE")
            .env_remove("LIFEBOAT_PASSPHRASE_FILE")
            .env_remove("LIFEBOAT_REPO")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.agent = Some(cmd.spawn().expect("start lifeboat serve"));
    }

    /// kill -9 of the agent (its fence keeper lives on).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's pid (it must be running).
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    /// SIGSTOP (true) or SIGCONT (false) the agent.
    pub fn freeze_agent(&self, freeze: bool) {
        let child = self.agent.as_ref().expect("agent running");
        let signal = if freeze { "-STOP" } else { "-CONT" };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the agent: status and body, None when it does not answer.
    pub fn api(&self, path: &str) -> Option<(u16, String)> {
        request(self.api_port, path).ok()
    }

    /// Whether the server accepts a write right now (answers, out of recovery, an INSERT
    /// commits).
    pub fn accepts_writes(&self) -> bool {
        self.cluster
            .psql("select pg_is_in_recovery()")
            .is_ok_and(|r| r == "f")
    }

    pub fn in_recovery(&self) -> bool {
        self.cluster
            .psql("select pg_is_in_recovery()")
            .is_ok_and(|r| r == "t")
    }
}

impl Drop for HaNode {
    fn drop(&mut self) {
        if let Some(child) = self.agent.as_ref() {
            // A frozen agent cannot die of SIGKILL until it is continued.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill_agent();
        if thread::panicking() {
            eprintln!(
                "agent {} log:\n{}\nserver log:\n{}",
                self.name,
                tail(&self.log_text(), 80),
                self.cluster.log_tail(30)
            );
        }
    }
}

/// etcd, the repository and the members.
pub struct HaRig {
    pub nodes: Vec<HaNode>,
    pub setup: Setup,
    pub etcd: EtcdCluster,
}

impl HaRig {
    /// `size` members: n1 the primary (backed up into the repository), n2... standbys restored
    /// from it, every agent started.
    pub fn start(size: usize, extra_ha: &str) -> HaRig {
        let etcd = EtcdCluster::start(3).expect("etcd must start (scripts/setup.sh installs it)");
        let setup = Setup::new(Backend::Local, false);
        let primary = TestCluster::start_new(&setup.archive_conf()).expect("primary");
        primary
            .psql("create table t (id int primary key, note text)")
            .expect("create table");
        setup.backup(&primary);
        let mut clusters = vec![primary];
        for i in 2..=size {
            let dir = TestDir::new().expect("member dir");
            let data = dir.path().join("data");
            let out = setup
                .cmd()
                .args(["standby", "create", "--json", "--no-slot", "--name"])
                .arg(format!("n{i}"))
                .arg("--primary")
                .arg(clusters[0].conninfo())
                .arg("--target-dir")
                .arg(&data)
                .output()
                .expect("run standby create");
            json_of(&out, "lifeboat standby create");
            let sock = dir.path().join("sock");
            fs::create_dir_all(&sock).expect("socket dir");
            lifeboat_testkit::cluster::chown_to_owner(&sock).expect("chown");
            let cluster =
                LocalCluster::existing(&data, free_port(), &sock, clusters[0].owner.clone())
                    .expect("member cluster")
                    .with_log_file(dir.path().join("postgres.log"));
            clusters.push(TestCluster::adopt(dir, cluster));
        }
        let base = fs::read_to_string(&setup.config).expect("config");
        let endpoints: Vec<String> = etcd
            .endpoints()
            .split(',')
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, cluster) in clusters.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let api_port = free_port();
            let config = setup.dir.path().join(format!("{name}.toml"));
            let text = format!(
                "{base}db = \"{conninfo}\"\npgdata = \"{pgdata}\"\n\
                 [serve]\nlisten = \"127.0.0.1:{api_port}\"\ncheck_interval = \"2s\"\n\
                 [ha]\netcd = [{endpoints}]\ncluster = \"test\"\nname = \"{name}\"\n\
                 conninfo = \"{conninfo}\"\napi_url = \"http://127.0.0.1:{api_port}\"\n\
                 {HA_TIMINGS}{extra_ha}",
                conninfo = cluster.conninfo(),
                pgdata = cluster.datadir.display(),
                endpoints = endpoints.join(", "),
            );
            fs::write(&config, text).expect("member config");
            lifeboat_testkit::cluster::chown_to_owner(&config).expect("chown");
            let log = setup.dir.path().join(format!("{name}-agent.log"));
            nodes.push(HaNode {
                name,
                cluster,
                config,
                api_port,
                agent: None,
                log,
            });
        }
        let mut rig = HaRig { nodes, setup, etcd };
        for node in &mut rig.nodes {
            node.start_agent();
        }
        rig
    }

    /// The leader key's holder, as etcd says.
    pub fn leader(&self) -> Option<String> {
        self.etcd.get("/lifeboat/test/leader").ok().flatten()
    }

    /// Wait until `what` holds, polling every 200 ms; panics after `timeout` with the agents'
    /// logs. Returns how long it took.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&HaRig) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if done(self) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "--- {} agent:\n{}\n--- {} server:\n{}",
                            n.name,
                            tail(&n.log_text(), 40),
                            n.name,
                            n.cluster.log_tail(15)
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting until {what}; leader {:?}\n{}",
                    self.leader(),
                    logs.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until n1 leads and every other member streams from it.
    pub fn wait_settled(&self, leader: usize) {
        let n = self.nodes.len();
        let name = self.nodes[leader].name.clone();
        self.wait(
            "the first leader and its streaming standbys",
            Duration::from_secs(90),
            |rig| {
                rig.leader().as_deref() == Some(name.as_str())
                    && rig.nodes[leader].accepts_writes()
                    && rig.nodes[leader]
                        .cluster
                        .psql("select count(*) from pg_stat_replication where state = 'streaming'")
                        .is_ok_and(|c| c == (n - 1).to_string())
            },
        );
    }
}
