//! Adversarial tests: archive (wal-push, wal-fetch and its prefetch spool, re-keying).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lifeboat_testkit::cluster::{TestCluster, chown_to_owner, run_as_owner};

use crate::support::*;

/// Write `text` as `dir/name`, owned by the cluster owner (as PostgreSQL would leave it).
fn owned_file(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write");
    chown_to_owner(&path).expect("chown");
    path
}

/// Issue 13, defect 4: a history file PostgreSQL's reader rejects is refused on push (exit 4,
/// nothing stored), with what is wrong and a hint; a well-formed one is stored.
#[test]
fn garbage_timeline_history_is_refused_on_push() {
    let setup = Setup::new(Backend::Local, false);
    let wal = setup.scratch("pg_wal");
    let repo = setup.repo_dir.clone().expect("local repo");
    let stored = |name: &str| repo.join("wal").join("history").join(name).exists();

    let cases: [(&str, &[u8], &str); 4] = [
        ("00000002.history", b"garbage\n", "line 1"),
        // Parents must be older than the file's timeline: this is timeline 3's history.
        (
            "00000002.history",
            b"1\t0/3000000\tno recovery target specified\n2\t0/5000000\tx\n",
            "not older than timeline 2",
        ),
        (
            "00000003.history",
            b"2\t0/3000000\tx\n1\t0/5000000\ty\n",
            "must increase",
        ),
        ("00000002.history", b"\xff\xfe1\t0/3000000\n", "not text"),
    ];
    for (name, content, why) in cases {
        let path = owned_file(&wal, name, content);
        let out = setup.run(&["wal-push", path.to_str().expect("utf8"), "--parallel", "1"]);
        assert_code(&out, 4, &format!("push of {content:?} as {name}"));
        let err = stderr(&out);
        assert!(err.contains(name) && err.contains(why), "{err}");
        assert!(err.contains("HINT:"), "{err}");
        assert!(!stored(name), "{name} was stored: {content:?}");
        fs::remove_file(&path).expect("rm");
    }

    // The history file PostgreSQL 15 wrote at a promotion (the pg crate's fixture) is stored.
    let real = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../pg/tests/fixtures/pg15/00000002.history"),
    )
    .expect("fixture");
    let real = owned_file(&wal, "00000002.history", &real);
    let out = setup.run(&["wal-push", real.to_str().expect("utf8"), "--parallel", "1"]);
    assert_success(&out, "push of PostgreSQL's own history file");
    assert!(stored("00000002.history"));

    // So is a well-formed one written here, with two ancestors.
    let good = owned_file(
        &wal,
        "00000003.history",
        b"1\t0/3000000\tno recovery target specified\n\n2\t0/50000A0\tbefore 2026-12-06 10:00:00+00\n",
    );
    let out = setup.run(&["wal-push", good.to_str().expect("utf8"), "--parallel", "1"]);
    assert_success(&out, "push of a good history file");
    assert!(stored("00000003.history"));
    let out = setup.run(&["verify"]);
    assert_success(&out, "verify after pushing a good history file");
}

/// The `repo-<hash>` subdirectory of a prefetch spool, once the prefetcher has put `want` there
/// and released the spool's lock (so that nothing writes it while the test tampers with it).
fn wait_for_prefetch(spool: &Path, want: &[&str]) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dir = fs::read_dir(spool)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_dir());
        if let Some(dir) = dir
            && want.iter().all(|n| dir.join(n).exists())
            && let Ok(lock) = fs::OpenOptions::new().write(true).open(dir.join(".lock"))
            && lock.try_lock().is_ok()
        {
            return dir;
        }
        assert!(
            Instant::now() < deadline,
            "the prefetcher did not put {want:?} into {}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Archived segments of a fresh cluster, at least `n`, in order (paths of the ARCH copies).
fn archived_segments(setup: &Setup, n: usize) -> (TestCluster, Vec<PathBuf>) {
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster.psql("create table t(x int)").expect("create");
    let mut last = String::new();
    for _ in 0..n {
        cluster
            .psql("insert into t select generate_series(1, 10000)")
            .expect("insert");
        last = cluster.switch_wal().expect("switch");
    }
    cluster.wait_archived(&last, WAIT).expect("archived");
    let segments: Vec<PathBuf> = setup
        .archived_copies()
        .into_iter()
        .filter(|p| file_name(p).len() == 24)
        .collect();
    assert!(segments.len() >= n, "{segments:?}");
    (cluster, segments)
}

/// Issue 13, defect 8 (must show 4): a prefetched segment damaged in the spool (a flipped byte,
/// a truncation, a symlink, no checksum beside it) is never handed to PostgreSQL: it is discarded
/// with a warning and the segment fetched again, byte-identical to what was archived.
#[test]
fn damaged_prefetched_segment_is_fetched_again() {
    let setup = Setup::new(Backend::Local, true);
    let (_cluster, segments) = archived_segments(&setup, 6);
    let names: Vec<String> = segments.iter().map(|p| file_name(p)).collect();
    let wal = setup.scratch("pg_wal");
    let dest = wal.join("RECOVERYXLOG");
    let dest_s = dest.to_str().expect("utf8");

    let out = setup.run(&["wal-fetch", &names[0], dest_s]);
    assert_success(&out, "first wal-fetch");
    let want: Vec<&str> = names[1..6].iter().map(String::as_str).collect();
    let spool = wait_for_prefetch(&wal.join("lifeboat").join("prefetch"), &want);

    // 1: one flipped byte. 2: truncated. 3: replaced by a symlink to a file with other content.
    // 4: intact, but nothing beside it says what it should be. 5: intact, but another user's.
    let flipped = spool.join(&names[1]);
    let mut bytes = fs::read(&flipped).expect("spooled");
    bytes[100_000] ^= 0x01;
    fs::write(&flipped, &bytes).expect("flip");
    let truncated = spool.join(&names[2]);
    let bytes = fs::read(&truncated).expect("spooled");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("truncate");
    let linked = spool.join(&names[3]);
    fs::remove_file(&linked).expect("rm");
    std::os::unix::fs::symlink(&segments[0], &linked).expect("symlink");
    for entry in fs::read_dir(&spool).expect("spool").flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(&names[4]) && n != names[4] {
            fs::remove_file(entry.path()).expect("rm sidecar");
        }
    }

    std::os::unix::fs::chown(spool.join(&names[5]), Some(0), Some(0)).expect("chown to root");
    for (i, why) in [
        (1, "flipped"),
        (2, "truncated"),
        (3, "symlink"),
        (4, "no sidecar"),
        (5, "another user's"),
    ] {
        let out = setup.run(&["wal-fetch", &names[i], dest_s, "--prefetch", "0"]);
        assert_success(&out, &format!("wal-fetch of the {why} spool file"));
        assert!(
            fs::read(&dest).expect("fetched") == fs::read(&segments[i]).expect("original"),
            "wal-fetch handed over the {why} spool file instead of the archived segment"
        );
        assert!(
            !fs::symlink_metadata(&dest).expect("dest").is_symlink(),
            "{why}: a symlink was handed over"
        );
        let err = stderr(&out);
        assert!(
            err.contains("WARN") && err.contains(&names[i]) && err.contains("discard"),
            "{why}: the discard is not logged: {err}"
        );
    }
    assert!(
        fs::symlink_metadata(&linked).is_err(),
        "the symlink was left in the spool"
    );
}

/// `sh -c 'umask 022; exec lifeboat --config … ARGS'` as the cluster owner.
fn with_umask_022(setup: &Setup, args: &[&str]) -> Output {
    let mut cmd = Command::new("sh");
    run_as_owner(&mut cmd);
    cmd.arg("-c")
        .arg("umask 022; exec \"$@\"")
        .arg("sh")
        .arg(BIN)
        .arg("--config")
        .arg(&setup.config)
        .args(args)
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .env_remove("LIFEBOAT_REPO");
    cmd.output().expect("run lifeboat")
}

/// Issue 13, small defect: a spool directory outside pg_wal (archive.spool_dir) got 0644 files;
/// spool files are 0600 and its directories 0700, whatever the umask.
#[test]
fn spool_outside_pg_wal_is_private_whatever_the_umask() {
    let setup = Setup::new(Backend::Local, false);
    let (_cluster, segments) = archived_segments(&setup, 3);
    // Set only now, so that PostgreSQL's archiver (umask 077) does not make the spool first.
    let spool = setup.dir.path().join("spool");
    let mut config = fs::read_to_string(&setup.config).expect("config");
    config.push_str(&format!("[archive]\nspool_dir = \"{}\"\n", spool.display()));
    fs::write(&setup.config, config).expect("config");
    let names: Vec<String> = segments.iter().map(|p| file_name(p)).collect();

    // Push ahead: a copy of pg_wal with .ready files, pushed again (already stored), leaves markers.
    let wal = setup.scratch("pg_wal");
    let status = wal.join("archive_status");
    fs::create_dir_all(&status).expect("archive_status");
    for (seg, name) in segments.iter().zip(&names) {
        fs::copy(seg, wal.join(name)).expect("copy");
        fs::write(status.join(format!("{name}.ready")), "").expect("ready");
    }
    chown_to_owner(&wal).expect("chown");
    for entry in fs::read_dir(&wal).expect("wal").flatten() {
        chown_to_owner(&entry.path()).expect("chown");
    }
    for entry in fs::read_dir(&status).expect("status").flatten() {
        chown_to_owner(&entry.path()).expect("chown");
    }
    let out = with_umask_022(
        &setup,
        &["wal-push", wal.join(&names[0]).to_str().expect("utf8")],
    );
    assert_success(&out, "wal-push with umask 022");
    assert!(spool.join("pushed").exists(), "no markers were written");

    // Fetch ahead into the same spool.
    let dest_dir = setup.scratch("restore_wal");
    let dest = dest_dir.join("RECOVERYXLOG");
    let out = with_umask_022(
        &setup,
        &["wal-fetch", &names[0], dest.to_str().expect("utf8")],
    );
    assert_success(&out, "wal-fetch with umask 022");
    let want: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    wait_for_prefetch(&spool.join("prefetch"), &want);

    assert_eq!(
        fs::metadata(&spool).expect("spool").mode() & 0o777,
        0o700,
        "the spool directory lifeboat created"
    );
    assert_private(&spool);
}

/// Issue 13, small defect: the wal-fetch hint for a damaged object spoke of archiving; a recovery
/// operator needs to know that recovery stopped on purpose and what to do.
#[test]
fn corrupt_object_hint_speaks_to_recovery() {
    let setup = Setup::new(Backend::Local, false);
    let (_cluster, segments) = archived_segments(&setup, 1);
    let name = file_name(&segments[0]);
    let repo = setup.repo_dir.as_ref().expect("local repo");
    let object = repo.join("wal").join(&name[..16]).join(&name);
    let mut bytes = fs::read(&object).expect("object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&object, &bytes).expect("corrupt");
    let dest = setup.scratch("pg_wal").join("RECOVERYXLOG");
    let out = setup.run(&[
        "wal-fetch",
        &name,
        dest.to_str().expect("utf8"),
        "--prefetch",
        "0",
    ]);
    assert_code(&out, 200, "corrupt object");
    let err = stderr(&out);
    let hint = err
        .lines()
        .find_map(|l| l.strip_prefix("HINT: "))
        .unwrap_or_else(|| panic!("no hint: {err}"));
    assert!(
        hint.contains("recovery")
            && hint.contains("lifeboat verify")
            && !hint.contains("pushed again"),
        "{hint}"
    );
}

/// Write a passphrase file readable by the cluster owner only.
fn passphrase_file(setup: &Setup, name: &str, text: &str) -> PathBuf {
    let path = setup.dir.path().join(name);
    fs::write(&path, format!("{text}\n")).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_to_owner(&path).expect("chown");
    path
}

/// `lifeboat ARGS` with the passphrase from `file` instead of the config's.
fn with_passphrase(setup: &Setup, file: &Path, args: &[&str]) -> Output {
    setup
        .cmd()
        .env("LIFEBOAT_PASSPHRASE_FILE", file)
        .args(args)
        .output()
        .expect("run lifeboat")
}

/// Issue 13, defect 14: `passphrase change` re-wraps the data key; afterwards the old passphrase
/// is refused (exit 3) and the new one reads everything.
#[test]
fn after_a_passphrase_change_only_the_new_passphrase_opens_the_repository() {
    let setup = Setup::new(Backend::Local, true);
    let old = setup.dir.path().join("passphrase");
    let cluster = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    cluster.psql("create table t(x int)").expect("create");
    cluster
        .psql("insert into t select generate_series(1, 1000)")
        .expect("insert");
    setup.backup(&cluster);
    let last = cluster.switch_wal().expect("switch");
    cluster.wait_archived(&last, WAIT).expect("archived");
    cluster
        .stop(lifeboat_pg::cluster::StopMode::Fast)
        .expect("stop");

    let new = passphrase_file(&setup, "new-passphrase", "a much better passphrase");
    let out = setup
        .cmd()
        .args(["passphrase", "change", "--new-passphrase-file"])
        .arg(&new)
        .output()
        .expect("run");
    assert_success(&out, "passphrase change");
    let said = text(&out);
    assert!(said.contains("archive_command"), "{said}");
    // No passphrase text anywhere in what it printed or stored in the clear.
    assert!(!said.contains("much better"), "{said}");
    let repo = setup.repo_dir.as_ref().expect("local repo");
    for key in ["lifeboat.json", "lifeboat.json.copy"] {
        let text = fs::read_to_string(repo.join(key)).expect("config");
        assert!(!text.contains("much better"), "{key}: {text}");
    }

    let out = with_passphrase(&setup, &old, &["info"]);
    assert_code(&out, 3, "the old passphrase after the change");
    let out = with_passphrase(&setup, &new, &["verify", "--full"]);
    assert_success(&out, "verify with the new passphrase");
    let target = setup.scratch("restored");
    let out = with_passphrase(
        &setup,
        &new,
        &[
            "restore",
            "--target-dir",
            target.to_str().expect("utf8"),
            "--archive-mode",
            "off",
        ],
    );
    assert_success(&out, "restore with the new passphrase");

    // Without a new passphrase, or with a wrong current one: refused, nothing changed.
    let before = fs::read(repo.join("lifeboat.json")).expect("config");
    let out = with_passphrase(&setup, &new, &["passphrase", "change"]);
    assert_code(&out, 3, "no new passphrase");
    let out = setup
        .cmd()
        .args(["passphrase", "change", "--new-passphrase-file"])
        .arg(&new)
        .output()
        .expect("run");
    assert_code(&out, 3, "the old passphrase as the current one");
    assert_eq!(
        fs::read(repo.join("lifeboat.json")).expect("config"),
        before
    );
}

/// Issue 13, defect 14: a change interrupted between its two steps leaves the repository
/// readable with one of the two passphrases (and a second run finishes it).
#[test]
fn an_interrupted_passphrase_change_leaves_the_repository_readable_local() {
    passphrase_change_interrupted_on(Backend::Local);
}

#[test]
fn an_interrupted_passphrase_change_leaves_the_repository_readable_s3() {
    passphrase_change_interrupted_on(Backend::S3);
}

fn passphrase_change_interrupted_on(backend: Backend) {
    let setup = Setup::new(backend, true);
    let old = setup.dir.path().join("passphrase");
    let new = passphrase_file(&setup, "new-passphrase", "the new one");
    let change = |stop: Option<&str>, current: &Path| {
        let mut cmd = setup.cmd();
        cmd.env("LIFEBOAT_PASSPHRASE_FILE", current)
            .args(["passphrase", "change", "--new-passphrase-file"])
            .arg(&new);
        if let Some(stop) = stop {
            cmd.env("LIFEBOAT_TEST_PASSPHRASE_STOP", stop);
        }
        cmd.output().expect("run")
    };
    let opens = |file: &Path| with_passphrase(&setup, file, &["info"]).status.success();

    // Stopped once both wrappings are stored: either passphrase opens it.
    let out = change(Some("both"), &old);
    assert!(!out.status.success(), "the test hook did not stop it");
    assert!(
        opens(&old) && opens(&new),
        "after a stop with both wrappings"
    );

    // Stopped after the first copy of the config dropped the old wrapping: the new one opens it.
    let out = change(Some("switched"), &old);
    assert!(!out.status.success(), "the test hook did not stop it");
    assert!(opens(&new), "after a stop in the switch");

    // A second run with the new passphrase finishes it.
    let out = change(None, &new);
    assert_success(&out, "finishing the change");
    assert!(opens(&new) && !opens(&old));
    if let Some(repo) = &setup.repo_dir {
        assert_eq!(
            fs::read(repo.join("lifeboat.json")).expect("config"),
            fs::read(repo.join("lifeboat.json.copy")).expect("copy")
        );
    }
}
