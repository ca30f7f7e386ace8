//! Where to connect: [`ConnSpec`] resolves a connection string plus libpq's environment variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`) and defaults the way
//! `psql` would.

use std::fmt;
use std::path::Path;

use tokio_postgres::Config;
use tokio_postgres::config::{Host, SslMode};

use super::error::{Result, SessionError, with_causes};
use super::pgpass::password_from_file;
use crate::cluster::POSTGRES_USER;

/// Directories searched, in order, for a server's Unix socket when no host is given: Debian's
/// and Red Hat's packages use the first, PostgreSQL's own default is the second.
pub const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;

/// Where and as whom to connect, resolved like libpq does: the connection string first, then the
/// environment, then defaults. The password is kept but never shown (`Debug` and
/// [`ConnSpec::target`] leave it out).
#[derive(Clone)]
pub struct ConnSpec {
    pub(super) config: Config,
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

    /// The resolved settings, for connections made without tokio-postgres (the replication
    /// client). Holds the password: never print it.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a password was found (in the connection string, `PGPASSWORD` or the password
    /// file).
    #[must_use]
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }
}

impl ConnSpec {
    /// The settings as libpq environment variables (`PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGDATABASE`, `PGPASSWORD`, `PGSSLMODE`), for the PostgreSQL programs lifeboat runs
    /// (pg_dump, pg_restore): a password passed this way never appears on a command line.
    /// Holds the password: never print it.
    #[must_use]
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let ports: Vec<String> = self.ports().iter().map(ToString::to_string).collect();
        let mut env = vec![
            ("PGHOST", self.hosts().join(",")),
            ("PGPORT", ports.join(",")),
            ("PGUSER", self.user().to_owned()),
            ("PGDATABASE", self.dbname().to_owned()),
        ];
        if !self.config.get_hostaddrs().is_empty() {
            let addrs: Vec<String> = self
                .config
                .get_hostaddrs()
                .iter()
                .map(ToString::to_string)
                .collect();
            env.push(("PGHOSTADDR", addrs.join(",")));
        }
        if let Some(password) = self.config.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
        }
        env.push((
            "PGSSLMODE",
            match self.config.get_ssl_mode() {
                SslMode::Disable => "disable",
                _ => "prefer",
            }
            .to_owned(),
        ));
        env
    }

    /// The same settings, connecting to database `dbname`.
    #[must_use]
    pub fn with_dbname(&self, dbname: &str) -> ConnSpec {
        let mut config = self.config.clone();
        config.dbname(dbname);
        ConnSpec { config }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs;
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
}
