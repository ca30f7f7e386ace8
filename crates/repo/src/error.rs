//! Errors of the repository layer, classified so the CLI can map them to documented exit codes
//! and every message can say what happened, why, and what to do.

use lifeboat_storage::{ErrorKind, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no repository at {location}")]
    NotInitialized { location: String },

    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },

    #[error(
        "{location} is not empty (it holds {count} object{}, e.g. {example}): refusing to create a repository there",
        if *count == 1 { "" } else { "s" }
    )]
    NotEmpty {
        location: String,
        count: usize,
        example: String,
    },

    #[error("the repository at {location} is encrypted and no passphrase was given")]
    PassphraseRequired { location: String },

    #[error("the passphrase does not open the repository at {location}")]
    WrongPassphrase { location: String },

    #[error("the repository at {location} is not encrypted, but a passphrase was given")]
    UnexpectedPassphrase { location: String },

    #[error(
        "repository format version {found} at {location} is not supported by this lifeboat (supports {supported})"
    )]
    UnsupportedFormat {
        location: String,
        found: u32,
        supported: u32,
    },

    #[error("object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },

    #[error(
        "{name} is already archived with different content (stored checksum {stored}, this file {offered}); the stored copy was kept"
    )]
    WalConflict {
        name: String,
        stored: String,
        offered: String,
    },

    #[error(
        "WAL from another cluster: this file has system identifier {offered}, the repository belongs to cluster {bound}"
    )]
    ForeignCluster { bound: u64, offered: u64 },

    #[error("cluster identity differs from the repository's: {what}")]
    IdentityMismatch { what: String },

    #[error(transparent)]
    Storage(#[from] StorageError),

    #[error("{0}")]
    Invalid(String),
}

impl RepoError {
    /// The operator's next step, printed as `HINT:` under the message.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NotInitialized { .. } => {
                "create it with `lifeboat init`, or check --repo / LIFEBOAT_REPO / `repo` in the config file".into()
            }
            Self::NotEmpty { .. } => {
                "choose an empty or missing location for the repository (lifeboat never writes into a place that holds other files), or move what is there elsewhere first".into()
            }
            Self::AlreadyInitialized { .. } => {
                "lifeboat never touches an existing repository on init; use it as it is, or choose another location".into()
            }
            Self::PassphraseRequired { .. } => {
                "set LIFEBOAT_PASSPHRASE_FILE (a file readable only by this user) or LIFEBOAT_PASSPHRASE, or passphrase_file in the config file".into()
            }
            Self::WrongPassphrase { .. } => {
                "check that LIFEBOAT_PASSPHRASE / the passphrase file holds the repository's passphrase: the one it was created with, or the last one `lifeboat passphrase change` set (if a change was interrupted, the new one)".into()
            }
            Self::UnexpectedPassphrase { .. } => {
                "remove the passphrase setting for this repository, or point --repo at the encrypted one you meant".into()
            }
            Self::UnsupportedFormat { .. } => "upgrade lifeboat to a version that reads this format".into(),
            Self::Corrupt { .. } => {
                "the stored object was damaged or altered after it was written; run `lifeboat info` and check the storage; if another copy of this file exists (e.g. still in pg_wal), it can be pushed again after the damaged object is removed".into()
            }
            Self::WalConflict { .. } => {
                "two different files claim the same WAL name: usually a second cluster (or a restored copy promoted without a new timeline) archives into this repository. Give each cluster its own repository; compare the files before removing anything".into()
            }
            Self::ForeignCluster { .. } => {
                "each cluster needs its own repository: point this cluster's archive_command at a repository created for it (`lifeboat init`)".into()
            }
            Self::IdentityMismatch { .. } => "use a repository created for this cluster".into(),
            Self::Storage(e) => match e.kind {
                _ if e.hint.is_some() => return e.hint.clone(),
                ErrorKind::Transient => "the store did not answer in time after retries; check network, endpoint and the store's health, then retry".into(),
                ErrorKind::Permanent => "check the repository location, credentials and permissions".into(),
                _ => return None,
            },
            Self::Invalid(_) => return None,
        })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Storage(e) if e.kind == ErrorKind::NotFound)
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;
