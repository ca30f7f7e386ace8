//! Re-keying: wrap the repository's data key with a new passphrase (docs/FORMAT.md, "Re-keying").
//!
//! The data key never changes, so no object is rewritten: only the config's list of wrapped
//! keys. The change is made in two durable steps so that a crash at any moment leaves a config
//! that one of the two passphrases opens:
//!
//! 1. both copies of the config get the new wrapping *beside* the old one(s), and are read back;
//!    from here on either passphrase opens the repository;
//! 2. `lifeboat.json`, then `lifeboat.json.copy`, are rewritten with the new wrapping only.
//!
//! A crash during step 2 leaves `lifeboat.json` (read first) with the new wrapping only, and the
//! copy with both: the new passphrase opens it; running the change again with the new passphrase
//! as the current one finishes it.

use bytes::Bytes;
use lifeboat_storage::PutMode;

use crate::config::{self, RepoConfig, WrappedKey};
use crate::crypto::{self, Passphrase};
use crate::{RepoError, Repository, Result, derive_kek_for, keys, read_config, unwrap_data_key};

/// Moments at which a test may stop a change, to prove that a crash there is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyStep {
    /// Both copies hold the old and the new wrapping.
    BothWrappings,
    /// `lifeboat.json` holds only the new wrapping; the copy still holds both.
    Switched,
}

impl Repository {
    /// Re-wrap the data key with `new`, dropping every wrapping `current` does not need any more
    /// (all but the new one). `current` must open the config as stored now. `after` is called
    /// after each step; an error from it stops the change there (tests use it to simulate a
    /// crash). Call it under the repository lock.
    pub async fn change_passphrase(
        &self,
        current: &Passphrase,
        new: &Passphrase,
        after: &dyn Fn(RekeyStep) -> Result<()>,
    ) -> Result<()> {
        let store = self.store();
        let location = store.describe();
        // Read again: the config this handle was opened with may be older than the lock.
        let config = read_config(store.as_ref()).await?;
        let Some(enc) = &config.encryption else {
            return Err(RepoError::Invalid(format!(
                "the repository at {location} is not encrypted: it has no passphrase to change"
            )));
        };
        let current_kek = derive_kek_for(enc, current)?;
        let Some((id, data_key)) = unwrap_data_key(&config, enc, &current_kek)? else {
            return Err(RepoError::WrongPassphrase { location });
        };
        let new_kek = derive_kek_for(enc, new)?;
        let copies_agree = raw(self, keys::CONFIG).await? == raw(self, keys::CONFIG_COPY).await?;
        if enc.keys.len() == 1 && copies_agree && unwrap_data_key(&config, enc, &new_kek)?.is_some()
        {
            return Err(RepoError::Invalid(format!(
                "the new passphrase already is the passphrase of the repository at {location}: nothing changed"
            )));
        }
        let wrapped = crypto::seal(
            &new_kek,
            data_key.as_ref(),
            &config::wrap_aad(&config.repo_id, id),
        )
        .map_err(|e| RepoError::Invalid(format!("cannot wrap the data key: {e}")))?;
        let new_entry = WrappedKey {
            id,
            wrapped: hex::encode(wrapped),
        };

        // Step 1: the new wrapping beside the others, in both copies, read back.
        let mut both = config.clone();
        if let Some(e) = both.encryption.as_mut() {
            e.keys.push(new_entry.clone());
        }
        put_config(self, keys::CONFIG, &both).await?;
        put_config(self, keys::CONFIG_COPY, &both).await?;
        confirm(self, new, &location).await?;
        after(RekeyStep::BothWrappings)?;

        // Step 2: only the new wrapping, first copy first.
        let mut last = config.clone();
        if let Some(e) = last.encryption.as_mut() {
            e.keys = vec![new_entry];
        }
        put_config(self, keys::CONFIG, &last).await?;
        after(RekeyStep::Switched)?;
        put_config(self, keys::CONFIG_COPY, &last).await?;
        confirm(self, new, &location).await
    }
}

pub(crate) async fn raw(repo: &Repository, key: &str) -> Result<Option<Bytes>> {
    match repo.store().get(key).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn put_config(repo: &Repository, key: &str, config: &RepoConfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(config).map_err(|e| RepoError::Invalid(e.to_string()))?;
    repo.store()
        .put(key, Bytes::from(json), PutMode::Overwrite)
        .await?;
    Ok(())
}

/// Both copies of the config, read back from the store, open with `passphrase`.
async fn confirm(repo: &Repository, passphrase: &Passphrase, location: &str) -> Result<()> {
    for key in [keys::CONFIG, keys::CONFIG_COPY] {
        let bytes = raw(repo, key).await?.ok_or_else(|| RepoError::Corrupt {
            key: key.into(),
            reason: "missing right after it was written".into(),
        })?;
        let config: RepoConfig =
            serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
                key: key.into(),
                reason: format!("unreadable right after it was written: {e}"),
            })?;
        let opens = match &config.encryption {
            Some(enc) => {
                unwrap_data_key(&config, enc, &*derive_kek_for(enc, passphrase)?)?.is_some()
            }
            None => false,
        };
        if !opens {
            return Err(RepoError::Corrupt {
                key: key.into(),
                reason: format!(
                    "read back from {location}, it does not open with the new passphrase"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn repo(dir: &std::path::Path, pass: &str) -> Repository {
        crate::test_repository(dir, Some(pass)).await
    }

    async fn opens(repo: &Repository, pass: &str) -> bool {
        Repository::open(repo.store().clone(), Some(&Passphrase::new(pass)))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn change_keeps_data_readable_and_drops_the_old_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), "old").await;
        r.put_object("records/x", b"hello", PutMode::Create)
            .await
            .unwrap();
        r.change_passphrase(
            &Passphrase::new("old"),
            &Passphrase::new("new"),
            &|_| Ok(()),
        )
        .await
        .unwrap();
        assert!(!opens(&r, "old").await);
        let reopened = Repository::open(r.store().clone(), Some(&Passphrase::new("new")))
            .await
            .unwrap();
        assert_eq!(reopened.get_object("records/x").await.unwrap().1, b"hello");
        // Same again: refused, nothing changed.
        let err = reopened
            .change_passphrase(
                &Passphrase::new("new"),
                &Passphrase::new("new"),
                &|_| Ok(()),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nothing changed"), "{err}");
        // A wrong current passphrase.
        let err = reopened
            .change_passphrase(&Passphrase::new("old"), &Passphrase::new("x"), &|_| Ok(()))
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::WrongPassphrase { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_stop_at_any_step_leaves_one_passphrase_working() {
        for step in [RekeyStep::BothWrappings, RekeyStep::Switched] {
            let dir = tempfile::tempdir().unwrap();
            let r = repo(dir.path(), "old").await;
            // The hook's error stands for the crash: nothing after it runs.
            let result = r
                .change_passphrase(&Passphrase::new("old"), &Passphrase::new("new"), &|at| {
                    if at == step {
                        Err(RepoError::Invalid("stopped".into()))
                    } else {
                        Ok(())
                    }
                })
                .await;
            assert!(result.is_err(), "{step:?}: did not stop");
            let (old, new) = (opens(&r, "old").await, opens(&r, "new").await);
            match step {
                RekeyStep::BothWrappings => assert!(old && new, "{step:?}"),
                RekeyStep::Switched => assert!(new, "{step:?}"),
            }
            // Finishing with the new passphrase as the current one.
            r.change_passphrase(
                &Passphrase::new("new"),
                &Passphrase::new("new"),
                &|_| Ok(()),
            )
            .await
            .unwrap();
            assert!(
                opens(&r, "new").await && !opens(&r, "old").await,
                "{step:?}"
            );
        }
    }
}
