//! kill -9 at random moments of `backup`, `expire` and `wal-push`, 20 times each: after every kill
//! `verify` finds the repository clean, and the next run of the same command succeeds; at the end
//! the newest backup restores. The moments are drawn from a seed printed at the start, so a failure
//! can be replayed with `LIFEBOAT_CRASH_SEED`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestCluster, TestDir};
use lifeboat_testkit::free_port;

const ROUNDS: usize = 20;

/// A small deterministic generator: the test needs spread, not quality.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("LIFEBOAT_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            });
        eprintln!("crash moments seed: {seed} (set LIFEBOAT_CRASH_SEED to replay)");
        Self(seed | 1)
    }

    /// A moment in `0..span`.
    fn within(&mut self, span: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let micros = span.as_micros().max(1) as u64;
        Duration::from_micros(self.0 % micros)
    }
}

/// Start `cmd`, kill it with SIGKILL after `after` (if it still runs); whether it was killed.
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lifeboat");
    thread::sleep(after);
    let killed = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    killed
}

/// How long one uninterrupted run of `cmd` takes (it must succeed).
fn timed(mut cmd: Command, what: &str) -> Duration {
    let began = Instant::now();
    let out = cmd.output().expect("run lifeboat");
    assert_success(&out, what);
    began.elapsed()
}

fn verify_clean(setup: &Setup, after: &str) {
    let out = setup.run(&["verify"]);
    assert_success(&out, &format!("verify after {after}"));
}

/// Restore the newest backup (archiving off in the copy), start it, and wait until `query`
/// returns `expected` there.
fn restore_newest_and_wait(setup: &Setup, source: &LocalCluster, query: &str, expected: &str) {
    let dir = TestDir::new().expect("dir");
    let data = dir.path().join("data");
    let out = setup
        .cmd()
        .args(["restore", "--archive-mode", "off", "--target-dir"])
        .arg(&data)
        .output()
        .expect("restore");
    assert_success(&out, "restore of the newest backup");
    let restored = LocalCluster::existing(&data, free_port(), dir.path(), source.owner.clone())
        .expect("restored")
        .with_log_file(dir.path().join("postgres.log"));
    let restored = TestCluster::adopt(dir, restored);
    restored.start(WAIT).expect("start restored");
    let deadline = Instant::now() + WAIT;
    loop {
        let row = restored.psql(query).unwrap_or_default();
        if row == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored cluster answers {row:?}, expected {expected:?}:\n{}",
            restored.log_tail(30)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Objects holding chunks in the local repository (loose chunks under data/, packs under
/// packs/): how many, and their bytes.
fn chunk_usage(setup: &Setup) -> (usize, u64) {
    let repo = setup.repo_dir.as_ref().expect("local repository");
    let mut count = 0;
    let mut bytes = 0;
    for top in ["data", "packs"] {
        for dir in fs::read_dir(repo.join(top)).into_iter().flatten().flatten() {
            for f in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                if !f.file_name().to_string_lossy().starts_with('.') {
                    count += 1;
                    bytes += f.metadata().map_or(0, |m| m.len());
                }
            }
        }
    }
    (count, bytes)
}

fn backup_labels(setup: &Setup) -> Vec<String> {
    let out = setup.run(&["list", "--json"]);
    assert_success(&out, "list");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    v["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["label"].as_str().expect("label").to_string())
        .collect()
}

#[test]
fn kill9_during_backup_and_expire_leaves_a_clean_repository() {
    let setup = Setup::new(Backend::Local, false);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster.pgbench_init(2).expect("pgbench -i");
    let mut moments = Moments::new();

    let span = timed(setup.backup_cmd(&cluster), "first backup");
    let mut killed = 0;
    let mut killed_bytes = 0;
    for round in 0..ROUNDS {
        cluster
            .psql(&format!(
                "update pgbench_accounts set abalance = abalance + 1 where aid % 50 = {round}"
            ))
            .expect("write");
        let (_, bytes_before_kill) = chunk_usage(&setup);
        killed += usize::from(kill_after(setup.backup_cmd(&cluster), moments.within(span)));
        verify_clean(&setup, &format!("kill -9 of backup, round {round}"));
        let (_, bytes_after_kill) = chunk_usage(&setup);
        let before = backup_labels(&setup).len();
        let out = setup
            .backup_cmd(&cluster)
            .output()
            .expect("backup after a kill");
        assert_success(&out, "backup after a kill");
        assert_eq!(backup_labels(&setup).len(), before + 1, "round {round}");
        // The repository grows by exactly what the next backup reports as newly stored: loose
        // chunks the killed backup uploaded are reused, and so are its packs once a checkpoint
        // index names them (every 64 packs; this backup is smaller, so its packs are left for
        // expire and their chunks stored again).
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
        let (_, bytes_after_next) = chunk_usage(&setup);
        assert_eq!(
            report["stored_size"].as_u64().expect("stored_size"),
            bytes_after_next - bytes_after_kill,
            "round {round}: the killed backup left {} bytes of chunks",
            bytes_after_kill - bytes_before_kill
        );
        killed_bytes += bytes_after_kill - bytes_before_kill;
    }
    eprintln!("{killed_bytes} bytes uploaded by killed backups");
    assert!(
        killed >= ROUNDS / 2,
        "only {killed} of {ROUNDS} backups were killed while running"
    );

    // Expire: each round has older backups to remove; kill it, verify, then let it finish.
    let mut killed = 0;
    let expire = |setup: &Setup| {
        let mut cmd = setup.cmd();
        cmd.args(["expire", "--keep-last", "2"]);
        cmd
    };
    timed(expire(&setup), "first expire");
    // Each round expires two backups; an uninterrupted round-sized expire gives the span.
    timed(setup.backup_cmd(&cluster), "backup before expire");
    timed(setup.backup_cmd(&cluster), "backup before expire");
    let mut span = timed(expire(&setup), "round-sized expire").max(Duration::from_millis(50));
    for round in 0..ROUNDS {
        timed(setup.backup_cmd(&cluster), "backup before expire");
        timed(setup.backup_cmd(&cluster), "backup before expire");
        killed += usize::from(kill_after(expire(&setup), moments.within(span)));
        verify_clean(&setup, &format!("kill -9 of expire, round {round}"));
        span = timed(expire(&setup), "expire after a kill").max(Duration::from_millis(50));
        assert_eq!(backup_labels(&setup).len(), 2, "round {round}");
        verify_clean(&setup, &format!("expire after round {round}"));
    }
    assert!(
        killed >= ROUNDS / 4,
        "only {killed} of {ROUNDS} expires were killed while running"
    );

    // The newest backup restores to the source's data.
    let last = cluster.switch_wal().expect("switch");
    cluster.wait_archived(&last, WAIT).expect("archived");
    let sum = cluster
        .psql("select sum(abalance) from pgbench_accounts")
        .expect("sum");
    restore_newest_and_wait(
        &setup,
        &cluster,
        "select pg_is_in_recovery()::text || '|' || sum(abalance) from pgbench_accounts",
        &format!("false|{sum}"),
    );
}

#[test]
fn kill9_during_wal_push_leaves_a_clean_repository() {
    // Segments from a real cluster, pushed by hand as PostgreSQL's archiver would, each killed at a
    // random moment, then verified and pushed again.
    let source = Setup::new(Backend::Local, true);
    let arch = source.arch.clone();
    let cluster = TestCluster::start_new(&format!(
        "archive_mode = on\narchive_command = 'cp %p {}/%f'\n",
        arch.display()
    ))
    .expect("cluster");
    cluster
        .psql("create table w(id int, pad text)")
        .expect("table");
    let mut last = String::new();
    for i in 0..ROUNDS {
        cluster
            .psql(&format!(
                "insert into w select g, repeat('x', 100) from generate_series(1, {}) g",
                500 + i
            ))
            .expect("insert");
        last = cluster.switch_wal().expect("switch");
    }
    cluster.wait_archived(&last, WAIT).expect("archived");
    let mut segments: Vec<PathBuf> = source
        .archived_copies()
        .into_iter()
        .filter(|p| file_name(p).len() == 24)
        .collect();
    segments.sort();
    assert!(segments.len() >= ROUNDS, "{} segments", segments.len());
    let staging = source.scratch("pg_wal");
    let mut moments = Moments::new();
    let mut span = Duration::from_millis(100);
    let mut killed = 0;
    for (round, segment) in segments.iter().take(ROUNDS).enumerate() {
        let staged = staging.join(file_name(segment));
        fs::copy(segment, &staged).expect("stage");
        lifeboat_testkit::cluster::chown_to_owner(&staged).expect("chown");
        let push = || {
            let mut cmd = source.cmd();
            cmd.arg("wal-push").arg(&staged);
            cmd
        };
        killed += usize::from(kill_after(push(), moments.within(span)));
        verify_clean(&source, &format!("kill -9 of wal-push, round {round}"));
        span = timed(push(), "wal-push after a kill").max(Duration::from_millis(20));
        let back = staging.join("back");
        let out = source
            .cmd()
            .arg("wal-fetch")
            .arg(file_name(segment))
            .arg(&back)
            .output()
            .expect("fetch");
        assert_success(&out, "wal-fetch after the retry");
        assert!(
            fs::read(&back).expect("fetched") == fs::read(segment).expect("original"),
            "round {round}: the stored segment differs"
        );
    }
    assert!(
        killed >= ROUNDS / 4,
        "only {killed} of {ROUNDS} pushes were killed while running"
    );
}

/// `wal-push` under pgbench load while backups and expires run: no segment
/// is lost (every file PostgreSQL archived from the oldest kept backup's start on is in the
/// repository, byte-identical), `verify` is clean, and the newest backup restores to the last
/// committed row.
#[test]
fn wal_push_under_load_while_backup_and_expire_run() {
    let setup = Setup::new(Backend::Local, false);
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster.pgbench_init(2).expect("pgbench -i");
    cluster
        .psql("create table last_row(id int primary key)")
        .expect("table");
    let load = {
        let cluster_for_load = LocalCluster::clone(&cluster);
        thread::spawn(move || {
            cluster_for_load
                .pgbench(&["-c", "2", "-j", "1", "-T", "20", "-n"])
                .expect("pgbench under load")
        })
    };
    let mut rounds = 0;
    while !load.is_finished() {
        let out = setup.backup_cmd(&cluster).output().expect("backup");
        assert_success(&out, "backup under load");
        let out = setup.run(&["expire", "--keep-last", "2"]);
        assert_success(&out, "expire under load");
        rounds += 1;
    }
    load.join().expect("load thread");
    assert!(
        rounds >= 2,
        "only {rounds} backup+expire rounds ran under load"
    );
    cluster
        .psql("insert into last_row values (42)")
        .expect("last row");
    let last = cluster.switch_wal().expect("switch");
    cluster.wait_archived(&last, WAIT).expect("archived");

    // No segment lost: from the oldest kept backup's start on, the repository holds every
    // segment PostgreSQL archived (its `cp` copy), byte for byte.
    let out = setup.run(&["list", "--json"]);
    assert_success(&out, "list");
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let oldest_start = listing["backups"][0]["start_wal"]
        .as_str()
        .expect("start_wal")
        .to_string();
    let staging = setup.scratch("fetched");
    let mut compared = 0;
    for copy in setup.archived_copies() {
        let name = file_name(&copy);
        if name.len() != 24 || name < oldest_start {
            continue;
        }
        let dest = staging.join(&name);
        let out = setup
            .cmd()
            .args(["wal-fetch", "--prefetch", "0", &name])
            .arg(&dest)
            .output()
            .expect("wal-fetch");
        assert_success(&out, &format!("wal-fetch {name}"));
        assert!(
            fs::read(&dest).expect("fetched") == fs::read(&copy).expect("copy"),
            "{name} differs from what PostgreSQL archived"
        );
        compared += 1;
    }
    assert!(compared >= 2, "only {compared} segments compared");
    verify_clean(&setup, "the load");

    restore_newest_and_wait(
        &setup,
        &cluster,
        "select pg_is_in_recovery()::text || '|' || count(*) from last_row where id = 42",
        "false|1",
    );
}
