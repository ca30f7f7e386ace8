//! The repository config object (`lifeboat.json`): format version, identity of the repository,
//! default compression and, for encrypted repositories, the KDF parameters and wrapped data keys.
//! It is the only object stored as plain JSON, because it is what unlocks the others.

use serde::{Deserialize, Serialize};

use crate::codec::CompressionSettings;
use crate::crypto::KdfParams;

pub const FORMAT_NAME: &str = "lifeboat-repository";
/// The version `init` writes: 2, a repository whose backups store their chunks in packs
/// (docs/FORMAT.md "Packs"). Version 1 repositories hold loose chunks only; this Lifeboat reads
/// them unchanged and keeps writing loose chunks into them until `lifeboat upgrade`, so that an
/// older binary sharing the repository never meets a pack it cannot read.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this Lifeboat opens.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// The first version whose backups write packs.
pub const PACKS_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    /// 16 random bytes, hex: names this repository in messages and binds wrapped keys to it.
    pub repo_id: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub compression: CompressionSettings,
    pub encryption: Option<EncryptionConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Always "xchacha20poly1305" in format version 1.
    pub cipher: String,
    /// Always "argon2id" in format version 1.
    pub kdf: String,
    pub kdf_params: KdfParams,
    /// Hex salt for the KDF.
    pub salt: String,
    /// The data key wrapped by each passphrase-derived key; one entry today, several during a
    /// future re-key.
    pub keys: Vec<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    pub id: u8,
    /// Hex of nonce || XChaCha20-Poly1305(KEK, data key) || tag, AAD = [`wrap_aad`].
    pub wrapped: String,
}

/// Associated data binding a wrapped key to its repository and id, so a key blob copied from
/// another repository does not open this one.
pub fn wrap_aad(repo_id: &str, key_id: u8) -> Vec<u8> {
    format!("lifeboat data key v1|{repo_id}|{key_id}").into_bytes()
}
