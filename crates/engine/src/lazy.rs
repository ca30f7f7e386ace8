//! A repository opened on first use.
//!
//! Opening an encrypted repository costs a key derivation (tens of milliseconds). `wal-push` and
//! `wal-fetch` often answer from their local spool without touching the repository at all, so
//! they open it only when they must.

use std::sync::Arc;

use lifeboat_repo::{Passphrase, Repository};
use lifeboat_storage::Store;
use tokio::sync::OnceCell;

use crate::Result;

#[derive(Debug)]
pub struct LazyRepo {
    store: Arc<dyn Store>,
    passphrase: Option<Passphrase>,
    repo: OnceCell<Repository>,
}

impl LazyRepo {
    pub fn new(store: Arc<dyn Store>, passphrase: Option<Passphrase>) -> Self {
        Self {
            store,
            passphrase,
            repo: OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<&Repository> {
        Ok(self
            .repo
            .get_or_try_init(|| Repository::open(self.store.clone(), self.passphrase.as_ref()))
            .await?)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
