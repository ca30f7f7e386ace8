//! HAProxy for tests (Debian's `haproxy`, `/usr/sbin/haproxy`), run from the configuration Lifeboat
//! ships, `contrib/haproxy/haproxy.cfg`, so the tests prove that file and no copy of it.
//!
//! [`render`] substitutes the test's ports: the `bind` of the `writes` and `reads` frontends, and
//! each backend's `server` lines (one per node, built from the shipped first `server` line, so
//! its options are the ones tested). Anything it expects and does not find is an error: the
//! harness cannot silently drift from the file. [`Haproxy::start`] returns once both ports
//! listen; the process is killed on drop.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian installs it.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// How long HAProxy gets to open its ports.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One node behind HAProxy: its PostgreSQL port and its agent's (`lifeboat serve`) port.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub agent_port: u16,
}

/// The configuration shipped with Lifeboat.
pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/haproxy/haproxy.cfg")
}

/// The shipped configuration `text` with the test's ports: writes on `write_port`, reads on
/// `read_port`, every backend's servers replaced by `nodes` on 127.0.0.1.
pub fn render(
    text: &str,
    nodes: &[Node],
    write_port: u16,
    read_port: u16,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut section = String::new();
    let mut binds = 0;
    let mut backends_with_servers = 0;
    let mut servers_written = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let mut words = trimmed.split_whitespace();
        let first = words.next().unwrap_or("");
        if indent.is_empty() && !first.is_empty() && !first.starts_with('#') {
            section = trimmed.to_string();
            servers_written = false;
        }
        match (section.as_str(), first) {
            ("frontend writes", "bind") => {
                out.push_str(&format!("{indent}bind 127.0.0.1:{write_port}\n"));
                binds += 1;
            }
            ("frontend reads", "bind") => {
                out.push_str(&format!("{indent}bind 127.0.0.1:{read_port}\n"));
                binds += 1;
            }
            (s, "bind") => bail!("unexpected `bind` in section `{s}` of the shipped config"),
            (s, "server") if s.starts_with("backend ") => {
                if !servers_written {
                    for node in nodes {
                        out.push_str(indent);
                        out.push_str(&server_line(trimmed, node)?);
                        out.push('\n');
                    }
                    servers_written = true;
                    backends_with_servers += 1;
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if binds != 2 || backends_with_servers != 2 {
        bail!(
            "the shipped HAProxy config no longer has the shape the tests expect (frontends \
             `writes` and `reads` with one bind each, two backends with servers): found {binds} \
             binds, {backends_with_servers} backends with servers"
        );
    }
    Ok(out)
}

/// `server NAME ADDR options…` for `node`: its name, 127.0.0.1:pg_port, and the agent's port
/// after `port`.
fn server_line(template: &str, node: &Node) -> anyhow::Result<String> {
    let words: Vec<&str> = template.split_whitespace().collect();
    if words.len() < 3 {
        bail!("shipped `server` line {template:?} has no address");
    }
    let mut out = vec![
        "server".to_string(),
        node.name.clone(),
        format!("127.0.0.1:{}", node.pg_port),
    ];
    let mut saw_port = false;
    let mut rest = words[3..].iter();
    while let Some(word) = rest.next() {
        out.push((*word).to_string());
        if *word == "port" {
            rest.next();
            out.push(node.agent_port.to_string());
            saw_port = true;
        }
    }
    if !saw_port {
        bail!("shipped `server` line {template:?} has no `check port` for the agent");
    }
    Ok(out.join(" "))
}

/// `haproxy -c -f path`: Ok when HAProxy accepts the file.
pub fn validate(path: &Path) -> anyhow::Result<()> {
    let out = Command::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {HAPROXY} (apt-get install haproxy)"))?;
    if !out.status.success() {
        bail!(
            "haproxy -c -f {} refused it ({}): {}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running HAProxy; killed on drop.
#[derive(Debug)]
pub struct Haproxy {
    pub write_port: u16,
    pub read_port: u16,
    child: Option<Child>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Render the shipped config for `nodes` on two free ports, validate it, start HAProxy in the
    /// foreground and wait until both ports listen.
    pub fn start(nodes: &[Node]) -> anyhow::Result<Self> {
        let shipped = shipped_config();
        let text = std::fs::read_to_string(&shipped)
            .with_context(|| format!("cannot read {}", shipped.display()))?;
        let (write_port, read_port) = (crate::free_port(), crate::free_port());
        let config = render(&text, nodes, write_port, read_port)?;
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-haproxy-")
            .tempdir()
            .context("cannot create a directory for HAProxy")?;
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        validate(&config_path)?;
        let log_path = dir.path().join("haproxy.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log.try_clone().context("cannot share the HAProxy log")?;
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start {HAPROXY}"))?;
        let mut proxy = Haproxy {
            write_port,
            read_port,
            child: Some(child),
            log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while ![write_port, read_port]
            .iter()
            .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            if let Some(Some(status)) = proxy.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                bail!("HAProxy exited ({status}) at start: {}", proxy.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "HAProxy did not listen on {write_port} and {read_port} within \
                     {START_TIMEOUT:?}: {}",
                    proxy.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    /// What HAProxy logged (its checks' state changes among others).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_valid() {
        validate(&shipped_config()).expect("haproxy -c accepts the shipped config");
    }

    #[test]
    fn the_rendered_config_is_valid_and_has_the_test_ports() {
        let text = std::fs::read_to_string(shipped_config()).expect("shipped config");
        let nodes = [
            Node {
                name: "a".into(),
                pg_port: 15432,
                agent_port: 18008,
            },
            Node {
                name: "b".into(),
                pg_port: 15433,
                agent_port: 18009,
            },
        ];
        let rendered = render(&text, &nodes, 15000, 15001).expect("render");
        assert!(rendered.contains("bind 127.0.0.1:15000\n"));
        assert!(rendered.contains("bind 127.0.0.1:15001\n"));
        let servers: Vec<&str> = rendered
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("server "))
            .collect();
        assert_eq!(servers.len(), 4, "{rendered}");
        assert!(servers.iter().all(|s| s.contains("check port 1800")));
        assert!(servers.contains(&"server b 127.0.0.1:15433 check port 18009"));
        assert!(!rendered.contains("10.0.0."));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, rendered).expect("write");
        validate(&path).expect("haproxy -c accepts the rendered config");
        assert!(render("global\n", &nodes, 1, 2).is_err());
    }
}
