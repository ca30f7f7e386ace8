//! The daemon's copy and dump jobs: `[schedule] copy` brings the second repository of `[copy] to`
//! up to date, `[schedule] dump` stores logical dumps, and `/api/status`, `/metrics` and the
//! dashboard show how far behind the copy is and how old the newest dump; `[schedule] dump_drill`
//! proves the newest dump restores.

use std::time::Duration;

use crate::support::daemon::{Daemon, daemon_config};
use crate::support::*;
use lifeboat_testkit::cluster::TestCluster;
use lifeboat_testkit::free_port;
use serde_json::Value;

fn job_succeeded(status: &Value, job: &str) -> bool {
    status["jobs"].as_array().is_some_and(|jobs| {
        jobs.iter().any(|j| {
            j["job"] == job
                && j["history"]["runs"]
                    .as_array()
                    .is_some_and(|runs| runs.iter().any(|r| r["outcome"] == "succeeded"))
        })
    })
}

#[test]
fn scheduled_copy_and_dump_run_and_their_ages_are_watched() {
    let setup = Setup::new(Backend::Local, true);
    let scratch = setup.scratch("drills");
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster
        .psql("create table t(id int primary key); insert into t select generate_series(1, 100)")
        .expect("rows");
    let copy_dir = setup.scratch("copy");
    let port = free_port();
    daemon_config(
        &setup,
        &cluster,
        &format!(
            "[copy]\nto = \"{}\"\n[dump]\nkeep_last = 1\n[drill]\nscratch_dir = \"{}\"\n\
             [schedule]\ncopy = \"*/3 * * * * *\"\ndump = \"*/4 * * * * *\"\ndump_expire = \"*/5 * * * * *\"\n\
             dump_drill = \"*/6 * * * * *\"\n\
             [serve]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"1s\"\n",
            copy_dir.display(),
            scratch.display()
        ),
    );
    let out = setup.run(&["backup", "--json"]);
    assert_success(&out, "lifeboat backup");
    let report: Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    let label = report["label"].as_str().expect("label").to_string();

    let daemon = Daemon::start(&setup, port, "daemon.log");
    let status = daemon.wait_status(
        "copy, dump, dump-expire and dump-drill jobs succeeded and the status shows their ages",
        Duration::from_secs(120),
        |s| {
            job_succeeded(s, "copy")
                && job_succeeded(s, "dump")
                && job_succeeded(s, "dump-expire")
                && job_succeeded(s, "dump-drill")
                && s["copy_age_seconds"].is_number()
                && s["dumps"].as_u64().is_some_and(|n| n >= 1)
                && s["newest_dump_age_seconds"].is_number()
        },
    );
    assert!(
        status["copy_age_seconds"].as_f64().expect("number") < 60.0,
        "{}",
        status["copy_age_seconds"]
    );
    let findings = status["findings"].as_array().expect("findings");
    assert!(
        !findings
            .iter()
            .any(|f| f["key"] == "copy_age" || f["key"] == "dump_age"),
        "fresh copy and dump raise nothing: {findings:?}"
    );
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "lifeboat_dumps ",
        "lifeboat_newest_dump_age_seconds ",
        "lifeboat_copy_age_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let (code, page) = daemon.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("Second repository"), "dashboard card");
    assert!(page.contains("Newest logical dump"), "dashboard card");
    drop(daemon);

    // The second repository holds the backup, on its own.
    let out = setup
        .cmd()
        .arg("--repo")
        .arg(&copy_dir)
        .args(["list", "--json"])
        .output()
        .expect("run lifeboat list");
    assert_success(&out, "lifeboat list on the copy");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&label),
        "the copy lists {label}: {listing}"
    );
    // dump expire kept one dump ([dump] keep_last = 1) however many ran.
    let out = setup.run(&["dump", "list", "--json"]);
    assert_success(&out, "lifeboat dump list");
    let dumps: Value = serde_json::from_slice(&out.stdout).expect("dump list JSON");
    assert!(dumps.as_array().is_some_and(|d| !d.is_empty()), "{dumps}");
}
