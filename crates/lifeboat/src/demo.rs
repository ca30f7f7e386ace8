//! `lifeboat demo`: the whole disaster-recovery loop on a scratch cluster, for a newcomer.
//!
//! Everything lives in one temporary directory: an encrypted local repository, a cluster that
//! archives into it with `lifeboat wal-push`, a base backup taken with `lifeboat backup`, rows
//! written one per transaction while the client records when each committed, and then the primary
//! lost. `lifeboat restore` brings the backup back to a moment between two of those rows, the
//! restored cluster replays the archive up to that moment and promotes, and the demo checks that it
//! holds exactly the rows committed before the moment. It prints how long the restore and the
//! replay took and the data-loss window it measured.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::{self as pgc, ClusterError, InitOptions, LocalCluster, StopMode};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::commands::context::shell_quote;
use crate::exit::{Exit, Failure};

/// How long a server may take to start (the restored one: until it is consistent).
const START: Duration = Duration::from_secs(300);
/// How long the restored cluster may take to replay up to the target and promote.
const RECOVERY: Duration = Duration::from_secs(300);
/// How long archived WAL may take to reach the repository.
const ARCHIVE: Duration = Duration::from_secs(120);
/// One row per transaction, about ten a second.
const ROW_INTERVAL: Duration = Duration::from_millis(100);
/// A WAL switch every this many rows, so the archive holds several segments.
const ROWS_PER_SEGMENT: u32 = 10;
/// A row's `created_at` as microseconds since the Unix epoch.
const CREATED_AT_US: &str = "(extract(epoch from created_at) * 1000000)::bigint";

pub struct DemoOptions {
    pub keep: bool,
    pub seconds: u64,
}

pub fn run(options: &DemoOptions) -> Result<Exit, Failure> {
    if options.seconds == 0 {
        return Err(Failure::new(
            Exit::Usage,
            "--seconds 0 leaves no rows to restore",
            Some("give --seconds 1 or more (the default is 5)".into()),
        ));
    }
    // Both fail with what to do; find out before anything is created.
    let owner = pgc::cluster_owner().map_err(cluster_failure)?;
    pgc::pg_bindir().map_err(cluster_failure)?;
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::Internal,
            format!("cannot find my own executable: {e}"),
            None,
        )
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("lifeboat-demo-")
        .tempdir()
        .map_err(|e| {
            Failure::new(
                Exit::LocalIo,
                format!("cannot create a temporary directory: {e}"),
                Some("set TMPDIR to a writable directory with a few hundred MB free".into()),
            )
        })?;
    let demo = Demo::new(tmp.path(), exe, owner);
    let mut guard = Cleanup {
        dir: Some(tmp),
        clusters: vec![],
        keep: options.keep,
    };
    let result = run_in(&demo, options, &mut guard);
    drop(guard);
    if options.keep {
        print_kept(&demo);
    }
    result
}

/// The demo's directory and how to run lifeboat against its repository.
struct Demo {
    root: PathBuf,
    exe: PathBuf,
    owner: Option<pgc::OsUser>,
    repo: PathBuf,
    config: PathBuf,
}

impl Demo {
    fn new(root: &Path, exe: PathBuf, owner: Option<pgc::OsUser>) -> Self {
        // The archive_command runs in the primary's data directory: every path in it must be
        // absolute, even with a relative TMPDIR.
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let root = root.as_path();
        Self {
            root: root.to_path_buf(),
            exe,
            owner,
            repo: root.join("repo"),
            config: root.join("lifeboat.toml"),
        }
    }

    /// `lifeboat --config C --repo R`, run as the cluster owner. The repository is given as a
    /// flag so that a LIFEBOAT_REPO in the environment cannot send the demo's data elsewhere.
    fn lifeboat(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        pgc::run_as(&mut cmd, self.owner.as_ref());
        if self.owner.is_some() {
            cmd.current_dir(&self.root);
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--repo")
            .arg(&self.repo);
        cmd
    }

    /// The archive_command: the same binary, configuration and repository.
    fn archive_command(&self) -> String {
        let quoted = |p: &Path| shell_quote(&p.to_string_lossy());
        format!(
            "{} --config {} --repo {} wal-push %p",
            quoted(&self.exe),
            quoted(&self.config),
            quoted(&self.repo)
        )
    }
}

fn run_in(demo: &Demo, options: &DemoOptions, guard: &mut Cleanup) -> Result<Exit, Failure> {
    write_config(demo)?;
    if let Some(owner) = &demo.owner {
        pgc::chown_recursive(&demo.root, owner).map_err(cluster_failure)?;
        println!(
            "running as root: PostgreSQL and lifeboat's commands run as the `{}` OS user",
            owner.name
        );
        check_reachable(&demo.exe, owner)?;
    }

    step(1, "create an encrypted repository");
    let mut init = demo.lifeboat();
    init.arg("init");
    print_indented(&run_checked(&mut init, "lifeboat init")?.stdout);

    step(
        2,
        "create a scratch cluster archiving with `lifeboat wal-push %p`",
    );
    let primary = start_primary(demo, guard)?;

    step(3, "take a base backup with `lifeboat backup`");
    backup(demo, &primary)?;

    step(
        4,
        &format!(
            "write orders for {} seconds, one per transaction, recording when each committed",
            options.seconds
        ),
    );
    let rows = write_orders(&primary, options.seconds)?;
    archive_everything(demo, &primary, &rows)?;

    step(5, "lose the primary (stop it at once, no checkpoint)");
    primary.stop(StopMode::Immediate).map_err(cluster_failure)?;
    let target = Target::between(&rows)?;
    println!(
        "    the moment to go back to: {} (between orders {} and {})",
        target.text,
        target.last_before.id,
        target.last_before.id + 1
    );

    step(
        6,
        "restore the backup to that moment with `lifeboat restore --target-time`",
    );
    let data = demo.root.join("restored");
    let restore_took = restore(demo, &data, &target)?;

    let port = free_port()?;
    step(
        7,
        &format!(
            "start the restored cluster on port {port}: it replays WAL from the archive up to the target and promotes"
        ),
    );
    let restored = LocalCluster::existing(&data, port, &primary.socket_dir, demo.owner.clone())
        .map_err(cluster_failure)?
        .with_log_file(demo.root.join("restored.log"));
    guard.clusters.push(restored.clone());
    let replay_took = start_and_recover(&restored)?;

    step(
        8,
        "check the restored cluster against what the client saw committed",
    );
    let check = check_rows(&restored, &rows, &target);
    print_figures(restore_took, replay_took);
    restored.stop(StopMode::Fast).map_err(cluster_failure)?;
    check?;
    println!(
        "\ndemo passed: the restore brought back exactly the rows committed before the target"
    );
    Ok(Exit::Success)
}

// ---------------------------------------------------------------------------------------------
// The steps
// ---------------------------------------------------------------------------------------------

/// The passphrase file (0600) and the configuration naming it and the repository.
fn write_config(demo: &Demo) -> Result<(), Failure> {
    let passphrase = demo.root.join("passphrase");
    fs::write(&passphrase, format!("demo-{}\n", std::process::id()))
        .map_err(io("cannot write the passphrase file", &passphrase))?;
    fs::set_permissions(&passphrase, fs::Permissions::from_mode(0o600))
        .map_err(io("cannot chmod 600 the passphrase file", &passphrase))?;
    let toml_string = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned()).to_string();
    fs::write(
        &demo.config,
        format!(
            "repo = {}\npassphrase_file = {}\n",
            toml_string(&demo.repo),
            toml_string(&passphrase)
        ),
    )
    .map_err(io("cannot write the config file", &demo.config))
}

/// The primary, started (and stopped by `guard` whatever happens next), with the demo's table.
fn start_primary(demo: &Demo, guard: &mut Cleanup) -> Result<LocalCluster, Failure> {
    let conf = format!(
        "archive_mode = on\narchive_command = {}\n",
        lifeboat_pg::conf::quote_value(&demo.archive_command())
    );
    let primary = new_cluster(&demo.root, "primary", &conf)?;
    guard.clusters.push(primary.clone());
    primary.start(START).map_err(cluster_failure)?;
    println!(
        "    cluster {} on port {}",
        primary.datadir.display(),
        primary.port
    );
    psql(
        &primary,
        "create table orders(id int primary key, created_at timestamptz not null default clock_timestamp())",
    )?;
    Ok(primary)
}

/// `lifeboat backup`, then `lifeboat list`.
fn backup(demo: &Demo, primary: &LocalCluster) -> Result<(), Failure> {
    let mut cmd = demo.lifeboat();
    cmd.arg("backup")
        .arg("--db")
        .arg(primary.conninfo())
        .arg("--pgdata")
        .arg(&primary.datadir);
    print_indented(&run_checked(&mut cmd, "lifeboat backup")?.stderr);
    println!("    $ lifeboat list");
    let mut list = demo.lifeboat();
    list.arg("list");
    print_indented(&run_checked(&mut list, "lifeboat list")?.stdout);
    Ok(())
}

/// A committed row as the client saw it: its id and `created_at` (microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    id: u32,
    at_us: i64,
}

/// Insert rows for `seconds`, one per transaction, paced at [`ROW_INTERVAL`]. A row counts once
/// its insert returned, i.e. once it committed.
fn write_orders(primary: &LocalCluster, seconds: u64) -> Result<Vec<Row>, Failure> {
    let started = Instant::now();
    let end = Duration::from_secs(seconds);
    let mut rows = Vec::new();
    for id in 1u32.. {
        let due = ROW_INTERVAL * (id - 1);
        if due >= end {
            break;
        }
        std::thread::sleep(due.saturating_sub(started.elapsed()));
        let at = psql(
            primary,
            &format!("insert into orders(id) values ({id}) returning {CREATED_AT_US}"),
        )?;
        rows.push(Row {
            id,
            at_us: parse_number(&at, "the created_at of a new row")?,
        });
        if id.is_multiple_of(ROWS_PER_SEGMENT) {
            psql(primary, "select pg_switch_wal()")?;
        }
    }
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(Failure::new(
            Exit::Internal,
            "no rows were written",
            Some("run the demo with a longer --seconds".into()),
        ));
    };
    println!(
        "    {} orders committed, the first at {} and the last at {} (UTC)",
        rows.len(),
        clock(first.at_us),
        clock(last.at_us)
    );
    Ok(rows)
}

/// Switch to a new WAL segment and wait until the archive holds everything written; show `info`.
fn archive_everything(demo: &Demo, primary: &LocalCluster, rows: &[Row]) -> Result<(), Failure> {
    let last_segment = psql(primary, "select pg_walfile_name(pg_switch_wal())")?;
    primary
        .wait_archived(&last_segment, ARCHIVE)
        .map_err(cluster_failure)?;
    println!(
        "    WAL archived up to {last_segment}, past the last of the {} commits",
        rows.len()
    );
    println!("    $ lifeboat info");
    let mut info = demo.lifeboat();
    info.arg("info");
    print_indented(&run_checked(&mut info, "lifeboat info")?.stdout);
    Ok(())
}

/// The moment to restore to: halfway between two consecutive rows in the middle of the run.
struct Target {
    /// Microseconds since the epoch.
    at_us: i64,
    /// As given to `--target-time`, with an explicit UTC offset.
    text: String,
    /// The newest row committed before the target.
    last_before: Row,
    /// How many rows committed before the target.
    rows_before: usize,
}

impl Target {
    fn between(rows: &[Row]) -> Result<Self, Failure> {
        let too_few = || {
            Failure::new(
                Exit::Internal,
                format!(
                    "only {} row(s) committed: a moment between two rows needs at least two",
                    rows.len()
                ),
                Some("run the demo with a longer --seconds, on a less busy machine".into()),
            )
        };
        let rows_before = rows.len() / 2;
        let before = rows_before
            .checked_sub(1)
            .and_then(|i| rows.get(i))
            .ok_or_else(too_few)?;
        let after = rows.get(rows_before).ok_or_else(too_few)?;
        let at_us = before.at_us + (after.at_us - before.at_us) / 2;
        if at_us <= before.at_us || at_us >= after.at_us {
            return Err(Failure::new(
                Exit::Internal,
                format!(
                    "orders {} and {} have created_at {} and {}: there is no moment strictly between them",
                    before.id,
                    after.id,
                    utc_text(before.at_us),
                    utc_text(after.at_us)
                ),
                Some("check the server's clock, then run the demo again".into()),
            ));
        }
        Ok(Self {
            at_us,
            text: utc_text(at_us),
            last_before: *before,
            rows_before,
        })
    }
}

/// `lifeboat restore --target-dir DATA --target-time T --archive-mode off`; how long it took. The
/// restore writes restore_command, the target and recovery.signal itself; `--archive-mode off`
/// keeps the promoted copy from archiving a new timeline into the demo's repository.
fn restore(demo: &Demo, data: &Path, target: &Target) -> Result<Duration, Failure> {
    println!(
        "    $ lifeboat restore --target-dir {} --target-time '{}' --archive-mode off",
        data.display(),
        target.text
    );
    let mut cmd = demo.lifeboat();
    cmd.arg("restore")
        .arg("--target-dir")
        .arg(data)
        .arg("--target-time")
        .arg(&target.text)
        .args(["--archive-mode", "off"]);
    let started = Instant::now();
    let ran = run_checked(&mut cmd, "lifeboat restore")?;
    let took = started.elapsed();
    print_indented(&ran.stderr);
    Ok(took)
}

/// Start the restored cluster and wait until it has replayed to the target and promoted; how long
/// that took.
fn start_and_recover(restored: &LocalCluster) -> Result<Duration, Failure> {
    let started = Instant::now();
    restored.start(START).map_err(cluster_failure)?;
    let deadline = started + RECOVERY;
    loop {
        match restored.psql("select pg_is_in_recovery()") {
            Ok(state) if state == "f" => break,
            Ok(_) => {}
            Err(e) if !restored.is_running() => {
                return Err(Failure::new(
                    Exit::Internal,
                    format!(
                        "the restored cluster stopped during recovery ({e}); last lines of {}:\n{}",
                        restored.log_file().display(),
                        restored.log_tail(20)
                    ),
                    Some("run the demo with --keep and look at the restored cluster's log".into()),
                ));
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                Exit::Internal,
                format!(
                    "recovery did not finish within {} s; last lines of {}:\n{}",
                    RECOVERY.as_secs(),
                    restored.log_file().display(),
                    restored.log_tail(20)
                ),
                Some("run the demo with --keep and look at the restored cluster's log".into()),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    if let Some(line) = log_line(restored.log_file(), "recovery stopping") {
        println!("    server log: {line}");
    }
    println!("    recovery ended and the cluster promoted: it accepts writes");
    Ok(took)
}

/// The restored cluster must hold exactly the rows committed before the target.
fn check_rows(restored: &LocalCluster, rows: &[Row], target: &Target) -> Result<(), Failure> {
    let listing = psql(restored, "select id from orders order by id")?;
    let found = listing
        .lines()
        .map(|line| parse_number::<u32>(line, "an order id"))
        .collect::<Result<BTreeSet<u32>, Failure>>()?;
    let expected: BTreeSet<u32> = rows.iter().take(target.rows_before).map(|r| r.id).collect();
    println!(
        "    committed before the target: {} orders (ids 1..={}); found in the restored cluster: {}",
        expected.len(),
        target.last_before.id,
        found.len()
    );
    if found != expected {
        return Err(mismatch(&expected, &found, restored));
    }
    let newest = target.last_before;
    println!(
        "    data-loss window: target {}; newest row recovered committed at {}, {} before the target; rows after the target correctly absent: {}",
        clock(target.at_us),
        clock(newest.at_us),
        human_ms(target.at_us - newest.at_us),
        rows.len().saturating_sub(found.len())
    );
    Ok(())
}

fn mismatch(expected: &BTreeSet<u32>, found: &BTreeSet<u32>, restored: &LocalCluster) -> Failure {
    let sample = |ids: Vec<&u32>| {
        let shown: Vec<String> = ids.iter().take(10).map(|id| id.to_string()).collect();
        let more = ids.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    let missing: Vec<&u32> = expected.difference(found).collect();
    let extra: Vec<&u32> = found.difference(expected).collect();
    Failure::new(
        Exit::Internal,
        format!(
            "the restored cluster does not hold exactly the rows committed before the target: missing [{}], unexpected [{}]",
            sample(missing),
            sample(extra)
        ),
        Some(format!(
            "this is a bug in backup or restore: run the demo with --keep and see {}",
            restored.log_file().display()
        )),
    )
}

fn print_figures(restore: Duration, replay: Duration) {
    println!(
        "    restore {:.1} s (lifeboat restore), recovery {:.1} s (start and WAL replay), total recovery time {:.1} s",
        restore.as_secs_f64(),
        replay.as_secs_f64(),
        (restore + replay).as_secs_f64()
    );
}

fn print_kept(demo: &Demo) {
    let root = demo.root.display();
    println!("\nkept everything in {root} (clusters stopped):");
    println!("    lifeboat.toml, passphrase  the demo's configuration and its passphrase");
    println!("    repo/                      the encrypted repository");
    println!("    primary/, primary.log      the lost primary");
    println!("    restored/, restored.log    the cluster restored to the target");
    let who = demo
        .owner
        .as_ref()
        .map_or(String::new(), |o| format!(" (as the `{}` user)", o.name));
    println!(
        "look inside with: {} --config {root}/lifeboat.toml list{who}",
        demo.exe.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

struct Ran {
    stdout: String,
    stderr: String,
}

/// Run `cmd`; its output on success, its stderr in the failure otherwise.
fn run_checked(cmd: &mut Command, what: &str) -> Result<Ran, Failure> {
    let out = cmd
        .output()
        .map_err(|e| Failure::new(Exit::LocalIo, format!("cannot run {what}: {e}"), None))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(Failure::new(
            Exit::Internal,
            format!("`{what}` failed ({}): {}", out.status, stderr.trim()),
            Some("run the demo with --keep to look at its directory and the servers' logs".into()),
        ));
    }
    Ok(Ran {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    })
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn print_indented(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("    {line}");
    }
}

fn new_cluster(root: &Path, name: &str, conf: &str) -> Result<LocalCluster, Failure> {
    let opts = InitOptions {
        data_checksums: true,
        wal_segsize_mb: None,
        port: free_port()?,
        socket_dir: root.join("sock"),
        extra_conf: format!("shared_buffers = 32MB\nmax_connections = 20\n{conf}"),
    };
    Ok(LocalCluster::initdb(&root.join(name), &opts)
        .map_err(cluster_failure)?
        .with_log_file(root.join(format!("{name}.log"))))
}

fn psql(cluster: &LocalCluster, sql: &str) -> Result<String, Failure> {
    cluster.psql(sql).map_err(cluster_failure)
}

fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Failure> {
    text.trim().parse().map_err(|_| {
        Failure::new(
            Exit::Internal,
            format!("psql answered {text:?} for {what}, which is not a number"),
            Some("this is a bug in the demo: report it with the output above".into()),
        )
    })
}

/// The first line of `log` containing `needle`, from the needle on.
fn log_line(log: &Path, needle: &str) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(needle))?;
    line.find(needle).map(|at| line[at..].to_string())
}

fn free_port() -> Result<u16, Failure> {
    lifeboat_pg::net::free_port().map_err(|e| Failure::new(Exit::LocalIo, e.to_string(), None))
}

/// PostgreSQL's archiver runs lifeboat as the cluster owner: it must be able to reach the binary.
fn check_reachable(exe: &Path, owner: &pgc::OsUser) -> Result<(), Failure> {
    let mut cmd = Command::new(exe);
    pgc::run_as(&mut cmd, Some(owner));
    match cmd.arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(Failure::new(
            Exit::Config,
            format!("the `{}` user cannot run {}", owner.name, exe.display()),
            Some("install lifeboat where every user can run it (e.g. cargo install --path crates/lifeboat --root /usr/local), or make the directories on its path traversable (chmod o+x)".into()),
        )),
    }
}

fn cluster_failure(e: ClusterError) -> Failure {
    let exit = match e {
        ClusterError::BinariesNotFound { .. }
        | ClusterError::NoPostgresUser
        | ClusterError::UserLookup { .. } => Exit::Config,
        _ => Exit::Internal,
    };
    Failure::new(exit, e.to_string(), None)
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Failure {
    let what = format!("{what} {}", path.display());
    move |e| {
        Failure::new(
            Exit::LocalIo,
            format!("{what}: {e}"),
            Some("check that the temporary directory (TMPDIR) is writable and not full".into()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Times (UTC, microseconds since the Unix epoch)
// ---------------------------------------------------------------------------------------------

const US_PER_SECOND: i64 = 1_000_000;

/// The moment `us` microseconds after the Unix epoch (the epoch itself for one out of `time`'s
/// range, which no clock reading is).
fn moment(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2026-11-23 10:15:02.350125+00`: a timestamp PostgreSQL reads the same in any TimeZone.
fn utc_text(us: i64) -> String {
    let form = format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
    );
    moment(us).format(form).unwrap_or_default()
}

/// `10:15:02.350`: the time of day in UTC, to the millisecond.
fn clock(us: i64) -> String {
    let form = format_description!("[hour]:[minute]:[second].[subsecond digits:3]");
    moment(us).format(form).unwrap_or_default()
}

/// `49 ms`, or `1.250 s` from a second on.
fn human_ms(us: i64) -> String {
    if us < US_PER_SECOND {
        format!("{} ms", us / 1000)
    } else {
        format!("{:.3} s", us as f64 / US_PER_SECOND as f64)
    }
}

/// Stops the demo's clusters and removes its directory (unless --keep), also on failure.
struct Cleanup {
    dir: Option<tempfile::TempDir>,
    clusters: Vec<LocalCluster>,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.clusters {
            if c.stop(StopMode::Fast).is_err() {
                let _ = c.stop(StopMode::Immediate);
            }
        }
        if self.keep
            && let Some(dir) = self.dir.take()
        {
            let _: PathBuf = dir.keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_is_postgres_input_with_offset() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00.000000+00");
        // 2024-02-29 23:59:59.999999 UTC: a leap day, the last microsecond.
        assert_eq!(
            utc_text(1_709_251_199_999_999),
            "2024-02-29 23:59:59.999999+00"
        );
        assert_eq!(
            utc_text(1_795_432_502_350_125),
            "2026-11-23 11:15:02.350125+00"
        );
        assert_eq!(utc_text(-1), "1969-12-31 23:59:59.999999+00");
    }

    #[test]
    fn clock_and_window() {
        assert_eq!(clock(1_795_432_502_350_125), "11:15:02.350");
        assert_eq!(human_ms(49_999), "49 ms");
        assert_eq!(human_ms(1_250_000), "1.250 s");
    }

    #[test]
    fn target_falls_strictly_between_the_middle_rows() {
        let rows: Vec<Row> = (1..=5)
            .map(|id| Row {
                id,
                at_us: 1_000_000 * i64::from(id),
            })
            .collect();
        let target = Target::between(&rows).expect("five rows have a middle");
        assert_eq!(target.rows_before, 2);
        assert_eq!(target.last_before.id, 2);
        assert_eq!(target.at_us, 2_500_000);
        assert!(Target::between(&rows[..1]).is_err());
        let same = [rows[0], Row { id: 2, ..rows[0] }];
        assert!(Target::between(&same).is_err());
    }

    #[test]
    fn archive_command_quotes_what_the_shell_would_split() {
        let demo = Demo::new(
            Path::new("/tmp/lifeboat-demo-x"),
            PathBuf::from("/home/a b/lifeboat"),
            None,
        );
        assert_eq!(
            demo.archive_command(),
            "'/home/a b/lifeboat' --config /tmp/lifeboat-demo-x/lifeboat.toml --repo /tmp/lifeboat-demo-x/repo wal-push %p"
        );
    }
}
