//! `lifeboat passphrase change`: re-wrap the repository's data key under a new passphrase.

use lifeboat_repo::Repository;

use super::context::{acquire_lock, open_store};
use crate::cli::PassphraseChangeArgs;
use crate::config::{self, Resolved};
use crate::exit::{Exit, Failure};

/// `passphrase change`: re-wrap the data key under the repository lock (two changes at once could
/// leave the config's two copies with different passphrases).
pub async fn change(resolved: &Resolved, args: &PassphraseChangeArgs) -> Result<Exit, Failure> {
    use lifeboat_repo::lock::LockKind;
    use lifeboat_repo::rekey::RekeyStep;
    let new = config::new_passphrase(args.new_passphrase_file.as_deref())?;
    let store = open_store(resolved)?;
    let location = store.describe();
    let Some(current) = resolved.passphrase.as_ref() else {
        let repo = Repository::open(store, None).await?;
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "the repository at {} is not encrypted: it has no passphrase to change",
                repo.location()
            ),
            Some("an unencrypted repository cannot be encrypted in place: create an encrypted one (`lifeboat init` with a passphrase configured) and archive and back up into it".to_string()),
        ));
    };
    let repo = Repository::open(store, Some(current)).await?;
    let mut lock = acquire_lock(&repo, LockKind::Passphrase).await?;
    // Test hook: stop as a crash would, after a step (see tests/e2e/adversarial/archive.rs).
    let stop_at = std::env::var("LIFEBOAT_TEST_PASSPHRASE_STOP").ok();
    let after = |step: RekeyStep| {
        let name = match step {
            RekeyStep::BothWrappings => "both",
            RekeyStep::Switched => "switched",
        };
        if stop_at.as_deref() == Some(name) {
            eprintln!("lifeboat: stopping after step {name:?} (LIFEBOAT_TEST_PASSPHRASE_STOP)");
            std::process::exit(99);
        }
        Ok(())
    };
    let result = repo.change_passphrase(current, &new, &after).await;
    lock.release().await;
    result.map_err(|e| match e {
        lifeboat_repo::RepoError::Invalid(message) => Failure::new(
            Exit::Refused,
            message,
            Some("nothing was written; the current passphrase comes from LIFEBOAT_PASSPHRASE_FILE, LIFEBOAT_PASSPHRASE or passphrase_file, the new one from --new-passphrase-file or LIFEBOAT_NEW_PASSPHRASE".to_string()),
        ),
        other => other.into(),
    })?;
    outln!(
        "changed the passphrase of the repository at {location}: the old passphrase no longer opens it"
    );
    outln!(
        "give every user of the repository the new passphrase now (passphrase_file or LIFEBOAT_PASSPHRASE_FILE): PostgreSQL's archive_command (until then wal-push fails and WAL piles up in pg_wal), restore_command, `lifeboat serve` and every other host"
    );
    outln!(
        "the data key did not change: a copy of the repository, or of its lifeboat.json, taken before now still opens with the old passphrase"
    );
    Ok(Exit::Success)
}
