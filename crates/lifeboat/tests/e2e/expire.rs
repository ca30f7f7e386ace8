//! Retention and repository locks end to end on real PostgreSQL clusters: what `expire` deletes and
//! keeps, and how locks keep concurrent commands apart. Every source cluster archives into the
//! repository its backups go to; every restore of a kept backup is started as a real server (with
//! `--archive-mode off`, so the copy does not archive into the repository) and its rows checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use lifeboat_pg::cluster::{LocalCluster, OsUser};
use lifeboat_repo::lock::{LockKind, LockRecord};
use lifeboat_repo::stored::ChunkScope;
use lifeboat_repo::{Passphrase, Repository};
use lifeboat_storage::PutMode;
use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner};
use lifeboat_testkit::free_port;
use serde_json::Value;

/// How long a restored copy may take to start and to finish recovery.
const START: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `lifeboat backup --json`; its label.
fn backup(setup: &Setup, cluster: &LocalCluster) -> String {
    let report = setup.backup(cluster);
    report["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no label in {report}"))
        .to_string()
}

fn listed(setup: &Setup) -> Vec<Value> {
    let listing = json_of(&setup.run(&["list", "--json"]), "lifeboat list --json");
    listing["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("no backups array: {listing}"))
        .clone()
}

fn listed_labels(setup: &Setup) -> Vec<String> {
    listed(setup)
        .iter()
        .map(|b| b["label"].as_str().expect("label").to_string())
        .collect()
}

fn expire(setup: &Setup, args: &[&str]) -> Output {
    let mut all = vec!["expire"];
    all.extend_from_slice(args);
    setup.run(&all)
}

/// Every stored object under `dir` (relative key → size), temporary files left out.
fn objects(dir: &Path) -> BTreeMap<String, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.map(|e| e.expect("entry")) {
            let path = e.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if !e.file_name().to_string_lossy().starts_with(".tmp") {
                let rel = path.strip_prefix(root).expect("under root");
                let size = e.metadata().expect("stat").len();
                out.insert(rel.to_string_lossy().into_owned(), size);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn repo_dir(setup: &Setup) -> PathBuf {
    setup.repo_dir.clone().expect("a local repository")
}

/// The repository opened through the library, as lifeboat opens it, with a runtime to drive it.
fn open_repo(setup: &Setup) -> (tokio::runtime::Runtime, Repository) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = repo_dir(setup);
    let store = lifeboat_storage::open(
        dir.to_str().expect("UTF-8 path"),
        &lifeboat_storage::StorageSettings::default(),
    )
    .expect("open store");
    let passphrase = setup
        .encrypted
        .then(|| Passphrase::new("correct horse battery staple".to_string()));
    let repo = rt
        .block_on(Repository::open(store, passphrase.as_ref()))
        .expect("open repository");
    (rt, repo)
}

/// Chunk keys each backup references, by label.
fn references(setup: &Setup) -> BTreeMap<String, BTreeSet<String>> {
    let (rt, repo) = open_repo(setup);
    let manifests = rt.block_on(repo.manifests()).expect("manifests");
    manifests
        .iter()
        .map(|m| (m.label.clone(), m.chunks().map(|c| c.key()).collect()))
        .collect()
}

/// Where each chunk lies now, by chunk key: `Some(pack key)` when an index places it in a
/// stored pack, `None` when it is a loose object (a backup into a version 2 repository writes
/// packs, into a version 1 repository loose chunks; these tests hold for both).
fn chunk_places(setup: &Setup) -> BTreeMap<String, Option<String>> {
    let (rt, repo) = open_repo(setup);
    let stored = rt
        .block_on(repo.stored_chunks(ChunkScope::All { expected: 0 }))
        .expect("stored chunks");
    let packs = objects(&repo_dir(setup).join("packs"));
    let mut places: BTreeMap<String, Option<String>> =
        stored.loose.keys().map(|c| (c.key(), None)).collect();
    for e in stored.packed.entries() {
        let pack = e.location.pack.key();
        if packs.contains_key(pack.trim_start_matches("packs/")) {
            places.insert(e.chunk.key(), Some(pack));
        }
    }
    places
}

/// Chunks freed by expire as its report counts them: loose ones, and packs deleted or repacked.
fn chunk_work(report: &Value) -> u64 {
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {report}"))
    };
    n(&report["chunks"]["count"]) + n(&report["packs"]["count"]) + n(&report["packs"]["repacked"])
}

/// Store a lock record by hand, as another process would have, readable by lifeboat.
fn plant_lock(setup: &Setup, record: &LockRecord) {
    let (rt, repo) = open_repo(setup);
    rt.block_on(repo.put_lock(record, PutMode::Create))
        .expect("store a lock");
    chown_to_owner(&repo_dir(setup)).expect("chown repository");
}

fn lock_objects(setup: &Setup) -> Vec<String> {
    objects(&repo_dir(setup).join("locks"))
        .into_keys()
        .collect()
}

/// A pid that existed a moment ago and no longer does.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("reap");
    pid
}

/// RFC 3339 UTC time `m` minutes ago (from `date`, as another machine's clock would write it).
fn minutes_ago(m: u32) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("-{m} minutes"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("run date");
    assert_success(&out, "date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Insert one row into `t` (its own transaction); its id.
fn insert(cluster: &LocalCluster) -> i64 {
    cluster
        .psql("insert into t(note) values ('row') returning id")
        .expect("insert")
        .parse()
        .expect("id")
}

/// The server's clock now, as PostgreSQL accepts it in a recovery target.
fn server_now(cluster: &LocalCluster) -> String {
    cluster
        .psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        .expect("server time")
}

fn create_t(cluster: &LocalCluster) {
    cluster
        .psql("create table t(id serial primary key, at timestamptz default clock_timestamp(), note text)")
        .expect("create t");
}

/// Switch WAL on the source and wait until everything written so far is in the repository.
fn archive_everything(cluster: &TestCluster) {
    let last = cluster.switch_wal().expect("switch WAL");
    cluster.wait_archived(&last, WAIT).expect("archived");
}

/// Restore with `args` (and `--archive-mode off`) into a fresh directory, start it and wait until
/// it has promoted; it is stopped when the returned cluster is dropped.
fn restore_and_start(setup: &Setup, owner: &Option<OsUser>, args: &[&str]) -> (Value, TestCluster) {
    let dir = TestDir::new().expect("test dir");
    let data = dir.path().join("data");
    let out = setup
        .cmd()
        .arg("restore")
        .arg("--target-dir")
        .arg(&data)
        .args(["--archive-mode", "off", "--json"])
        .args(args)
        .output()
        .expect("run restore");
    let report = json_of(&out, &format!("lifeboat restore {}", args.join(" ")));
    let log = dir.path().join("postgres.log");
    let cluster = LocalCluster::existing(&data, free_port(), dir.path(), owner.clone())
        .expect("restored cluster")
        .with_log_file(log);
    let cluster = TestCluster::adopt(dir, cluster);
    cluster
        .start(START)
        .unwrap_or_else(|e| panic!("the restored cluster did not start: {e}"));
    let deadline = Instant::now() + START;
    loop {
        match cluster.psql("select pg_is_in_recovery()") {
            Ok(r) if r == "f" => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "recovery did not end:\n{}",
            cluster.log_tail(40)
        );
        thread::sleep(Duration::from_millis(200));
    }
    (report, cluster)
}

// ---------------------------------------------------------------------------------------------
// Must-show 2: five backups, expire --keep-last 2
// ---------------------------------------------------------------------------------------------

/// What each backup's step wrote: the row committed before `between`, and the time, which lies
/// before the next row's commit.
struct Step {
    label: String,
    last_before: i64,
    between: String,
}

#[test]
fn keep_last_2_of_5_deletes_old_backups_wal_and_chunks_and_the_rest_restores() {
    let setup = Setup::new(Backend::Local, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    create_t(&source);
    let owner = source.owner.clone();

    let mut steps = Vec::new();
    for _ in 0..5 {
        insert(&source);
        insert(&source);
        source.switch_wal().expect("switch WAL");
        let label = backup(&setup, &source);
        let last_before = insert(&source);
        thread::sleep(Duration::from_millis(20));
        let between = server_now(&source);
        thread::sleep(Duration::from_millis(20));
        insert(&source);
        steps.push(Step {
            label,
            last_before,
            between,
        });
    }
    archive_everything(&source);
    let labels: Vec<String> = steps.iter().map(|s| s.label.clone()).collect();
    assert_eq!(listed_labels(&setup), labels);
    let before = listed(&setup);
    let oldest_kept_start = before[3]["start_wal"]
        .as_str()
        .expect("start_wal")
        .to_string();

    let repo = repo_dir(&setup);
    let data_before = objects(&repo.join("data"));
    let packs_before = objects(&repo.join("packs"));
    let places_before = chunk_places(&setup);
    let wal_before = objects(&repo.join("wal"));
    let refs = references(&setup);
    let kept_refs: BTreeSet<String> = labels[3..]
        .iter()
        .flat_map(|l| refs[l].iter().cloned())
        .collect();
    let expired_only: BTreeSet<String> = labels[..3]
        .iter()
        .flat_map(|l| refs[l].iter().cloned())
        .filter(|k| !kept_refs.contains(k))
        .collect();
    assert!(
        !expired_only.is_empty(),
        "the three oldest backups hold chunks the two newest do not share"
    );
    assert!(
        wal_before
            .keys()
            .any(|k| file_of(k).as_str() < oldest_kept_start.as_str()),
        "WAL older than {oldest_kept_start} is archived before expire"
    );

    let out = expire(&setup, &["--keep-last", "2", "--json"]);
    let report = json_of(&out, "lifeboat expire --keep-last 2");
    assert_eq!(report["dry_run"], Value::Bool(false));
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|b| b["label"].as_str().expect("label").to_string())
            .collect()
    };
    assert_eq!(names(&report["expired"]), labels[..3].to_vec(), "{report}");
    assert_eq!(names(&report["kept"]), labels[3..].to_vec(), "{report}");

    // Two remain.
    assert_eq!(listed_labels(&setup), labels[3..].to_vec());
    assert!(lock_objects(&setup).is_empty(), "the lock was released");

    // WAL before the older one's start is gone, the rest is whole.
    let wal_after = objects(&repo.join("wal"));
    let early: Vec<&String> = wal_after
        .keys()
        .filter(|k| file_of(k).as_str() < oldest_kept_start.as_str())
        .collect();
    assert!(
        early.is_empty(),
        "WAL before {oldest_kept_start} is still there: {early:?}"
    );
    for (k, size) in &wal_before {
        if file_of(k).as_str() >= oldest_kept_start.as_str() {
            assert_eq!(wal_after.get(k), Some(size), "{k} kept as it was");
        }
    }
    let info = setup.info_json();
    let tl = &info["timelines"][0];
    assert_eq!(
        tl["first_segment"].as_str(),
        Some(oldest_kept_start.as_str()),
        "{info}"
    );
    assert_eq!(tl["gaps"].as_array().map(Vec::len), Some(0), "{info}");
    let wal_gone: u64 = wal_before
        .iter()
        .filter(|(k, _)| !wal_after.contains_key(*k))
        .map(|(_, s)| s)
        .sum();
    assert_eq!(
        report["wal"]["segments"].as_u64().expect("segments")
            + report["wal"]["other_files"].as_u64().expect("other files"),
        (wal_before.len() - wal_after.len()) as u64,
        "{report}"
    );
    assert_eq!(report["wal"]["bytes"].as_u64(), Some(wal_gone), "{report}");

    // The repository shrank by exactly the chunks no kept backup references, among them every
    // chunk only the expired backups used.
    let data_after = objects(&repo.join("data"));
    let key = |k: &String| format!("data/{k}");
    let gone: BTreeSet<String> = data_before
        .keys()
        .filter(|k| !data_after.contains_key(*k))
        .map(key)
        .collect();
    let unreferenced: BTreeSet<String> = data_before
        .keys()
        .map(key)
        .filter(|k| !kept_refs.contains(k))
        .collect();
    assert_eq!(
        gone, unreferenced,
        "deleted chunks = chunks no kept backup references"
    );
    let loose_before: BTreeSet<String> = data_before.keys().map(key).collect();
    assert!(
        expired_only
            .intersection(&loose_before)
            .all(|k| gone.contains(k))
    );
    let places = chunk_places(&setup);
    let missing: Vec<&String> = kept_refs
        .iter()
        .filter(|k| !places.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "chunks a kept backup needs are gone: {missing:?}"
    );
    // Packs: every one left holds a chunk a kept backup needs, and the report adds up.
    let packs_after = objects(&repo.join("packs"));
    for pack in packs_after.keys() {
        let key = format!("packs/{pack}");
        assert!(
            places
                .iter()
                .any(|(c, p)| p.as_deref() == Some(key.as_str()) && kept_refs.contains(c)),
            "{key} holds nothing a kept backup needs, and stayed"
        );
    }
    let p = &report["packs"];
    let n = |f: &str| p[f].as_u64().unwrap_or_else(|| panic!("packs.{f}: {p}"));
    assert_eq!(
        n("count") + n("repacked") + n("remaining"),
        packs_before.len() as u64,
        "{report}"
    );
    // A pack where no kept backup's chunk lies is dead and must go. Whether the expired backups
    // leave one depends on what changed between them (a pack also holds the small files and
    // catalogs of its backup, which a later backup may still reference unchanged).
    let dead: Vec<&String> = packs_before
        .keys()
        .filter(|pack| {
            let key = format!("packs/{pack}");
            !places_before
                .iter()
                .any(|(c, p)| p.as_deref() == Some(key.as_str()) && kept_refs.contains(c))
        })
        .collect();
    for pack in &dead {
        assert!(
            !packs_after.contains_key(*pack),
            "dead pack {pack} stayed: {report}"
        );
    }
    assert!(n("count") >= dead.len() as u64, "{report}");
    if !packs_before.is_empty() {
        assert_eq!(objects(&repo.join("index")).len(), 1, "one index left");
    }
    let freed: u64 = data_before.values().sum::<u64>() - data_after.values().sum::<u64>();
    assert!(
        freed > 0 || data_before.is_empty(),
        "no loose chunk was freed"
    );
    assert_eq!(
        report["chunks"]["count"].as_u64(),
        Some(gone.len() as u64),
        "{report}"
    );
    assert_eq!(report["chunks"]["bytes"].as_u64(), Some(freed), "{report}");

    // An expired backup is no longer restorable by name; each kept one restores to a moment in
    // its window, chosen by the target time alone.
    let out = setup
        .cmd()
        .arg("restore")
        .arg("--target-dir")
        .arg(setup.dir.path().join("nowhere"))
        .args(["--backup", &labels[0], "--dry-run"])
        .output()
        .expect("run restore");
    assert!(
        !out.status.success(),
        "expired backup restored: {}",
        text(&out)
    );
    for step in &steps[3..] {
        let (report, copy) = restore_and_start(&setup, &owner, &["--target-time", &step.between]);
        assert_eq!(
            report["backup"].as_str(),
            Some(step.label.as_str()),
            "{report}"
        );
        assert_eq!(
            ids(&copy),
            first_n(step.last_before),
            "restore of {} to {}",
            step.label,
            step.between
        );
    }

    // Again: nothing more to expire, nothing more deleted.
    let again = json_of(
        &expire(&setup, &["--keep-last", "2", "--json"]),
        "second expire",
    );
    assert_eq!(
        again["expired"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );
    assert_eq!(again["bytes_freed"].as_u64(), Some(0), "{again}");
    assert_eq!(objects(&repo.join("data")), data_after);
    assert_eq!(objects(&repo.join("packs")), packs_after);
}

/// The WAL file name of a key under `wal/` (`0000000100000000/000000010000000000000003`).
fn file_of(key: &str) -> String {
    key.rsplit('/').next().unwrap_or(key).to_string()
}

// ---------------------------------------------------------------------------------------------
// Dry run, policy from the config file, no policy
// ---------------------------------------------------------------------------------------------

#[test]
fn dry_run_changes_nothing_and_the_config_policy_applies() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    create_t(&source);
    let mut labels = Vec::new();
    for _ in 0..3 {
        insert(&source);
        source.switch_wal().expect("switch WAL");
        labels.push(backup(&setup, &source));
    }
    archive_everything(&source);
    let listing = listed(&setup);

    let out = expire(&setup, &[]);
    assert_code(&out, 4, "expire without a policy");
    assert!(
        stderr(&out).contains("no retention policy") && stderr(&out).contains("--keep-last"),
        "{}",
        stderr(&out)
    );

    let mut config = fs::read_to_string(&setup.config).expect("config");
    config.push_str("\n[retention]\nkeep_last = 1\n");
    fs::write(&setup.config, config).expect("config");

    let before = objects(&repo_dir(&setup));
    let out = expire(&setup, &["--dry-run"]);
    assert_success(&out, "expire --dry-run");
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    for label in &labels[..2] {
        assert!(
            plan.contains(&format!("would delete backup {label}")),
            "{plan}"
        );
    }
    assert!(plan.contains("config file"), "{plan}");
    assert!(plan.contains("restore window"), "{plan}");
    assert!(plan.contains("nothing was changed"), "{plan}");

    let report = json_of(
        &expire(&setup, &["--dry-run", "--json"]),
        "expire --dry-run --json",
    );
    assert_eq!(report["dry_run"], Value::Bool(true));
    assert_eq!(
        report["expired"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert!(
        report["wal"]["segments"].as_u64().expect("segments") > 0,
        "{report}"
    );
    assert!(chunk_work(&report) > 0, "{report}");
    assert!(
        report["bytes_freed"].as_u64().expect("bytes") > 0,
        "{report}"
    );
    assert_eq!(
        report["window_before"]["earliest"], listing[0]["stop_time"],
        "{report}"
    );
    assert_eq!(
        report["window_after"]["earliest"], listing[2]["stop_time"],
        "{report}"
    );

    assert_eq!(
        objects(&repo_dir(&setup)),
        before,
        "--dry-run changed the repository"
    );
    assert_eq!(listed_labels(&setup), labels);

    // Flags replace the configured policy.
    let report = json_of(
        &expire(&setup, &["--keep-last", "2", "--dry-run", "--json"]),
        "expire --keep-last 2 --dry-run",
    );
    assert_eq!(
        report["expired"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    // The real run, with the configured policy.
    assert_success(
        &expire(&setup, &[]),
        "expire (keep_last = 1 from the config)",
    );
    assert_eq!(listed_labels(&setup), labels[2..].to_vec());
}

// ---------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_backup_and_expire_are_refused_while_a_backup_runs() {
    let setup = Setup::new(Backend::Local, false);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    // Large enough that the backup, the first of this cluster (so every file is read), runs for
    // seconds.
    source.pgbench_init(5).expect("pgbench -i -s 5");

    let mut child = setup
        .backup_cmd(&source)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lifeboat backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock_objects(&setup).is_empty() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the backup ended before its lock was seen"
        );
        assert!(Instant::now() < deadline, "no lock object appeared");
        thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();

    let refused_expire = expire(&setup, &["--keep-last", "1"]);
    let refused_backup = setup.backup_cmd(&source).output().expect("run backup");
    let still_running = child.try_wait().expect("try_wait").is_none();
    let out = child.wait_with_output().expect("wait for the first backup");
    assert_success(&out, "the backup holding the lock");
    assert!(
        still_running,
        "the first backup ended before the others were refused: give it more data"
    );

    assert_code(&refused_backup, 4, "a second backup while one runs");
    let msg = stderr(&refused_backup);
    assert!(
        msg.contains("refusing to start backup")
            && msg.contains(&format!("backup running as pid {pid}"))
            && msg.contains(&lifeboat_repo::lock::this_host())
            && msg.contains("since"),
        "the refusal names the holder: {msg}"
    );
    assert_code(&refused_expire, 4, "expire during a backup");
    assert!(
        stderr(&refused_expire).contains("refusing to start expire")
            && stderr(&refused_expire).contains(&format!("pid {pid}")),
        "{}",
        stderr(&refused_expire)
    );

    assert!(lock_objects(&setup).is_empty(), "every lock was released");
    let next = backup(&setup, &source);
    assert_eq!(
        listed_labels(&setup).len(),
        2,
        "the first backup and {next}"
    );
}

#[test]
fn fresh_locks_are_respected_and_stale_ones_taken_over() {
    let setup = Setup::new(Backend::Local, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    create_t(&source);
    insert(&source);
    backup(&setup, &source);

    // A backup killed on this machine: its process is gone, so its lock is stale at once.
    let mut dead = LockRecord::for_this_process(LockKind::Backup).expect("record");
    dead.pid = dead_pid();
    plant_lock(&setup, &dead);
    let out = setup.backup_cmd(&source).output().expect("run backup");
    assert_success(&out, "backup over a dead process's lock");
    assert!(
        stderr(&out).contains("taking over the stale repository lock")
            && stderr(&out).contains(&format!("process {} no longer exists", dead.pid)),
        "the takeover is logged: {}",
        stderr(&out)
    );
    assert!(lock_objects(&setup).is_empty());

    // A live holder on this machine (this test process): both commands refuse and say who.
    let live = LockRecord::for_this_process(LockKind::Backup).expect("record");
    plant_lock(&setup, &live);
    let out = setup.backup_cmd(&source).output().expect("run backup");
    assert_code(&out, 4, "backup while another backup holds the lock");
    assert!(
        stderr(&out).contains(&format!("backup running as pid {}", std::process::id())),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("HINT"), "{}", stderr(&out));
    let out = expire(&setup, &["--keep-last", "1"]);
    assert_code(&out, 4, "expire while a backup holds the lock");
    assert_eq!(listed_labels(&setup).len(), 2, "nothing was expired");
    assert_eq!(
        lock_objects(&setup).len(),
        1,
        "refusals leave only the holder's lock"
    );
    let (rt, repo) = open_repo(&setup);
    rt.block_on(repo.delete_lock(&live.key())).expect("release");

    // An expire running on another machine, heartbeat a minute old: a backup waits for it.
    let mut remote = LockRecord::for_this_process(LockKind::Expire).expect("record");
    remote.host = "db-elsewhere".into();
    remote.pid_scope = None;
    remote.pid = dead_pid(); // means nothing on another machine
    remote.heartbeat = minutes_ago(1);
    plant_lock(&setup, &remote);
    let out = setup.backup_cmd(&source).output().expect("run backup");
    assert_code(&out, 4, "backup while an expire runs elsewhere");
    assert!(
        stderr(&out).contains(&format!(
            "expire running as pid {} on host db-elsewhere",
            remote.pid
        )),
        "{}",
        stderr(&out)
    );
    rt.block_on(repo.delete_lock(&remote.key()))
        .expect("release");

    // The same, silent for 11 minutes: stale, taken over.
    remote.heartbeat = minutes_ago(11);
    plant_lock(&setup, &remote);
    let out = expire(&setup, &["--keep-last", "1"]);
    assert_success(&out, "expire over a silent remote lock");
    assert!(
        stderr(&out).contains("taking over the stale repository lock")
            && stderr(&out).contains("last heartbeat"),
        "{}",
        stderr(&out)
    );
    assert_eq!(listed_labels(&setup).len(), 1);
    assert!(lock_objects(&setup).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Object storage
// ---------------------------------------------------------------------------------------------

#[test]
fn expire_on_s3_keeps_the_newest_restorable_and_releases_its_lock() {
    let setup = Setup::new(Backend::S3, true);
    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    create_t(&source);
    let owner = source.owner.clone();
    let mut labels = Vec::new();
    for _ in 0..3 {
        insert(&source);
        source.switch_wal().expect("switch WAL");
        labels.push(backup(&setup, &source));
    }
    let last_before = insert(&source);
    thread::sleep(Duration::from_millis(20));
    let between = server_now(&source);
    thread::sleep(Duration::from_millis(20));
    insert(&source);
    archive_everything(&source);
    let kept_start = listed(&setup)[2]["start_wal"]
        .as_str()
        .expect("start_wal")
        .to_string();

    let report = json_of(
        &expire(&setup, &["--keep-last", "1", "--json"]),
        "expire on S3",
    );
    assert_eq!(
        report["expired"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    // Loose chunks go one by one; packs only when mostly unneeded (here the newest backup
    // shares most of the oldest one's).
    assert!(
        chunk_work(&report) > 0 || report["packs"]["remaining"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(listed_labels(&setup), labels[2..].to_vec());
    let info = setup.info_json();
    assert_eq!(
        info["timelines"][0]["first_segment"].as_str(),
        Some(kept_start.as_str()),
        "{info}"
    );
    let out = setup.run(&["expire", "--keep-last", "1", "--dry-run", "--json"]);
    let again = json_of(&out, "dry run after expire");
    assert_eq!(
        again["bytes_freed"].as_u64(),
        Some(0),
        "nothing left over: {again}"
    );

    let (report, copy) = restore_and_start(&setup, &owner, &["--target-time", &between]);
    assert_eq!(
        report["backup"].as_str(),
        Some(labels[2].as_str()),
        "{report}"
    );
    assert_eq!(ids(&copy), first_n(last_before));
}
