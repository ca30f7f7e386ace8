//! `lifeboat serve` end to end: scheduled backups and drills, alerts, the HTTP API and a clean
//! shutdown. A real cluster archives into a repository, the daemon started as the cluster's owner
//! with a config file like an operator's, and its effects observed from outside: the repository
//! (`lifeboat list`, `verify`), its HTTP API and `/metrics`, and the messages a local webhook
//! receiver got.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, daemon_config, tail};
use crate::support::receivers::{SmtpReceiver, WebhookReceiver};
use crate::support::*;
use chrono::{Timelike, Utc};
use lifeboat_testkit::cluster::TestCluster;
use lifeboat_testkit::free_port;
use serde_json::Value;

/// A local repository and a cluster archiving into it with `lifeboat wal-push` (no second copy:
/// these tests run long), switching segments every `archive_timeout_s` seconds while anything is
/// written (0: never), with pgbench tables of scale `scale`.
fn archiving_cluster(archive_timeout_s: u32, scale: u32) -> (Setup, TestCluster) {
    let setup = Setup::new(Backend::Local, false);
    let conf = format!(
        "archive_mode = on\narchive_command = '{BIN} --config {} wal-push %p'\narchive_timeout = {archive_timeout_s}\n",
        setup.config.display()
    );
    let cluster = TestCluster::start_new(&conf).expect("start cluster");
    cluster.pgbench_init(scale).expect("pgbench -i");
    (setup, cluster)
}

/// Whether `dir` or a directory in it holds a regular file (what a chunk directory does).
fn holds_a_file(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|listing| {
        listing.flatten().any(|entry| {
            let path = entry.path();
            path.is_file() || (path.is_dir() && holds_a_file(&path))
        })
    })
}

fn job<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["jobs"].as_array()?.iter().find(|j| j["job"] == name)
}

fn runs(status: &Value, name: &str) -> Vec<Value> {
    job(status, name)
        .and_then(|j| j["history"]["runs"].as_array().cloned())
        .unwrap_or_default()
}

fn messages_for(hook: &WebhookReceiver, key: &str, kind: &str) -> Vec<Value> {
    hook.messages()
        .into_iter()
        .filter(|m| m["key"] == key && m["kind"] == kind)
        .collect()
}

fn wait_messages(
    hook: &WebhookReceiver,
    key: &str,
    kind: &str,
    timeout: Duration,
    daemon: &Daemon,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = messages_for(hook, key, kind);
        if !found.is_empty() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} {key} alert within {timeout:?}; webhook got {:#?}\ndaemon log:\n{}",
            hook.messages(),
            tail(&daemon.log_text(), 60)
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Must show 1: a 1-minute backup schedule and a drill schedule over a cluster under pgbench:
/// backups exist, a drill passed with its recovery time, /metrics reports them; a broken
/// archive_command raises exactly one WAL-lag alert, and fixing it exactly one recovery message.
#[test]
fn daemon_backs_up_drills_and_alerts_once_on_wal_lag() {
    let (setup, cluster) = archiving_cluster(5, 2);
    let (hook_url, hook) = WebhookReceiver::start();
    let port = free_port();
    daemon_config(
        &setup,
        &cluster,
        &format!(
            r#"[backup]
archive_timeout_seconds = 30
[serve]
listen = "127.0.0.1:{port}"
check_interval = "2s"
size_interval = "5s"
[schedule]
backup = "* * * * *"
drill = "30 * * * * *"
[drill]
checks = ["select count(*) from pgbench_accounts"]
[health]
max_wal_lag = "15s"
max_ready_segments = 100000
min_free_percent = 0.5
max_backup_age = "1h"
[alerts]
repeat = "1h"
[[alerts.webhook]]
name = "test-receiver"
url = "{hook_url}"
"#
        ),
    );
    // Load for the whole test, at a modest rate so two cores also serve the daemon's jobs.
    let bench = {
        let mut cmd = cluster.command("pgbench");
        cmd.args(["-c", "2", "-R", "40", "-T", "400", "-n"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().expect("start pgbench")
    };
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _bench = KillOnDrop(bench);

    let daemon = Daemon::start(&setup, port, "daemon.log");
    let status = daemon.wait_status(
        "a backup exists and a scheduled drill passed",
        Duration::from_secs(200),
        |s| {
            s["backups"].as_array().is_some_and(|b| !b.is_empty())
                && s["drills"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["passed"] == true))
        },
    );
    let drill = status["drills"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["passed"] == true))
        .expect("a passed drill")
        .clone();
    assert_eq!(drill["trigger"], "schedule", "{drill:#}");
    let recovery = drill["recovery_seconds"]
        .as_f64()
        .expect("recovery time recorded");
    assert!(recovery > 0.0, "{drill:#}");
    assert!(drill["data_loss_seconds"].as_f64().is_some(), "{drill:#}");
    let backup_runs = runs(&status, "backup");
    assert!(
        backup_runs.iter().any(|r| r["outcome"] == "succeeded"),
        "backup job history: {backup_runs:#?}"
    );
    // The repository agrees with the daemon.
    let list = setup.run(&["list", "--json"]);
    assert_success(&list, "lifeboat list");
    let listed: Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    assert!(!listed["backups"].as_array().expect("backups").is_empty());

    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{metrics}"))
    };
    assert!(metric("lifeboat_backups ") >= 1.0);
    assert_eq!(metric("lifeboat_recoverable "), 1.0);
    assert!(metric("lifeboat_drill_last_recovery_seconds") > 0.0);
    assert_eq!(metric("lifeboat_drill_last_passed"), 1.0);
    assert!(metrics.contains("lifeboat_job_last_success_timestamp_seconds{job=\"backup\"}"));
    assert!(metrics.contains("lifeboat_wal_archive_lag_seconds"));
    assert!(
        messages_for(&hook, "wal_archive_lag", "firing").is_empty(),
        "no lag yet: {:#?}",
        hook.messages()
    );

    // Break archiving: segments wait in pg_wal, the lag grows past 15 s: one alert.
    cluster
        .psql("alter system set archive_command = 'false'")
        .expect("break archive_command");
    cluster.psql("select pg_reload_conf()").expect("reload");
    let fired = wait_messages(
        &hook,
        "wal_archive_lag",
        "firing",
        Duration::from_secs(120),
        &daemon,
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert!(
        fired[0]["summary"]
            .as_str()
            .unwrap_or("")
            .contains("behind"),
        "{:#}",
        fired[0]
    );
    // It persists for several more checks without a second message.
    thread::sleep(Duration::from_secs(10));
    assert_eq!(messages_for(&hook, "wal_archive_lag", "firing").len(), 1);

    // Fix it: the archiver drains the backlog, one recovery message.
    cluster
        .psql("alter system reset archive_command")
        .expect("restore archive_command");
    cluster.psql("select pg_reload_conf()").expect("reload");
    wait_messages(
        &hook,
        "wal_archive_lag",
        "resolved",
        Duration::from_secs(120),
        &daemon,
    );
    thread::sleep(Duration::from_secs(6));
    assert_eq!(messages_for(&hook, "wal_archive_lag", "firing").len(), 1);
    assert_eq!(messages_for(&hook, "wal_archive_lag", "resolved").len(), 1);
    let status = daemon.status();
    assert!(
        !status["active_alerts"]
            .as_array()
            .expect("active alerts")
            .iter()
            .any(|a| a["key"] == "wal_archive_lag"),
        "{:#}",
        status["active_alerts"]
    );
}

/// Must show 2 (and 3 for the daemon's own alerts): a drill of a deliberately corrupted backup
/// fails, says why, and alerts, by webhook and by e-mail to a local SMTP server.
#[test]
fn a_drill_of_a_corrupted_backup_fails_says_why_and_alerts() {
    let (setup, cluster) = archiving_cluster(0, 1);
    setup.backup(&cluster);
    // Flip a byte in the middle of the largest chunk: a relation's block the restore needs.
    let victim_name = crate::support::chunks::corrupt_largest_chunk(&setup, 0x40);

    let (hook_url, hook) = WebhookReceiver::start();
    let (smtp_port, smtp) = SmtpReceiver::start();
    let port = free_port();
    daemon_config(
        &setup,
        &cluster,
        &format!(
            r#"[serve]
listen = "127.0.0.1:{port}"
check_interval = "2s"
[schedule]
drill = "*/10 * * * * *"
[health]
min_free_percent = 0.5
[[alerts.webhook]]
url = "{hook_url}"
[alerts.email]
server = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "lifeboat@example.com"
to = ["oncall@example.com"]
"#
        ),
    );
    let daemon = Daemon::start(&setup, port, "daemon.log");
    let fired = wait_messages(
        &hook,
        "drill_failed",
        "firing",
        Duration::from_secs(120),
        &daemon,
    );
    assert_eq!(fired.len(), 1);
    let alert = &fired[0];
    let detail = alert["detail"].as_str().unwrap_or("");
    let summary = alert["summary"].as_str().unwrap_or("");
    assert!(
        summary.contains("step restore"),
        "the failed step is named: {alert:#}"
    );
    assert!(
        detail.contains(&victim_name[..16])
            || detail.contains("corrupt")
            || detail.contains("verif"),
        "the reason names the damaged chunk: {alert:#}"
    );
    let (code, body) = daemon.get("/api/drills");
    assert_eq!(code, 200);
    let drills: Value = serde_json::from_str(&body).expect("drills JSON");
    let drills = drills
        .as_array()
        .cloned()
        .or_else(|| drills["drills"].as_array().cloned())
        .expect("a list of drills");
    let failed = drills.first().expect("a drill recorded");
    assert_eq!(failed["passed"], false, "{failed:#}");
    assert_eq!(failed["failed_step"], "restore", "{failed:#}");
    // The same alert reached the on-call mailbox.
    let mails = smtp.wait_until(Duration::from_secs(30), |mails| {
        mails
            .iter()
            .any(|m| m.header("Subject").is_some_and(|s| s.contains("FIRING")))
    });
    let mail = mails
        .iter()
        .find(|m| m.header("Subject").is_some_and(|s| s.contains("FIRING")))
        .expect("a FIRING mail");
    assert_eq!(mail.to, ["oncall@example.com"]);
    let subject = mail.header("Subject").unwrap_or_default();
    assert!(subject.contains("drill"), "{subject}");
    assert!(mail.body().contains("step restore"), "{}", mail.body());
    // The repeated failures of the next drills do not repeat the alert.
    thread::sleep(Duration::from_secs(12));
    assert_eq!(messages_for(&hook, "drill_failed", "firing").len(), 1);
    let firing_mails = smtp
        .mails()
        .iter()
        .filter(|m| m.header("Subject").is_some_and(|s| s.contains("FIRING")))
        .count();
    assert_eq!(firing_mails, 1);
}

/// Must show 5 and 6: SIGTERM during a scheduled backup: the daemon exits cleanly, the repository
/// verifies clean, and the next start runs the missed job; job history and alert state survive
/// the restart (no second "no backup" alert, then its resolution).
#[test]
fn sigterm_during_a_backup_then_restart_runs_the_missed_job_and_keeps_history() {
    // Enough data that the backup is still running when the signal comes.
    let (setup, cluster) = archiving_cluster(0, 30);
    let (hook_url, hook) = WebhookReceiver::start();
    let port = free_port();
    // One scheduled moment, a few seconds from now (cron in UTC, with seconds).
    let at = Utc::now() + chrono::Duration::seconds(8);
    let once = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    daemon_config(
        &setup,
        &cluster,
        &format!(
            r#"[serve]
listen = "127.0.0.1:{port}"
check_interval = "1s"
shutdown_grace = "0s"
[schedule]
backup = "{once}"
[health]
min_free_percent = 0.5
[[alerts.webhook]]
url = "{hook_url}"
"#
        ),
    );
    let mut daemon = Daemon::start(&setup, port, "daemon-1.log");
    wait_messages(
        &hook,
        "not_recoverable",
        "firing",
        Duration::from_secs(30),
        &daemon,
    );
    daemon.wait_status("the backup runs", Duration::from_secs(60), |s| {
        job(s, "backup").is_some_and(|j| j["running_since"].is_string())
    });
    // Signal as soon as the child is in the copy (its first chunk or pack is stored): a fixed
    // pause raced with backups that finish in under two seconds.
    let repo = setup.repo_dir.clone().expect("local repository");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holds_a_file(&repo.join("data")) && !holds_a_file(&repo.join("packs")) {
        assert!(
            Instant::now() < deadline,
            "the backup stored no chunk in 60 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let status = daemon.terminate(Duration::from_secs(60));
    assert!(
        status.success(),
        "the daemon exits 0 on SIGTERM: {status:?}"
    );
    let log = daemon.log_text();
    assert!(log.contains("serve stopped"), "{}", tail(&log, 30));
    // No job left behind, nothing half-recorded.
    let ps = Command::new("pgrep")
        .args(["-f", &format!("{} backup", setup.config.display())])
        .output()
        .expect("pgrep");
    assert!(ps.stdout.is_empty(), "a backup child outlived the daemon");
    let list = setup.run(&["list", "--json"]);
    assert_success(&list, "lifeboat list");
    let listed: Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(0),
        "the abandoned backup is not listed: {listed:#}"
    );
    let verify = setup.run(&["verify"]);
    assert_success(&verify, "lifeboat verify after the shutdown");

    // The next start runs the missed (interrupted) run at once, for the same scheduled moment.
    let daemon = Daemon::start(&setup, port, "daemon-2.log");
    let status = daemon.wait_status(
        "the missed backup ran and succeeded",
        Duration::from_secs(180),
        |s| {
            runs(s, "backup")
                .iter()
                .any(|r| r["outcome"] == "succeeded")
        },
    );
    let history = runs(&status, "backup");
    assert_eq!(
        history.len(),
        2,
        "history survived the restart: {history:#?}"
    );
    assert_eq!(history[0]["outcome"], "interrupted", "{history:#?}");
    assert_eq!(history[1]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(
        history[0]["scheduled_for"], history[1]["scheduled_for"],
        "the catch-up run is the missed one: {history:#?}"
    );
    // The alert state survived too: the problem was announced once, and now resolves once.
    wait_messages(
        &hook,
        "not_recoverable",
        "resolved",
        Duration::from_secs(30),
        &daemon,
    );
    assert_eq!(messages_for(&hook, "not_recoverable", "firing").len(), 1);
    assert_eq!(messages_for(&hook, "not_recoverable", "resolved").len(), 1);
}

/// Configuration mistakes stop `serve` before it starts, with exit 3 and the key to fix: a
/// dashboard reachable from other hosts without a token, and a cron line that is not one.
#[test]
fn serve_refuses_an_open_listener_without_a_token_and_a_bad_cron_line() {
    let setup = Setup::new(Backend::Local, false);
    let base = fs::read_to_string(&setup.config).expect("config");
    let port = free_port();

    fs::write(
        &setup.config,
        format!("{base}[serve]\nlisten = \"0.0.0.0:{port}\"\n"),
    )
    .expect("config");
    let out = setup.run(&["serve"]);
    assert_code(&out, 3, "serve on 0.0.0.0 without a token");
    let err = stderr(&out);
    assert!(err.contains("token_file"), "{err}");

    fs::write(
        &setup.config,
        format!(
            "{base}[serve]\nlisten = \"127.0.0.1:{port}\"\n[schedule]\nbackup = \"every hour\"\n"
        ),
    )
    .expect("config");
    let out = setup.run(&["serve"]);
    assert_code(&out, 3, "serve with a bad cron line");
    let err = stderr(&out);
    assert!(err.contains("[schedule] backup"), "{err}");
    assert!(err.contains("0 * * * *"), "the fix is shown: {err}");
}
