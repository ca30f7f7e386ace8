//! `lifeboat init`: create a repository (encrypted unless `--unencrypted`) at the configured location.

use lifeboat_repo::{Compression, CompressionSettings, InitOptions, Repository};

use super::context::{repo_location, storage_failure};
use crate::cli::InitArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn init(resolved: &Resolved, args: &InitArgs) -> Result<Exit, Failure> {
    let location = repo_location(resolved)?;
    let passphrase = match (&resolved.passphrase, args.unencrypted) {
        (Some(_), true) => {
            return Err(Failure::config(
                "--unencrypted was given but a passphrase is configured",
                "drop --unencrypted to create an encrypted repository, or unset LIFEBOAT_PASSPHRASE / LIFEBOAT_PASSPHRASE_FILE / passphrase_file",
            ));
        }
        (None, false) => {
            return Err(Failure::config(
                "no passphrase configured: refusing to create an unencrypted repository by accident",
                "set LIFEBOAT_PASSPHRASE_FILE to a file (mode 0600) holding a passphrase, or pass --unencrypted if the repository must not be encrypted",
            ));
        }
        (p, _) => p.clone(),
    };
    let algorithm: Compression = args
        .compression
        .parse()
        .map_err(|e: String| Failure::new(Exit::Usage, e, None))?;
    let store = lifeboat_storage::open_or_create(location, &resolved.storage)
        .map_err(|e| storage_failure(location, e))?;
    let encrypted = passphrase.is_some();
    let options = InitOptions {
        passphrase,
        compression: CompressionSettings {
            algorithm,
            level: args.compression_level,
        },
        ..InitOptions::default()
    };
    let repo = Repository::init(store, options).await?;
    outln!(
        "created {} repository at {} (id {}, compression {} level {})",
        if encrypted {
            "an encrypted"
        } else {
            "an UNENCRYPTED"
        },
        repo.location(),
        repo.config().repo_id,
        args.compression,
        args.compression_level
    );
    if encrypted {
        outln!("keep the passphrase safe: without it nothing in the repository can be restored");
    }
    Ok(Exit::Success)
}
