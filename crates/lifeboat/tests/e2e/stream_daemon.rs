//! `lifeboat serve` with `[stream]`: the daemon runs the WAL receiver (`wal-stream`) as a child,
//! starts it again when it dies, watches it from the server's side (`pg_stat_replication`,
//! `pg_replication_slots`), alerts once and resolves once when its slot holds too much WAL or is
//! lost, and stops it on SIGTERM. Real processes throughout: the cluster, the daemon, its child,
//! a webhook receiver; the receiver is killed and frozen with real signals.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, daemon_config, tail};
use crate::support::receivers::WebhookReceiver;
use crate::support::*;
use lifeboat_testkit::cluster::TestCluster;
use lifeboat_testkit::free_port;
use serde_json::Value;

fn signal(pid: u64, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

fn receiver_pid(status: &Value) -> Option<u64> {
    status["stream"]["receiver"]["pid"].as_u64()
}

fn streaming(status: &Value) -> bool {
    status["stream"]["streaming"] == true && receiver_pid(status).is_some()
}

fn count(hook: &WebhookReceiver, key: &str, kind: &str) -> usize {
    hook.messages()
        .iter()
        .filter(|m| m["key"] == key && m["kind"] == kind)
        .count()
}

/// Wait until the webhook got a `kind` message for `key`; the seconds it took.
fn wait_message(hook: &WebhookReceiver, daemon: &Daemon, key: &str, kind: &str) -> f64 {
    let clock = Instant::now();
    let deadline = clock + WAIT;
    while count(hook, key, kind) == 0 {
        assert!(
            Instant::now() < deadline,
            "no {kind} {key} alert within {WAIT:?}; webhook got {:#?}\ndaemon log:\n{}",
            hook.messages(),
            tail(&daemon.log_text(), 80)
        );
        thread::sleep(Duration::from_millis(200));
    }
    clock.elapsed().as_secs_f64()
}

/// About `mib` MiB of WAL: rows of 1 kB, then a segment switch.
fn write_wal(cluster: &TestCluster, mib: u32) {
    cluster
        .psql(&format!(
            "insert into filler select g, repeat(md5(g::text), 32) from generate_series(1, {}) g; \
             select pg_switch_wal()",
            mib * 1000
        ))
        .expect("write WAL");
}

fn pid_gone(pid: u64) -> bool {
    // The daemon reaped it: no process, not even a zombie.
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Issue 15, must show 5.
#[test]
fn serve_runs_restarts_watches_and_stops_the_wal_receiver() {
    let setup = Setup::new(Backend::Local, false);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("start cluster");
    cluster
        .psql("create table filler (id int, pad text)")
        .expect("create table");
    let (hook_url, hook) = WebhookReceiver::start();
    let port = free_port();
    daemon_config(
        &setup,
        &cluster,
        &format!(
            r#"[serve]
listen = "127.0.0.1:{port}"
check_interval = "1s"
[stream]
flush_interval_ms = 200
[health]
max_slot_retained = "24MiB"
max_stream_lag = "24MiB"
min_free_percent = 0.5
[alerts]
repeat = "1h"
[[alerts.webhook]]
name = "test-receiver"
url = "{hook_url}"
"#
        ),
    );
    let mut daemon = Daemon::start(&setup, port, "serve.log");

    // 1. The daemon starts the receiver: the server lists it as streaming.
    let clock = Instant::now();
    let status = daemon.wait_status("the receiver streams", WAIT, streaming);
    eprintln!(
        "receiver streaming {:.1} s after the daemon answered",
        clock.elapsed().as_secs_f64()
    );
    let first = receiver_pid(&status).expect("receiver pid");
    assert_eq!(
        cluster
            .psql("select state from pg_stat_replication where application_name = 'lifeboat'")
            .expect("pg_stat_replication"),
        "streaming"
    );
    assert_eq!(status["stream"]["slot"], "lifeboat");
    assert_eq!(status["stream"]["slot_active"], true);
    assert!(
        status["stream"]["lag_bytes"].is_u64(),
        "{}",
        status["stream"]
    );
    assert!(
        status["stream"]["retained_bytes"].is_u64(),
        "{}",
        status["stream"]
    );
    // Unlimited max_slot_wal_keep_size (the default) is a warning of its own.
    wait_message(&hook, &daemon, "slot_unlimited", "firing");
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    for series in [
        "lifeboat_stream_up 1",
        "lifeboat_stream_lag_bytes ",
        "lifeboat_slot_retained_bytes ",
        "lifeboat_slot_lost 0",
        "lifeboat_stream_exposure_seconds ",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let (_, page) = daemon.get("/");
    assert!(
        page.contains("Streamed WAL"),
        "no stream section on the dashboard"
    );

    // 2. kill -9 the receiver: the daemon starts another one.
    signal(first, "KILL");
    let clock = Instant::now();
    let status = daemon.wait_status("a new receiver streams", WAIT, |s| {
        streaming(s) && receiver_pid(s) != Some(first)
    });
    eprintln!(
        "receiver killed -> a new one streams after {:.1} s",
        clock.elapsed().as_secs_f64()
    );
    let second = receiver_pid(&status).expect("receiver pid");
    assert!(status["stream"]["receiver"]["starts"].as_u64() >= Some(2));
    assert!(
        status["stream"]["receiver"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("killed by a signal")),
        "{}",
        status["stream"]["receiver"]
    );
    assert_eq!(
        count(&hook, "stream_down", "firing"),
        0,
        "a restart is not an outage"
    );

    // 3. Freeze the receiver while the server writes WAL past max_slot_retained: one alert.
    signal(second, "STOP");
    let clock = Instant::now();
    write_wal(&cluster, 40);
    let fired = wait_message(&hook, &daemon, "slot_retained", "firing");
    eprintln!(
        "slot_retained fired {fired:.1} s after the receiver froze ({:.1} s in all)",
        clock.elapsed().as_secs_f64()
    );
    wait_message(&hook, &daemon, "stream_lag", "firing");
    let (_, metrics) = daemon.get("/metrics");
    let retained: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lifeboat_slot_retained_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("lifeboat_slot_retained_bytes");
    assert!(retained > 24.0 * 1048576.0, "{retained}");

    // Resumed, it catches up: one resolution, and no second alert.
    signal(second, "CONT");
    let clock = Instant::now();
    wait_message(&hook, &daemon, "slot_retained", "resolved");
    eprintln!(
        "slot_retained resolved {:.1} s after the receiver resumed",
        clock.elapsed().as_secs_f64()
    );
    wait_message(&hook, &daemon, "stream_lag", "resolved");
    thread::sleep(Duration::from_secs(4));
    for (key, kind) in [
        ("slot_retained", "firing"),
        ("slot_retained", "resolved"),
        ("stream_lag", "firing"),
        ("stream_lag", "resolved"),
    ] {
        assert_eq!(
            count(&hook, key, kind),
            1,
            "{key} {kind}: {:#?}",
            hook.messages()
        );
    }
    assert_eq!(count(&hook, "stream_down", "firing"), 0);

    // 4. A limit on the slot resolves slot_unlimited. Then the receiver cannot connect any more
    // (pg_hba.conf rejects replication): stream_down, with its error. The server writes past
    // the limit and a checkpoint removes WAL the slot needed: slot_lost. (Not with a frozen
    // receiver: the walsender the checkpoint terminates blocks on sending it the FATAL, and the
    // checkpoint waits for it, 10 minutes here.)
    cluster
        .psql("alter system set max_slot_wal_keep_size = '32MB'")
        .expect("set max_slot_wal_keep_size");
    cluster.psql("select pg_reload_conf()").expect("reload");
    wait_message(&hook, &daemon, "slot_unlimited", "resolved");
    let hba = cluster.datadir.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!("local replication all reject\nhost replication all all reject\n{rules}"),
    )
    .expect("write pg_hba.conf");
    cluster.psql("select pg_reload_conf()").expect("reload");
    let third = receiver_pid(&daemon.status()).expect("receiver pid");
    signal(third, "KILL");
    let clock = Instant::now();
    wait_message(&hook, &daemon, "stream_down", "firing");
    eprintln!(
        "stream_down fired {:.1} s after the receiver was killed for good",
        clock.elapsed().as_secs_f64()
    );
    let down = hook
        .messages()
        .into_iter()
        .find(|m| m["key"] == "stream_down")
        .expect("stream_down message");
    assert!(down.to_string().contains("pg_hba.conf"), "{down:#}");
    for _ in 0..3 {
        write_wal(&cluster, 40);
        cluster.psql("checkpoint").expect("checkpoint");
    }
    let lost = wait_message(&hook, &daemon, "slot_lost", "firing");
    eprintln!("slot_lost fired {lost:.1} s after the checkpoints");
    let status = daemon.status();
    assert_eq!(
        status["stream"]["wal_status"], "lost",
        "{}",
        status["stream"]
    );
    let (_, metrics) = daemon.get("/metrics");
    assert!(metrics.contains("lifeboat_slot_lost 1"), "{metrics}");
    assert!(metrics.contains("lifeboat_stream_up 0"), "{metrics}");
    assert_eq!(count(&hook, "slot_lost", "firing"), 1);
    assert_eq!(count(&hook, "stream_down", "firing"), 1);

    // The remedy slot_lost gives: drop the slot; with replication allowed again, the next start
    // of the receiver creates it and streams. Both alerts resolve, once.
    cluster
        .psql("select pg_drop_replication_slot('lifeboat')")
        .expect("drop the lost slot");
    std::fs::write(&hba, rules).expect("restore pg_hba.conf");
    cluster.psql("select pg_reload_conf()").expect("reload");
    let clock = Instant::now();
    daemon.wait_status("the receiver streams again", WAIT, streaming);
    eprintln!(
        "streaming again {:.1} s after replication was allowed (backoff)",
        clock.elapsed().as_secs_f64()
    );
    wait_message(&hook, &daemon, "slot_lost", "resolved");
    wait_message(&hook, &daemon, "stream_down", "resolved");

    // 5. SIGTERM of the daemon stops the receiver; nothing is left running.
    let pid = receiver_pid(&daemon.status()).expect("the receiver runs");
    let clock = Instant::now();
    let exit = daemon.terminate(Duration::from_secs(60));
    eprintln!(
        "serve stopped {:.1} s after SIGTERM",
        clock.elapsed().as_secs_f64()
    );
    assert!(exit.success(), "serve exit: {exit}");
    for pid in [first, second, third, pid] {
        assert!(pid_gone(pid), "receiver {pid} still exists");
    }
    let log = daemon.log_text();
    assert!(
        log.contains("stopping the WAL receiver"),
        "{}",
        tail(&log, 40)
    );
    let senders = cluster
        .psql("select count(*) from pg_stat_replication")
        .expect("pg_stat_replication");
    assert_eq!(senders, "0", "a walsender is left");
}
