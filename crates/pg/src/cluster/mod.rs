//! Control of local PostgreSQL clusters: `initdb`, start, stop, simulated crashes, and running
//! `psql`/`pgbench` against a cluster.
//!
//! This module owns everything Lifeboat does to a PostgreSQL server it runs itself: the `lifeboat
//! demo` command, restore drills and the test harness all go through [`LocalCluster`]. PostgreSQL
//! refuses to run as root, so when we are root every server program runs as the `postgres` OS user
//! ([`cluster_owner`]) in directories that user owns; otherwise programs run as ourselves. Clusters
//! listen on `127.0.0.1` and on a Unix socket in a directory of their own, and keep `fsync` on,
//! because they exist to prove durability. Finding the server and client programs of a major is
//! in `bindir`, the OS user and processes in `process`, starting and stopping in `control`.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

mod bindir;
mod control;
mod process;

pub use bindir::{
    bindir_for_major, bindir_major, data_dir_major, major_of_version_num, parse_major, pg_bindir,
    program_path,
};
use process::ensure_owned_dir;
pub use process::{OsUser, chown_recursive, cluster_owner, pid_alive, run_as};

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
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a'b"), r"'/tmp/a'\''b'");
        assert_eq!(conninfo_quote("/tmp/s"), "/tmp/s");
        assert_eq!(conninfo_quote("/tmp/a b"), "'/tmp/a b'");
    }
}
