//! The WAL archive: store a WAL file once and never replace it, fetch it back verified, list it;
//! the archived segments of a timeline as a set with its gaps ([`ArchivedSegments`]).

mod segments;
mod stream;

use bytes::Bytes;
use lifeboat_pg::walname::WalFileName;
use lifeboat_storage::{ErrorKind, PutMode};

use crate::codec::ContentHash;
use crate::{RepoError, Repository, Result, keys};

pub use segments::{ArchivedSegments, Gap};
pub use stream::{StreamPiece, StreamedPrefix, streamed_chain};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newly stored, durably.
    Stored,
    /// The same content was already stored (e.g. PostgreSQL retrying after a crash of ours).
    AlreadyStored,
}

/// A stored WAL file as seen in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWal {
    pub name: WalFileName,
    pub stored_size: u64,
}

impl Repository {
    /// Store a WAL file under its name. An existing object with the same content is success; with
    /// different content it is a [`RepoError::WalConflict`] and the stored object stays as it is.
    /// Hashing and compression run on a blocking thread so parallel pushes use every core.
    pub async fn put_wal(&self, name: &WalFileName, plain: Bytes) -> Result<PutOutcome> {
        let codec = self.codec().clone();
        let (hash, object) = tokio::task::spawn_blocking(move || codec.encode(&plain))
            .await
            .map_err(|e| RepoError::Invalid(format!("encoding {name} failed: {e}")))?
            .map_err(|reason| RepoError::Invalid(format!("cannot encode {name}: {reason}")))?;
        self.put_wal_encoded(name, hash, object).await
    }

    /// Store a WAL file already encoded with this repository's codec (e.g. streamed from disk by
    /// [`Codec::stream_encoder`](crate::Codec::stream_encoder)), `hash` being its content hash;
    /// the same never-replace rule as [`put_wal`](Self::put_wal).
    pub async fn put_wal_encoded(
        &self,
        name: &WalFileName,
        hash: ContentHash,
        object: Vec<u8>,
    ) -> Result<PutOutcome> {
        let key = keys::wal(name);
        let store = self.store();
        if !store.capabilities().conditional_create {
            // Without an atomic create, look first; the remaining race is two different files
            // pushed under one name in the same instant, which PostgreSQL's archiver never does.
            match self.object_header(&key).await {
                Ok(header) => return compare(name, header.hash, hash),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        match store.put(&key, Bytes::from(object), PutMode::Create).await {
            Ok(()) => Ok(PutOutcome::Stored),
            // Also reached when our own earlier attempt landed before a timeout: same hash, fine.
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                let header = self.object_header(&key).await?;
                compare(name, header.hash, hash)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fetch and verify a WAL file; `Ok(None)` only when the repository truly does not hold it.
    pub async fn get_wal(&self, name: &WalFileName) -> Result<Option<Vec<u8>>> {
        let key = keys::wal(name);
        let raw = match self.store().get(&key).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let repo = self.clone();
        let decoded = tokio::task::spawn_blocking(move || repo.decode(&key, &raw))
            .await
            .map_err(|e| RepoError::Invalid(format!("decoding {name} failed: {e}")))??;
        Ok(Some(decoded.1))
    }

    /// Every WAL file in the repository, sorted by name (timeline, then position).
    pub async fn list_wal(&self) -> Result<Vec<StoredWal>> {
        let mut out: Vec<StoredWal> = self
            .store()
            .list(keys::WAL_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| {
                keys::parse_wal_key(&o.key).map(|name| StoredWal {
                    name,
                    stored_size: o.size,
                })
            })
            .collect();
        out.sort_by_cached_key(|w| w.name.to_string());
        Ok(out)
    }
}

fn compare(name: &WalFileName, stored: ContentHash, offered: ContentHash) -> Result<PutOutcome> {
    if stored == offered {
        Ok(PutOutcome::AlreadyStored)
    } else {
        Err(RepoError::WalConflict {
            name: name.to_string(),
            stored: stored.to_hex(),
            offered: offered.to_hex(),
        })
    }
}
