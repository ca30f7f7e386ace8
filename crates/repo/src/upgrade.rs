//! Format upgrade: raise a repository's `lifeboat.json` version to the one this Lifeboat writes
//! (today 2: backups store their chunks in packs), without touching any other object. Version 2
//! readers read everything a version 1 repository holds, so only the config changes; older
//! binaries then refuse the repository as "unsupported version" instead of meeting a pack they
//! cannot read.
//!
//! As with re-keying (`rekey`), `lifeboat.json` is written first, then `lifeboat.json.copy`, then
//! both are read back. Readers take `lifeboat.json` first, so a crash between the two writes
//! leaves an upgraded repository whose copy is behind, and running the upgrade again finishes
//! it: it is done only when both copies say the new version.

use crate::config::{PACKS_VERSION, RepoConfig};
use crate::rekey::{put_config, raw};
use crate::{RepoError, Repository, Result, keys, read_config};

/// What an upgrade found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeOutcome {
    /// Both copies already held this version: nothing was written.
    AlreadyCurrent {
        version: u32,
    },
    Upgraded {
        from: u32,
        to: u32,
    },
}

/// The moment at which a test may stop an upgrade, to prove a crash there harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStep {
    /// `lifeboat.json` holds the new version; the copy does not yet.
    Switched,
}

impl Repository {
    /// Rewrite both copies of the config at the version this Lifeboat writes. `after` is called
    /// after each step; an error from it stops the upgrade there (tests use it to simulate a
    /// crash). Call it under the repository lock.
    pub async fn upgrade(
        &self,
        after: &dyn Fn(UpgradeStep) -> Result<()>,
    ) -> Result<UpgradeOutcome> {
        let store = self.store().as_ref();
        // Read again: the config this handle was opened with may be older than the lock.
        let config = read_config(store).await?;
        let target = config.version.max(PACKS_VERSION);
        let mut upgraded = config.clone();
        upgraded.version = target;
        let mut current = true;
        // The oldest version either copy says (a copy behind is what is being upgraded).
        let mut from = config.version;
        for key in [keys::CONFIG, keys::CONFIG_COPY] {
            let stored = raw(self, key).await?;
            let parsed = stored
                .as_deref()
                .and_then(|b| serde_json::from_slice::<RepoConfig>(b).ok());
            current &= parsed.as_ref() == Some(&upgraded);
            if let Some(p) = parsed {
                from = from.min(p.version);
            }
        }
        if current {
            return Ok(UpgradeOutcome::AlreadyCurrent { version: target });
        }
        put_config(self, keys::CONFIG, &upgraded).await?;
        after(UpgradeStep::Switched)?;
        put_config(self, keys::CONFIG_COPY, &upgraded).await?;
        for key in [keys::CONFIG, keys::CONFIG_COPY] {
            let bytes = raw(self, key).await?.ok_or_else(|| RepoError::Corrupt {
                key: key.into(),
                reason: "missing right after it was written".into(),
            })?;
            let read: RepoConfig =
                serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
                    key: key.into(),
                    reason: format!("unreadable right after it was written: {e}"),
                })?;
            if read != upgraded {
                return Err(RepoError::Corrupt {
                    key: key.into(),
                    reason: format!(
                        "read back from {}, it is not what was written (version {})",
                        self.location(),
                        read.version
                    ),
                });
            }
        }
        Ok(UpgradeOutcome::Upgraded { from, to: target })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Passphrase;

    /// An encrypted repository whose two config copies say version 1.
    async fn version_1(dir: &std::path::Path) -> Repository {
        let repo = crate::test_repository(dir, Some("pw")).await;
        let mut config = read_config(repo.store().as_ref()).await.unwrap();
        config.version = 1;
        put_config(&repo, keys::CONFIG, &config).await.unwrap();
        put_config(&repo, keys::CONFIG_COPY, &config).await.unwrap();
        reopen(&repo).await
    }

    async fn reopen(repo: &Repository) -> Repository {
        Repository::open(repo.store().clone(), Some(&Passphrase::new("pw")))
            .await
            .unwrap()
    }

    async fn versions(repo: &Repository) -> [u32; 2] {
        let mut out = [0; 2];
        for (i, key) in [keys::CONFIG, keys::CONFIG_COPY].into_iter().enumerate() {
            let bytes = raw(repo, key).await.unwrap().unwrap();
            out[i] = serde_json::from_slice::<RepoConfig>(&bytes)
                .unwrap()
                .version;
        }
        out
    }

    #[tokio::test]
    async fn upgrade_rewrites_both_copies_once_and_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let repo = version_1(dir.path()).await;
        repo.put_object("records/x", b"hello", lifeboat_storage::PutMode::Create)
            .await
            .unwrap();
        assert!(!repo.writes_packs());
        let outcome = repo.upgrade(&|_| Ok(())).await.unwrap();
        assert_eq!(outcome, UpgradeOutcome::Upgraded { from: 1, to: 2 });
        assert_eq!(versions(&repo).await, [2, 2]);
        let reopened = reopen(&repo).await;
        assert!(reopened.writes_packs());
        assert_eq!(reopened.get_object("records/x").await.unwrap().1, b"hello");
        assert_eq!(
            reopened.upgrade(&|_| Ok(())).await.unwrap(),
            UpgradeOutcome::AlreadyCurrent { version: 2 }
        );
    }

    #[tokio::test]
    async fn a_stop_between_the_copies_reads_as_upgraded_and_a_second_run_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = version_1(dir.path()).await;
        let stopped = repo
            .upgrade(&|_| Err(RepoError::Invalid("stopped".into())))
            .await;
        assert!(stopped.is_err());
        assert_eq!(versions(&repo).await, [2, 1]);
        assert!(
            reopen(&repo).await.writes_packs(),
            "lifeboat.json is read first"
        );
        assert_eq!(
            repo.upgrade(&|_| Ok(())).await.unwrap(),
            UpgradeOutcome::Upgraded { from: 1, to: 2 }
        );
        assert_eq!(versions(&repo).await, [2, 2]);
    }
}
