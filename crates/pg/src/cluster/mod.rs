//! Control of local PostgreSQL clusters: finding the server programs, `initdb`, start, stop,
//! simulated crashes, and running `psql`/`pgbench` against a cluster.
//!
//! This module owns everything Lifeboat does to a PostgreSQL server it runs itself: the `lifeboat
//! demo` command, restore drills and the test harness all go through [`LocalCluster`]. PostgreSQL
//! refuses to run as root, so when we are root every server program runs as the `postgres` OS user
//! ([`cluster_owner`]) in directories that user owns; otherwise programs run as ourselves. Clusters
//! listen on `127.0.0.1` and on a Unix socket in a directory of their own, and keep `fsync` on,
//! because they exist to prove durability.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, User, geteuid};

/// The OS user and database superuser PostgreSQL runs as when we are root.
pub const POSTGRES_USER: &str = "postgres";

/// Longest Unix socket path the kernel accepts (`sizeof(sun_path)` minus the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Everything that can go wrong controlling a local cluster. Messages say what happened, why, and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "could not find the PostgreSQL server programs (looked for initdb in: {}): install them \
         (Debian/Ubuntu: `apt-get install postgresql`; RHEL/Fedora: `dnf install postgresqlNN-server`) \
         or put the matching pg_config on PATH",
        looked.join(", ")
    )]
    BinariesNotFound { looked: Vec<String> },

    /// No server programs of the PostgreSQL major a data directory (or backup) needs.
    #[error(
        "the server programs of PostgreSQL {major} (postgres, pg_ctl) are not installed here; \
         looked in: {}",
        looked.join("; ")
    )]
    MajorNotFound { major: u32, looked: Vec<String> },

    #[error(
        "running as root and there is no `postgres` OS user: PostgreSQL refuses to run as root; \
         create one (useradd -r postgres) or run as an ordinary user"
    )]
    NoPostgresUser,

    #[error(
        "could not look up the `{name}` OS user: {source}; check /etc/passwd and NSS configuration"
    )]
    UserLookup { name: String, source: nix::Error },

    /// A file-system or process operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },

    /// A PostgreSQL program could not be started at all.
    #[error(
        "could not run {}: {source}; check that PostgreSQL is installed completely in {}",
        program.display(),
        program.parent().unwrap_or(Path::new("")).display()
    )]
    Spawn { program: PathBuf, source: io::Error },

    /// A PostgreSQL program ran and failed; `detail` carries its own words and, for the server,
    /// the last lines of its log.
    #[error("{program} failed ({status}): {detail}")]
    Failed {
        program: String,
        status: String,
        detail: String,
    },

    /// `postgres` did not start; `detail` is what pg_ctl said and the tail of the server log.
    #[error("{0}")]
    Start(String),

    /// Something did not happen in time.
    #[error("{what} within {}s: {detail}", after.as_secs_f64())]
    Timeout {
        what: String,
        after: Duration,
        detail: String,
    },

    /// A query sent through psql failed.
    #[error("query failed on port {port}: {sql}: {stderr}")]
    Sql {
        port: u16,
        sql: String,
        stderr: String,
    },

    /// The request cannot work as given (bad path, wrong state); the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

// ---------------------------------------------------------------------------------------------
// Finding the server programs
// ---------------------------------------------------------------------------------------------

/// The directory holding `initdb`, `postgres`, `pg_ctl`, `psql` and friends.
///
/// Looks, in order, at `pg_config --bindir` (if `initdb` is there), the highest-versioned
/// `/usr/lib/postgresql/*/bin` (Debian, Ubuntu), then the highest `/usr/pgsql-*/bin` (RHEL and
/// derivatives). The error lists every place it looked.
pub fn pg_bindir() -> Result<PathBuf> {
    let mut looked = Vec::new();

    match Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
            looked.push(format!("{} (from pg_config --bindir)", dir.display()));
        }
        Ok(out) => looked.push(format!("pg_config --bindir (failed: {})", out.status)),
        Err(e) => looked.push(format!("pg_config --bindir (not runnable: {e})")),
    }

    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
    ] {
        if let Some(dir) = highest_versioned_bindir(Path::new(parent), prefix, suffix) {
            return Ok(dir);
        }
        looked.push(format!("{parent}/{prefix}*/{suffix}"));
    }

    Err(ClusterError::BinariesNotFound { looked })
}

/// Among `parent/<prefix><version>/<suffix>` directories containing `initdb`, the one with the
/// highest version (`15` > `9.6`).
fn highest_versioned_bindir(parent: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let entries = fs::read_dir(parent).ok()?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = parse_version(name.to_str()?.strip_prefix(prefix)?)?;
            let bindir = entry.path().join(suffix);
            bindir.join("initdb").is_file().then_some((version, bindir))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, dir)| dir)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else is not a version.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    if s.is_empty() {
        return None;
    }
    s.split('.').map(|part| part.parse().ok()).collect()
}

/// The major version in a PostgreSQL version text: `"13"` (PG_VERSION), `"13.23"`, `"18beta1"`,
/// `"17devel"`, `"15.18 (Debian 15.18-0+deb12u1)"` → 13, 13, 18, 17, 15. From PostgreSQL 10 on a
/// major is one number; older ones (`"9.6"`) are not supported by Lifeboat and give `None`.
pub fn parse_major(text: &str) -> Option<u32> {
    let digits: String = text
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&major| major >= 10)
}

/// The major version of a `server_version_num` (150004 → 15).
pub fn major_of_version_num(num: u32) -> u32 {
    num / 10_000
}

/// The major version a data directory was made by, from its `PG_VERSION` file.
pub fn data_dir_major(datadir: &Path) -> Result<u32> {
    let path = datadir.join("PG_VERSION");
    let text =
        fs::read_to_string(&path).map_err(io_err(format!("could not read {}", path.display())))?;
    parse_major(&text).ok_or_else(|| {
        ClusterError::Invalid(format!(
            "{} says {:?}, which is not a PostgreSQL major version (10 or later)",
            path.display(),
            text.trim()
        ))
    })
}

/// The major version of the server programs in `bindir`, from `postgres --version` (which also
/// proves that they run here: a missing shared library shows up now, not at the first start).
pub fn bindir_major(bindir: &Path) -> Result<u32> {
    let program = bindir.join("postgres");
    let out = run(Command::new(&program).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(ClusterError::Failed {
            program: format!("{} --version", program.display()),
            status: out.status.to_string(),
            detail: said(&out),
        });
    }
    text.split_once("(PostgreSQL)")
        .and_then(|(_, version)| parse_major(version))
        .ok_or_else(|| {
            ClusterError::Invalid(format!(
                "{} --version printed {:?}, which names no PostgreSQL version",
                program.display(),
                text.trim()
            ))
        })
}

/// The directory holding the server programs of PostgreSQL `major`: a data directory can only
/// be run by the `postgres` and `pg_ctl` of its own major. Looks, in order, at
/// `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), `/usr/pgsql-<major>/bin` (RHEL and
/// derivatives), `pg_config --bindir`, and the directories on `PATH` that hold `postgres`, and
/// takes the first whose `postgres --version` is of that major. The error lists every place it
/// looked and what it found there.
pub fn bindir_for_major(major: u32) -> Result<PathBuf> {
    let mut candidates = vec![
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ];
    if let Some(dir) = pg_config_bindir() {
        candidates.push(dir);
    }
    candidates.extend(path_dirs_with("postgres"));
    find_major_bindir(major, &candidates)
}

/// The first of `candidates` whose server programs are of `major`.
fn find_major_bindir(major: u32, candidates: &[PathBuf]) -> Result<PathBuf> {
    let mut looked: Vec<String> = Vec::new();
    for dir in candidates {
        let shown = dir.display().to_string();
        if looked.iter().any(|l| l.starts_with(&format!("{shown} ("))) {
            continue;
        }
        if !dir.join("postgres").is_file() || !dir.join("pg_ctl").is_file() {
            looked.push(format!("{shown} (no postgres and pg_ctl there)"));
            continue;
        }
        match bindir_major(dir) {
            Ok(found) if found == major => return Ok(dir.clone()),
            Ok(found) => looked.push(format!("{shown} (PostgreSQL {found})")),
            Err(e) => looked.push(format!("{shown} (its postgres does not run: {e})")),
        }
    }
    Err(ClusterError::MajorNotFound { major, looked })
}

/// `pg_config --bindir`, when pg_config runs.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The directories on `PATH` holding a file `program`, in `PATH` order.
fn path_dirs_with(program: &str) -> Vec<PathBuf> {
    let Some(path) = std::env::var_os("PATH") else {
        return Vec::new();
    };
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute() && dir.join(program).is_file())
        .collect()
}

/// Programs that must come from the same major as the data directory they work on: they read or
/// write its files directly. Every other program (psql, pg_isready, pgbench, pg_amcheck,
/// pg_basebackup, pg_dump ...) is a client, and a newer client talks to an older server.
const SERVER_PROGRAMS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "postmaster",
    "pg_checksums",
    "pg_controldata",
    "pg_resetwal",
    "pg_rewind",
    "pg_upgrade",
    "pg_waldump",
];

/// Directories where client programs are looked for when a cluster's own bin directory lacks
/// one (a server-only install, or a major that predates the program, like pg_amcheck before
/// 14): every versioned bin directory, newest first, then `pg_config --bindir`, then `PATH`.
/// Found once per process.
fn client_dirs() -> &'static [PathBuf] {
    static DIRS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs = Vec::new();
        for (parent, prefix, suffix) in [
            ("/usr/lib/postgresql", "", "bin"),
            ("/usr", "pgsql-", "bin"),
        ] {
            dirs.extend(versioned_bindirs(Path::new(parent), prefix, suffix));
        }
        dirs.extend(pg_config_bindir());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
        }
        dirs
    })
}

/// `parent/<prefix><version>/<suffix>` directories, highest version first.
fn versioned_bindirs(parent: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = parse_version(name.to_str()?.strip_prefix(prefix)?)?;
            let dir = entry.path().join(suffix);
            dir.is_dir().then_some((version, dir))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// Where `program` is run from for a cluster whose server programs are in `bindir`: a server
/// program always from `bindir`; a client program from `bindir` when it is there, else from the
/// first of [`client_dirs`] that has it.
pub fn program_path(bindir: &Path, program: &str) -> PathBuf {
    let own = bindir.join(program);
    if SERVER_PROGRAMS.contains(&program) || own.is_file() {
        return own;
    }
    client_dirs()
        .iter()
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or(own)
}

// ---------------------------------------------------------------------------------------------
// The OS user clusters run as
// ---------------------------------------------------------------------------------------------

/// An OS user that server programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Who local clusters run as: `None` means ourselves; when we are root it is the `postgres` OS
/// user, because PostgreSQL refuses to run as root.
pub fn cluster_owner() -> Result<Option<OsUser>> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name(POSTGRES_USER) {
        Ok(Some(user)) => Ok(Some(OsUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(ClusterError::NoPostgresUser),
        Err(source) => Err(ClusterError::UserLookup {
            name: POSTGRES_USER.to_owned(),
            source,
        }),
    }
}

/// Make `cmd` run as `owner` (when given); a no-op for `None`.
pub fn run_as<'a>(cmd: &'a mut Command, owner: Option<&OsUser>) -> &'a mut Command {
    if let Some(owner) = owner {
        cmd.uid(owner.uid).gid(owner.gid);
    }
    cmd
}

/// Give `path` and everything below it to `owner`. Symbolic links are re-owned themselves, never
/// followed.
pub fn chown_recursive(path: &Path, owner: &OsUser) -> Result<()> {
    let meta = fs::symlink_metadata(path)
        .map_err(io_err(format!("could not inspect {}", path.display())))?;
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).map_err(io_err(format!(
        "could not give {} to OS user {}",
        path.display(),
        owner.name
    )))?;
    if meta.is_dir() {
        let entries =
            fs::read_dir(path).map_err(io_err(format!("could not list {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("could not list {}", path.display())))?;
            chown_recursive(&entry.path(), owner)?;
        }
    }
    Ok(())
}

/// Whether `owner` (or we, for `None`) may create files in `dir`, judged from its mode bits.
fn owner_can_write(dir: &Path, owner: Option<&OsUser>) -> bool {
    let Some(owner) = owner else { return true };
    let Ok(meta) = fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == owner.uid {
        mode & 0o300 == 0o300
    } else if meta.gid() == owner.gid {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

/// Create `dir` (and parents) if missing; a directory we create is given to `owner`.
fn ensure_owned_dir(dir: &Path, owner: Option<&OsUser>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(format!(
        "could not create directory {}",
        dir.display()
    )))?;
    if let Some(owner) = owner {
        chown_recursive(dir, owner)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Whether process `pid` exists and has not exited (a zombie waiting to be reaped counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    pid_state(pid) == PidState::Alive
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidState {
    Gone,
    /// Exited but not reaped: still in the process table, so `kill(pid, 0)` succeeds.
    Zombie,
    Alive,
}

fn pid_state(pid: u32) -> PidState {
    let Ok(raw) = i32::try_from(pid) else {
        return PidState::Gone;
    };
    if raw <= 0 {
        return PidState::Gone;
    }
    match signal::kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return PidState::Gone,
    }
    match proc_stat(pid) {
        Some(('Z', _)) => PidState::Zombie,
        _ => PidState::Alive,
    }
}

/// State letter and parent pid of `pid` from `/proc/<pid>/stat` (Linux only).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." where comm may contain anything, including ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Living children of `parent`, from `/proc` (empty where there is no `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(
            |&pid| matches!(proc_stat(pid), Some((state, ppid)) if ppid == parent && state != 'Z'),
        )
        .collect()
}

fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid)
        .map_err(|_| ClusterError::Invalid(format!("process id {pid} is out of range")))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(ClusterError::Io {
            context: format!("could not send {sig} to process {pid}"),
            source: io::Error::from(e),
        }),
    }
}

/// Run `cmd` to completion with stdin closed and output captured.
fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: PathBuf::from(cmd.get_program()),
            source,
        })
}

/// What a failed program said: its stderr, else its stdout.
fn said(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        stderr
    }
}

/// Quote `s` for a POSIX shell (pg_ctl passes `-o` options through `/bin/sh`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quote `s` as a libpq conninfo value when it needs it.
fn conninfo_quote(s: &str) -> String {
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

/// How to stop a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, shut down cleanly.
    Fast,
    /// Stop every process at once, without a checkpoint; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_pg_ctl(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// How [`LocalCluster::initdb`] makes a new cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// `initdb --data-checksums`. Default: on.
    pub data_checksums: bool,
    /// `initdb --wal-segsize` in MB (a power of two, 1–1024). Default: PostgreSQL's 16 MB.
    pub wal_segsize_mb: Option<u32>,
    /// TCP port on 127.0.0.1. Default: 5432.
    pub port: u16,
    /// Directory for the Unix socket (and, by default, the server log). Empty (the default) means
    /// the data directory's parent. Created if missing.
    pub socket_dir: PathBuf,
    /// Appended verbatim to postgresql.conf after our own settings, so it can override them.
    pub extra_conf: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            data_checksums: true,
            wal_segsize_mb: None,
            port: 5432,
            socket_dir: PathBuf::new(),
            extra_conf: String::new(),
        }
    }
}

/// A PostgreSQL cluster on this machine that we control through its data directory.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    /// Absolute path of the data directory.
    pub datadir: PathBuf,
    pub port: u16,
    /// Where the server puts its Unix socket; clients connect through it.
    pub socket_dir: PathBuf,
    /// Where `initdb`, `pg_ctl`, `psql` ... live.
    pub bindir: PathBuf,
    /// Who server programs run as (`None`: ourselves).
    pub owner: Option<OsUser>,
    log_file: PathBuf,
}

impl LocalCluster {
    /// Create a new cluster in `datadir` (missing or empty) with `initdb`, and configure it: port,
    /// `listen_addresses='127.0.0.1'`, its socket directory, small memory settings, `fsync` on,
    /// `wal_level=replica`, `max_wal_senders=4`, then `opts.extra_conf`. The server is not started.
    pub fn initdb(datadir: &Path, opts: &InitOptions) -> Result<Self> {
        Self::initdb_in(&pg_bindir()?, datadir, opts)
    }

    /// [`initdb`](Self::initdb) with the server programs in `bindir` (another major than the
    /// default one, say); client programs missing there come from [`program_path`].
    pub fn initdb_in(bindir: &Path, datadir: &Path, opts: &InitOptions) -> Result<Self> {
        let bindir = bindir.to_path_buf();
        let owner = cluster_owner()?;
        let datadir = absolute(datadir)?;
        let socket_dir = if opts.socket_dir.as_os_str().is_empty() {
            datadir.parent().map(Path::to_path_buf).ok_or_else(|| {
                ClusterError::Invalid(format!(
                    "data directory {} has no parent to put the socket in: pass a socket directory",
                    datadir.display()
                ))
            })?
        } else {
            absolute(&opts.socket_dir)?
        };

        // initdb accepts an existing empty directory; making it ourselves lets the owner be
        // someone who could not create it. Never touch a directory that holds anything.
        if let Ok(mut entries) = fs::read_dir(&datadir)
            && entries.next().is_some()
        {
            return Err(ClusterError::Invalid(format!(
                "data directory {} exists and is not empty: initdb needs a missing or empty                  directory; remove it or choose another",
                datadir.display()
            )));
        }
        ensure_owned_dir(&datadir, owner.as_ref())?;
        if let Some(owner) = &owner {
            chown_recursive(&datadir, owner)?;
        }
        fs::set_permissions(&datadir, fs::Permissions::from_mode(0o700)).map_err(io_err(
            format!("could not set mode 0700 on {}", datadir.display()),
        ))?;
        ensure_owned_dir(&socket_dir, owner.as_ref())?;

        let cluster = Self::assemble(datadir, opts.port, socket_dir, bindir, owner);
        cluster.check_socket_dir()?;

        let mut cmd = cluster.command("initdb");
        cmd.arg("-D").arg(&cluster.datadir).args([
            "-U",
            POSTGRES_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        if let Some(mb) = opts.wal_segsize_mb {
            cmd.arg(format!("--wal-segsize={mb}"));
        }
        let out = run(&mut cmd)?;
        if !out.status.success() {
            let mut detail = said(&out);
            if detail.contains("Permission denied")
                && let Some(owner) = &cluster.owner
            {
                let _ = write!(
                    detail,
                    "; the `{}` OS user needs search (x) permission on every parent directory \
                     of {}: move it elsewhere or open up the parents",
                    owner.name,
                    cluster.datadir.display()
                );
            }
            return Err(ClusterError::Failed {
                program: "initdb".into(),
                status: out.status.to_string(),
                detail,
            });
        }

        let mut conf = String::from("\n# Added by Lifeboat.\n");
        let _ = writeln!(conf, "port = {}", opts.port);
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        let _ = writeln!(
            conf,
            "unix_socket_directories = {}",
            crate::conf::quote_value(&cluster.socket_dir.to_string_lossy())
        );
        conf.push_str(concat!(
            "shared_buffers = 16MB\n",
            "max_connections = 30\n",
            "fsync = on\n",
            "synchronous_commit = on\n",
            "full_page_writes = on\n",
            "wal_level = replica\n",
            "max_wal_senders = 4\n",
            "max_replication_slots = 4\n",
        ));
        if !opts.extra_conf.is_empty() {
            conf.push_str(&opts.extra_conf);
        }
        cluster.append_conf(&conf)?;
        Ok(cluster)
    }

    /// A cluster whose data directory was made another way (a restore, pg_basebackup). `port`
    /// and `socket_dir` are given to the server on the command line at start, so they hold
    /// whatever its postgresql.conf says. Its server programs are those of the major its
    /// `PG_VERSION` names ([`bindir_for_major`]; an error names the major and where it looked
    /// when that major is not installed); without a `PG_VERSION` (not made yet), [`pg_bindir`].
    /// [`existing_in`](Self::existing_in) takes them from a given directory.
    pub fn existing(
        datadir: &Path,
        port: u16,
        socket_dir: &Path,
        owner: Option<OsUser>,
    ) -> Result<Self> {
        // A PG_VERSION that cannot be read is left to the server to complain about.
        let bindir = match data_dir_major(datadir) {
            Ok(major) => bindir_for_major(major)?,
            Err(_) => pg_bindir()?,
        };
        Self::existing_in(&bindir, datadir, port, socket_dir, owner)
    }

    /// [`existing`](Self::existing) with the server programs in `bindir`, which must be of the
    /// data directory's major (nothing is searched).
    pub fn existing_in(
        bindir: &Path,
        datadir: &Path,
        port: u16,
        socket_dir: &Path,
        owner: Option<OsUser>,
    ) -> Result<Self> {
        Ok(Self::assemble(
            absolute(datadir)?,
            port,
            absolute(socket_dir)?,
            bindir.to_path_buf(),
            owner,
        ))
    }

    fn assemble(
        datadir: PathBuf,
        port: u16,
        socket_dir: PathBuf,
        bindir: PathBuf,
        owner: Option<OsUser>,
    ) -> Self {
        let log_file = socket_dir.join(format!("postgres-{port}.log"));
        Self {
            datadir,
            port,
            socket_dir,
            bindir,
            owner,
            log_file,
        }
    }

    /// Write the server log to `path` instead of `<socket_dir>/postgres-<port>.log`. The owner
    /// must be able to create or append to it.
    pub fn with_log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = path.into();
        self
    }

    /// The server log (written by `pg_ctl -l`).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Append `text` (plus a newline) to postgresql.conf. Takes effect at the next start or reload.
    pub fn append_conf(&self, text: &str) -> Result<()> {
        let path = self.datadir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(format!(
                "could not open {} to append settings",
                path.display()
            )))?;
        let mut text = text.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(format!(
                "could not append settings to {}",
                path.display()
            )))
    }

    /// A program from the PostgreSQL bin directory (a client program missing there from another
    /// one, see [`program_path`]), set up to run as the cluster's owner, with PGHOST, PGPORT,
    /// PGUSER, PGDATABASE and PGDATA pointing at this cluster. When it runs as another user its
    /// working directory is the socket directory (ours may be unreadable to it), so give it
    /// absolute paths.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program_path(&self.bindir, program));
        run_as(&mut cmd, self.owner.as_ref());
        if self.owner.is_some() {
            cmd.current_dir(&self.socket_dir);
        }
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", POSTGRES_USER)
            .env("PGDATABASE", "postgres")
            .env("PGDATA", &self.datadir)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env_remove("PGPASSWORD");
        cmd
    }

    /// libpq connection string for this cluster, over its Unix socket.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={POSTGRES_USER} dbname=postgres",
            conninfo_quote(&self.socket_dir.to_string_lossy()),
            self.port
        )
    }

    /// Pid of the postmaster according to `postmaster.pid` (it may be stale after a crash).
    pub fn postmaster_pid(&self) -> Option<u32> {
        read_lock_pid(&self.datadir.join("postmaster.pid"))
    }

    /// Whether a postmaster is running on this data directory.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(pid_alive)
    }

    /// Start the server and wait until it accepts connections (`pg_ctl -w`). On failure the error
    /// carries the last lines of the server log. If it timed out the server may still be coming
    /// up; [`stop`](Self::stop) it if you give up on it.
    pub fn start(&self, timeout: Duration) -> Result<()> {
        if let Some(pid) = self.postmaster_pid().filter(|&pid| pid_alive(pid)) {
            return Err(ClusterError::Invalid(format!(
                "postgres is already running on {} (pid {pid}): stop it before starting it again",
                self.datadir.display()
            )));
        }
        self.check_socket_dir()?;
        self.remove_locks_of_unreaped_postmaster()?;
        let secs = (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1);
        let server_opts = format!(
            "-p {} -k {}",
            self.port,
            shell_quote(&self.socket_dir.to_string_lossy())
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &secs.to_string(), "-o", &server_opts, "start"]);
        let out = run(&mut cmd)?;
        if out.status.success() {
            return Ok(());
        }
        let tail = self.log_tail(30);
        let what = said(&out);
        if what.contains("did not start in time") {
            Err(ClusterError::Timeout {
                what: "postgres did not start".into(),
                after: Duration::from_secs(secs),
                detail: format!("last lines of {}:\n{tail}", self.log_file.display()),
            })
        } else {
            Err(ClusterError::Start(format!(
                "postgres on {} failed to start: {what}\nlast lines of {}:\n{tail}",
                self.datadir.display(),
                self.log_file.display()
            )))
        }
    }

    /// Stop the server and wait until it is gone. Stopping a server that is not running is not an
    /// error.
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.datadir)
            .args(["-m", mode.as_pg_ctl(), "-w", "-t", "120", "stop"]);
        let out = run(&mut cmd)?;
        if out.status.success() || !self.is_running() {
            return Ok(());
        }
        Err(ClusterError::Failed {
            program: "pg_ctl stop".into(),
            status: out.status.to_string(),
            detail: format!(
                "{}\nlast lines of {}:\n{}\nif it is stuck, use kill9 and start it again to recover",
                said(&out),
                self.log_file.display(),
                self.log_tail(20)
            ),
        })
    }

    /// Simulate a crash: SIGKILL the postmaster and every server process it started, giving none
    /// of them a chance to flush anything, and wait until they are gone. The next start runs crash
    /// recovery. Finding the server processes needs Linux's `/proc`; elsewhere only the postmaster
    /// is killed and its children exit on their own when they notice.
    pub fn kill9(&self) -> Result<()> {
        let Some(pid) = self.postmaster_pid().filter(|&pid| pid_alive(pid)) else {
            return Err(ClusterError::Invalid(format!(
                "postgres is not running on {}: there is nothing to kill; start it first",
                self.datadir.display()
            )));
        };
        // Freeze the postmaster so it cannot start a child between our listing and the kill.
        send_signal(pid, Signal::SIGSTOP)?;
        let children = children_of(pid);
        send_signal(pid, Signal::SIGKILL)?;
        for &child in &children {
            send_signal(child, Signal::SIGKILL)?;
        }

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive: Vec<u32> = std::iter::once(pid)
                .chain(children.iter().copied())
                .filter(|&p| pid_alive(p))
                .collect();
            if alive.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: "server processes did not exit after SIGKILL".into(),
                    after: Duration::from_secs(30),
                    detail: format!(
                        "still alive: {alive:?}; the system may be overloaded or the processes stuck in the kernel"
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the server accepts connections (`pg_isready`), e.g. after a start without
    /// waiting or while a standby reaches consistency.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut cmd = self.command("pg_isready");
            cmd.args(["-t", "2"]);
            let out = run(&mut cmd)?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("postgres on port {} did not accept connections", self.port),
                    after: timeout,
                    detail: format!(
                        "pg_isready says: {}\nlast lines of {}:\n{}",
                        said(&out),
                        self.log_file.display(),
                        self.log_tail(20)
                    ),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of the server log, or a note saying why there are none.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_file) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(no server log at {}: {e})", self.log_file.display()),
        }
    }

    /// Wait until `pg_stat_archiver.last_archived_wal` reaches `wal_name` (compared as names, which
    /// sort in WAL order). The error reports the archiver's failures, if any.
    pub fn wait_archived(&self, wal_name: &str, timeout: Duration) -> Result<()> {
        let mode = self.psql("show archive_mode")?;
        if mode == "off" {
            return Err(ClusterError::Invalid(format!(
                "cannot wait for {wal_name} to be archived: archive_mode is off; start the cluster with \
                 archive_mode = on and an archive_command (or archive_library)"
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.psql(
                "select coalesce(last_archived_wal, ''), archived_count, failed_count, \
                 coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') from pg_stat_archiver",
            )?;
            let fields: Vec<&str> = row.split('|').collect();
            let [last, archived, failed, last_failed, failed_at] = fields[..] else {
                return Err(ClusterError::Invalid(format!(
                    "unexpected pg_stat_archiver row {row:?}"
                )));
            };
            if !last.is_empty() && last >= wal_name {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let failures = if failed == "0" {
                    "no failed attempts".to_owned()
                } else {
                    format!("{failed} failed attempts, last for {last_failed} at {failed_at}")
                };
                return Err(ClusterError::Timeout {
                    what: format!("WAL segment {wal_name} was not archived"),
                    after: timeout,
                    detail: format!(
                        "last archived {last:?} ({archived} archived, {failures}); check archive_command and the server log:\n{}",
                        self.log_tail(20)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `sql` in the `postgres` database; returns psql's unaligned, tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_db("postgres", sql)
    }

    /// Run `sql` in database `db`; returns psql's unaligned, tuples-only output, trimmed.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                POSTGRES_USER,
                "-d",
                db,
                "-c",
                sql,
            ]);
        let out = run(&mut cmd)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        let mut stderr = said(&out);
        if stderr.contains("No such file or directory") || stderr.contains("Connection refused") {
            stderr.push_str("; is the server running? (start it first)");
        }
        Err(ClusterError::Sql {
            port: self.port,
            sql: sql.to_owned(),
            stderr,
        })
    }

    /// Run `pgbench` with `args` against this cluster; returns its stdout.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command("pgbench");
        cmd.args(args);
        let out = run(&mut cmd)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(ClusterError::Failed {
            program: format!("pgbench {}", args.join(" ")),
            status: out.status.to_string(),
            detail: said(&out),
        })
    }

    /// After a crash the lock files (`postmaster.pid`, and `.s.PGSQL.<port>.lock` by the socket)
    /// stay behind. PostgreSQL ignores them when the pid in them is gone, but takes an exited,
    /// unreaped postmaster (a zombie: containers whose init does not reap orphans keep them
    /// forever) for a running one and refuses to start. A zombie holds nothing, so its lock files
    /// can go; shared memory still in use by surviving children is checked by PostgreSQL itself.
    fn remove_locks_of_unreaped_postmaster(&self) -> Result<()> {
        let locks = [
            self.datadir.join("postmaster.pid"),
            self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)),
        ];
        for lock in locks {
            let Some(pid) = read_lock_pid(&lock) else {
                continue;
            };
            if pid_state(pid) != PidState::Zombie {
                continue;
            }
            match fs::remove_file(&lock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ClusterError::Io {
                        context: format!(
                            "could not remove {}, left by postmaster {pid} which has exited; remove it by hand",
                            lock.display()
                        ),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The Unix socket must fit in `sun_path` and its directory must be writable by the owner.
    fn check_socket_dir(&self) -> Result<()> {
        let socket = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ClusterError::Invalid(format!(
                "socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} Unix sockets allow: \
                 use a shorter socket directory",
                socket.display()
            )));
        }
        if !owner_can_write(&self.socket_dir, self.owner.as_ref()) {
            let who = self.owner.as_ref().map_or("we", |o| o.name.as_str());
            return Err(ClusterError::Invalid(format!(
                "socket directory {} is missing or not writable by {who}: the server creates its socket \
                 and lock file there; create it and give it to {who} (chown), or use another directory",
                self.socket_dir.display()
            )));
        }
        Ok(())
    }
}

/// The pid on the first line of a PostgreSQL lock file.
fn read_lock_pid(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(io_err(format!(
        "could not make {} absolute",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(parse_version("15") > parse_version("9.6"));
        assert!(parse_version("10") > parse_version("9"));
        assert_eq!(parse_version("main"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn majors_parse_from_every_form_postgresql_writes() {
        assert_eq!(parse_major("13\n"), Some(13));
        assert_eq!(parse_major(" 13.23"), Some(13));
        assert_eq!(parse_major("18beta1"), Some(18));
        assert_eq!(parse_major("17devel"), Some(17));
        assert_eq!(parse_major("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(
            parse_major("9.6"),
            None,
            "two-number majors are not supported"
        );
        assert_eq!(parse_major("main"), None);
        assert_eq!(parse_major(""), None);
        assert_eq!(major_of_version_num(130_023), 13);
        assert_eq!(major_of_version_num(180_004), 18);
    }

    /// A bin directory whose `postgres --version` says `version` (and a `pg_ctl`).
    fn fake_bindir(root: &Path, name: &str, version: &str) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        let postgres = dir.join("postgres");
        fs::write(
            &postgres,
            format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        fs::set_permissions(&postgres, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("pg_ctl"), "").unwrap();
        dir
    }

    #[test]
    fn the_bindir_of_a_major_is_found_and_its_absence_explained() {
        let root = tempfile::tempdir().unwrap();
        let v15 = fake_bindir(root.path(), "15", "15.18 (Debian 15.18-0+deb12u1)");
        let v13 = fake_bindir(root.path(), "13", "13.23");
        let empty = root.path().join("missing");
        let broken = root.path().join("broken");
        fs::create_dir_all(&broken).unwrap();
        fs::write(broken.join("postgres"), "").unwrap();
        fs::write(broken.join("pg_ctl"), "").unwrap();
        let all = [empty.clone(), broken.clone(), v15.clone(), v13.clone()];

        assert_eq!(find_major_bindir(13, &all).unwrap(), v13);
        assert_eq!(find_major_bindir(15, &all).unwrap(), v15);
        assert_eq!(bindir_major(&v15).unwrap(), 15);

        let err = find_major_bindir(14, &all).unwrap_err();
        assert!(matches!(err, ClusterError::MajorNotFound { major: 14, .. }));
        let text = err.to_string();
        assert!(text.contains("PostgreSQL 14"), "{text}");
        for (dir, said) in [
            (&empty, "no postgres and pg_ctl there"),
            (&broken, "its postgres does not run"),
            (&v15, "PostgreSQL 15"),
            (&v13, "PostgreSQL 13"),
        ] {
            assert!(
                text.contains(&format!("{} ({said}", dir.display())),
                "{said}: {text}"
            );
        }
    }

    #[test]
    fn server_programs_never_come_from_another_major() {
        let root = tempfile::tempdir().unwrap();
        let bindir = fake_bindir(root.path(), "13", "13.23");
        // Server programs: from the cluster's own directory, present or not.
        assert_eq!(program_path(&bindir, "postgres"), bindir.join("postgres"));
        assert_eq!(
            program_path(&bindir, "pg_checksums"),
            bindir.join("pg_checksums")
        );
        // A client program it lacks: from wherever one is installed (the test machine has psql),
        // never a path that does not exist when there is one.
        let psql = program_path(&bindir, "psql");
        if client_dirs().iter().any(|d| d.join("psql").is_file()) {
            assert!(psql.is_file(), "{}", psql.display());
            assert_ne!(psql.parent(), Some(bindir.as_path()));
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a'b"), r"'/tmp/a'\''b'");
        assert_eq!(conninfo_quote("/tmp/s"), "/tmp/s");
        assert_eq!(conninfo_quote("/tmp/a b"), "'/tmp/a b'");
    }
}
