//! Routing through HAProxy (issue 16): a primary and a standby built from the repository, each
//! with its own `lifeboat serve`, and HAProxy from the shipped `contrib/haproxy/haproxy.cfg` in
//! front. The write port reaches the primary, the read port the standby; the role endpoints answer
//! GET, HEAD and OPTIONS without the token the rest of the API needs; after a promotion (without
//! `[ha]`: by hand) and the old primary's stop, the write port reaches the new primary within
//! seconds.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, http_request, tail};
use crate::support::*;
use lifeboat_pg::cluster::{LocalCluster, StopMode};
use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner};
use lifeboat_testkit::free_port;
use lifeboat_testkit::haproxy::{Haproxy, Node};

const TOKEN: &str = "routing-test-token-0123456789";

/// `sql` through HAProxy's `port`, as a client would connect (TCP, trust authentication).
fn through(cluster: &LocalCluster, port: u16, sql: &str) -> Result<String, String> {
    let out = cluster
        .command("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Which server a connection through `port` lands on: `in_recovery port`, e.g. `f 5432`.
const WHO: &str =
    "select case when pg_is_in_recovery() then 't' else 'f' end || ' ' || inet_server_port()";

/// Poll until connections through `port` land on `want` three times in a row.
fn wait_landing(cluster: &LocalCluster, proxy: &Haproxy, port: u16, want: &str, within: Duration) {
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 3 {
        let last = through(cluster, port, WHO).unwrap_or_else(|e| e);
        in_a_row = if last == want { in_a_row + 1 } else { 0 };
        assert!(
            start.elapsed() < within,
            "connections through port {port} did not land on {want:?} within {within:?} \
             (last: {last:?}); HAProxy log:\n{}",
            tail(&proxy.log(), 30)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `method path` to the agent on `port`, without a token: status and body.
fn ask(port: u16, method: &str, path: &str) -> (u16, String) {
    http_request(port, method, path, "")
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// Poll the agent on `port` until `path` answers `want`.
fn wait_answer(daemon: &Daemon, port: u16, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = http_request(port, "GET", path, "").map(|(code, _)| code);
        if got == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on port {port} answered {got:?}, not {want}; agent log:\n{}",
            tail(&daemon.log_text(), 40)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A config for one node's agent: the setup's repository, `cluster`, a listener on `port` behind
/// the token.
fn node_config(
    setup: &Setup,
    base: &str,
    name: &str,
    cluster: &LocalCluster,
    port: u16,
) -> std::path::PathBuf {
    let token_file = setup.dir.path().join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let path = setup.dir.path().join(format!("{name}.toml"));
    fs::write(
        &path,
        format!(
            "{base}db = \"{}\"\npgdata = \"{}\"\n[serve]\nlisten = \"127.0.0.1:{port}\"\n\
             token_file = \"{}\"\n",
            cluster.conninfo(),
            cluster.datadir.display(),
            token_file.display()
        ),
    )
    .expect("node config");
    chown_to_owner(setup.dir.path()).expect("chown");
    path
}

#[test]
fn haproxy_routes_writes_to_the_primary_and_reads_to_the_standby_and_follows_a_promotion() {
    let setup = Setup::new(Backend::Local, false);
    let base = fs::read_to_string(&setup.config).expect("config");
    let primary = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    primary
        .psql("create table t (id int primary key)")
        .expect("create table");
    setup.backup(&primary);

    let dir = TestDir::new().expect("standby dir");
    let data = dir.path().join("replica1");
    let out = setup
        .cmd()
        .args(["standby", "create", "--primary"])
        .arg(primary.conninfo())
        .arg("--target-dir")
        .arg(&data)
        .output()
        .expect("run standby create");
    assert_success(&out, "lifeboat standby create");
    let standby = LocalCluster::existing(&data, free_port(), dir.path(), primary.owner.clone())
        .expect("standby")
        .with_log_file(dir.path().join("standby.log"));
    let standby = TestCluster::adopt(dir, standby);
    standby.start(WAIT).expect("start the standby");

    let (primary_agent, standby_agent) = (free_port(), free_port());
    let primary_config = node_config(&setup, &base, "primary", &primary, primary_agent);
    let standby_config = node_config(&setup, &base, "standby", &standby, standby_agent);
    let primary_daemon = Daemon::spawn(&setup, &primary_config, primary_agent, "primary-serve.log");
    let standby_daemon = Daemon::spawn(&setup, &standby_config, standby_agent, "standby-serve.log");
    wait_answer(&primary_daemon, primary_agent, "/primary", 200);
    wait_answer(&standby_daemon, standby_agent, "/replica", 200);

    // The role endpoints: GET, HEAD and OPTIONS, no token; the rest of the API keeps it.
    for method in ["GET", "HEAD", "OPTIONS"] {
        for (port, path, want) in [
            (primary_agent, "/primary", 200),
            (primary_agent, "/read-write", 200),
            (primary_agent, "/replica", 503),
            (primary_agent, "/read-only", 200),
            (primary_agent, "/health", 200),
            (primary_agent, "/liveness", 200),
            (standby_agent, "/primary", 503),
            (standby_agent, "/replica", 200),
            (standby_agent, "/replica?lag=16MB", 200),
            (standby_agent, "/read-only", 200),
            (standby_agent, "/health", 200),
        ] {
            let (code, body) = ask(port, method, path);
            assert_eq!(code, want, "{method} {path} on port {port}: {body}");
            if method != "HEAD" {
                let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
                assert!(v["role"].is_string(), "{body}");
            }
        }
    }
    assert_eq!(ask(primary_agent, "OPTIONS", "/").0, 200);
    assert_eq!(ask(standby_agent, "OPTIONS", "/").0, 503);
    let (_, body) = ask(standby_agent, "GET", "/replica");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(
        (&v["role"], &v["streaming"], &v["timeline"]),
        (
            &serde_json::json!("replica"),
            &serde_json::json!(true),
            &serde_json::json!(1)
        ),
        "{body}"
    );
    assert_eq!(ask(primary_agent, "GET", "/api/status").0, 401);
    assert_eq!(ask(primary_agent, "GET", "/").0, 401);
    let (code, _) = http_request(
        primary_agent,
        "GET",
        "/api/status",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .expect("status with the token");
    assert_eq!(code, 200);

    let nodes = [
        Node {
            name: "primary".into(),
            pg_port: primary.port,
            agent_port: primary_agent,
        },
        Node {
            name: "standby".into(),
            pg_port: standby.port,
            agent_port: standby_agent,
        },
    ];
    let proxy = Haproxy::start(&nodes).expect("HAProxy from the shipped config");
    let on_primary = format!("f {}", primary.port);
    let on_standby = format!("t {}", standby.port);
    let first = Duration::from_secs(20);
    wait_landing(&primary, &proxy, proxy.write_port, &on_primary, first);
    wait_landing(&primary, &proxy, proxy.read_port, &on_standby, first);
    through(&primary, proxy.write_port, "insert into t values (1)")
        .expect("a write through HAProxy");

    // Replay paused while the primary writes: the standby's lag shows, and `?lag=` turns it away.
    standby
        .psql("select pg_wal_replay_pause()")
        .expect("pause replay");
    through(
        &primary,
        proxy.write_port,
        "insert into t select g from generate_series(10, 30000) g",
    )
    .expect("writes while replay is paused");
    wait_answer(&standby_daemon, standby_agent, "/replica?lag=1kB", 503);
    let (code, body) = ask(standby_agent, "GET", "/replica?lag=1kB");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert!(
        code == 503 && v["lag_bytes"].as_u64().is_some_and(|l| l > 1024),
        "{body}"
    );
    assert_eq!(ask(standby_agent, "GET", "/replica").0, 200);
    assert_eq!(ask(standby_agent, "GET", "/replica?lag=1GB").0, 200);
    standby
        .psql("select pg_wal_replay_resume()")
        .expect("resume replay");
    wait_answer(&standby_daemon, standby_agent, "/replica?lag=1kB", 200);

    // A promotion by hand, then the old primary stops: the write port follows.
    let t0 = Instant::now();
    standby
        .psql("select pg_promote()")
        .expect("promote the standby");
    primary.stop(StopMode::Fast).expect("stop the old primary");
    let on_new_primary = format!("f {}", standby.port);
    wait_landing(
        &standby,
        &proxy,
        proxy.write_port,
        &on_new_primary,
        Duration::from_secs(15),
    );
    eprintln!(
        "the write port reached the new primary {:.1} s after the promotion",
        t0.elapsed().as_secs_f64()
    );
    through(&standby, proxy.write_port, "insert into t values (2)")
        .expect("a write through HAProxy to the new primary");
    // No replica left: the read port falls back to the primary.
    wait_landing(
        &standby,
        &proxy,
        proxy.read_port,
        &on_new_primary,
        Duration::from_secs(15),
    );

    assert_eq!(ask(standby_agent, "GET", "/primary").0, 200);
    wait_answer(&primary_daemon, primary_agent, "/primary", 503);
    let (code, body) = ask(primary_agent, "GET", "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"stopped\""), "{body}");
    assert_eq!(ask(primary_agent, "GET", "/liveness").0, 200);
}

/// `on-marked-down shutdown-sessions`: when a node's agent stops answering (as a fenced or dead
/// node's would), HAProxy takes it out of the pool and cuts the sessions open through it, even
/// though its PostgreSQL still runs.
#[test]
fn haproxy_cuts_open_sessions_when_the_agent_stops_answering() {
    let setup = Setup::new(Backend::Local, false);
    let base = fs::read_to_string(&setup.config).expect("config");
    let primary = TestCluster::start_new("").expect("cluster");
    let agent = free_port();
    let config = node_config(&setup, &base, "primary", &primary, agent);
    let daemon = Daemon::spawn(&setup, &config, agent, "primary-serve.log");
    wait_answer(&daemon, agent, "/primary", 200);
    let proxy = Haproxy::start(&[Node {
        name: "primary".into(),
        pg_port: primary.port,
        agent_port: agent,
    }])
    .expect("HAProxy from the shipped config");
    let on_primary = format!("f {}", primary.port);
    wait_landing(
        &primary,
        &proxy,
        proxy.write_port,
        &on_primary,
        Duration::from_secs(20),
    );

    let mut session = primary
        .command("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &proxy.write_port.to_string()])
        .args([
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "select pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a long session through HAProxy");
    // The session reached the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary
        .psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'")
        .expect("pg_stat_activity")
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the session never reached the server"
        );
        thread::sleep(Duration::from_millis(100));
    }

    let t0 = Instant::now();
    drop(daemon);
    let status = loop {
        if let Some(status) = session.try_wait().expect("wait for psql") {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = session.kill();
            panic!(
                "the session through HAProxy was not cut within 15 s of the agent's death; \
                 HAProxy log:\n{}",
                tail(&proxy.log(), 30)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "psql should have lost its connection");
    eprintln!(
        "the open session was cut {:.1} s after the agent died",
        t0.elapsed().as_secs_f64()
    );
    assert!(primary.is_running(), "PostgreSQL itself kept running");
    assert!(
        through(&primary, proxy.write_port, "select 1").is_err(),
        "no new connection reaches a node whose agent is gone"
    );
}
