//! Restore drills end to end on real PostgreSQL clusters: `lifeboat drill` restores a backup into
//! a scratch directory, starts PostgreSQL on it, recovers, runs pg_amcheck and check queries,
//! records the result in the repository, and leaves neither a server nor a directory behind, also
//! when it fails or is interrupted.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use lifeboat_testkit::cluster::TestCluster;
use serde_json::Value;

/// Rows in `t` after the setup: 100 before the first backup, 100 after each backup.
const ROWS_PER_STEP: u32 = 100;

struct Fixture {
    setup: Setup,
    /// Archiving into the repository until the test ends.
    _cluster: TestCluster,
    labels: Vec<String>,
    /// Where the drills make their scratch directories.
    scratch: PathBuf,
}

/// A cluster archiving into an encrypted repository, a table `t`, `backups` backups with rows
/// written after each, everything archived; `drill_conf` is the config file's `[drill]` section.
fn fixture(drill_conf: &str, backups: usize) -> Fixture {
    let setup = Setup::new(Backend::Local, true);
    let mut config = fs::OpenOptions::new()
        .append(true)
        .open(&setup.config)
        .expect("open config");
    writeln!(config, "\n[drill]\n{drill_conf}").expect("append [drill]");
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster
        .psql("create table t(id int primary key, v text)")
        .expect("create t");
    insert_rows(&cluster, 0);
    let mut labels = Vec::new();
    for n in 0..backups {
        let report = setup.backup(&cluster);
        labels.push(report["label"].as_str().expect("label").to_string());
        insert_rows(&cluster, n as u32 + 1);
    }
    let last = cluster.switch_wal().expect("switch WAL");
    cluster.wait_archived(&last, WAIT).expect("archived");
    let scratch = setup.scratch("drills");
    Fixture {
        setup,
        _cluster: cluster,
        labels,
        scratch,
    }
}

fn insert_rows(cluster: &TestCluster, step: u32) {
    let from = step * ROWS_PER_STEP + 1;
    let to = from + ROWS_PER_STEP - 1;
    cluster
        .psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({from}, {to}) g"
        ))
        .expect("insert rows");
}

impl Fixture {
    /// `lifeboat drill --scratch-dir S ARGS` as the cluster owner.
    fn drill_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.setup.cmd();
        cmd.arg("drill")
            .arg("--scratch-dir")
            .arg(&self.scratch)
            .args(args);
        cmd
    }

    fn drill(&self, args: &[&str]) -> Output {
        self.drill_cmd(args).output().expect("run lifeboat drill")
    }

    /// Ids of the drill records in the repository.
    fn recorded(&self) -> Vec<String> {
        let dir = self
            .setup
            .repo_dir
            .as_ref()
            .expect("local repository")
            .join("records/drills");
        let mut ids: Vec<String> = match fs::read_dir(&dir) {
            Ok(listing) => listing
                .map(|e| file_name(&e.expect("entry").path()))
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        ids.sort();
        ids
    }

    /// Nothing of any drill may remain: no scratch directory, no server started on one.
    fn assert_nothing_left(&self) {
        let left: Vec<PathBuf> = fs::read_dir(&self.scratch)
            .expect("read scratch dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(left.is_empty(), "scratch directories left behind: {left:?}");
        let procs = processes_naming(&self.scratch);
        assert!(
            procs.is_empty(),
            "processes still running on a drill's scratch directory: {procs:?}"
        );
    }
}

/// Processes whose command line names something under `dir` (a postmaster's `-D`), as
/// `pid: cmdline`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

fn record_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill --json printed no record ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn f64_of(record: &Value, field: &str) -> f64 {
    record[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {record}"))
}

/// (a) The newest backup recovered to the end of the archive: every row is back, pg_amcheck and
/// the check queries pass, the figures are sensible, and the record is in the repository.
#[test]
fn latest_drill_passes_and_is_recorded() {
    let f = fixture(
        "checks = [\"select count(*) from t\", \"select count(*) = 200 from t\"]\ntimeout = \"5m\"",
        1,
    );
    let before = Instant::now();
    let out = f.drill(&["--json"]);
    let took = before.elapsed().as_secs_f64();
    assert_success(&out, "lifeboat drill --json");
    let record = record_of(&out);
    assert_eq!(record["passed"], Value::Bool(true), "{record}");
    assert_eq!(record["backup"].as_str(), Some(f.labels[0].as_str()));
    assert_eq!(record["backup_choice"].as_str(), Some("latest"));
    assert_eq!(record["target"].as_str(), Some("latest"));
    assert_eq!(record["trigger"].as_str(), Some("manual"));
    assert!(record["failed_step"].is_null() && record["failure"].is_null());
    let restore = f64_of(&record, "restore_seconds");
    let replay = f64_of(&record, "replay_seconds");
    let recovery = f64_of(&record, "recovery_seconds");
    assert!(restore > 0.0 && replay > 0.0, "{record}");
    assert!((recovery - (restore + replay)).abs() < 0.01, "{record}");
    assert!(
        recovery < took,
        "recovery {recovery} s, whole drill {took} s"
    );
    assert!(
        record["newest_commit"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{record}"
    );
    let loss = f64_of(&record, "data_loss_seconds");
    assert!((0.0..300.0).contains(&loss), "{record}");
    assert!(
        record["bytes_restored"]
            .as_u64()
            .is_some_and(|b| b > 1_000_000),
        "{record}"
    );
    let checks = record["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "pg_amcheck",
            "select count(*) from t",
            "select count(*) = 200 from t"
        ]
    );
    assert!(
        checks.iter().all(|c| c["passed"] == Value::Bool(true)),
        "{record}"
    );
    assert_eq!(checks[1]["detail"].as_str(), Some("returned 200"));
    assert_eq!(
        f.recorded(),
        vec![record["id"].as_str().expect("id").to_string()]
    );
    f.assert_nothing_left();

    // The human summary says the same.
    let out = f.drill(&[]);
    assert_success(&out, "lifeboat drill");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("drill passed: backup "), "{text}");
    assert!(
        text.contains("recovery time") && text.contains("data-loss window"),
        "{text}"
    );
    assert!(
        text.contains("ok     select count(*) = 200 from t: returned t"),
        "{text}"
    );
    assert_eq!(f.recorded().len(), 2);
    f.assert_nothing_left();
}

/// (b) A random backup (of two) to a random LSN after it, run as root: the restored directory is
/// given to the `postgres` OS user, and the target is recorded.
#[test]
fn random_backup_to_random_lsn_passes() {
    let f = fixture("amcheck = false\ntimeout = \"5m\"", 2);
    // As root: what the daemon does when it runs as root.
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&f.setup.config)
        .arg("drill")
        .arg("--scratch-dir")
        .arg(&f.scratch)
        .args(["--backup", "random", "--target", "random", "--json"])
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .env_remove("LIFEBOAT_REPO");
    let out = cmd.output().expect("run lifeboat drill");
    assert_success(&out, "lifeboat drill --backup random --target random");
    let record = record_of(&out);
    assert_eq!(record["passed"], Value::Bool(true), "{record}");
    assert_eq!(record["backup_choice"].as_str(), Some("random"));
    let backup = record["backup"].as_str().expect("backup");
    assert!(f.labels.iter().any(|l| l == backup), "{record}");
    let target = record["target"].as_str().expect("target");
    assert!(
        target.starts_with("lsn ") && target.contains('/'),
        "{record}"
    );
    assert!(record["data_loss_seconds"].is_null(), "{record}");
    assert!(f64_of(&record, "recovery_seconds") > 0.0);
    assert_eq!(f.recorded().len(), 1);
    f.assert_nothing_left();
}

/// (c) A damaged chunk of the newest backup: the drill fails at the restore, says what is
/// damaged, and the failure is recorded.
#[test]
fn corrupted_backup_fails_at_restore_and_is_recorded() {
    let f = fixture("amcheck = false", 1);
    let hash = crate::support::chunks::corrupt_largest_chunk(&f.setup, 0x55);

    let out = f.drill(&["--json"]);
    assert_code(&out, 9, "drill of a corrupted backup");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "lifeboat: error: drill of backup {} failed at step restore: ",
            f.labels[0]
        )),
        "{err}"
    );
    assert!(
        err.contains(&hash),
        "the damaged chunk {hash} is not named: {err}"
    );
    assert!(err.contains("HINT: "), "{err}");
    let record = record_of(&out);
    assert_eq!(record["passed"], Value::Bool(false), "{record}");
    assert_eq!(record["failed_step"].as_str(), Some("restore"));
    assert!(record["replay_seconds"].is_null(), "{record}");
    assert_eq!(
        f.recorded(),
        vec![record["id"].as_str().expect("id").to_string()]
    );
    f.assert_nothing_left();
}

/// (d) A check query that returns 0 fails the drill, naming the query and what it returned;
/// `--keep` leaves the scratch directory, with the server stopped.
#[test]
fn failing_check_query_fails_the_drill() {
    let f = fixture(
        "amcheck = false\nchecks = [\"select count(*) from t where id < 0\"]",
        1,
    );
    let out = f.drill(&["--keep"]);
    assert_code(&out, 9, "drill with a failing check");
    let err = stderr(&out);
    assert!(
        err.contains("failed at step check: check query `select count(*) from t where id < 0` in database postgres: returned 0"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("drill FAILED at step check"), "{text}");
    assert_eq!(f.recorded().len(), 1);
    let kept: Vec<PathBuf> = fs::read_dir(&f.scratch)
        .expect("read scratch dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        file_name(&kept[0]).starts_with("lifeboat-drill-"),
        "{kept:?}"
    );
    assert!(kept[0].join("data/PG_VERSION").is_file());
    assert!(kept[0].join("postgres.log").is_file());
    assert!(
        !server_running_under(&f.scratch),
        "a kept drill left its server running"
    );
    assert!(stderr(&out).contains(&format!("kept the scratch directory {}", kept[0].display())));
    fs::remove_dir_all(&kept[0]).expect("remove the kept directory");
    f.assert_nothing_left();
}

/// SIGTERM while the scratch server runs: it is stopped, the directory removed, nothing recorded,
/// exit 143.
#[test]
fn sigterm_stops_the_drill_and_records_nothing() {
    let f = fixture(
        "amcheck = false\nchecks = [\"select count(*) from pg_sleep(120)\"]",
        1,
    );
    let mut child = f
        .drill_cmd(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lifeboat drill");
    wait_for_scratch_server(&f.scratch, &mut child);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("wait for the drill");
    assert_code(&out, 143, "interrupted drill");
    assert!(
        stderr(&out).contains("interrupted by SIGTERM"),
        "{}",
        stderr(&out)
    );
    assert!(f.recorded().is_empty(), "an interrupted drill was recorded");
    f.assert_nothing_left();
}

/// kill -9 of a drill while its server runs leaves the server and a full copy of the data; the
/// next drill stops that server and removes the directory before it starts, and passes.
#[test]
fn the_next_drill_sweeps_what_a_killed_drill_left() {
    let flag = std::env::temp_dir().join(format!("lifeboat-drill-flag-{}", std::process::id()));
    let _ = fs::remove_file(&flag);
    // The check waits while `flag` is absent: the first drill is killed during it, the second
    // finds the flag and passes at once.
    let check = format!(
        "select count(*) from pg_sleep(case when (pg_stat_file('{}', true)).size is null then 120 else 0 end)",
        flag.display()
    );
    let f = fixture(&format!("amcheck = false\nchecks = [\"{check}\"]"), 1);
    let mut child = f.drill_cmd(&[]).spawn().expect("start lifeboat drill");
    wait_for_scratch_server(&f.scratch, &mut child);
    child.kill().expect("kill -9 the drill");
    child.wait().expect("reap the drill");
    let left: Vec<PathBuf> = fs::read_dir(&f.scratch)
        .expect("read scratch dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        server_running_under(&f.scratch),
        "the killed drill's server should outlive it"
    );

    fs::write(&flag, "go").expect("write the flag");
    let out = f.drill(&[]);
    let _ = fs::remove_file(&flag);
    assert_code(&out, 0, "the drill after a killed one");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "removing the scratch directory {} left by drill process {}",
            left[0].display(),
            child.id()
        )),
        "{err}"
    );
    assert!(!left[0].exists(), "the abandoned directory is still there");
    assert_eq!(f.recorded().len(), 1, "only the finished drill is recorded");
    f.assert_nothing_left();
}

/// Wait (120 s at most) until `child`, a running drill, has started its scratch server.
fn wait_for_scratch_server(scratch: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !server_running_under(scratch) {
        assert!(
            Instant::now() < deadline,
            "the drill's server did not start within 120 s"
        );
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the drill ended before its server started"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
}

/// Whether a postmaster runs in some `lifeboat-drill-*/data` under `scratch`.
fn server_running_under(scratch: &Path) -> bool {
    let Ok(listing) = fs::read_dir(scratch) else {
        return false;
    };
    listing.flatten().any(|e| {
        fs::read_to_string(e.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    })
}
