//! [`SessionError`]: everything that can go wrong talking to a server, and tokio-postgres errors
//! put in words.

use std::time::Duration;

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

/// A tokio-postgres error in words: the server's own message with its detail and hint, or the
/// client-side error with its cause.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
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
pub(super) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
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
