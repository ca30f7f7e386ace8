//! The dashboard in a real browser: a cluster archiving into a repository, one `lifeboat backup`,
//! one `lifeboat drill`, then `lifeboat serve`, and headless Chromium loading the page. The DOM it
//! builds must show the recoverable banner, the backup and the passed drill; the screenshot is
//! kept in `target/test-artifacts/dashboard.png` for a human to look at.
//!
//! Needs `/usr/bin/chromium` (scripts/setup.sh installs it).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, daemon_config};
use crate::support::*;
use lifeboat_testkit::cluster::TestCluster;
use lifeboat_testkit::free_port;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Contains `<`, `>` and quotes: the page must show it as text, not as markup.
const CHECK: &str = "select count(*) > 0 from t where v <> '<b>x</b>'";

/// Run Chromium headless with `args` on `url`, killed if it takes longer than two minutes.
fn chromium(profile: &Path, args: &[&str], url: &str) -> Output {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium (scripts/setup.sh installs it)");
    // Drain the pipes while waiting, so a large DOM cannot block Chromium on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within 2 minutes");
        }
        thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// The element `<section id="ID" ...>...</section>` of the serialised DOM.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section #{id} in the DOM:\n{dom}"));
    let len = dom[start..]
        .find("</section>")
        .unwrap_or_else(|| panic!("section #{id} is not closed"));
    &dom[start..start + len]
}

/// `target/test-artifacts`, beside the binary under test, wherever the target directory is.
fn artifacts_dir() -> PathBuf {
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the lifeboat binary lives in <target>/<profile>/");
    target.join("test-artifacts")
}

#[test]
fn dashboard_in_a_browser_shows_backup_drill_and_recoverable() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh"
    );
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster
        .psql("create table t(id int primary key, v text)")
        .expect("create t");
    cluster
        .psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g")
        .expect("insert rows");
    let port = free_port();
    daemon_config(
        &setup,
        &cluster,
        &format!(
            "[drill]\nchecks = [{CHECK:?}]\ntimeout = \"5m\"\n\
             [serve]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"2s\"\n"
        ),
    );

    let out = setup.run(&["backup", "--json"]);
    assert_success(&out, "lifeboat backup");
    let report: Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    let label = report["label"].as_str().expect("label").to_string();
    let last = cluster.switch_wal().expect("switch WAL");
    cluster.wait_archived(&last, WAIT).expect("archived");

    let scratch = setup.scratch("drills");
    let out = setup
        .cmd()
        .arg("drill")
        .arg("--scratch-dir")
        .arg(&scratch)
        .arg("--json")
        .output()
        .expect("run lifeboat drill");
    assert_success(&out, "lifeboat drill");

    let daemon = Daemon::start(&setup, port, "daemon.log");
    daemon.wait_status(
        &format!("/api/status shows backup {label} and the drill"),
        Duration::from_secs(90),
        |s| {
            s["backups"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["label"] == label.as_str()))
                && s["drills"].as_array().is_some_and(|d| !d.is_empty())
        },
    );

    let url = format!("http://127.0.0.1:{port}/");
    let profiles = setup.scratch("chromium");
    let dom_out = chromium(&profiles.join("dom"), &["--dump-dom"], &url);
    assert!(
        dom_out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom_out.stderr)
    );
    let dom = String::from_utf8_lossy(&dom_out.stdout).to_string();

    let banner = section(&dom, "recoverable");
    assert!(banner.contains("banner ok"), "{banner}");
    assert!(banner.contains("Recoverable now"), "{banner}");
    assert!(banner.contains("Restore window"), "{banner}");
    let backups = section(&dom, "backups");
    assert!(
        backups.contains(&format!("data-label=\"{label}\"")),
        "backup {label} not in #backups:\n{backups}"
    );
    let drills = section(&dom, "drills");
    assert!(drills.contains("class=\"drill passed\""), "{drills}");
    assert!(
        drills.contains(&label),
        "the drill names its backup:\n{drills}"
    );
    // The check query arrives as text: the browser's own serialisation escapes it again.
    assert!(
        drills.contains("v &lt;&gt; '&lt;b&gt;x&lt;/b&gt;'"),
        "check query not shown as text:\n{drills}"
    );
    assert!(!drills.contains("<b>x</b>"), "check query became markup");

    let artifacts = artifacts_dir();
    fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let png = artifacts.join("dashboard.png");
    let _ = fs::remove_file(&png);
    let shot = chromium(
        &profiles.join("shot"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
        &url,
    );
    assert!(
        shot.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} is not a real PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    assert_eq!(width, 1280, "screenshot width");
    eprintln!("dashboard screenshot: {}", png.display());
    drop(daemon);
}
