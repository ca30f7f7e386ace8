//! Exit codes, in one place. docs/EXIT_CODES.md is the user-facing copy of this table.

use lifeboat_engine::EngineError;
use lifeboat_repo::RepoError;
use lifeboat_storage::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// wal-fetch: the repository does not hold the requested file.
    NotFound = 1,
    /// Invalid command-line arguments.
    Usage = 2,
    /// Configuration: no repository given or found, bad config file, passphrase missing or wrong.
    Config = 3,
    /// Refused: invalid input, WAL of another cluster, a conflicting duplicate, an existing repository.
    Refused = 4,
    /// The repository's store could not be read or written (after retries).
    Storage = 5,
    /// Stored data failed verification.
    Corrupt = 6,
    /// A local file could not be read or written.
    LocalIo = 7,
    /// PostgreSQL could not be reached, or refused or failed a request (backup, check).
    Postgres = 8,
    /// `drill`: the drill ran and failed (the record says which step and why). `alert test`: a
    /// channel did not take the message.
    Failed = 9,
    /// A bug in lifeboat.
    Internal = 70,
    /// Standard output was closed by its reader; the command stopped quietly (as on SIGPIPE).
    ClosedOutput = 141,
    /// `drill`: stopped by SIGTERM or SIGINT; its scratch cluster was stopped and removed and
    /// nothing was recorded (as a process stopped by SIGTERM would exit).
    Interrupted = 143,
    /// wal-fetch: anything but success or not-found. Above 125, so PostgreSQL stops recovery
    /// instead of treating the file as missing and ending recovery early.
    AbortRecovery = 200,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A failure as the user sees it: message, hint, exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: hint.into(),
        }
    }
    pub fn config(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(Exit::Config, message, Some(hint.into()))
    }
}

pub fn repo_exit(e: &RepoError) -> Exit {
    match e {
        RepoError::NotInitialized { .. }
        | RepoError::PassphraseRequired { .. }
        | RepoError::WrongPassphrase { .. }
        | RepoError::UnexpectedPassphrase { .. }
        | RepoError::UnsupportedFormat { .. } => Exit::Config,
        RepoError::AlreadyInitialized { .. }
        | RepoError::NotEmpty { .. }
        | RepoError::WalConflict { .. }
        | RepoError::ForeignCluster { .. }
        | RepoError::IdentityMismatch { .. }
        | RepoError::Invalid(_) => Exit::Refused,
        RepoError::Corrupt { .. } => Exit::Corrupt,
        RepoError::Storage(s) => match s.kind {
            ErrorKind::NotFound => Exit::NotFound,
            ErrorKind::Config => Exit::Config,
            _ => Exit::Storage,
        },
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let exit = match &e {
            EngineError::InvalidInput { .. } => Exit::Refused,
            EngineError::Repo(r) => repo_exit(r),
            EngineError::Corrupt { .. } => Exit::Corrupt,
            EngineError::LocalIo { .. } => Exit::LocalIo,
            EngineError::Postgres { .. } => Exit::Postgres,
            EngineError::Internal(_) => Exit::Internal,
        };
        Failure {
            exit,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

impl From<RepoError> for Failure {
    fn from(e: RepoError) -> Self {
        EngineError::from(e).into()
    }
}
