//! The repository: the on-storage promise written down in docs/FORMAT.md.
//!
//! This crate is the only place keys are spelled and objects are encoded. It owns the config and
//! its keys (their re-wrapping with a new passphrase, the format upgrade), the object codec (hash, compress,
//! encrypt and the verifying reverse), the cluster identity, the WAL archive and the set of
//! archived segments, backups (chunks and manifests, with the rules a manifest must keep), packs
//! of chunks and the indexes that locate them, repository locks and the operational records. It never talks to PostgreSQL, never prints, and
//! never decides which backup to use: that is the engine's job.

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_storage::{ErrorKind, PutMode, Store};

pub mod backup;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod dump;
pub mod error;
pub mod identity;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod records;
pub mod rekey;
pub mod stored;
pub mod timestamp;
pub mod upgrade;
pub mod wal;

pub use codec::{Codec, Compression, CompressionSettings, ContentHash, ObjectHeader};
pub use config::RepoConfig;
pub use crypto::{KdfParams, Passphrase};
pub use error::{RepoError, Result};
pub use identity::ClusterIdentity;

use config::{
    EncryptionConfig, FORMAT_NAME, FORMAT_VERSION, OLDEST_READABLE_VERSION, PACKS_VERSION,
    WrappedKey,
};
use crypto::DataKeys;

/// Options for creating a repository.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Encrypt with a data key wrapped by this passphrase; `None` creates an unencrypted repository
    /// (the CLI only allows that with an explicit `--unencrypted`).
    pub passphrase: Option<Passphrase>,
    pub compression: CompressionSettings,
    pub kdf: KdfParams,
}

/// An opened repository: its store, config and codec.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
    codec: Codec,
}

impl Repository {
    /// Create a repository. Refuses a location that already holds one, or holds anything at all.
    pub async fn init(store: Arc<dyn Store>, options: InitOptions) -> Result<Self> {
        let location = store.describe();
        let existing = store.list("").await?;
        if existing
            .iter()
            .any(|o| o.key == keys::CONFIG || o.key == keys::CONFIG_COPY)
        {
            return Err(RepoError::AlreadyInitialized { location });
        }
        if let Some(first) = existing.first() {
            return Err(RepoError::NotEmpty {
                location,
                count: existing.len(),
                example: first.key.clone(),
            });
        }
        let repo_id = hex::encode(
            crypto::random_bytes::<16>().map_err(|e| RepoError::Invalid(e.to_string()))?,
        );
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        let mut keys = None;
        let encryption = match &options.passphrase {
            None => None,
            Some(passphrase) => {
                let crypto_err = |e: crypto::CryptoError| {
                    RepoError::Invalid(format!("cannot create encryption keys: {e}"))
                };
                let salt = crypto::random_bytes::<16>().map_err(crypto_err)?;
                let data_key =
                    zeroize::Zeroizing::new(crypto::random_bytes::<32>().map_err(crypto_err)?);
                let kek = zeroize::Zeroizing::new(
                    crypto::derive_kek(passphrase, &salt, options.kdf).map_err(crypto_err)?,
                );
                let wrapped = crypto::seal(&kek, data_key.as_ref(), &config::wrap_aad(&repo_id, 1))
                    .map_err(crypto_err)?;
                keys = Some(DataKeys::from_data_key(1, &data_key));
                Some(EncryptionConfig {
                    cipher: "xchacha20poly1305".into(),
                    kdf: "argon2id".into(),
                    kdf_params: options.kdf,
                    salt: hex::encode(salt),
                    keys: vec![WrappedKey {
                        id: 1,
                        wrapped: hex::encode(wrapped),
                    }],
                })
            }
        };
        let config = RepoConfig {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            repo_id,
            created,
            compression: options.compression,
            encryption,
        };
        let json =
            serde_json::to_vec_pretty(&config).map_err(|e| RepoError::Invalid(e.to_string()))?;
        // The create-only put of the config is the atomic claim on the location; the copy follows.
        match store
            .put(keys::CONFIG, Bytes::from(json.clone()), PutMode::Create)
            .await
        {
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                return Err(RepoError::AlreadyInitialized { location });
            }
            other => other?,
        }
        store
            .put(keys::CONFIG_COPY, Bytes::from(json), PutMode::Create)
            .await?;
        let codec = Codec::new(config.compression, keys);
        Ok(Self {
            store,
            config,
            codec,
        })
    }

    /// Open an existing repository, unwrapping its data key with `passphrase` when encrypted.
    pub async fn open(store: Arc<dyn Store>, passphrase: Option<&Passphrase>) -> Result<Self> {
        let config = read_config(store.as_ref()).await?;
        let location = store.describe();
        if config.format != FORMAT_NAME
            || !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&config.version)
        {
            return Err(RepoError::UnsupportedFormat {
                location,
                found: config.version,
                supported: FORMAT_VERSION,
            });
        }
        let keys = match (&config.encryption, passphrase) {
            (None, maybe) => {
                if maybe.is_some() {
                    tracing::warn!(
                        "a passphrase is configured but the repository at {location} is not encrypted"
                    );
                }
                None
            }
            (Some(_), None) => return Err(RepoError::PassphraseRequired { location }),
            (Some(enc), Some(passphrase)) => {
                Some(unwrap_keys(&config, enc, passphrase, &location)?)
            }
        };
        let codec = Codec::new(config.compression, keys);
        Ok(Self {
            store,
            config,
            codec,
        })
    }

    /// Whether backups store new chunks in packs (format version 2 and later) rather than as
    /// loose `data/` objects.
    pub fn writes_packs(&self) -> bool {
        self.config.version >= PACKS_VERSION
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn codec(&self) -> &Codec {
        &self.codec
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn location(&self) -> String {
        self.store.describe()
    }

    /// Encode and store `plain` under `key`; returns the content hash.
    pub async fn put_object(&self, key: &str, plain: &[u8], mode: PutMode) -> Result<ContentHash> {
        let (hash, object) = self.encode(key, plain)?;
        self.store.put(key, Bytes::from(object), mode).await?;
        Ok(hash)
    }

    pub fn encode(&self, key: &str, plain: &[u8]) -> Result<(ContentHash, Vec<u8>)> {
        self.codec
            .encode(plain)
            .map_err(|reason| RepoError::Invalid(format!("cannot encode {key}: {reason}")))
    }

    /// Fetch, verify and decode the object at `key`.
    pub async fn get_object(&self, key: &str) -> Result<(ObjectHeader, Vec<u8>)> {
        let raw = self.store.get(key).await?;
        self.decode(key, &raw)
    }

    pub fn decode(&self, key: &str, raw: &[u8]) -> Result<(ObjectHeader, Vec<u8>)> {
        self.codec.decode(raw).map_err(|reason| RepoError::Corrupt {
            key: key.to_string(),
            reason,
        })
    }

    /// Only the header of a stored object (one small range read).
    pub async fn object_header(&self, key: &str) -> Result<ObjectHeader> {
        let raw = self
            .store
            .get_range(key, 0, codec::HEADER_LEN as u64)
            .await?;
        ObjectHeader::parse(&raw).map_err(|reason| RepoError::Corrupt {
            key: key.to_string(),
            reason,
        })
    }

    /// The cluster this repository is bound to, if any WAL or backup has been stored yet.
    pub async fn identity(&self) -> Result<Option<ClusterIdentity>> {
        match self.get_object(keys::IDENTITY).await {
            Ok((_, plain)) => {
                serde_json::from_slice(&plain)
                    .map(Some)
                    .map_err(|e| RepoError::Corrupt {
                        key: keys::IDENTITY.into(),
                        reason: format!("unreadable cluster identity: {e}"),
                    })
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bind the repository to `offered` on first use; afterwards check that `offered` matches.
    pub async fn bind_identity(&self, offered: &ClusterIdentity) -> Result<()> {
        if let Some(bound) = self.identity().await? {
            return check_identity(&bound, offered);
        }
        let json = serde_json::to_vec(offered).map_err(|e| RepoError::Invalid(e.to_string()))?;
        match self
            .put_object(keys::IDENTITY, &json, PutMode::Create)
            .await
        {
            Ok(_) => Ok(()),
            // Another process bound it first: it must be the same cluster.
            Err(RepoError::Storage(e)) if e.kind == ErrorKind::AlreadyExists => {
                match self.identity().await? {
                    Some(bound) => check_identity(&bound, offered),
                    None => Err(RepoError::Storage(e)),
                }
            }
            Err(e) => Err(e),
        }
    }
}

fn check_identity(bound: &ClusterIdentity, offered: &ClusterIdentity) -> Result<()> {
    if bound.system_identifier != offered.system_identifier {
        return Err(RepoError::ForeignCluster {
            bound: bound.system_identifier,
            offered: offered.system_identifier,
        });
    }
    if bound.wal_segment_size != offered.wal_segment_size {
        return Err(RepoError::IdentityMismatch {
            what: format!(
                "WAL segment size {} bytes, the repository holds {} bytes",
                offered.wal_segment_size, bound.wal_segment_size
            ),
        });
    }
    if bound.pg_major != offered.pg_major {
        return Err(RepoError::IdentityMismatch {
            what: format!(
                "PostgreSQL {} WAL, the repository holds PostgreSQL {} (after a major upgrade, start a new repository)",
                offered.pg_major, bound.pg_major
            ),
        });
    }
    Ok(())
}

async fn read_config(store: &dyn Store) -> Result<RepoConfig> {
    let location = store.describe();
    let mut first_problem = None;
    for key in [keys::CONFIG, keys::CONFIG_COPY] {
        match store.get(key).await {
            Ok(bytes) => match serde_json::from_slice::<RepoConfig>(&bytes) {
                Ok(config) => return Ok(config),
                Err(e) => {
                    tracing::warn!(
                        "{key} at {location} is unreadable ({e}); trying the other copy"
                    );
                    first_problem.get_or_insert(RepoError::Corrupt {
                        key: key.into(),
                        reason: e.to_string(),
                    });
                }
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(first_problem.unwrap_or(RepoError::NotInitialized { location }))
}

fn unwrap_keys(
    config: &RepoConfig,
    enc: &EncryptionConfig,
    passphrase: &Passphrase,
    location: &str,
) -> Result<DataKeys> {
    let corrupt = |reason: String| RepoError::Corrupt {
        key: keys::CONFIG.into(),
        reason,
    };
    if enc.cipher != "xchacha20poly1305" || enc.kdf != "argon2id" {
        return Err(corrupt(format!(
            "unknown cipher {} or KDF {}",
            enc.cipher, enc.kdf
        )));
    }
    let kek = derive_kek_for(enc, passphrase)?;
    match unwrap_data_key(config, enc, &kek)? {
        Some((id, data_key)) => Ok(DataKeys::from_data_key(id, &data_key)),
        None => Err(RepoError::WrongPassphrase {
            location: location.to_string(),
        }),
    }
}

/// The key-encryption key `passphrase` yields with the config's salt and KDF parameters.
fn derive_kek_for(
    enc: &EncryptionConfig,
    passphrase: &Passphrase,
) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let corrupt = |reason: String| RepoError::Corrupt {
        key: keys::CONFIG.into(),
        reason,
    };
    let salt = hex::decode(&enc.salt).map_err(|e| corrupt(format!("bad salt: {e}")))?;
    Ok(zeroize::Zeroizing::new(
        crypto::derive_kek(passphrase, &salt, enc.kdf_params)
            .map_err(|e| corrupt(e.to_string()))?,
    ))
}

/// The data key (and its id) of the first wrapped key `kek` opens; `None` when it opens none.
fn unwrap_data_key(
    config: &RepoConfig,
    enc: &EncryptionConfig,
    kek: &[u8; 32],
) -> Result<Option<(u8, zeroize::Zeroizing<[u8; 32]>)>> {
    let corrupt = |reason: String| RepoError::Corrupt {
        key: keys::CONFIG.into(),
        reason,
    };
    for wrapped in &enc.keys {
        let blob =
            hex::decode(&wrapped.wrapped).map_err(|e| corrupt(format!("bad wrapped key: {e}")))?;
        if let Ok(data_key) =
            crypto::open(kek, &blob, &config::wrap_aad(&config.repo_id, wrapped.id))
        {
            let data_key = zeroize::Zeroizing::new(data_key);
            let arr: [u8; 32] = data_key
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("wrapped data key has the wrong length".into()))?;
            return Ok(Some((wrapped.id, zeroize::Zeroizing::new(arr))));
        }
    }
    Ok(None)
}

/// A repository in a local directory for unit tests, encrypted with `passphrase` under a KDF
/// cheap enough for tests, or unencrypted.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn test_repository(dir: &std::path::Path, passphrase: Option<&str>) -> Repository {
    let store =
        lifeboat_storage::open_or_create(dir.to_str().unwrap(), &Default::default()).unwrap();
    let options = InitOptions {
        passphrase: passphrase.map(Passphrase::new),
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    Repository::init(store, options).await.unwrap()
}
