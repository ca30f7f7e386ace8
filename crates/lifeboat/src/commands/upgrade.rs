//! `lifeboat upgrade`: raise the repository's format version (today to 2, packs) by rewriting
//! its config under the repository lock; the repository crate says how a crash stays harmless.

use lifeboat_repo::lock::LockKind;
use lifeboat_repo::upgrade::UpgradeOutcome;

use super::context::{acquire_lock, open_repo};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn upgrade(resolved: &Resolved) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let location = repo.location();
    // The passphrase lock: it guards the config, and like every lock kind it excludes backups
    // and expire, so no backup starts with the old version while the copies change.
    let mut lock = acquire_lock(&repo, LockKind::Passphrase).await?;
    let result = repo.upgrade(&|_| Ok(())).await;
    lock.release().await;
    match result? {
        UpgradeOutcome::AlreadyCurrent { version } => {
            outln!(
                "the repository at {location} already is at format version {version}: nothing to do"
            );
        }
        UpgradeOutcome::Upgraded { from, to } => {
            outln!(
                "upgraded the repository at {location} from format version {from} to {to}: new backups store their chunks in packs"
            );
            outln!(
                "existing backups and their chunks stay as they are and restore as before; only lifeboat.json and its copy changed"
            );
            outln!(
                "a Lifeboat too old for version {to} now refuses this repository (\"unsupported version\"): use this version on every host that uses it (archive_command, restore_command, `lifeboat serve`)"
            );
        }
    }
    Ok(Exit::Success)
}
