//! `lifeboat demo`: the whole archive-and-recover loop on a scratch cluster, for a newcomer.
//!
//! Everything lives in one temporary directory: an encrypted local repository, a cluster that
//! archives into it with `lifeboat wal-push`, a copy taken before the writes, and that copy
//! recovered with `lifeboat wal-fetch`. It checks that the recovered cluster holds exactly the
//! rows committed before the primary was lost, and prints how long recovery took.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::{self as pgc, InitOptions, LocalCluster, StopMode};

use crate::exit::{Exit, Failure};

const START: Duration = Duration::from_secs(60);

pub struct DemoOptions {
    pub keep: bool,
    pub seconds: u64,
}

pub fn run(options: &DemoOptions) -> Result<Exit, Failure> {
    let owner = pgc::cluster_owner().map_err(cluster_failure)?;
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
                None,
            )
        })?;
    let root = tmp.path().to_path_buf();
    let guard = Cleanup {
        dir: Some(tmp),
        clusters: vec![],
        keep: options.keep,
    };
    let mut guard = guard;
    let result = run_in(&root, &exe, owner.as_ref(), options, &mut guard);
    if options.keep {
        println!("kept everything in {} (clusters stopped)", root.display());
    }
    drop(guard);
    result
}

fn run_in(
    root: &Path,
    exe: &Path,
    owner: Option<&pgc::OsUser>,
    options: &DemoOptions,
    guard: &mut Cleanup,
) -> Result<Exit, Failure> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| Failure::new(Exit::LocalIo, format!("{what}: {e}"), None)
    };
    let repo = root.join("repo");
    let passphrase = root.join("passphrase");
    let config = root.join("lifeboat.toml");
    fs::write(&passphrase, format!("demo-{}\n", std::process::id()))
        .map_err(io("cannot write the passphrase file"))?;
    fs::set_permissions(&passphrase, fs::Permissions::from_mode(0o600))
        .map_err(io("cannot chmod the passphrase file"))?;
    fs::write(
        &config,
        format!(
            "repo = \"{}\"\npassphrase_file = \"{}\"\n",
            repo.display(),
            passphrase.display()
        ),
    )
    .map_err(io("cannot write the config file"))?;
    if let Some(owner) = owner {
        pgc::chown_recursive(root, owner).map_err(cluster_failure)?;
        println!(
            "running as root: PostgreSQL and lifeboat's archive commands run as the `{}` OS user",
            owner.name
        );
        check_reachable(exe, owner)?;
    }
    let lifeboat = |args: &[&str]| -> Result<String, Failure> {
        let mut cmd = Command::new(exe);
        pgc::run_as(&mut cmd, owner);
        cmd.arg("--config").arg(&config).args(args);
        run_checked(&mut cmd, &format!("lifeboat {}", args.join(" ")))
    };

    step(1, "create an encrypted repository");
    print!("{}", lifeboat(&["init"])?);

    step(
        2,
        "create a scratch cluster archiving with `lifeboat wal-push %p`",
    );
    let archive_command = format!(
        "{} --config {} wal-push %p",
        exe.display(),
        config.display()
    );
    let primary = new_cluster(
        root,
        "primary",
        &format!("archive_mode = on\narchive_command = '{archive_command}'\n"),
    )?;
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

    step(
        3,
        "take a copy of the data directory (pg_basebackup -X none: its WAL must come from the archive)",
    );
    let copy_data = root.join("restored");
    let mut basebackup = primary.command("pg_basebackup");
    basebackup
        .args(["-X", "none", "-c", "fast", "-D"])
        .arg(&copy_data);
    run_checked(&mut basebackup, "pg_basebackup")?;

    step(
        4,
        &format!(
            "write orders for {} seconds, switching WAL now and then",
            options.seconds
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut committed = 0u64;
    while Instant::now() < deadline {
        committed += 1;
        psql(
            &primary,
            &format!("insert into orders(id) values ({committed})"),
        )?;
        if committed.is_multiple_of(10) {
            psql(&primary, "select pg_switch_wal()")?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last_commit = psql(&primary, "select max(created_at) from orders")?;
    let last_segment = psql(&primary, "select pg_walfile_name(pg_switch_wal())")?;
    println!("    {committed} orders committed, the last at {last_commit}");
    primary
        .wait_archived(&last_segment, Duration::from_secs(120))
        .map_err(cluster_failure)?;
    println!("    WAL archived up to {last_segment}");
    print!("{}", lifeboat(&["info"])?);

    step(
        5,
        "lose the primary (stop it) and recover the copy with `lifeboat wal-fetch %f %p`",
    );
    primary.stop(StopMode::Immediate).map_err(cluster_failure)?;
    let restore_command = format!(
        "{} --config {} wal-fetch %f %p",
        exe.display(),
        config.display()
    );
    let port = free_port()?;
    fs::write(copy_data.join("recovery.signal"), "").map_err(io("cannot write recovery.signal"))?;
    let mut conf = fs::read_to_string(copy_data.join("postgresql.conf"))
        .map_err(io("cannot read postgresql.conf"))?;
    conf.push_str(&format!(
        "\nport = {port}\narchive_mode = off\nrestore_command = '{restore_command}'\n"
    ));
    fs::write(copy_data.join("postgresql.conf"), conf)
        .map_err(io("cannot write postgresql.conf"))?;
    if let Some(owner) = owner {
        pgc::chown_recursive(&copy_data, owner).map_err(cluster_failure)?;
    }
    let restored = LocalCluster::existing(&copy_data, port, &primary.socket_dir, owner.cloned())
        .map_err(cluster_failure)?
        .with_log_file(root.join("restored.log"));
    guard.clusters.push(restored.clone());
    let started = Instant::now();
    restored
        .start(Duration::from_secs(300))
        .map_err(cluster_failure)?;
    while psql(&restored, "select pg_is_in_recovery()")? == "t" {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(Failure::new(
                Exit::Internal,
                format!(
                    "recovery did not finish in 5 minutes:\n{}",
                    restored.log_tail(20)
                ),
                None,
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovery = started.elapsed();

    step(6, "check the recovered cluster");
    let found = psql(
        &restored,
        "select count(*) || '|' || coalesce(max(created_at)::text, '') from orders",
    )?;
    let (count, newest) = found.split_once('|').unwrap_or((found.as_str(), ""));
    let count: u64 = count.parse().unwrap_or(0);
    println!("    recovered {count} of {committed} committed orders; newest {newest}");
    println!(
        "    recovery time {:.1} s; data-loss window: {}",
        recovery.as_secs_f64(),
        if count == committed && newest == last_commit {
            "none (every committed row is back)".to_string()
        } else {
            format!("{} rows missing", committed.saturating_sub(count))
        }
    );
    restored.stop(StopMode::Fast).map_err(cluster_failure)?;
    if count != committed || newest != last_commit {
        return Err(Failure::new(
            Exit::Internal,
            "the recovered cluster does not hold every committed row".to_string(),
            Some(format!("see {}", restored.log_file().display())),
        ));
    }
    println!("\ndemo passed: every committed row came back from the archive");
    Ok(Exit::Success)
}

/// Run `cmd`; its stdout on success, its stderr in the failure otherwise.
fn run_checked(cmd: &mut Command, what: &str) -> Result<String, Failure> {
    let out = cmd
        .output()
        .map_err(|e| Failure::new(Exit::LocalIo, format!("cannot run {what}: {e}"), None))?;
    if !out.status.success() {
        return Err(Failure::new(
            Exit::Internal,
            format!(
                "`{what}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            None,
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
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

fn free_port() -> Result<u16, Failure> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            Failure::new(
                Exit::LocalIo,
                format!("cannot find a free port on 127.0.0.1: {e}"),
                None,
            )
        })
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

fn cluster_failure(e: pgc::ClusterError) -> Failure {
    Failure::new(Exit::Internal, e.to_string(), None)
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
            let _ = c.stop(StopMode::Immediate);
        }
        if self.keep
            && let Some(dir) = self.dir.take()
        {
            let _: PathBuf = dir.keep();
        }
    }
}
