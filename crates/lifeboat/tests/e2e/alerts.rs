//! `lifeboat alert test` end to end: the built binary, a config file, and real (tiny) webhook and
//! SMTP receivers. No repository or PostgreSQL is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::receivers::{RECEIVE_WAIT, SmtpReceiver, WEBHOOK_SECRET, WebhookReceiver};
use crate::support::{BIN, assert_code, assert_success, text};

fn alert_test(config: &Path) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["alert", "test"])
        .env_remove("LIFEBOAT_CONFIG")
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .output()
        .expect("run lifeboat alert test")
}

/// `text` as the config file `lifeboat.toml` in `dir`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let config = dir.join("lifeboat.toml");
    fs::write(&config, text).expect("config");
    config
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn test_message_reaches_webhook_and_email() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, hook) = WebhookReceiver::start();
    let (smtp_port, smtp) = SmtpReceiver::start();
    let url_file = dir.path().join("webhook-url");
    fs::write(&url_file, format!("{url}\n")).expect("url file");
    let password_file = dir.path().join("smtp-password");
    fs::write(&password_file, "hunter2\n").expect("password file");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[alerts.webhook]]
name = "ops-chat"
url_file = "{}"

[alerts.email]
server = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Lifeboat <lifeboat@example.com>"
to = ["oncall@example.com", "dba@example.com"]
username = "alice"
password_file = "{}"
"#,
            url_file.display(),
            password_file.display()
        ),
    );

    let out = alert_test(&config);
    assert_success(&out, "alert test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ops-chat: ok"), "{stdout}");
    assert!(
        stdout.contains("email to oncall@example.com, dba@example.com: ok"),
        "{stdout}"
    );
    assert!(!text(&out).contains(WEBHOOK_SECRET), "{}", text(&out));
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));

    let host = lifeboat_repo::lock::this_host();
    let json = hook.wait_for(1, RECEIVE_WAIT);
    assert_eq!(json.len(), 1, "exactly one POST: {json:#?}");
    let m = &json[0];
    assert_eq!(m["kind"], "test");
    assert_eq!(m["host"], host.as_str());
    let line = m["text"].as_str().expect("a text field");
    assert!(line.contains("TEST") && line.contains(&host), "{line}");
    assert!(!line.contains('\n'), "text is one line: {line:?}");
    assert!(m["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{m}");
    let request = &hook.requests()[0];
    assert_eq!(request.method, "POST");
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );

    let mails = smtp.wait_for(1, RECEIVE_WAIT);
    assert_eq!(mails.len(), 1, "one message to all recipients: {mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail.from, "lifeboat@example.com");
    assert_eq!(mail.to, vec!["oncall@example.com", "dba@example.com"]);
    assert_eq!(mail.auth, Some(("alice".into(), "hunter2".into())));
    let subject = mail.header("subject").expect("a Subject header");
    assert_eq!(
        subject,
        format!("[lifeboat {host}] TEST: test alert from lifeboat on {host}: alerts reach you")
    );
    assert!(mail.body().contains(&host), "{}", mail.data);
}

#[test]
fn unreachable_or_refusing_channel_exits_9_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, hook) = WebhookReceiver::start();
    let (smtp_port, smtp) = SmtpReceiver::start();
    smtp.set_refuse(true);
    let dead_url = format!("http://127.0.0.1:{}/hooks/{WEBHOOK_SECRET}", closed_port());
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[alerts.webhook]]
url = "{url}"

[[alerts.webhook]]
url = "{dead_url}"

[alerts.email]
server = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "lifeboat@example.com"
to = ["oncall@example.com"]
"#
        ),
    );

    let out = alert_test(&config);
    assert_code(
        &out,
        9,
        "alert test with a dead webhook and a refusing SMTP server",
    );
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("webhook #1: ok"), "{all}");
    assert!(stdout.contains("webhook #2: failed: "), "{all}");
    assert!(
        stdout.contains("email to oncall@example.com: failed: ") && stdout.contains("550"),
        "{all}"
    );
    assert!(all.contains("2 of 3"), "{all}");
    assert!(
        !all.contains(WEBHOOK_SECRET),
        "the webhook URL leaked: {all}"
    );
    assert!(!all.contains("/hooks/"), "the webhook URL leaked: {all}");
    // The broken channels did not keep the working one from getting the message.
    assert_eq!(hook.wait_for(1, RECEIVE_WAIT).len(), 1);
    assert!(smtp.mails().is_empty());
}

#[test]
fn no_channel_or_bad_alerts_config_exits_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "[alerts]\nrepeat = \"1h\"\n");
    let out = alert_test(&config);
    assert_code(&out, 3, "alert test without channels");
    assert!(
        text(&out).contains("no alert channel is configured"),
        "{}",
        text(&out)
    );

    let missing = dir.path().join("no-such-url-file");
    let config = write_config(
        dir.path(),
        &format!(
            "[[alerts.webhook]]\nname = \"pager\"\nurl_file = \"{}\"\n",
            missing.display()
        ),
    );
    let out = alert_test(&config);
    assert_code(&out, 3, "alert test with a missing url_file");
    let all = text(&out);
    assert!(
        all.contains("\"pager\"") && all.contains("url_file"),
        "{all}"
    );
    assert!(all.contains("no-such-url-file"), "{all}");
}
