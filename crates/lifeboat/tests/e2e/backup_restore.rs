//! Base backups and point-in-time restore end to end on real PostgreSQL clusters: point-in-time
//! targets, exact round trips on every backend, backups under load, tablespaces, delta restores,
//! refusals and a killed backup. Every source cluster archives its WAL into the same repository its
//! backups go to (`archive_command = 'cp %p ARCH/%f && lifeboat wal-push %p'`), and every restore
//! is started as a real server and checked the way a user would check it: the rows, `pg_amcheck`,
//! `pg_checksums`, `pg_dumpall`, exit codes and messages.
//!
//! Restored copies get `archive_mode = off` appended to their postgresql.conf before they start: a
//! promoted copy would otherwise archive its new timeline into the source's repository, and the
//! next restore (recovery_target_timeline = latest) would follow that timeline instead of the
//! source's.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use lifeboat_pg::cluster::{LocalCluster, OsUser, StopMode};
use lifeboat_pg::walname::WalFileName;
use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner};
use lifeboat_testkit::free_port;
use serde_json::Value;

/// How long a restored copy may take to start (pg_ctl -w waits for consistency).
const START: Duration = Duration::from_secs(180);
/// How long a restored copy may take to finish recovery and promote after it started.
const RECOVERY: Duration = Duration::from_secs(180);
/// How long a `lifeboat check` may take, even when it has to report a problem.
const CHECK_LIMIT: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn label(report: &Value) -> String {
    report["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no label in {report}"))
        .to_string()
}

fn list(setup: &Setup) -> Value {
    json_of(&setup.run(&["list", "--json"]), "lifeboat list --json")
}

fn listed_labels(setup: &Setup) -> Vec<String> {
    let listing = list(setup);
    listing["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json without a backups array: {listing}"))
        .iter()
        .map(label)
        .collect()
}

/// A place to restore into: `<fresh test dir>/data`, not yet created.
pub(crate) struct Target {
    dir: TestDir,
    pub(crate) data: PathBuf,
}

pub(crate) fn target() -> Target {
    let dir = TestDir::new().expect("test dir");
    let data = dir.path().join("data");
    Target { dir, data }
}

/// `lifeboat restore --target-dir DATA ARGS...`.
fn restore(setup: &Setup, data: &Path, args: &[&str]) -> Output {
    setup
        .cmd()
        .arg("restore")
        .arg("--target-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run lifeboat restore")
}

/// `lifeboat restore --json`, which must succeed; its report.
pub(crate) fn restore_json(setup: &Setup, data: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let what = format!("lifeboat restore {}", args.join(" "));
    json_of(&restore(setup, data, &all), &what)
}

/// Keep a restored copy from archiving into the source's repository (see the module docs).
fn no_archiving(datadir: &Path) {
    let path = datadir.join("postgresql.conf");
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("restored {} missing: {e}", path.display()));
    conf.write_all(b"\n# Added by the test: a restored copy must not archive into the source's repository.\narchive_mode = off\n")
        .expect("append to postgresql.conf");
}

/// Start a restored copy (as the source's owner, on a new port) and wait until it has finished
/// recovery and promoted; it is stopped when the returned cluster is dropped.
pub(crate) fn start_restored(target: Target, owner: Option<OsUser>) -> TestCluster {
    let log = target.dir.path().join("postgres.log");
    let cluster = LocalCluster::existing(&target.data, free_port(), target.dir.path(), owner)
        .expect("restored cluster")
        .with_log_file(log);
    let cluster = TestCluster::adopt(target.dir, cluster);
    start_and_promote(&cluster);
    cluster
}

fn start_and_promote(cluster: &LocalCluster) {
    no_archiving(&cluster.datadir);
    cluster
        .start(START)
        .unwrap_or_else(|e| panic!("the restored cluster did not start: {e}"));
    wait_promoted(cluster);
}

/// Wait until recovery has ended and the server promoted (the default `--target-action promote`).
fn wait_promoted(cluster: &LocalCluster) {
    let deadline = Instant::now() + RECOVERY;
    let mut last: String;
    loop {
        match cluster.psql(
            "select pg_is_in_recovery(), case when pg_is_in_recovery() \
             then pg_get_wal_replay_pause_state() else 'none' end",
        ) {
            Ok(row) if row == "f|none" => return,
            Ok(row) if row.ends_with("|paused") => panic!(
                "recovery paused instead of promoting (the default --target-action is promote):\n{}",
                cluster.log_tail(30)
            ),
            Ok(row) => last = row,
            Err(e) if !cluster.is_running() => panic!(
                "the restored cluster stopped during recovery ({e}):\n{}",
                cluster.log_tail(40)
            ),
            Err(e) => last = e.to_string(),
        }
        assert!(
            Instant::now() < deadline,
            "recovery did not end within {RECOVERY:?} (last: {last}):\n{}",
            cluster.log_tail(40)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn dumpall(cluster: &LocalCluster) -> String {
    let out = cluster
        .command("pg_dumpall")
        .stdin(Stdio::null())
        .output()
        .expect("run pg_dumpall");
    assert_success(&out, "pg_dumpall");
    let dump = String::from_utf8(out.stdout).expect("pg_dumpall output is UTF-8");
    // Recent minor releases wrap the dump in `\restrict KEY` / `\unrestrict KEY` with a random key.
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn assert_same_dump(source: &str, restored: &str) {
    if source == restored {
        return;
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (source.lines().collect(), restored.lines().collect());
    let at = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let show = |v: &[&str]| v[at.saturating_sub(3)..(at + 5).min(v.len())].join("\n");
    panic!(
        "pg_dumpall of the restored cluster differs from the source's at line {} \
         ({} vs {} lines)\n--- source:\n{}\n--- restored:\n{}",
        at + 1,
        a.len(),
        b.len(),
        show(&a),
        show(&b)
    );
}

/// `pg_amcheck --all` (installing amcheck where missing: without it pg_amcheck skips a database)
/// on a running cluster; it must find nothing.
fn amcheck(cluster: &LocalCluster) {
    let out = cluster
        .command("pg_amcheck")
        .args(["--all", "--install-missing", "--heapallindexed"])
        .stdin(Stdio::null())
        .output()
        .expect("run pg_amcheck");
    assert_success(&out, "pg_amcheck --all");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "pg_amcheck reported problems:\n{}",
        text(&out)
    );
}

/// Stop the cluster cleanly and run `pg_checksums --check` on it.
fn stop_and_check_checksums(cluster: &LocalCluster) {
    cluster.stop(StopMode::Fast).expect("stop restored cluster");
    let out = cluster
        .command("pg_checksums")
        .arg("-D")
        .arg(&cluster.datadir)
        .arg("--check")
        .stdin(Stdio::null())
        .output()
        .expect("run pg_checksums");
    assert_success(&out, "pg_checksums --check");
}

/// pgbench's balances: (sum of accounts, branches, tellers, history deltas, history rows).
fn balances(cluster: &LocalCluster) -> (i64, i64, i64, i64, i64) {
    let row = cluster
        .psql(
            "select (select sum(abalance) from pgbench_accounts), \
                    (select sum(bbalance) from pgbench_branches), \
                    (select sum(tbalance) from pgbench_tellers), \
                    (select coalesce(sum(delta), 0) from pgbench_history), \
                    (select count(*) from pgbench_history)",
        )
        .expect("balances");
    let v: Vec<i64> = row
        .split('|')
        .map(|s| s.parse().unwrap_or_else(|_| panic!("balances row {row:?}")))
        .collect();
    (v[0], v[1], v[2], v[3], v[4])
}

fn assert_pgbench_consistent(cluster: &LocalCluster, what: &str) -> (i64, i64, i64, i64, i64) {
    let b = balances(cluster);
    assert!(
        b.0 == b.3 && b.1 == b.3 && b.2 == b.3,
        "{what}: pgbench balances disagree (accounts {}, branches {}, tellers {}, history {})",
        b.0,
        b.1,
        b.2,
        b.3
    );
    b
}

/// Switch WAL on the source and wait until everything written so far is in the repository.
pub(crate) fn archive_everything(cluster: &TestCluster) {
    let last = cluster.switch_wal().expect("switch WAL");
    cluster.wait_archived(&last, WAIT).expect("archived");
}

/// Every file, directory and link under `root` (relative path → what it is), leaving out what a
/// restore or a server start legitimately makes differ.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let top = rel.split('/').next().unwrap_or("");
            if matches!(
                top,
                "pg_wal"
                    | "postgresql.auto.conf"
                    | "recovery.signal"
                    | "standby.signal"
                    | "postmaster.pid"
                    | "postmaster.opts"
                    | "current_logfiles"
                    | "log"
            ) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).expect("stat");
            if meta.file_type().is_symlink() {
                let to = fs::read_link(&path).expect("readlink");
                out.insert(rel, format!("link -> {}", to.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).expect("read");
                out.insert(
                    rel,
                    format!("file {} {}", bytes.len(), blake3::hash(&bytes).to_hex()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let mut diffs = Vec::new();
    for (k, v) in &ta {
        match tb.get(k) {
            None => diffs.push(format!("only in {}: {k} ({v})", a.display())),
            Some(w) if w != v => diffs.push(format!("differs: {k}: {v} vs {w}")),
            _ => {}
        }
    }
    for (k, w) in &tb {
        if !ta.contains_key(k) {
            diffs.push(format!("only in {}: {k} ({w})", b.display()));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} and {} differ in {} entries:\n{}",
        a.display(),
        b.display(),
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn u64_field(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field:?} in {report}"))
}

// ---------------------------------------------------------------------------------------------
// Point-in-time recovery: time, LSN, xid, named restore point, immediate
// ---------------------------------------------------------------------------------------------

/// A row of `t` as the writer saw it: its id and transaction, and the time (as PostgreSQL writes
/// it, `2026-11-23 10:15:00.123456+00`) and WAL position read right after its commit returned.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    xid: String,
    after: String,
    lsn: String,
}

/// The restore point `before_x` is created right after this row commits.
const RESTORE_POINT_AFTER: i64 = 6;

/// Insert one row per transaction every ~100 ms until told to stop.
fn writer(
    cluster: LocalCluster,
    stop: Arc<AtomicBool>,
    rows: Arc<Mutex<Vec<Row>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let inserted = cluster
                .psql("insert into t(note) values ('row') returning id, xid")
                .expect("insert a row");
            let (id, xid) = inserted.split_once('|').expect("id|xid");
            let seen = cluster
                .psql(
                    "select to_char(clock_timestamp() at time zone 'UTC', \
                     'YYYY-MM-DD HH24:MI:SS.US') || '+00', pg_current_wal_lsn()",
                )
                .expect("time and LSN after commit");
            let (after, lsn) = seen.split_once('|').expect("time|lsn");
            let id: i64 = id.parse().expect("id");
            if id == RESTORE_POINT_AFTER {
                cluster
                    .psql("select pg_create_restore_point('before_x')")
                    .expect("restore point");
            }
            rows.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Row {
                    id,
                    xid: xid.to_string(),
                    after: after.to_string(),
                    lsn: lsn.to_string(),
                });
            thread::sleep(Duration::from_millis(100));
        }
    })
}

fn row_count(rows: &Mutex<Vec<Row>>) -> usize {
    rows.lock().unwrap_or_else(PoisonError::into_inner).len()
}

fn wait_rows(rows: &Mutex<Vec<Row>>, n: usize, writer: &thread::JoinHandle<()>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while row_count(rows) < n {
        assert!(!writer.is_finished(), "the writer thread stopped early");
        assert!(
            Instant::now() < deadline,
            "fewer than {n} rows written in 2 minutes"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Restore with `args`, start, wait for promotion; the report and the running copy.
fn restore_and_start(setup: &Setup, owner: &Option<OsUser>, args: &[&str]) -> (Value, TestCluster) {
    let t = target();
    let report = restore_json(setup, &t.data, args);
    (report, start_restored(t, owner.clone()))
}

#[test]
fn pitr_time_lsn_xid_name_and_immediate() {
    let setup = Setup::new(Backend::Local, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source
        .psql(
            "create table t(id serial primary key, at timestamptz not null default clock_timestamp(), \
             xid bigint not null default txid_current(), note text)",
        )
        .expect("create t");
    let owner = source.owner.clone();

    let first = setup.backup(&source);
    let label1 = label(&first);

    let rows = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = writer((*source).clone(), stop.clone(), rows.clone());
    wait_rows(&rows, 10, &handle);
    let before_second = row_count(&rows);
    let second = setup.backup(&source);
    let label2 = label(&second);
    let after_second = row_count(&rows);
    wait_rows(&rows, after_second + 10, &handle);
    stop.store(true, Ordering::SeqCst);
    handle.join().expect("writer thread");
    archive_everything(&source);

    let rows = rows.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        first_n(rows.len() as i64),
        "ids are 1..n in commit order"
    );
    let row = |id: i64| &rows[usize::try_from(id - 1).expect("id")];
    assert_eq!(listed_labels(&setup), vec![label1.clone(), label2.clone()]);
    let late = i64::try_from(after_second).expect("count") + 3;
    let mut checks = Checks::default();

    checks.run("--target-time between rows 4 and 5", || {
        // Before the second backup started, so the first one is used.
        let (report, copy) = restore_and_start(&setup, &owner, &["--target-time", &row(4).after]);
        assert_eq!(report["backup"].as_str(), Some(label1.as_str()), "{report}");
        assert_eq!(ids(&copy), first_n(4), "--target-time {}", row(4).after);
        copy.psql("insert into t(note) values ('written after promotion')")
            .expect("the promoted copy is writable");
    });

    checks.run("--target-lsn read right after row 8 committed", || {
        let (report, copy) = restore_and_start(&setup, &owner, &["--target-lsn", &row(8).lsn]);
        assert_eq!(report["backup"].as_str(), Some(label1.as_str()), "{report}");
        assert_eq!(ids(&copy), first_n(8), "--target-lsn {}", row(8).lsn);
    });

    checks.run("--target-name before_x (made right after row 6)", || {
        let (_, copy) = restore_and_start(
            &setup,
            &owner,
            &["--backup", &label1, "--target-name", "before_x"],
        );
        assert_eq!(ids(&copy), first_n(RESTORE_POINT_AFTER));
    });

    checks.run("--target-time after the second backup ended", || {
        let (report, copy) =
            restore_and_start(&setup, &owner, &["--target-time", &row(late).after]);
        assert_eq!(report["backup"].as_str(), Some(label2.as_str()), "{report}");
        assert_eq!(
            ids(&copy),
            first_n(late),
            "--target-time {}",
            row(late).after
        );
    });

    checks.run("--target-xid of a later row (inclusive)", || {
        let by_xid = late + 3;
        let (_, copy) = restore_and_start(&setup, &owner, &["--target-xid", &row(by_xid).xid]);
        assert_eq!(
            ids(&copy),
            first_n(by_xid),
            "--target-xid {}",
            row(by_xid).xid
        );
    });

    checks.run("--target immediate of the second backup", || {
        // Exactly what was committed when it ended: at least every row recorded before it started,
        // at most those recorded when it returned (plus one committed but not yet recorded).
        let (report, copy) = restore_and_start(
            &setup,
            &owner,
            &["--backup", &label2, "--target", "immediate"],
        );
        assert_eq!(report["backup"].as_str(), Some(label2.as_str()), "{report}");
        let got = ids(&copy);
        let n = got.len();
        assert_eq!(got, first_n(n as i64), "a consistent prefix of the rows");
        assert!(
            (before_second..=after_second + 1).contains(&n),
            "--target immediate gave {n} rows; {before_second} were committed before the backup \
             started and {after_second} when it returned"
        );
    });

    checks.run("--dry-run", || {
        let t = target();
        let out = restore(
            &setup,
            &t.data,
            &["--target-time", &row(late).after, "--dry-run"],
        );
        assert_success(&out, "restore --dry-run");
        assert!(
            text(&out).contains(&label2),
            "the plan names backup {label2}: {}",
            text(&out)
        );
        assert!(!t.data.exists(), "--dry-run created {}", t.data.display());
    });

    // A time in the same second as the second backup's stop but before its stop record (rows
    // committed while it copied): that backup had not ended by then, so the first one must be
    // used. Whether such rows exist depends on timing; when they do not, there is nothing to check.
    let stop_lsn = lsn_value(second["stop_lsn"].as_str().expect("stop_lsn"));
    let stop_time = second["stop_time"].as_str().expect("stop_time").to_string();
    let same_second_before_stop: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            lsn_value(&r.lsn) < stop_lsn && r.after[..19].replacen(' ', "T", 1) == stop_time[..19]
        })
        .collect();
    if let Some(early) = same_second_before_stop.first() {
        checks.run(
            "--target-time before the second backup's stop, in the same second",
            || {
                let (report, copy) =
                    restore_and_start(&setup, &owner, &["--target-time", &early.after]);
                assert_eq!(
                    report["backup"].as_str(),
                    Some(label1.as_str()),
                    "{} is before the stop of backup {label2} (stop LSN {}, row {} committed \
                     before it), so {label1} must be used: {report}",
                    early.after,
                    second["stop_lsn"],
                    early.id
                );
                assert_eq!(
                    ids(&copy),
                    first_n(early.id),
                    "--target-time {}",
                    early.after
                );
            },
        );
    } else {
        eprintln!("no row committed in the second of the backup's stop before it: not checked");
    }

    checks.run(
        "--target-time in RFC 3339, as lifeboat list prints times",
        || {
            let rfc = late + 1;
            let rfc3339 = row(rfc).after.replacen(' ', "T", 1).replace("+00", "Z");
            let (report, copy) = restore_and_start(&setup, &owner, &["--target-time", &rfc3339]);
            assert_eq!(report["backup"].as_str(), Some(label2.as_str()), "{report}");
            assert_eq!(ids(&copy), first_n(rfc), "--target-time {rfc3339}");
        },
    );
    checks.finish();
}

/// `X/Y` (hex) as a number, to compare LSNs.
fn lsn_value(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("LSN {text:?}"));
    (u64::from_str_radix(hi, 16).expect("LSN") << 32) | u64::from_str_radix(lo, 16).expect("LSN")
}

/// Independent checks of one story (each with its own restore), so that one failure does not hide
/// the others; `finish` fails listing every check that failed.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn run(&mut self, name: &str, check: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            self.failed.push(format!("{name}: {msg}"));
        }
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n\n{}",
            self.failed.len(),
            self.failed.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A quiet source round-trips exactly, on every backend, encrypted or not
// ---------------------------------------------------------------------------------------------

fn round_trip(backend: Backend, encrypted: bool) {
    let setup = Setup::new(backend, encrypted);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source.pgbench_init(1).expect("pgbench -i");
    source
        .psql(
            "create table notes(id int primary key, body text); \
             insert into notes select g, repeat(md5(g::text), 1 + g % 300) from generate_series(1, 300) g; \
             create index on notes(left(body, 20))",
        )
        .expect("notes");
    source
        .psql("create database other")
        .expect("create database");
    source
        .psql_db(
            "other",
            "create table things(id serial primary key, name text unique); \
             insert into things(name) select 'thing ' || g from generate_series(1, 200) g",
        )
        .expect("things");

    let report = setup.backup(&source);
    let label = label(&report);
    assert_eq!(report["timeline"].as_u64(), Some(1), "{report}");
    assert!(u64_field(&report, "files") > 100, "{report}");
    assert!(u64_field(&report, "size") > 10_000_000, "{report}");
    assert_eq!(
        report["bad_pages"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    let listing = list(&setup);
    assert_eq!(listed_labels(&setup), vec![label.clone()], "{listing}");
    assert!(listing["window"]["earliest"].is_string(), "{listing}");

    let t = target();
    let restored = restore_json(&setup, &t.data, &[]);
    assert_eq!(
        restored["backup"].as_str(),
        Some(label.as_str()),
        "{restored}"
    );
    assert!(u64_field(&restored, "files_written") > 100, "{restored}");

    let source_dump = dumpall(&source);
    let copy = start_restored(t, source.owner.clone());
    assert_eq!(
        copy.psql("select count(*) from notes").expect("notes"),
        "300"
    );
    assert_same_dump(&source_dump, &dumpall(&copy));
    amcheck(&copy);
    stop_and_check_checksums(&copy);
}

#[test]
fn a_quiet_source_round_trips_exactly_local_unencrypted() {
    round_trip(Backend::Local, false);
}

#[test]
fn a_quiet_source_round_trips_exactly_local_encrypted() {
    round_trip(Backend::Local, true);
}

#[test]
fn a_quiet_source_round_trips_exactly_s3_unencrypted() {
    round_trip(Backend::S3, false);
}

#[test]
fn a_quiet_source_round_trips_exactly_s3_encrypted() {
    round_trip(Backend::S3, true);
}

// ---------------------------------------------------------------------------------------------
// A backup taken under pgbench load
// ---------------------------------------------------------------------------------------------

#[test]
fn backup_under_pgbench_load_restores_consistent() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source.pgbench_init(1).expect("pgbench -i");

    let load_cluster = (*source).clone();
    let load = thread::spawn(move || load_cluster.pgbench(&["-c", "2", "-j", "1", "-T", "10"]));
    thread::sleep(Duration::from_secs(2));
    assert!(
        !load.is_finished(),
        "pgbench stopped before the backup started"
    );
    let report = setup.backup(&source);
    let label = label(&report);
    load.join()
        .expect("pgbench thread")
        .expect("pgbench under backup");
    archive_everything(&source);
    let at_source = assert_pgbench_consistent(&source, "source");
    assert!(at_source.4 > 100, "pgbench ran: {at_source:?}");

    // To the end of the archive: exactly the source.
    let (_, copy) = restore_and_start(&setup, &source.owner, &[]);
    assert_eq!(
        assert_pgbench_consistent(&copy, "restored to the end"),
        at_source
    );
    amcheck(&copy);
    drop(copy);

    // Only to the end of the backup: consistent, everything committed before the backup started.
    let (_, copy) = restore_and_start(
        &setup,
        &source.owner,
        &["--backup", &label, "--target", "immediate"],
    );
    let at_backup = assert_pgbench_consistent(&copy, "restored to the backup's end");
    assert!(
        at_backup.4 > 0 && at_backup.4 <= at_source.4,
        "{at_backup:?} vs {at_source:?}"
    );
    amcheck(&copy);
    stop_and_check_checksums(&copy);
}

// ---------------------------------------------------------------------------------------------
// A tablespace outside the data directory
// ---------------------------------------------------------------------------------------------

#[test]
fn tablespace_round_trips_to_a_new_location() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    let original = setup.scratch("ts_original");
    source
        .psql(&format!(
            "create tablespace outside location '{}'",
            path_str(&original)
        ))
        .expect("create tablespace");
    source
        .psql(
            "create table far(id int primary key, v text) tablespace outside; \
             insert into far select g, 'value ' || g from generate_series(1, 500) g; \
             create index far_v on far(v) tablespace outside",
        )
        .expect("table in the tablespace");
    let oid = source
        .psql("select oid from pg_tablespace where spcname = 'outside'")
        .expect("oid");
    let expected = source
        .psql("select count(*), sum(id), max(v) from far")
        .expect("far");
    let report = setup.backup(&source);
    let label = label(&report);
    archive_everything(&source);

    // Without a mapping the tablespace would go back where it was, which is not empty: refused.
    let t = target();
    let out = restore(&setup, &t.data, &["--backup", &label]);
    assert_code(&out, 4, "restore onto an occupied tablespace location");
    assert!(
        stderr(&out).contains(path_str(&original)),
        "the message names {}: {}",
        original.display(),
        stderr(&out)
    );

    let relocated = setup.dir.path().join("ts_relocated");
    let map = format!("{oid}={}", path_str(&relocated));
    let t = target();
    let restored = restore_json(
        &setup,
        &t.data,
        &["--backup", &label, "--tablespace-map", &map],
    );
    assert_eq!(restored["backup"].as_str(), Some(label.as_str()));
    let link = t.data.join("pg_tblspc").join(&oid);
    assert_eq!(
        fs::read_link(&link).expect("pg_tblspc link"),
        relocated,
        "{} points to the new location",
        link.display()
    );

    let copy = start_restored(t, source.owner.clone());
    assert_eq!(
        copy.psql("select count(*), sum(id), max(v) from far")
            .expect("far in the copy"),
        expected
    );
    assert_eq!(
        copy.psql(&format!("select pg_tablespace_location({oid})"))
            .expect("location"),
        path_str(&relocated)
    );
    assert_eq!(
        copy.psql("select count(*) from far where v = 'value 77'")
            .expect("index scan"),
        "1"
    );
    amcheck(&copy);
    // The source's tablespace is untouched.
    assert_eq!(
        source
            .psql("select count(*), sum(id), max(v) from far")
            .expect("far"),
        expected
    );
}

/// `--delta` into a new directory without `--tablespace-map`, on the machine where the source runs:
/// the tablespace's original location belongs to the running source, so the restore must be refused
/// and must not touch it (the hint of the refusal without `--delta` suggests adding `--delta`).
#[test]
fn restore_delta_never_writes_into_a_running_clusters_tablespace() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    let original = setup.scratch("ts_original");
    source
        .psql(&format!(
            "create tablespace outside location '{}'",
            path_str(&original)
        ))
        .expect("create tablespace");
    source
        .psql(
            "create table far(id int primary key, v text) tablespace outside; \
             insert into far select g, 'value ' || g from generate_series(1, 500) g",
        )
        .expect("table in the tablespace");
    let label = label(&setup.backup(&source));
    archive_everything(&source);
    source
        .psql(
            "insert into far select g, 'later ' || g from generate_series(501, 1000) g; checkpoint",
        )
        .expect("written after the backup");
    let expected = source
        .psql("select count(*), sum(id), max(v) from far")
        .expect("far");

    let t = target();
    let out = restore(&setup, &t.data, &["--backup", &label, "--delta"]);
    assert_code(
        &out,
        4,
        "restore --delta onto the tablespace of a running cluster",
    );
    assert!(
        stderr(&out).contains(path_str(&original)),
        "the message names {}: {}",
        original.display(),
        stderr(&out)
    );

    // Read from disk again: what the source has is what it wrote.
    source.stop(StopMode::Fast).expect("stop source");
    source.start(START).expect("start source");
    assert_eq!(
        source
            .psql("select count(*), sum(id), max(v) from far")
            .expect("far after restart"),
        expected,
        "the source's tablespace was overwritten"
    );
    amcheck(&source);
}

// ---------------------------------------------------------------------------------------------
// Delta restore
// ---------------------------------------------------------------------------------------------

#[test]
fn delta_restore_equals_fresh_restore_and_rewrites_only_changes() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source.pgbench_init(1).expect("pgbench -i");
    let report = setup.backup(&source);
    let label = label(&report);
    let total_files = u64_field(&report, "files");
    archive_everything(&source);
    let source_dump = dumpall(&source);

    // A restored copy, used: started, written to, stopped; then files changed by hand.
    let (_, used) = restore_and_start(&setup, &source.owner, &["--backup", &label]);
    let branches_file = used
        .psql("select pg_relation_filepath('pgbench_branches')")
        .expect("relation path");
    used.psql(
        "create table delta_marker(x int); insert into delta_marker select generate_series(1, 100); \
         update pgbench_accounts set abalance = abalance + 1 where aid <= 1000",
    )
    .expect("write to the copy");
    used.stop(StopMode::Fast).expect("stop the copy");
    let data = used.datadir.clone();
    fs::write(data.join("stray-file"), "not part of any backup").expect("stray file");
    fs::remove_file(data.join(&branches_file)).expect("delete a relation file");
    fs::write(data.join("PG_VERSION"), "99\n").expect("alter PG_VERSION, same size");

    let delta = restore_json(&setup, &data, &["--backup", &label, "--delta"]);
    let written = u64_field(&delta, "files_written");
    assert!(
        written * 4 < total_files,
        "--delta rewrote {written} of {total_files} files: {delta}"
    );
    assert!(
        written >= 2,
        "the deleted and altered files are rewritten: {delta}"
    );
    assert!(u64_field(&delta, "files_removed") >= 1, "{delta}");
    assert!(u64_field(&delta, "files_kept") > total_files / 2, "{delta}");
    assert!(
        !data.join("stray-file").exists(),
        "the stray file is removed"
    );

    let fresh = target();
    restore_json(&setup, &fresh.data, &["--backup", &label]);
    assert_same_tree(&data, &fresh.data);

    // Started, both are the source as it was, without what was written to the used copy.
    start_and_promote(&used);
    let fresh = start_restored(fresh, source.owner.clone());
    assert_eq!(
        used.psql("select to_regclass('delta_marker') is null")
            .expect("marker"),
        "t",
        "a table created in the copy before --delta is gone"
    );
    let delta_dump = dumpall(&used);
    assert_same_dump(&source_dump, &delta_dump);
    assert_same_dump(&dumpall(&fresh), &delta_dump);
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_refuses_non_empty_target_and_running_postmaster() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source
        .psql("create table keep(x int); insert into keep select generate_series(1, 300)")
        .expect("table");
    setup.backup(&source);
    archive_everything(&source);

    // A directory holding something, without --delta.
    let occupied = setup.scratch("occupied");
    fs::write(occupied.join("precious.txt"), "mine").expect("file");
    chown_to_owner(&occupied).expect("chown");
    let out = restore(&setup, &occupied, &[]);
    assert_code(&out, 4, "restore into a non-empty directory");
    let msg = stderr(&out);
    assert!(
        msg.contains(path_str(&occupied)) && msg.to_lowercase().contains("empty"),
        "the message names the directory and says it is not empty: {msg}"
    );
    assert_eq!(
        fs::read_to_string(occupied.join("precious.txt")).expect("still there"),
        "mine"
    );
    let names: Vec<_> = fs::read_dir(&occupied)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "nothing written: {names:?}");

    // The data directory of a running server, with and without --delta.
    for args in [&["--delta"][..], &[][..]] {
        let out = restore(&setup, &source.datadir, args);
        assert_code(&out, 4, &format!("restore {args:?} over a running cluster"));
        if !args.is_empty() {
            let msg = stderr(&out).to_lowercase();
            assert!(
                msg.contains("postmaster") || msg.contains("running"),
                "the message says a server runs there: {msg}"
            );
        }
    }
    assert!(source.is_running(), "the source still runs");
    assert_eq!(
        source.psql("select count(*) from keep").expect("source"),
        "300"
    );
    amcheck(&source);
}

#[test]
fn restore_refuses_missing_wal_in_range() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source.psql("create table w(x int)").expect("table");
    let report = setup.backup(&source);
    let stop_wal = report["stop_wal"].as_str().expect("stop_wal").to_string();

    let mut switched = Vec::new();
    for _ in 0..3 {
        source
            .psql("insert into w select generate_series(1, 1000)")
            .expect("insert");
        switched.push(source.switch_wal().expect("switch"));
    }
    source
        .psql("insert into w select generate_series(1, 1000)")
        .expect("insert");
    let target_lsn = source.psql("select pg_current_wal_lsn()").expect("lsn");
    archive_everything(&source);
    let missing = switched[1].clone();
    assert!(
        missing > stop_wal,
        "{missing} comes after the backup's {stop_wal}"
    );

    let repo = setup.repo_dir.as_ref().expect("local repository");
    let name = WalFileName::parse(&missing).expect("segment name");
    let object = repo.join(lifeboat_repo::keys::wal(&name));
    fs::remove_file(&object).unwrap_or_else(|e| panic!("remove {}: {e}", object.display()));

    let t = target();
    let out = restore(&setup, &t.data, &["--target-lsn", &target_lsn]);
    assert_code(&out, 4, "restore across a missing WAL segment");
    assert!(
        stderr(&out).contains(&missing),
        "the message names the missing segment {missing}: {}",
        stderr(&out)
    );
    let written = fs::read_dir(&t.data).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "nothing is written when the WAL is incomplete");
}

#[test]
fn restore_refuses_manifest_path_outside_target() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    let report = setup.backup(&source);
    let label = label(&report);
    archive_everything(&source);

    // Rewrite the manifest of this unencrypted repository so one file path climbs out of the
    // target directory (an attacker with write access to the store, or a corrupt writer).
    let repo = setup.repo_dir.as_ref().expect("local repository");
    let key = repo.join(lifeboat_repo::keys::manifest(&label));
    let raw = fs::read(&key).unwrap_or_else(|e| panic!("read {}: {e}", key.display()));
    let codec = lifeboat_repo::Codec::new(lifeboat_repo::CompressionSettings::default(), None);
    let (_, plain) = codec.decode(&raw).expect("decode the manifest");
    let mut manifest: Value = serde_json::from_slice(&plain).expect("manifest JSON");
    let entry = manifest["entries"]
        .as_array_mut()
        .expect("entries")
        .iter_mut()
        .find(|e| e["type"] == "file" && e["path"] == "PG_VERSION")
        .expect("a PG_VERSION entry");
    entry["path"] = Value::from("../escaped-by-manifest");
    let (_, tampered) = codec
        .encode(&serde_json::to_vec(&manifest).expect("JSON"))
        .expect("encode");
    fs::write(&key, tampered).expect("write the tampered manifest");

    let t = target();
    let out = restore(&setup, &t.data, &["--backup", &label]);
    assert_code(&out, 4, "restore of a manifest with an escaping path");
    assert!(
        stderr(&out).contains("../escaped-by-manifest"),
        "the message names the path: {}",
        stderr(&out)
    );
    assert!(
        !t.dir.path().join("escaped-by-manifest").exists(),
        "nothing written outside the target"
    );
}

// ---------------------------------------------------------------------------------------------
// kill -9 of a backup part-way
// ---------------------------------------------------------------------------------------------

fn has_objects(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let path = e.path();
        if path.is_dir() {
            has_objects(&path)
        } else {
            !e.file_name().to_string_lossy().starts_with(".tmp")
        }
    })
}

#[test]
fn kill9_during_backup_leaves_no_backup_and_next_backup_restores() {
    let setup = Setup::new(Backend::Local, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source.pgbench_init(5).expect("pgbench -i -s 5");
    let repo = setup.repo_dir.clone().expect("local repository");
    // Chunks go into packs (format version 2); loose ones into data/ (version 1).
    let stored = [
        repo.join(lifeboat_repo::keys::CHUNK_PREFIX),
        repo.join(lifeboat_repo::keys::PACK_PREFIX),
    ];

    let mut child = setup
        .backup_cmd(&source)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lifeboat backup");
    let started = Instant::now();
    // Killed as soon as it has stored something: a small backup may be a single pack, after
    // which only its index and the manifest remain to be written.
    while !stored.iter().any(|dir| has_objects(dir))
        && started.elapsed() < Duration::from_millis(1500)
    {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the backup finished in {:?}, before it could be killed: use more data",
        started.elapsed()
    );
    child.kill().expect("kill -9 the backup");
    child.wait().expect("reap");

    assert_eq!(
        listed_labels(&setup),
        Vec::<String>::new(),
        "an interrupted backup is never listed"
    );
    let report = setup.backup(&source);
    let label = label(&report);
    assert_eq!(listed_labels(&setup), vec![label.clone()]);
    archive_everything(&source);
    let at_source = assert_pgbench_consistent(&source, "source");

    let (restored, copy) = restore_and_start(&setup, &source.owner, &[]);
    assert_eq!(restored["backup"].as_str(), Some(label.as_str()));
    assert_eq!(
        copy.psql("select count(*) from pgbench_accounts")
            .expect("accounts"),
        "500000"
    );
    assert_eq!(assert_pgbench_consistent(&copy, "restored"), at_source);
}

// ---------------------------------------------------------------------------------------------
// lifeboat check
// ---------------------------------------------------------------------------------------------

/// `lifeboat check` on `cluster`, killed (and failed) if it takes longer than [`CHECK_LIMIT`].
fn check(setup: &Setup, cluster: &LocalCluster) -> Output {
    let mut child = setup
        .cmd()
        .arg("check")
        .arg("--db")
        .arg(cluster.conninfo())
        .arg("--pgdata")
        .arg(&cluster.datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lifeboat check");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > CHECK_LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "lifeboat check took more than {CHECK_LIMIT:?}: {}",
                text(&out)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn assert_check_fails(out: &Output, words: &[&str], what: &str) {
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 70),
        "{what}: expected a failure that is not internal, got {code:?}: {}",
        text(out)
    );
    let msg = text(out);
    for w in words {
        assert!(msg.contains(w), "{what}: the message mentions {w:?}: {msg}");
    }
}

#[test]
fn check_accepts_a_configured_cluster_and_names_each_fix() {
    let setup = Setup::new(Backend::Local, true);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    let out = check(&setup, &cluster);
    assert_success(&out, "lifeboat check on a configured cluster");

    cluster
        .psql("alter system set archive_command = ''")
        .expect("alter");
    cluster.psql("select pg_reload_conf()").expect("reload");
    thread::sleep(Duration::from_millis(500));
    let out = check(&setup, &cluster);
    assert_check_fails(
        &out,
        &["archive_command", "wal-push"],
        "check with an empty archive_command",
    );

    let elsewhere = setup.scratch("elsewhere");
    cluster
        .psql(&format!(
            "alter system set archive_command = 'cp %p {}/%f'",
            path_str(&elsewhere)
        ))
        .expect("alter");
    cluster.psql("select pg_reload_conf()").expect("reload");
    thread::sleep(Duration::from_millis(500));
    let out = check(&setup, &cluster);
    assert_check_fails(
        &out,
        &["archive_command", "wal-push"],
        "check with another archive_command",
    );

    let minimal =
        TestCluster::start_new("wal_level = minimal\narchive_mode = off\nmax_wal_senders = 0\n")
            .expect("minimal cluster");
    // A repository of its own, so that the only problems are the settings.
    let fresh = Setup::new(Backend::Local, true);
    let out = check(&fresh, &minimal);
    assert_check_fails(
        &out,
        &["wal_level", "replica", "archive_mode"],
        "check with wal_level minimal and archiving off",
    );
}

/// A page damaged on disk (a flipped byte, its checksum no longer matching) is reported by the
/// backup and recorded in the manifest with its file and block; the backup still completes.
#[test]
fn backup_reports_a_page_whose_checksum_fails() {
    let setup = Setup::new(Backend::Local, false);
    // No autovacuum: nothing may read (and fail on) the damaged page before the backup does.
    let cluster = TestCluster::start_new(&format!("{}autovacuum = off\n", setup.archive_conf()))
        .expect("cluster");
    cluster
        .psql("create table damaged as select g as id, repeat('x', 200) as pad from generate_series(1, 2000) g; checkpoint")
        .expect("table");
    let rel = cluster
        .psql("select pg_relation_filepath('damaged')")
        .expect("path");
    cluster.stop(StopMode::Fast).expect("stop");
    // Flip one byte in the middle of block 3: PostgreSQL only notices when it reads the page.
    let path = cluster.datadir.join(&rel);
    let mut bytes = std::fs::read(&path).expect("read relation");
    let at = 3 * 8192 + 4000;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, &bytes).expect("write relation");
    cluster.start(WAIT).expect("start");

    let report = setup.backup(&cluster);
    let bad = report["bad_pages"].as_array().expect("bad_pages array");
    assert_eq!(bad.len(), 1, "expected exactly the damaged page: {report}");
    assert_eq!(bad[0]["path"], rel.as_str());
    assert_eq!(bad[0]["block"], 3);
    let out = setup.backup_cmd(&cluster).output().expect("second backup");
    assert!(
        text(&out).contains("failed their checksum") && text(&out).contains(&rel),
        "the summary must name the damaged page: {}",
        text(&out)
    );
}

/// The second backup reuses the blocks of files unchanged since the first without reading them,
/// reads what changed, and restores to exactly the source's data; `--full-scan` reads everything.
#[test]
fn unchanged_files_are_reused_and_the_incremental_restores() {
    let setup = Setup::new(Backend::Local, false);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster.pgbench_init(1).expect("pgbench -i");
    cluster.psql("checkpoint").expect("checkpoint");
    // Files must predate the first backup's start by a safety margin to be trusted unchanged.
    thread::sleep(Duration::from_secs(3));
    let first = setup.backup(&cluster);
    assert_eq!(u64_field(&first, "files_reused"), 0, "{first}");

    cluster
        .psql("update pgbench_accounts set abalance = abalance + 7 where aid <= 100; checkpoint")
        .expect("update");
    let second = setup.backup(&cluster);
    let files = u64_field(&second, "files");
    let reused = u64_field(&second, "files_reused");
    assert!(
        reused * 10 >= files * 8,
        "most files are unchanged, yet only {reused} of {files} were reused: {second}"
    );
    assert!(
        u64_field(&second, "bytes_read") < u64_field(&second, "size") / 2,
        "{second}"
    );
    let full = {
        let out = setup
            .backup_cmd(&cluster)
            .arg("--full-scan")
            .output()
            .expect("run lifeboat backup --full-scan");
        json_of(&out, "lifeboat backup --full-scan")
    };
    assert_eq!(u64_field(&full, "files_reused"), 0, "{full}");

    archive_everything(&cluster);
    let source = dumpall(&cluster);
    let target = target();
    let out = restore(
        &setup,
        &target.data,
        &["--backup", &label(&second), "--archive-mode", "off"],
    );
    assert_success(&out, "restore of the incremental backup");
    let restored = start_restored(target, cluster.owner.clone());
    assert_same_dump(&source, &dumpall(&restored));
    amcheck(&restored);
}

/// `restore --standby --primary-conninfo`: the copy starts as a streaming standby of the source,
/// stays in recovery, and receives a row committed on the primary after it started.
#[test]
fn standby_restore_follows_the_primary() {
    let setup = Setup::new(Backend::Local, false);
    let primary = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    primary
        .psql("create table s(id int); insert into s values (1)")
        .expect("table");
    setup.backup(&primary);
    let target = target();
    let out = restore(
        &setup,
        &target.data,
        &[
            "--standby",
            "--primary-conninfo",
            &primary.conninfo(),
            "--archive-mode",
            "off",
        ],
    );
    assert_success(&out, "restore --standby");
    assert!(
        target.data.join("standby.signal").exists(),
        "no standby.signal"
    );
    assert!(
        !target.data.join("recovery.signal").exists(),
        "recovery.signal beside standby.signal"
    );

    let log = target.dir.path().join("postgres.log");
    let standby = LocalCluster::existing(
        &target.data,
        free_port(),
        target.dir.path(),
        primary.owner.clone(),
    )
    .expect("standby")
    .with_log_file(log);
    let standby = TestCluster::adopt(target.dir, standby);
    standby.start(START).expect("standby starts");
    primary
        .psql("insert into s values (2)")
        .expect("insert on the primary");
    let deadline = Instant::now() + RECOVERY;
    loop {
        let row = standby
            .psql("select pg_is_in_recovery()::text || '|' || count(*) from s")
            .unwrap_or_default();
        if row == "true|2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not receive the new row (last: {row}):\n{}",
            standby.log_tail(30)
        );
        thread::sleep(Duration::from_millis(200));
    }
}
