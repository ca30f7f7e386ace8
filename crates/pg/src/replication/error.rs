//! [`ReplicationError`]: what can go wrong on a replication connection, with the server's own
//! error fields and advice for the cases operators meet (pg_hba.conf, `max_wal_senders`, the
//! REPLICATION attribute, a busy slot, removed WAL, a wrong password).

use std::fmt;
use std::io;
use std::time::Duration;

/// An `ErrorResponse` (or a `NoticeResponse`) from the server, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC` (or `WARNING`, `NOTICE` ... for notices), not localized.
    pub severity: String,
    /// The SQLSTATE code, e.g. `55006`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// SQLSTATE codes we give advice for or branch on.
mod sqlstate {
    pub const OBJECT_IN_USE: &str = "55006";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    /// Class 57: operator intervention (shutdown, terminated backend, cannot connect now).
    pub const OPERATOR_INTERVENTION_CLASS: &str = "57";
}

/// Everything that can go wrong on a replication connection. Messages say where, what happened
/// and what to do; they never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection settings cannot work as given (no host, an unusable `hostaddr` ...).
    #[error("invalid replication connection settings for {target}: {detail}")]
    Config { target: String, detail: String },

    /// No connection could be made to any host.
    #[error(
        "could not connect for replication to {target}: {source}; is the server running and \
         listening there? check host and port and the server's listen_addresses, port and \
         unix_socket_directories"
    )]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },

    /// Connecting and authenticating did not finish in time.
    #[error(
        "could not connect for replication to {target} within {}s: the server or network did \
         not answer; check that host and port are right and reachable, or allow more time",
        after.as_secs_f64()
    )]
    ConnectTimeout { target: String, after: Duration },

    /// Authentication could not be done on our side (no password, an unsupported method).
    #[error("could not authenticate to {target}: {detail}")]
    Auth { target: String, detail: String },

    /// The server answered with an error.
    #[error("{what} failed on {target}: {server}{}", advice(server))]
    Server {
        what: String,
        target: String,
        /// Boxed: it is the largest variant by far, and results are moved around a lot.
        server: Box<ServerError>,
    },

    /// Reading from or writing to an established connection failed (or the server closed it).
    #[error(
        "{what}: the replication connection to {target} was lost: {source}; reconnect and \
         start again"
    )]
    Io {
        what: String,
        target: String,
        #[source]
        source: io::Error,
    },

    /// The server sent something that is not the protocol we speak.
    #[error(
        "malformed {frame} from {target} while {what}: {detail}; is this really PostgreSQL? \
         reconnect and retry, and report it if it persists"
    )]
    Protocol {
        frame: String,
        what: String,
        target: String,
        detail: String,
    },

    /// The server is too old for the command.
    #[error(
        "{what} needs PostgreSQL {needs} or later, and {target} runs server_version_num \
         {version}: {instead}"
    )]
    Unsupported {
        what: String,
        target: String,
        version: u32,
        needs: u32,
        instead: String,
    },

    /// An argument the server would refuse or misread (a slot name with quotes, say).
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

impl ReplicationError {
    /// The server's error fields, when the server sent an error.
    #[must_use]
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ReplicationError::Server { server, .. } => Some(server.as_ref()),
            _ => None,
        }
    }

    fn code(&self) -> Option<&str> {
        self.server_error().map(|e| e.code.as_str())
    }

    /// The slot is used by another connection (SQLSTATE 55006, "replication slot ... is active
    /// for PID ..."): another receiver runs, or the server has not yet noticed that a previous
    /// connection of ours died. Retry with backoff.
    #[must_use]
    pub fn is_slot_in_use(&self) -> bool {
        self.code() == Some(sqlstate::OBJECT_IN_USE)
    }

    /// The WAL asked for is gone from the server (SQLSTATE 58P01, "requested WAL segment ... has
    /// already been removed"), or the slot was invalidated because it held back too much WAL
    /// (`max_slot_wal_keep_size`; SQLSTATE 55000 "can no longer access replication slot" on 16+,
    /// whose detail says it was invalidated; on 13 to 15 such a slot's `restart_lsn` reads as
    /// NULL and streaming from an old position fails with 58P01). Streaming cannot
    /// resume where it stopped: the gap must come from the archive, or a new base backup.
    #[must_use]
    pub fn is_wal_removed(&self) -> bool {
        match self.server_error() {
            Some(e) => {
                (e.code == sqlstate::UNDEFINED_FILE && e.message.contains("WAL segment"))
                    || is_slot_invalidated(e)
            }
            None => false,
        }
    }

    /// The established connection broke: an I/O error or end of stream, or the server ended it
    /// (shutdown, `pg_terminate_backend`: SQLSTATE class 57). Reconnect after a pause.
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ReplicationError::Io { .. } => true,
            ReplicationError::Server { server, .. } => server
                .code
                .starts_with(sqlstate::OPERATOR_INTERVENTION_CLASS),
            _ => false,
        }
    }

    /// No connection could be made (refused, unreachable, timed out, or the server is starting
    /// or shutting down). Retry after a pause.
    #[must_use]
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ReplicationError::Connect { .. } | ReplicationError::ConnectTimeout { .. }
        ) || self
            .code()
            .is_some_and(|c| c.starts_with(sqlstate::OPERATOR_INTERVENTION_CLASS))
    }

    /// The server refused the password (SQLSTATE 28P01).
    #[must_use]
    pub fn is_wrong_password(&self) -> bool {
        self.code() == Some(sqlstate::INVALID_PASSWORD)
    }
}

/// A slot that lost its WAL: PostgreSQL 16+ refuse it ("can no longer access replication slot",
/// the reason in the detail); 13 to 15 stream from it and fail on the removed WAL instead.
fn is_slot_invalidated(e: &ServerError) -> bool {
    e.code == sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
        && (e.message.contains("invalidated")
            || e.detail
                .as_deref()
                .is_some_and(|d| d.contains("invalidated")))
}

/// What to do about the common server errors, as a suffix of the message.
fn advice(e: &ServerError) -> &'static str {
    let msg = e.message.as_str();
    match e.code.as_str() {
        sqlstate::OBJECT_IN_USE if msg.contains("replication slot") => {
            "; another receiver is using it: stop it or wait (after a crash the server frees \
             the slot once it notices the old connection is gone; retry with backoff)"
        }
        sqlstate::UNDEFINED_FILE if msg.contains("WAL segment") => {
            "; the server no longer has that WAL: the receiver must restart from the archive \
             (the newest archived segment), or take a new base backup; keep a slot so the \
             server retains WAL while the receiver is down"
        }
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE if is_slot_invalidated(e) => {
            "; the slot lost its WAL (max_slot_wal_keep_size): drop and recreate it, and restart \
             from the archive or a new base backup"
        }
        sqlstate::INVALID_AUTHORIZATION if msg.contains("pg_hba.conf") => {
            "; add a line for replication connections to the server's pg_hba.conf (e.g. `host \
             replication USER ADDRESS/32 scram-sha-256`; the database column must say \
             `replication`, `all` does not match them) and reload the server"
        }
        sqlstate::INVALID_PASSWORD => {
            "; check the password (PGPASSWORD, the password file, or password= in the \
             connection string) and the user name"
        }
        sqlstate::TOO_MANY_CONNECTIONS if msg.contains("max_wal_senders") => {
            "; raise max_wal_senders on the server (takes a restart; 0 disables replication) or \
             stop another replication client"
        }
        sqlstate::TOO_MANY_CONNECTIONS => {
            "; the server has no free connection slots: retry later or raise max_connections"
        }
        sqlstate::INSUFFICIENT_PRIVILEGE
            if msg.contains("replication") || msg.contains("WAL sender") =>
        {
            "; give the role the REPLICATION attribute (ALTER ROLE name REPLICATION) or connect \
             as a superuser"
        }
        sqlstate::UNDEFINED_OBJECT if msg.contains("replication slot") => {
            "; create the slot first (CREATE_REPLICATION_SLOT, or pg_create_physical_replication_slot)"
        }
        _ => "",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ReplicationError {
        ReplicationError::Server {
            what: "starting replication".into(),
            target: "host=/tmp port=5432 user=u dbname=postgres".into(),
            server: Box::new(ServerError {
                severity: "ERROR".into(),
                code: code.into(),
                message: message.into(),
                detail: None,
                hint: None,
            }),
        }
    }

    #[test]
    fn predicates_and_advice() {
        let e = server(
            "55006",
            "replication slot \"lifeboat\" is active for PID 42",
        );
        assert!(e.is_slot_in_use() && !e.is_wal_removed() && !e.is_connection_lost());
        assert!(e.to_string().contains("stop it or wait"), "{e}");

        let e = server(
            "58P01",
            "requested WAL segment 000000010000000000000003 has already been removed",
        );
        assert!(e.is_wal_removed() && !e.is_slot_in_use());
        assert!(e.to_string().contains("restart from the archive"), "{e}");

        // PostgreSQL 18's words for a slot invalidated by max_slot_wal_keep_size.
        let mut e = server("55000", "can no longer access replication slot \"s\"");
        assert!(!e.is_wal_removed());
        if let ReplicationError::Server { server, .. } = &mut e {
            server.detail =
                Some("This replication slot has been invalidated due to \"wal_removed\".".into());
        }
        assert!(e.is_wal_removed(), "{e}");
        assert!(e.to_string().contains("drop and recreate it"), "{e}");

        let e = server(
            "57P01",
            "terminating connection due to administrator command",
        );
        assert!(e.is_connection_lost());

        let e = server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 0)",
        );
        assert!(e.to_string().contains("raise max_wal_senders"), "{e}");

        let e = server(
            "28000",
            "no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"u\", no encryption",
        );
        assert!(e.to_string().contains("`replication`"), "{e}");

        let e = server("42501", "permission denied to start WAL sender");
        assert!(e.to_string().contains("REPLICATION attribute"), "{e}");
        let e = server(
            "42501",
            "must be superuser or replication role to start walsender",
        );
        assert!(e.to_string().contains("REPLICATION attribute"), "{e}");

        let e = server("28P01", "password authentication failed for user \"u\"");
        assert!(e.is_wrong_password());
        assert!(e.to_string().contains("check the password"), "{e}");

        let io = ReplicationError::Io {
            what: "reading WAL".into(),
            target: "t".into(),
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        };
        assert!(io.is_connection_lost() && !io.is_wal_removed());
    }
}
