//! SQL sessions with a running server: where to connect, and the questions and commands a backup
//! needs (settings, identity, tablespaces, backup start and stop, WAL switches, restore points).
//!
//! This module owns [`ConnSpec`], which resolves a connection string plus libpq's environment
//! variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`) and
//! defaults the way `psql` would, and [`Session`], one connection over tokio-postgres. A
//! non-exclusive backup belongs to the connection that started it (the server aborts it when the
//! connection ends), so a session never reconnects: losing the connection fails the backup
//! instead of silently starting over. Connections are made without TLS; use a Unix socket or a
//! trusted network.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::cluster::POSTGRES_USER;
use crate::lsn::Lsn;
use crate::walname::WalSegmentName;

/// Directories searched, in order, for a server's Unix socket when no host is given: Debian's
/// and Red Hat's packages use the first, PostgreSQL's own default is the second.
pub const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;

/// Oldest server release a backup can use: 13 (`server_version_num` 130000).
pub const MIN_SERVER_VERSION_NUM: u32 = 130_000;

/// Everything that can go wrong talking to a server. Messages say where, what happened, and what
/// to do; they never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection settings cannot work as given.
    #[error("invalid connection settings: {0}")]
    Config(String),

    /// No connection could be made, or the server refused it.
    #[error("could not connect to PostgreSQL at {target}: {detail}; {hint}")]
    Connect {
        /// Where we tried (`host=... port=... user=... dbname=...`).
        target: String,
        /// What failed.
        detail: String,
        /// What to check.
        hint: String,
    },

    /// The connection did not complete in time.
    #[error(
        "could not connect to PostgreSQL at {target} within {}s: the server or network did not \
         answer; check that the host and port are right and reachable, or allow more time",
        after.as_secs_f64()
    )]
    ConnectTimeout {
        /// Where we tried.
        target: String,
        /// How long we waited.
        after: Duration,
    },

    /// A query failed; `detail` is the server's message with its detail and hint.
    #[error("{what} failed on {target}: {detail}")]
    Query {
        /// What we asked for.
        what: String,
        /// Which server.
        target: String,
        /// Why it failed and, where we know one, what to do.
        detail: String,
    },

    /// The server answered something we cannot use.
    #[error("unexpected answer to {what} from {target}: {detail}; is this really PostgreSQL?")]
    Unexpected {
        /// What we asked for.
        what: String,
        /// Which server.
        target: String,
        /// What was wrong with the answer.
        detail: String,
    },

    /// The server is older than what the operation supports.
    #[error(
        "PostgreSQL at {target} is version {version}, too old for {what}: Lifeboat needs \
         PostgreSQL 13 or later; upgrade the server"
    )]
    Unsupported {
        /// Which server.
        target: String,
        /// Its `server_version_num`.
        version: u32,
        /// What we wanted to do.
        what: String,
    },

    /// An argument the server would refuse or misread.
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T, E = SessionError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Where to connect
// ---------------------------------------------------------------------------------------------

/// Where and as whom to connect, resolved like libpq does: the connection string first, then the
/// environment, then defaults. The password is kept but never shown (`Debug` and
/// [`ConnSpec::target`] leave it out).
#[derive(Clone)]
pub struct ConnSpec {
    config: Config,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("target", &self.target())
            .field("password", &self.config.get_password().map(|_| "(set)"))
            .finish()
    }
}

impl ConnSpec {
    /// Resolves `conninfo` (libpq `key=value` pairs or a `postgres://` URL; `None` or empty for
    /// none) with this process's environment.
    pub fn new(conninfo: Option<&str>) -> Result<Self> {
        Self::with_env(conninfo, &|name| std::env::var(name).ok())
    }

    /// [`ConnSpec::new`] with the environment given by `env` (for tests and callers that carry
    /// their own). Unset settings default to: host `PGHOST`, else the first of
    /// [`DEFAULT_SOCKET_DIRS`] holding the server's socket (all of them, tried in order, if none
    /// does yet); port `PGPORT`, else 5432; user `PGUSER`, else the OS user, except that root
    /// connects as `postgres` (root is never a database user, and `postgres` owns the packaged
    /// clusters); database `PGDATABASE`, else `postgres`; password `PGPASSWORD`, else the
    /// matching line of the password file (`PGPASSFILE`, else `~/.pgpass`).
    pub fn with_env(conninfo: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let conninfo = conninfo.map(str::trim).filter(|s| !s.is_empty());
        let mut config = match conninfo {
            Some(text) => text.parse::<Config>().map_err(|e| {
                SessionError::Config(format!(
                    "could not read the connection string: {}; give libpq key=value pairs \
                     (host=/var/run/postgresql port=5432 user=postgres dbname=postgres) or a \
                     postgres://user@host:port/dbname URL",
                    with_causes(&e)
                ))
            })?,
            None => Config::new(),
        };

        if config.get_ssl_mode() == SslMode::Require
            || env("PGSSLMODE")
                .is_some_and(|m| matches!(m.as_str(), "require" | "verify-ca" | "verify-full"))
        {
            return Err(SessionError::Config(
                "sslmode requires TLS, which Lifeboat does not support yet: connect over the Unix \
                 socket on the database host, or use sslmode=prefer or disable"
                    .to_owned(),
            ));
        }

        if config.get_ports().is_empty() {
            match env("PGPORT") {
                Some(ports) => {
                    for port in ports.split(',') {
                        let port = port.trim().parse::<u16>().map_err(|_| {
                            SessionError::Config(format!(
                                "PGPORT {ports:?} is not a port number (or a comma-separated list \
                                 of them); fix or unset it"
                            ))
                        })?;
                        config.port(port);
                    }
                }
                None => {
                    config.port(DEFAULT_PORT);
                }
            }
        }
        let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);

        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            match env("PGHOST") {
                Some(hosts) => {
                    for host in hosts.split(',') {
                        config.host(host.trim());
                    }
                }
                None => {
                    let socket = format!(".s.PGSQL.{port}");
                    match DEFAULT_SOCKET_DIRS
                        .iter()
                        .find(|dir| Path::new(dir).join(&socket).exists())
                    {
                        Some(dir) => {
                            config.host(*dir);
                        }
                        None => {
                            for dir in DEFAULT_SOCKET_DIRS {
                                config.host(dir);
                            }
                        }
                    }
                }
            }
        }
        let hosts = config.get_hosts().len().max(config.get_hostaddrs().len());
        if config.get_ports().len() > 1 && config.get_ports().len() != hosts {
            return Err(SessionError::Config(format!(
                "{} ports for {hosts} hosts: give one port for all hosts or one per host",
                config.get_ports().len()
            )));
        }

        if config.get_user().is_none() {
            let user = match env("PGUSER") {
                Some(user) => user,
                None => default_user()?,
            };
            config.user(user);
        }
        if config.get_dbname().is_none() {
            config.dbname(env("PGDATABASE").unwrap_or_else(|| "postgres".to_owned()));
        }
        if config.get_application_name().is_none() {
            config.application_name("lifeboat");
        }
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            } else if let Some(password) = password_from_file(&config, port, &env) {
                config.password(password);
            }
        }
        Ok(ConnSpec { config })
    }

    /// Where this connects, for messages: `host=... port=... user=... dbname=...`, never the
    /// password.
    #[must_use]
    pub fn target(&self) -> String {
        let hosts: Vec<String> = if self.config.get_hostaddrs().is_empty() {
            self.config.get_hosts().iter().map(host_text).collect()
        } else {
            self.config
                .get_hostaddrs()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let ports: Vec<String> = self
            .config
            .get_ports()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "host={} port={} user={} dbname={}",
            hosts.join(","),
            ports.join(","),
            self.config.get_user().unwrap_or_default(),
            self.config.get_dbname().unwrap_or_default()
        )
    }

    /// The hosts tried, in order (Unix socket directories or host names).
    #[must_use]
    pub fn hosts(&self) -> Vec<String> {
        self.config.get_hosts().iter().map(host_text).collect()
    }

    /// The ports: one for all hosts, or one per host.
    #[must_use]
    pub fn ports(&self) -> &[u16] {
        self.config.get_ports()
    }

    /// The database user.
    #[must_use]
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// The database.
    #[must_use]
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// Whether a password was found (in the connection string, `PGPASSWORD` or the password
    /// file).
    #[must_use]
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }
}

fn host_text(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    }
}

/// The database user when none is given: ours, but `postgres` when we are root.
fn default_user() -> Result<String> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(POSTGRES_USER.to_owned());
    }
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        Ok(None) | Err(_) => Err(SessionError::Config(format!(
            "could not find the name of OS user {uid} to use as the database user: set PGUSER or \
             user= in the connection string"
        ))),
    }
}

/// The password for this connection from the password file, as libpq finds it: `PGPASSFILE`,
/// else `~/.pgpass`; lines `host:port:database:user:password` where `*` matches anything and `\`
/// escapes `:` and `\`; a Unix socket counts as host `localhost`. Like libpq, a file others may
/// read is ignored.
fn password_from_file(
    config: &Config,
    port: u16,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let path = match env("PGPASSFILE") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env("HOME")?).join(".pgpass"),
    };
    let meta = fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.mode() & 0o077 != 0 {
        return None;
    }
    let text = fs::read_to_string(&path).ok()?;
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(Host::Tcp(name)), _) => name.clone(),
        (Some(Host::Unix(_)), _) | (None, None) => "localhost".to_owned(),
        (None, Some(addr)) => addr.to_string(),
    };
    let wanted = [
        host,
        port.to_string(),
        config.get_dbname().unwrap_or_default().to_owned(),
        config.get_user().unwrap_or_default().to_owned(),
    ];
    text.lines()
        .find_map(|line| pgpass_line_matches(line, &wanted))
}

/// The password of one password file line if its first four fields match `wanted`.
fn pgpass_line_matches(line: &str, wanted: &[String; 4]) -> Option<String> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut rest = line;
    for want in wanted {
        let (field, after) = split_pgpass_field(rest)?;
        if field != "*" && field != *want {
            return None;
        }
        rest = after;
    }
    // The password is the rest of the line, backslashes removed before what they escape.
    let mut password = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) => password.push(next),
                None => password.push('\\'),
            }
        } else {
            password.push(c);
        }
    }
    Some(password)
}

/// One `:`-terminated field, unescaped, and what follows the colon.
fn split_pgpass_field(text: &str) -> Option<(String, &str)> {
    let mut field = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => field.push(chars.next()?.1),
            ':' => return Some((field, &text[i + 1..])),
            c => field.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------------

/// A row of `pg_stat_archiver`; times are RFC 3339 in UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
}

/// A tablespace other than `pg_default` and `pg_global`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// Its OID, the name of its link in `pg_tblspc`.
    pub oid: u32,
    /// Its name.
    pub name: String,
    /// Where its files are (the target of `pg_tblspc/<oid>`). Relative for an in-place
    /// tablespace (`allow_in_place_tablespaces`), which lives inside the data directory.
    pub location: PathBuf,
}

/// What the server returns when a backup stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStopped {
    /// End of the backup: replay must reach this LSN for the copy to be consistent.
    pub lsn: Lsn,
    /// The `backup_label` file to write into the restored data directory.
    pub backup_label: String,
    /// The `tablespace_map` file, when the cluster has tablespaces.
    pub tablespace_map: Option<String>,
}

/// One connection to a server. Call it within a tokio runtime: the connection is driven by a
/// task of its own. Dropping the session closes the connection, which aborts a backup it
/// started.
pub struct Session {
    client: Client,
    target: String,
    version_num: u32,
    /// Notices and warnings the server sent, oldest first, until taken.
    notices: Arc<Mutex<Vec<String>>>,
    /// Why the connection ended, once it has.
    closed: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field("version_num", &self.version_num)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects, giving up after `timeout`, and reads the server version. On servers that have
    /// `idle_session_timeout` (14+) it is turned off for this session: a backup's session sits
    /// idle while files are copied, and losing it would abort the backup.
    pub async fn connect(spec: &ConnSpec, timeout: Duration) -> Result<Session> {
        let target = spec.target();
        let mut config = spec.config.clone();
        config.connect_timeout(timeout);
        let (client, mut connection) =
            match tokio::time::timeout(timeout, config.connect(NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    return Err(SessionError::Connect {
                        hint: connect_hint(&e, spec).to_owned(),
                        detail: describe(&e),
                        target,
                    });
                }
                Err(_) => {
                    return Err(SessionError::ConnectTimeout {
                        target,
                        after: timeout,
                    });
                }
            };

        let notices = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(None));
        let (task_notices, task_closed) = (Arc::clone(&notices), Arc::clone(&closed));
        // Drives the connection and keeps what it says outside of query results. Ends when the
        // client is dropped (after telling the server goodbye) or the connection fails.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        lock(&task_notices).push(format!(
                            "{}: {}",
                            notice.severity(),
                            notice.message()
                        ));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        *lock(&task_closed) = Some(describe(&e));
                        break;
                    }
                    None => {
                        *lock(&task_closed) = Some("the connection was closed".to_owned());
                        break;
                    }
                }
            }
        });

        let mut session = Session {
            client,
            target,
            version_num: 0,
            notices,
            closed,
        };
        let version = session
            .query_text(
                "reading server_version_num",
                "select current_setting('server_version_num')",
                &[],
            )
            .await?;
        session.version_num = version.parse().map_err(|_| SessionError::Unexpected {
            what: "reading server_version_num".into(),
            target: session.target.clone(),
            detail: format!("{version:?} is not a number"),
        })?;
        if session.version_num >= 140_000 {
            session
                .query_text(
                    "turning off idle_session_timeout",
                    "select set_config('idle_session_timeout', '0', false)",
                    &[],
                )
                .await?;
        }
        Ok(session)
    }

    /// Where this session is connected, as in messages.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The server's version number (`server_version_num`, e.g. 150004 for 15.4).
    #[must_use]
    pub fn server_version_num(&self) -> u32 {
        self.version_num
    }

    /// The notices and warnings the server has sent since the last call, oldest first (e.g.
    /// `WARNING: still waiting for all required WAL segments to be archived` while a backup
    /// stops).
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }

    /// The current value of setting `name` (`current_setting`), as the server shows it.
    pub async fn setting(&self, name: &str) -> Result<String> {
        self.query_text(
            &format!("reading setting {name}"),
            "select current_setting($1)",
            &[&name],
        )
        .await
    }

    /// The server's data directory. Reading it needs superuser or `pg_read_all_settings`.
    pub async fn data_directory(&self) -> Result<PathBuf> {
        self.setting("data_directory").await.map(PathBuf::from)
    }

    /// The cluster's system identifier, as in `pg_control` and WAL page headers.
    pub async fn system_identifier(&self) -> Result<u64> {
        let what = "reading the system identifier";
        let text = self
            .query_text(
                what,
                "select system_identifier::text from pg_control_system()",
                &[],
            )
            .await?;
        // int8 on the SQL side: identifiers with the top bit set come back negative.
        text.parse::<u64>()
            .ok()
            .or_else(|| {
                text.parse::<i64>()
                    .ok()
                    .map(|v| u64::from_ne_bytes(v.to_ne_bytes()))
            })
            .ok_or_else(|| self.unexpected(what, format!("{text:?} is not a number")))
    }

    /// Whether the server is a standby or otherwise replaying WAL.
    pub async fn is_in_recovery(&self) -> Result<bool> {
        let text = self
            .query_text(
                "asking whether the server is in recovery",
                "select pg_is_in_recovery()::text",
                &[],
            )
            .await?;
        Ok(text == "true")
    }

    /// The tablespaces that have a location of their own (all but `pg_default` and `pg_global`).
    pub async fn tablespaces(&self) -> Result<Vec<Tablespace>> {
        let what = "listing tablespaces";
        let rows = self
            .client
            .query(
                "select oid::int8, spcname::text, pg_tablespace_location(oid) \
                 from pg_tablespace where pg_tablespace_location(oid) <> '' order by oid",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        rows.iter()
            .map(|row| {
                let oid: i64 = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
                let name: String = row.try_get(1).map_err(|e| self.query_error(what, &e))?;
                let location: String = row.try_get(2).map_err(|e| self.query_error(what, &e))?;
                Ok(Tablespace {
                    oid: u32::try_from(oid)
                        .map_err(|_| self.unexpected(what, format!("OID {oid} out of range")))?,
                    name,
                    location: PathBuf::from(location),
                })
            })
            .collect()
    }

    /// Starts a non-exclusive backup labelled `label`; returns its start LSN. `fast` asks for an
    /// immediate checkpoint instead of a spread one. The backup lasts until
    /// [`Session::backup_stop`] on this same session, or until the session ends (which aborts
    /// it). Uses `pg_backup_start` on 15 and later, `pg_start_backup` on 13 and 14.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn> {
        let what = "starting the backup";
        self.require_backup_support(what)?;
        if label.contains(['\n', '\r']) {
            return Err(SessionError::InvalidArgument(format!(
                "invalid backup label {label:?}: it is written as one line of backup_label; use a \
                 label without line breaks"
            )));
        }
        let sql = if self.version_num >= 150_000 {
            "select pg_backup_start($1, $2)::text"
        } else {
            "select pg_start_backup($1, $2, false)::text"
        };
        let text = self.query_text(what, sql, &[&label, &fast]).await?;
        self.parse_lsn(what, &text)
    }

    /// Stops the backup this session started. With `wait_for_archive`, waits until the WAL the
    /// backup needs has been archived (the server sends warnings meanwhile: see
    /// [`Session::take_notices`]; a `statement_timeout` also bounds this wait). Uses
    /// `pg_backup_stop` on 15 and later, `pg_stop_backup` on 13 and 14.
    pub async fn backup_stop(&self, wait_for_archive: bool) -> Result<BackupStopped> {
        let what = "stopping the backup";
        self.require_backup_support(what)?;
        let sql = if self.version_num >= 150_000 {
            "select lsn::text, labelfile, spcmapfile from pg_backup_stop($1)"
        } else {
            "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, $1)"
        };
        let row = self
            .client
            .query_one(sql, &[&wait_for_archive])
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let lsn: String = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        let backup_label: Option<String> =
            row.try_get(1).map_err(|e| self.query_error(what, &e))?;
        let tablespace_map: Option<String> =
            row.try_get(2).map_err(|e| self.query_error(what, &e))?;
        Ok(BackupStopped {
            lsn: self.parse_lsn(what, &lsn)?,
            backup_label: backup_label
                .ok_or_else(|| self.unexpected(what, "no backup label".to_owned()))?,
            tablespace_map: tablespace_map.filter(|map| !map.is_empty()),
        })
    }

    /// Switches to a new WAL segment so the current one can be archived; returns the switch
    /// position and the name of the segment that was completed. If nothing was written since the
    /// last switch the server does not switch and this names the segment completed before.
    pub async fn switch_wal(&self) -> Result<(Lsn, WalSegmentName)> {
        let what = "switching WAL";
        let row = self
            .client
            .query_one(
                "select lsn::text, pg_walfile_name(lsn) from pg_switch_wal() as lsn",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let lsn: String = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        let name: String = row.try_get(1).map_err(|e| self.query_error(what, &e))?;
        let name = name
            .parse()
            .map_err(|e| self.unexpected(what, format!("{e}")))?;
        Ok((self.parse_lsn(what, &lsn)?, name))
    }

    /// Creates a restore point named `name` (a target for `recovery_target_name`); returns its
    /// LSN.
    pub async fn create_restore_point(&self, name: &str) -> Result<Lsn> {
        let what = format!("creating restore point {name:?}");
        let text = self
            .query_text(&what, "select pg_create_restore_point($1)::text", &[&name])
            .await?;
        self.parse_lsn(&what, &text)
    }

    /// The current WAL write position (`pg_current_wal_lsn`; a primary only). This is how far WAL
    /// has been written out, not inserted: a record just inserted (a restore point, say) may lie
    /// beyond it until something writes or flushes WAL.
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let what = "reading the current WAL position";
        let text = self
            .query_text(what, "select pg_current_wal_lsn()::text", &[])
            .await?;
        self.parse_lsn(what, &text)
    }

    /// Sets this session's `statement_timeout`; zero turns it off.
    pub async fn set_statement_timeout(&self, timeout: Duration) -> Result<()> {
        let mut ms = timeout.as_millis();
        if ms == 0 && !timeout.is_zero() {
            ms = 1;
        }
        // The setting is an int of milliseconds.
        let ms = ms.min(i32::MAX as u128).to_string();
        self.query_text(
            "setting statement_timeout",
            "select set_config('statement_timeout', $1, false)",
            &[&ms],
        )
        .await
        .map(drop)
    }

    fn require_backup_support(&self, what: &str) -> Result<()> {
        if self.version_num < MIN_SERVER_VERSION_NUM {
            return Err(SessionError::Unsupported {
                target: self.target.clone(),
                version: self.version_num,
                what: what.to_owned(),
            });
        }
        Ok(())
    }

    /// One row, one non-null text column.
    /// `pg_stat_archiver`: what the archiver last stored and last failed on, and when.
    pub async fn archiver_stats(&self) -> Result<ArchiverStats> {
        let what = "reading pg_stat_archiver";
        let row = self
            .client
            .query_one(
                "select archived_count::text, last_archived_wal, \
                        to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                        failed_count::text, last_failed_wal, \
                        to_char(last_failed_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                 from pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let text = |i: usize| -> Result<Option<String>> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| self.query_error(what, &e))
        };
        let count = |i: usize| -> Result<u64> {
            let t = text(i)?.unwrap_or_default();
            t.parse()
                .map_err(|_| self.unexpected(what, format!("count {t:?}")))
        };
        Ok(ArchiverStats {
            archived_count: count(0)?,
            last_archived_wal: text(1)?,
            last_archived_time: text(2)?,
            failed_count: count(3)?,
            last_failed_wal: text(4)?,
            last_failed_time: text(5)?,
        })
    }

    async fn query_text(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<String> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let value: Option<String> = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        value.ok_or_else(|| self.unexpected(what, "NULL".to_owned()))
    }

    fn parse_lsn(&self, what: &str, text: &str) -> Result<Lsn> {
        text.parse()
            .map_err(|e| self.unexpected(what, format!("{e}")))
    }

    fn unexpected(&self, what: &str, detail: String) -> SessionError {
        SessionError::Unexpected {
            what: what.to_owned(),
            target: self.target.clone(),
            detail,
        }
    }

    fn query_error(&self, what: &str, e: &tokio_postgres::Error) -> SessionError {
        let mut detail = describe(e);
        if e.is_closed() {
            if let Some(reason) = lock(&self.closed).clone() {
                detail = format!("the connection to the server was lost ({reason})");
            } else {
                detail = "the connection to the server was lost".to_owned();
            }
            detail.push_str("; a backup this session started is aborted, start it again");
        } else if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            detail.push_str(
                "; connect as a superuser, or grant the role what it needs (pg_read_all_settings, \
                 EXECUTE on the backup functions)",
            );
        }
        SessionError::Query {
            what: what.to_owned(),
            target: self.target.clone(),
            detail,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A tokio-postgres error in words: the server's own message with its detail and hint, or the
/// client-side error with its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    with_causes(e)
}

/// An error's text followed by those of its causes that it does not already include
/// (tokio-postgres keeps the interesting part, like "unknown option", in the cause).
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// What to check after a failed connection.
fn connect_hint(e: &tokio_postgres::Error, spec: &ConnSpec) -> &'static str {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if code == &SqlState::INVALID_PASSWORD
            || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return "check the user name and password (PGPASSWORD, the password file) and the \
                    server's pg_hba.conf";
        }
        if code == &SqlState::INVALID_CATALOG_NAME {
            return "connect to an existing database (dbname= or PGDATABASE)";
        }
        if code == &SqlState::TOO_MANY_CONNECTIONS {
            return "the server has no free connection slots: retry later or raise max_connections";
        }
        return "fix what the server reports, then retry";
    }
    let text = e.to_string();
    if text.contains("password missing") {
        if spec.has_password() {
            return "check the password";
        }
        return "the server asks for a password: set PGPASSWORD, add a line to the password file \
                (~/.pgpass or PGPASSFILE), or give password= in the connection string";
    }
    "is the server running and listening there? check host and port (PGHOST, PGPORT, or the \
     connection string) and the server's listen_addresses, port and unix_socket_directories"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn spec(conninfo: Option<&str>, env: &[(&str, &str)]) -> Result<ConnSpec> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConnSpec::with_env(conninfo, &move |name| env.get(name).cloned())
    }

    #[test]
    fn conninfo_wins_over_environment() {
        let s = spec(
            Some("host=/run/pg port=5433 user=alice dbname=app"),
            &[
                ("PGHOST", "elsewhere"),
                ("PGPORT", "6000"),
                ("PGUSER", "bob"),
                ("PGDATABASE", "other"),
            ],
        )
        .unwrap();
        assert_eq!(s.target(), "host=/run/pg port=5433 user=alice dbname=app");
        assert_eq!(s.hosts(), ["/run/pg"]);
        assert_eq!(s.ports(), [5433]);
        assert_eq!(s.user(), "alice");
        assert_eq!(s.dbname(), "app");
    }

    #[test]
    fn url_form() {
        let s = spec(Some("postgres://carol@db.example:6543/sales"), &[]).unwrap();
        assert_eq!(
            s.target(),
            "host=db.example port=6543 user=carol dbname=sales"
        );
        let s = spec(Some("postgresql://%2Ftmp%2Fsock/db"), &[("PGUSER", "u")]).unwrap();
        assert_eq!(s.target(), "host=/tmp/sock port=5432 user=u dbname=db");
    }

    #[test]
    fn environment_fills_the_gaps() {
        let s = spec(
            Some("dbname=app"),
            &[
                ("PGHOST", "db1,db2"),
                ("PGPORT", "5433"),
                ("PGUSER", "bob"),
                ("PGDATABASE", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(s.target(), "host=db1,db2 port=5433 user=bob dbname=app");
        // Empty variables count as unset, as in libpq.
        let s = spec(None, &[("PGHOST", "h"), ("PGUSER", ""), ("PGPORT", "")]).unwrap();
        assert_eq!(s.ports(), [5432]);
        assert!(!s.user().is_empty());
    }

    #[test]
    fn defaults() {
        let s = spec(None, &[]).unwrap();
        assert_eq!(s.ports(), [DEFAULT_PORT]);
        assert_eq!(s.dbname(), "postgres");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(s.user(), "postgres");
        }
        // Either the directory holding a socket for 5432, or all candidates in order.
        let hosts = s.hosts();
        assert!(
            hosts == DEFAULT_SOCKET_DIRS
                || (hosts.len() == 1 && DEFAULT_SOCKET_DIRS.contains(&hosts[0].as_str())),
            "{hosts:?}"
        );
        assert!(!s.has_password());
    }

    #[test]
    fn bad_settings_are_refused() {
        for (conninfo, env, needle) in [
            (
                Some("port=notaport"),
                vec![],
                "could not read the connection string",
            ),
            (Some("frobnicate=1"), vec![], "unknown option"),
            (Some("sslmode=require"), vec![], "TLS"),
            (None, vec![("PGSSLMODE", "verify-full")], "TLS"),
            (None, vec![("PGPORT", "54x")], "PGPORT"),
            (Some("host=a,b,c port=1,2"), vec![], "2 ports for 3 hosts"),
        ] {
            let err = spec(conninfo, &env).unwrap_err();
            assert!(err.to_string().contains(needle), "{conninfo:?}: {err}");
            assert!(err.to_string().starts_with("invalid connection settings: "));
        }
    }

    #[test]
    fn password_never_shown() {
        let s = spec(Some("host=h user=u password=sekrit"), &[]).unwrap();
        assert!(s.has_password());
        assert!(!s.target().contains("sekrit"));
        assert!(!format!("{s:?}").contains("sekrit"), "{s:?}");
        let s = spec(Some("host=h user=u"), &[("PGPASSWORD", "fromenv")]).unwrap();
        assert!(s.has_password());
        assert!(!format!("{s:?}").contains("fromenv"));
    }

    #[test]
    fn password_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        fs::write(
            &file,
            "# comment\n\
             other:5432:*:u:wrong\n\
             db\\:host:*:*:u:escaped\\:colon\n\
             localhost:5432:app:u:sock\\\\et:pw\n\
             *:*:*:*:fallback\n",
        )
        .unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let passfile = file.to_str().unwrap();
        let password = |conninfo: &str| {
            let s = spec(Some(conninfo), &[("PGPASSFILE", passfile)]).unwrap();
            password_from_file(&s.config, s.ports()[0], &|n| {
                (n == "PGPASSFILE").then(|| passfile.to_owned())
            })
        };
        assert_eq!(
            password("host=/tmp port=5432 user=u dbname=app").as_deref(),
            Some("sock\\et:pw")
        );
        assert_eq!(
            password("host=db:host user=u dbname=x").as_deref(),
            Some("escaped:colon")
        );
        assert_eq!(
            password("host=other port=5433 user=u dbname=x").as_deref(),
            Some("fallback")
        );
        let s = spec(
            Some("host=/tmp user=u dbname=app"),
            &[("PGPASSFILE", passfile)],
        )
        .unwrap();
        assert!(s.has_password());
        // PGPASSWORD comes first.
        let s = spec(
            Some("host=/tmp user=u dbname=app"),
            &[("PGPASSFILE", passfile), ("PGPASSWORD", "env")],
        )
        .unwrap();
        assert_eq!(s.config.get_password(), Some(&b"env"[..]));

        // A file others can read is ignored, as libpq does.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(password("host=/tmp port=5432 user=u dbname=app"), None);
    }

    #[test]
    fn pgpass_fields() {
        let wanted = [
            "h".to_owned(),
            "1".to_owned(),
            "d".to_owned(),
            "u".to_owned(),
        ];
        assert_eq!(
            pgpass_line_matches("h:1:d:u:p", &wanted).as_deref(),
            Some("p")
        );
        assert_eq!(
            pgpass_line_matches("h:1:d:u:", &wanted).as_deref(),
            Some("")
        );
        assert_eq!(pgpass_line_matches("h:1:d:u", &wanted), None);
        assert_eq!(pgpass_line_matches("h:2:d:u:p", &wanted), None);
        assert_eq!(pgpass_line_matches("#h:1:d:u:p", &wanted), None);
        assert_eq!(
            pgpass_line_matches("*:*:*:*:a:b", &wanted).as_deref(),
            Some("a:b")
        );
    }

    // -----------------------------------------------------------------------------------------
    // Against a real server
    // -----------------------------------------------------------------------------------------

    use crate::backup_label::BackupLabel;
    use crate::cluster::{self as pgc, InitOptions, LocalCluster, StopMode};

    /// A fresh cluster in a temporary directory the cluster owner can use, stopped on drop. The
    /// test harness crate has a richer one but depends on this crate, so it cannot be used here.
    struct Scratch {
        cluster: LocalCluster,
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn start() -> Scratch {
            let dir = tempfile::Builder::new()
                .prefix("lifeboat-session-")
                .tempdir()
                .unwrap();
            let owner = pgc::cluster_owner().unwrap();
            if let Some(owner) = &owner {
                pgc::chown_recursive(dir.path(), owner).unwrap();
            }
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let opts = InitOptions {
                port,
                socket_dir: dir.path().join("sock"),
                extra_conf: "max_connections = 20\nshared_buffers = 16MB\n".to_owned(),
                ..InitOptions::default()
            };
            let cluster = LocalCluster::initdb(&dir.path().join("data"), &opts)
                .unwrap()
                .with_log_file(dir.path().join("postgres.log"));
            cluster.start(Duration::from_secs(60)).unwrap();
            Scratch { cluster, dir }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("server log:\n{}", self.cluster.log_tail(30));
            }
            if self.cluster.stop(StopMode::Immediate).is_err() || self.cluster.is_running() {
                let _ = self.cluster.kill9();
            }
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn backup_cycle_on_a_real_server() {
        let scratch = Scratch::start();
        let cluster = &scratch.cluster;
        let spec = ConnSpec::with_env(Some(&cluster.conninfo()), &|_| None).unwrap();
        let session = Session::connect(&spec, TIMEOUT).await.unwrap();
        assert!(session.server_version_num() >= MIN_SERVER_VERSION_NUM);
        assert_eq!(
            session.server_version_num().to_string(),
            cluster.psql("show server_version_num").unwrap()
        );
        assert_eq!(session.setting("idle_session_timeout").await.unwrap(), "0");
        assert_eq!(
            session.setting("application_name").await.unwrap(),
            "lifeboat"
        );
        assert_eq!(
            fs::canonicalize(session.data_directory().await.unwrap()).unwrap(),
            fs::canonicalize(&cluster.datadir).unwrap()
        );
        let control = crate::control::parse_control_file(
            &fs::read(cluster.datadir.join("global/pg_control")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            session.system_identifier().await.unwrap(),
            control.system_identifier
        );
        assert!(!session.is_in_recovery().await.unwrap());
        assert!(session.tablespaces().await.unwrap().is_empty());

        // A tablespace in a directory of the cluster owner.
        let location = scratch.dir.path().join("ts one");
        fs::create_dir(&location).unwrap();
        if let Some(owner) = &cluster.owner {
            pgc::chown_recursive(&location, owner).unwrap();
        }
        cluster
            .psql(&format!(
                "create tablespace extra location '{}'",
                location.display()
            ))
            .unwrap();
        let spaces = session.tablespaces().await.unwrap();
        assert_eq!(spaces.len(), 1, "{spaces:?}");
        assert_eq!(spaces[0].name, "extra");
        assert_eq!(spaces[0].location, location);
        assert_eq!(
            spaces[0].oid.to_string(),
            cluster
                .psql("select oid from pg_tablespace where spcname = 'extra'")
                .unwrap()
        );

        // A backup without waiting for the archive (archiving is off).
        let start = session.backup_start("lifeboat test", true).await.unwrap();
        cluster.psql("create table t as select 1 as x").unwrap();
        let stopped = session.backup_stop(false).await.unwrap();
        assert!(stopped.lsn >= start, "{} < {start}", stopped.lsn);
        let label = BackupLabel::parse(&stopped.backup_label).unwrap();
        assert_eq!(label.label, "lifeboat test");
        assert_eq!(label.start_lsn, start);
        assert!(label.checkpoint_lsn >= start);
        assert_eq!(label.backup_method, "streamed");
        assert_eq!(label.backup_from, crate::backup_label::BackupFrom::Primary);
        let map = stopped.tablespace_map.unwrap();
        assert_eq!(
            map,
            format!("{} {}\n", spaces[0].oid, location.display()),
            "{map:?}"
        );

        // Stopping again: the server says there is no backup; the message carries its words.
        let err = session.backup_stop(false).await.unwrap_err().to_string();
        assert!(err.contains("stopping the backup failed on host="), "{err}");
        assert!(err.contains("backup is not in progress"), "{err}");

        // Waiting for the archive while archiving is off: the server says so in a notice.
        session.backup_start("second", false).await.unwrap();
        session.backup_stop(true).await.unwrap();
        let notices = session.take_notices();
        assert!(
            notices
                .iter()
                .any(|n| n.contains("WAL archiving is not enabled")),
            "{notices:?}"
        );
        assert!(session.take_notices().is_empty());

        // Labels with line breaks would break backup_label.
        let err = session.backup_start("a\nb", false).await.unwrap_err();
        assert!(matches!(err, SessionError::InvalidArgument(_)), "{err}");

        let (switch_lsn, name) = session.switch_wal().await.unwrap();
        assert_eq!(name.to_string().len(), 24);
        assert_eq!(
            name.to_string(),
            cluster
                .psql(&format!("select pg_walfile_name('{switch_lsn}')"))
                .unwrap()
        );
        let point = session.create_restore_point("before things").await.unwrap();
        assert!(point > switch_lsn);
        // pg_current_wal_lsn is the write position: the restore point record is inserted but
        // not necessarily written yet, so only the earlier switch is certainly behind it.
        assert!(session.current_wal_lsn().await.unwrap() >= switch_lsn);

        session
            .set_statement_timeout(Duration::from_millis(1500))
            .await
            .unwrap();
        assert_eq!(
            session.setting("statement_timeout").await.unwrap(),
            "1500ms"
        );
        session.set_statement_timeout(Duration::ZERO).await.unwrap();
        assert_eq!(session.setting("statement_timeout").await.unwrap(), "0");

        let err = session
            .setting("no_such_setting")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("reading setting no_such_setting failed on host="),
            "{err}"
        );
        assert!(
            err.contains("unrecognized configuration parameter"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_backup_belongs_to_its_session() {
        let scratch = Scratch::start();
        let spec = ConnSpec::with_env(Some(&scratch.cluster.conninfo()), &|_| None).unwrap();
        let first = Session::connect(&spec, TIMEOUT).await.unwrap();
        let second = Session::connect(&spec, TIMEOUT).await.unwrap();
        first.backup_start("one", true).await.unwrap();
        // Another session has no backup to stop, and can run one of its own at the same time.
        assert!(second.backup_stop(false).await.is_err());
        second.backup_start("two", true).await.unwrap();
        let two = second.backup_stop(false).await.unwrap();
        assert_eq!(BackupLabel::parse(&two.backup_label).unwrap().label, "two");
        let one = first.backup_stop(false).await.unwrap();
        assert_eq!(BackupLabel::parse(&one.backup_label).unwrap().label, "one");

        // A session that is terminated reports the lost connection, not a bare "closed".
        first.backup_start("three", true).await.unwrap();
        scratch
            .cluster
            .psql(
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where application_name = 'lifeboat'",
            )
            .unwrap();
        let err = first.backup_stop(false).await.unwrap_err().to_string();
        assert!(err.contains("stopping the backup failed"), "{err}");
        assert!(err.contains("terminat") || err.contains("lost"), "{err}");
    }

    #[tokio::test]
    async fn connection_errors_say_where_and_hide_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let conninfo = format!(
            "host={} port=1 user=someone password=sekrit dbname=x",
            dir.path().display()
        );
        let spec = ConnSpec::with_env(Some(&conninfo), &|_| None).unwrap();
        let err = Session::connect(&spec, TIMEOUT).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "could not connect to PostgreSQL at host={} port=1 user=someone dbname=x: ",
                dir.path().display()
            )),
            "{text}"
        );
        assert!(text.contains("is the server running"), "{text}");
        assert!(!text.contains("sekrit"), "{text}");
        assert!(!format!("{err:?}").contains("sekrit"));
    }

    #[tokio::test]
    async fn wrong_database_is_named() {
        let scratch = Scratch::start();
        let conninfo = format!("{} dbname=nope", scratch.cluster.conninfo());
        let spec = ConnSpec::with_env(Some(&conninfo), &|_| None).unwrap();
        let err = Session::connect(&spec, TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("database \"nope\" does not exist"), "{err}");
        assert!(err.contains("connect to an existing database"), "{err}");
    }
}
