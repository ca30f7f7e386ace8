//! A real etcd cluster for tests: N members (Debian's `etcd-server`, v3 API) on free ports of
//! 127.0.0.1, each with its own data directory, for the failover work (issue 16, guide HA.md).
//!
//! [`EtcdCluster::start`] returns once every member reports healthy, or an error with the tail of
//! the members' logs; it never skips. Members can be killed and started again one by one (the
//! fault trials kill a member, the leader, or two of three); all are killed on drop. Health is
//! asked through `etcdctl`, so this crate needs no etcd client.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the members get to elect a leader and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One member: its name, ports and process (None while stopped).
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl EtcdMember {
    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// A running etcd cluster; every member is killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Start `size` members and wait until each one is healthy.
    pub fn start(size: usize) -> anyhow::Result<Self> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-etcd-")
            .tempdir()
            .context("cannot create a directory for the etcd members")?;
        let members: Vec<EtcdMember> = (0..size)
            .map(|i| EtcdMember {
                name: format!("etcd{i}"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                child: None,
                data_dir: dir.path().join(format!("etcd{i}")),
                log_path: dir.path().join(format!("etcd{i}.log")),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            _dir: dir,
        };
        for i in 0..size {
            cluster.start_member(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(i, START_TIMEOUT)?;
        }
        Ok(cluster)
    }

    /// The client URLs of every member, comma-separated (what an etcd client is given).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdMember::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start member `i` (again, with its data directory as it was left).
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let initial_cluster = self.initial_cluster.clone();
        let member = &mut self.members[i];
        if member.is_running() {
            bail!("etcd member {} is already running", member.name);
        }
        let log = File::create(&member.log_path)
            .with_context(|| format!("cannot create {}", member.log_path.display()))?;
        let log_err = log.try_clone().context("cannot share the etcd log")?;
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(member.endpoint())
            .arg("--advertise-client-urls")
            .arg(member.endpoint())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", member.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", member.peer_port))
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("lifeboat-test")
            // Short timings keep fault trials under a minute (HA.md).
            .arg("--heartbeat-interval")
            .arg("100")
            .arg("--election-timeout")
            .arg("1000")
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context(
                "cannot run etcd: install Debian's etcd-server (bash scripts/setup.sh does)",
            )?;
        member.child = Some(child);
        Ok(())
    }

    /// kill -9 member `i` and wait until it is gone.
    pub fn kill_member(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if let Some(mut child) = member.child.take() {
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("waiting for etcd member {}", member.name))?;
        }
        Ok(())
    }

    /// Whether member `i` answers `etcdctl endpoint health`.
    pub fn is_healthy(&self, i: usize) -> bool {
        // etcdctl says "is healthy" on stderr; its exit status is the answer.
        etcdctl(&self.members[i].endpoint(), &["endpoint", "health"]).is_ok()
    }

    /// Wait until member `i` is healthy, or fail with the end of its log.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.is_healthy(i) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "etcd member {} did not become healthy within {timeout:?}; end of its log:\n{}",
            self.members[i].name,
            tail(&self.members[i].log_path, 20)
        )
    }

    /// `etcdctl put KEY VALUE` through every endpoint (whichever member answers).
    pub fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        etcdctl(&self.endpoints(), &["put", key, value]).map(drop)
    }

    /// [`put`](Self::put), tried again until `timeout` while the members elect a new leader (a
    /// request right after the leader died times out: "possibly due to previous leader failure").
    pub fn put_within(&self, key: &str, value: &str, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            match self.put(key, value) {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `etcdctl get KEY --print-value-only`: the value, or None.
    pub fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let out = etcdctl(&self.endpoints(), &["get", key, "--print-value-only"])?;
        let value = out.trim_end_matches('\n');
        Ok((!value.is_empty()).then(|| value.to_string()))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill_member(i);
        }
    }
}

/// Run `etcdctl` (v3 API) against `endpoints`; its stdout, or an error with its stderr.
fn etcdctl(endpoints: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--dial-timeout")
        .arg("1s")
        .arg("--command-timeout")
        .arg("2s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run etcdctl: install Debian's etcd-client (bash scripts/setup.sh does)")?;
    if !out.status.success() {
        bail!(
            "etcdctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three members keep quorum when one dies and lose it when two do; members started again
    /// rejoin and the cluster takes writes.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn three_members_with_one_killed_and_restarted() {
        let mut cluster = EtcdCluster::start(3).unwrap();
        cluster.put("/lifeboat/test", "one").unwrap();
        assert_eq!(
            cluster.get("/lifeboat/test").unwrap().as_deref(),
            Some("one")
        );
        cluster.kill_member(0).unwrap();
        // Member 0 may have been the leader: the other two elect one within the election timeout.
        cluster
            .put_within("/lifeboat/test", "two", START_TIMEOUT)
            .unwrap();
        cluster.kill_member(1).unwrap();
        assert!(
            cluster.put("/lifeboat/test", "three").is_err(),
            "a write without quorum"
        );
        cluster.start_member(1).unwrap();
        cluster.wait_healthy(1, START_TIMEOUT).unwrap();
        // The refused write's outcome is unknown, as etcd says of a timed-out request: it may
        // commit once quorum is back.
        let after = cluster.get("/lifeboat/test").unwrap();
        assert!(
            matches!(after.as_deref(), Some("two" | "three")),
            "{after:?}"
        );
        cluster.start_member(0).unwrap();
        cluster.wait_healthy(0, START_TIMEOUT).unwrap();
        cluster
            .put_within("/lifeboat/test", "four", START_TIMEOUT)
            .unwrap();
        assert_eq!(
            cluster.get("/lifeboat/test").unwrap().as_deref(),
            Some("four")
        );
    }
}
