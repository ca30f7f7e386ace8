//! Adversarial tests: config.
//!
//! Paths a restored server must find from its data directory, numbers out of range in flags and
//! config keys, repository URLs that are not locations, plain-http cloud endpoints, host names
//! as listen addresses, and which of `--log-level` and `LIFEBOAT_LOG` wins.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::LocalCluster;
use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner, run_as_owner};
use lifeboat_testkit::free_port;

use crate::support::daemon::Daemon;
use crate::support::*;

/// `lifeboat ARGS` as the cluster owner in `cwd`, with no repository or passphrase from the
/// environment.
fn lifeboat_in(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    run_as_owner(&mut cmd);
    cmd.current_dir(cwd)
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_CONFIG")
        .env_remove("LIFEBOAT_LOG")
        .args(args);
    cmd.output().expect("run lifeboat")
}

/// The value of `restore_command` in a restored `postgresql.auto.conf` (the last one wins).
fn restore_command_of(data: &Path) -> String {
    let conf = fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    let line = conf
        .lines()
        .rfind(|l| l.trim_start().starts_with("restore_command"))
        .unwrap_or_else(|| panic!("no restore_command in:\n{conf}"));
    let value = line.split_once('=').expect("key = value").1.trim();
    value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .expect("quoted value")
        .replace("''", "'")
        .replace(r"\\", r"\")
}

// ---------------------------------------------------------------------------------------------
// Relative paths in restore_command
// ---------------------------------------------------------------------------------------------

/// `lifeboat --config rel.toml --repo repo restore` from the directory holding both, with a
/// passphrase_file given relative too: every path in the written restore_command is absolute,
/// the command fetches a segment when run from the data directory (as PostgreSQL runs it), and
/// the restored server recovers and promotes.
#[test]
fn relative_repo_config_and_passphrase_paths_are_absolute_in_restore_command() {
    let setup = Setup::new(Backend::Local, true);
    let root = setup.dir.path();
    // The passphrase file given relative to the working directory, as an operator might.
    fs::write(root.join("rel.toml"), "passphrase_file = \"passphrase\"\n").expect("rel.toml");
    chown_to_owner(root).expect("chown");

    let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
    source
        .psql("create table t(id int primary key); insert into t select generate_series(1, 100)")
        .expect("create t");
    setup.backup(&source);
    // With a backup to judge, a retention of 50 000 000 days panicked (exit 101) computing its
    // boundary: now refused before anything is read.
    let out = setup.run(&["expire", "--keep-days", "50000000", "--dry-run"]);
    assert_code(&out, 3, "expire --keep-days 50000000 with a backup");
    source.psql("insert into t values (101)").expect("insert");
    let last = source.switch_wal().expect("switch");
    source.wait_archived(&last, WAIT).expect("archived");

    let target = TestDir::new().expect("target dir");
    let data = target.path().join("data");
    let out = lifeboat_in(
        root,
        &[
            "--config",
            "rel.toml",
            "--repo",
            "repo",
            "restore",
            "--target-dir",
            data.to_str().expect("utf-8"),
            "--archive-mode",
            "off",
        ],
    );
    assert_success(
        &out,
        "restore with a relative --repo, --config and passphrase_file",
    );

    let command = restore_command_of(&data);
    for (i, word) in command.split_whitespace().enumerate() {
        let word = word.trim_matches('\'');
        let previous = command.split_whitespace().nth(i.wrapping_sub(1));
        if matches!(previous, Some("--repo" | "--config")) || word.contains('=') {
            let path = word.rsplit('=').next().expect("value");
            assert!(
                path.starts_with('/'),
                "{word} in restore_command is not absolute: {command}"
            );
        }
    }
    assert!(
        command.contains("LIFEBOAT_PASSPHRASE_FILE=/"),
        "the relative passphrase_file must be passed on absolute: {command}"
    );

    // Run it the way PostgreSQL does: through the shell, in the data directory.
    let dest = target.path().join("fetched");
    let script = command
        .replace("wal-fetch", "wal-fetch --prefetch 0")
        .replace("%f", &last)
        .replace("%p", dest.to_str().expect("utf-8"));
    chown_to_owner(target.path()).expect("chown");
    let mut sh = Command::new("sh");
    run_as_owner(&mut sh);
    let out = sh
        .arg("-c")
        .arg(&script)
        .current_dir(&data)
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_PASSPHRASE_FILE")
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_CONFIG")
        .output()
        .expect("run restore_command");
    assert_success(
        &out,
        &format!("restore_command run in the data directory: {script}"),
    );
    assert_eq!(
        fs::metadata(&dest).expect("fetched segment").len(),
        16 << 20
    );
    fs::remove_file(&dest).expect("remove fetched segment");

    // And the server itself recovers with it.
    let owner = source.owner.clone();
    let cluster = LocalCluster::existing(&data, free_port(), target.path(), owner)
        .expect("restored cluster")
        .with_log_file(target.path().join("postgres.log"));
    let restored = TestCluster::adopt(target, cluster);
    restored
        .start(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the restored cluster did not start: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match restored.psql("select pg_is_in_recovery(), count(*) from t") {
            Ok(row) if row == "f|101" => break,
            other => assert!(
                Instant::now() < deadline,
                "recovery did not end with the 101 rows ({other:?}):\n{}",
                restored.log_tail(40)
            ),
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers out of range
// ---------------------------------------------------------------------------------------------

/// Every numeric flag with a value outside its range: exit 3 (200 for wal-fetch, which must stop
/// recovery), a message naming the flag and the accepted range; never a panic (101), never
/// silently clamped.
#[test]
fn out_of_range_flags_are_configuration_errors_naming_the_flag_and_range() {
    let setup = Setup::new(Backend::Local, false);
    let target = setup.dir.path().join("restore-here");
    let target = target.to_str().expect("utf-8");
    let cases: &[(&[&str], &str, i32)] = &[
        (&["expire", "--keep-days", "50000000"], "--keep-days", 3),
        (&["expire", "--keep-days", "0"], "--keep-days", 3),
        (
            &["expire", "--keep-days", "99999999999999999999"],
            "--keep-days",
            3,
        ),
        (&["expire", "--keep-last", "0"], "--keep-last", 3),
        (&["expire", "--keep-last", "4294967296"], "--keep-last", 3),
        (&["backup", "--parallel", "0"], "--parallel", 3),
        (
            &["backup", "--parallel", "9223372036854775808"],
            "--parallel",
            3,
        ),
        (
            &["restore", "--target-dir", target, "--parallel", "0"],
            "--parallel",
            3,
        ),
        (
            &["restore", "--target-dir", target, "--parallel", "100000"],
            "--parallel",
            3,
        ),
        (
            &["wal-push", "--parallel", "0", "000000010000000000000001"],
            "--parallel",
            3,
        ),
        (
            &[
                "wal-fetch",
                "--prefetch",
                "18446744073709551615",
                "000000010000000000000001",
                "/nonexistent/x",
            ],
            "--prefetch",
            200,
        ),
        (
            &["check", "--timeout", "18446744073709551615"],
            "--timeout",
            3,
        ),
        (&["check", "--timeout", "0"], "--timeout", 3),
        (
            &["init", "--unencrypted", "--compression-level", "1000"],
            "--compression-level",
            3,
        ),
        // (A huge --seconds is refused the same way; 0 here, because before the fix a huge
        // value ran the demo for ever.)
        (&["demo", "--seconds", "0"], "--seconds", 3),
        (
            &[
                "wal-prefetch",
                "--after",
                "000000010000000000000001",
                "--spool",
                "/nonexistent",
                "--count",
                "1000000",
            ],
            "--count",
            3,
        ),
    ];
    let mut failures = Vec::new();
    for (args, flag, code) in cases {
        let started = Instant::now();
        let out = setup.run(args);
        let err = stderr(&out);
        let ok = out.status.code() == Some(*code)
            && err.contains(flag)
            && err.contains("accepted")
            && err.contains("HINT:")
            && started.elapsed() < Duration::from_secs(10);
        if !ok {
            failures.push(format!(
                "lifeboat {}: exit {:?}, expected {code} naming {flag} and the range:\n{err}",
                args.join(" "),
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Not a number at all stays a usage error.
    assert_code(
        &setup.run(&["expire", "--keep-days", "soon"]),
        2,
        "--keep-days soon",
    );
    assert!(
        !Path::new(target).exists(),
        "a refused restore wrote its target"
    );
}

/// The same for config keys: every command reads the file, so `info` shows the refusal.
#[test]
fn out_of_range_config_keys_are_configuration_errors_naming_the_key_and_range() {
    let setup = Setup::new(Backend::Local, false);
    let base = fs::read_to_string(&setup.config).expect("config");
    let cases: &[(&str, &str)] = &[
        ("[retention]\nkeep_days = 50000000", "retention.keep_days"),
        ("[retention]\nkeep_days = 0", "retention.keep_days"),
        ("[retention]\nkeep_last = 0", "retention.keep_last"),
        ("[retention]\nkeep_last = -1", "retention.keep_last"),
        ("[backup]\nparallel = 0", "backup.parallel"),
        (
            "[backup]\nparallel = 9223372036854775807",
            "backup.parallel",
        ),
        ("[backup]\nblock_size_kib = 1", "backup.block_size_kib"),
        (
            "[backup]\narchive_timeout_seconds = 9223372036854775807",
            "backup.archive_timeout_seconds",
        ),
        ("[restore]\nparallel = -1", "restore.parallel"),
        ("[archive]\npush_parallel = 0", "archive.push_parallel"),
        ("[archive]\nprefetch = 100000", "archive.prefetch"),
        (
            "[archive]\nprefetch_parallel = 0",
            "archive.prefetch_parallel",
        ),
        ("[storage]\ntimeout_seconds = 0", "storage.timeout_seconds"),
        (
            "[storage]\ntimeout_seconds = 99999999999",
            "storage.timeout_seconds",
        ),
        ("[storage]\nmax_attempts = 0", "storage.max_attempts"),
        ("[drill]\ntimeout = \"100000d\"", "drill.timeout"),
        ("[serve]\ncheck_interval = \"0s\"", "serve.check_interval"),
        (
            "[health]\nmin_free_percent = 200",
            "health.min_free_percent",
        ),
    ];
    let mut failures = Vec::new();
    for (section, key) in cases {
        fs::write(&setup.config, format!("{base}\n{section}\n")).expect("config");
        let out = setup.run(&["expire", "--dry-run"]);
        let err = stderr(&out);
        if out.status.code() != Some(3) || !err.contains(key) || !err.contains("accepted") {
            failures.push(format!(
                "{section:?}: exit {:?}, expected 3 naming {key} and the range:\n{err}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Repository URLs and plain-http endpoints
// ---------------------------------------------------------------------------------------------

/// A repository URL that is not a location fails at once, as a configuration error whose hint
/// names where the location comes from; never retried, never "did not answer in time".
#[test]
fn bad_repository_urls_fail_at_once_as_configuration_errors() {
    let dir = TestDir::new().expect("dir");
    chown_to_owner(dir.path()).expect("chown");
    for url in [
        "s3:/x",
        "s3://",
        "s3:///prefix",
        "ftp://host/x",
        "http://host/x",
        "gs:bucket",
        "s3://bucket/a b",
        "s3://AKIA:secret@bucket/p",
    ] {
        let started = Instant::now();
        let out = lifeboat_in(dir.path(), &["--repo", url, "info"]);
        let err = stderr(&out);
        assert_code(&out, 3, &format!("--repo {url}"));
        assert!(
            err.contains("HINT:") && err.contains("--repo") && err.contains("s3://bucket"),
            "--repo {url}: the hint names the setting and the accepted forms:\n{err}"
        );
        assert!(
            !err.contains("did not answer") && !err.contains("attempt"),
            "--repo {url} was retried:\n{err}"
        );
        assert!(
            !err.contains("secret"),
            "--repo {url}: credentials echoed:\n{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "--repo {url}");
    }
}

/// `[azure] endpoint = "http://..."` without `allow_http`: exit 3 at once, the hint naming
/// `allow_http`; with `allow_http = true` the configuration is taken (the store then cannot be
/// reached on a closed port: a storage error, exit 5, not a configuration one).
#[test]
fn azure_over_http_needs_allow_http_and_says_so() {
    let dir = TestDir::new().expect("dir");
    chown_to_owner(dir.path()).expect("chown");
    let port = free_port();
    let config = dir.path().join("az.toml");
    let write = |extra: &str| {
        fs::write(
            &config,
            format!(
                "repo = \"az://container/prefix\"\n[storage]\nmax_attempts = 2\ntimeout_seconds = 5\n\
                 [azure]\naccount = \"devstoreaccount1\"\naccess_key = \"a2V5a2V5a2V5\"\n\
                 endpoint = \"http://127.0.0.1:{port}/devstoreaccount1\"\n{extra}"
            ),
        )
        .expect("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod");
    };
    let config_arg = config.to_str().expect("utf-8");

    write("");
    let started = Instant::now();
    let out = lifeboat_in(dir.path(), &["--config", config_arg, "info"]);
    let err = stderr(&out);
    assert_code(&out, 3, "azure over http without allow_http");
    assert!(
        err.contains("HINT:") && err.contains("allow_http"),
        "the hint names allow_http:\n{err}"
    );
    assert!(
        !err.contains("did not answer") && !err.contains("retrying"),
        "retried:\n{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    write("allow_http = false\n");
    let out = lifeboat_in(dir.path(), &["--config", config_arg, "info"]);
    assert_code(&out, 3, "azure over http with allow_http = false");

    write("allow_http = true\n");
    let out = lifeboat_in(dir.path(), &["--config", config_arg, "info"]);
    let err = stderr(&out);
    assert_code(
        &out,
        5,
        "azure over http with allow_http, nothing listening",
    );
    assert!(
        !err.contains("allow_http") && !err.contains("scheme"),
        "allow_http = true was not taken:\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Smaller ones: listen on a host name, --log-level over LIFEBOAT_LOG
// ---------------------------------------------------------------------------------------------

/// `[serve] listen = "localhost:PORT"` is resolved, judged loopback (no token needed), and served.
#[test]
fn serve_listens_on_a_host_name() {
    let setup = Setup::new(Backend::Local, false);
    let port = free_port();
    let base = fs::read_to_string(&setup.config).expect("config");
    fs::write(
        &setup.config,
        format!("{base}[serve]\nlisten = \"localhost:{port}\"\n"),
    )
    .expect("config");
    let daemon = Daemon::start(&setup, port, "serve.log");
    let (code, body) = daemon.get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // Killed on drop: this daemon has no database to watch, and the point is the listener.
    drop(daemon);
}

/// `--log-level` wins over `LIFEBOAT_LOG`, as every flag wins over the environment: the warning
/// about a passphrase file others can read shows with `--log-level warn` whatever LIFEBOAT_LOG
/// says, and not with `--log-level error`.
#[test]
fn log_level_flag_wins_over_lifeboat_log() {
    let dir = TestDir::new().expect("dir");
    let pass = dir.path().join("passphrase");
    fs::write(&pass, "open to all\n").expect("passphrase");
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o644)).expect("chmod");
    chown_to_owner(dir.path()).expect("chown");
    let run = |flag: Option<&str>, env: &str| {
        let mut cmd = Command::new(BIN);
        run_as_owner(&mut cmd);
        cmd.current_dir(dir.path())
            .env_remove("LIFEBOAT_PASSPHRASE")
            .env_remove("LIFEBOAT_CONFIG")
            .env("LIFEBOAT_PASSPHRASE_FILE", &pass)
            .env("LIFEBOAT_LOG", env);
        if let Some(level) = flag {
            cmd.args(["--log-level", level]);
        }
        let out = cmd
            .args(["--repo", "/nonexistent/repo", "info"])
            .output()
            .expect("run lifeboat");
        stderr(&out).contains("can be read by other users")
    };
    assert!(
        run(Some("warn"), "error"),
        "--log-level warn lost to LIFEBOAT_LOG=error"
    );
    assert!(
        !run(Some("error"), "warn"),
        "--log-level error lost to LIFEBOAT_LOG=warn"
    );
    // Without the flag, the environment still applies.
    assert!(!run(None, "error"));
    assert!(run(None, "warn"));
}
