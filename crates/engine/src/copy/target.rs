//! The repository a copy goes to: created from the source's config when the location is empty,
//! accepted when it holds the same repository (same `repo_id`), refused otherwise, before
//! anything is written.

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_repo::{Passphrase, RepoError, Repository, keys};
use lifeboat_storage::{ErrorKind, PutMode, Store};

use crate::{EngineError, Result};

/// The opened target, and whether this run created it.
pub struct Target {
    pub repo: Repository,
    pub created: bool,
}

/// Open (or create) the copy of `source` at `store`.
pub async fn open(
    source: &Repository,
    store: Arc<dyn Store>,
    passphrase: Option<&Passphrase>,
) -> Result<Target> {
    let location = store.describe();
    if location == source.location() {
        return Err(EngineError::invalid(
            format!("the copy's location {location} is the repository itself"),
            "give --to (or [copy] to) another location: a copy protects against the loss of the repository's store only when it lives elsewhere",
        ));
    }
    let listing = store.list("").await.map_err(RepoError::from)?;
    let has = |key: &str| listing.iter().any(|m| m.key == key);
    let mut created = false;
    if !has(keys::CONFIG) && !has(keys::CONFIG_COPY) {
        if let Some(first) = listing.iter().find(|m| !m.key.contains(".tmp.")) {
            return Err(EngineError::invalid(
                format!(
                    "{location} holds {} object(s) (e.g. {}) and no Lifeboat repository: refusing to copy into it",
                    listing.len(),
                    first.key
                ),
                "give --to an empty location, or one holding an earlier copy of this repository",
            ));
        }
        // Empty: the source's config, byte for byte (same repo_id, same wrapped data key, so
        // objects are valid there as they are stored).
        let config = source_config(source).await?;
        let copy = match source.store().get(keys::CONFIG_COPY).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => config.clone(),
            Err(e) => return Err(RepoError::from(e).into()),
        };
        put_config(store.as_ref(), keys::CONFIG, config).await?;
        put_config(store.as_ref(), keys::CONFIG_COPY, copy).await?;
        created = true;
    }
    let repo = Repository::open(store.clone(), passphrase).await?;
    let (ours, theirs) = (&source.config().repo_id, &repo.config().repo_id);
    if ours != theirs {
        return Err(EngineError::invalid(
            format!(
                "{location} holds another repository (repo_id {theirs}, the source's is {ours}): refusing to copy into it"
            ),
            "give --to an empty location, or the location of an earlier copy of this repository",
        ));
    }
    if repo.config().version < source.config().version {
        return Err(EngineError::invalid(
            format!(
                "the copy at {location} has format version {}, the source {}",
                repo.config().version,
                source.config().version
            ),
            "run `lifeboat upgrade` against the copy (--repo), then copy again",
        ));
    }
    // A run killed between the two config puts: finish with the copy's own first config.
    if !created && !has(keys::CONFIG_COPY) {
        let config = store.get(keys::CONFIG).await.map_err(RepoError::from)?;
        put_config(store.as_ref(), keys::CONFIG_COPY, config).await?;
    }
    Ok(Target { repo, created })
}

async fn source_config(source: &Repository) -> Result<Bytes> {
    for key in [keys::CONFIG, keys::CONFIG_COPY] {
        match source.store().get(key).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(RepoError::from(e).into()),
        }
    }
    Err(RepoError::NotInitialized {
        location: source.location(),
    }
    .into())
}

/// Create-put a config file; one already there (a race with another copy) is left as it is:
/// opening the repository then checks its repo_id.
async fn put_config(store: &dyn Store, key: &str, bytes: Bytes) -> Result<()> {
    match store.put(key, bytes, PutMode::Create).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RepoError::from(e).into()),
    }
}
