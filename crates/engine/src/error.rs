//! Engine errors: the repository's, plus what the engine itself rejects (bad input, local I/O).

use lifeboat_repo::RepoError;
use lifeboat_repo::lock::LockError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The user's input was rejected (not a WAL file, a damaged WAL file, a bad name).
    #[error("{message}")]
    InvalidInput { message: String, hint: String },

    #[error(transparent)]
    Repo(#[from] RepoError),

    /// Stored data failed verification or an object the repository must hold is gone (a chunk a
    /// backup needs): the message names the object and what depends on it, the hint suits the
    /// command that found it (e.g. a recovery operator's, for `wal-fetch`).
    #[error("{message}")]
    Corrupt { message: String, hint: String },

    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    LocalIo {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// PostgreSQL could not be reached, or refused or failed a request.
    #[error("{message}")]
    Postgres { message: String, hint: String },

    /// A bug: a background task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::InvalidInput {
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::LocalIo {
            what: what.into(),
            source,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::InvalidInput { hint, .. }
            | Self::Postgres { hint, .. }
            | Self::Corrupt { hint, .. } => Some(hint.clone()),
            Self::Repo(e) => e.hint(),
            Self::LocalIo { source, .. } => Some(match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "run lifeboat as the user that owns the file (usually postgres), or fix the permissions".into()
                }
                std::io::ErrorKind::NotFound => "check the path".into(),
                _ if source.raw_os_error() == Some(28) => "the disk is full: free space, then retry".into(),
                _ => "check the file system and retry".into(),
            }),
            Self::Internal(_) => Some("please report this as a bug, with the log".into()),
        }
    }
}

/// A lock refusal or loss: the repository's error as it is, anything else (held by another
/// run, lost) refused with the lock's hint (exit 4).
impl From<LockError> for EngineError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Repo(r) => EngineError::Repo(r),
            other => {
                let hint = other.hint().unwrap_or_default();
                EngineError::invalid(other.to_string(), hint)
            }
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A session error: the message already says where and what to do next.
pub(crate) fn postgres(e: lifeboat_pg::session::SessionError) -> EngineError {
    use lifeboat_pg::session::SessionError as S;
    let hint = match &e {
        S::Connect { .. } | S::ConnectTimeout { .. } | S::Config(_) => {
            "check --db (or `db` in the config file, or the PG* environment) and that the server is running"
        }
        S::Unsupported { .. } => "upgrade the server to PostgreSQL 13 or later",
        _ => "see the server log for details",
    };
    EngineError::Postgres {
        message: e.to_string(),
        hint: hint.to_string(),
    }
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> EngineError {
    EngineError::Internal(format!("background task failed: {e}"))
}
