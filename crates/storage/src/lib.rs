//! Storage: bytes to and from a place (local disk, S3, GCS, Azure).
//!
//! This crate owns *how* bytes are stored, never *what* they mean: keys are opaque strings chosen by
//! the repository layer, and policy (never overwrite, hashing, encryption) lives above. Every error is
//! classified so callers can decide between "not there", "already there", "try again" and "give up";
//! every call has a deadline and transient failures are retried with backoff ([`retry::Retrying`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub mod cloud;
pub mod local;
mod open;
pub mod retry;
pub mod settings;
pub mod url;

pub use crate::open::{open, open_or_create};
pub use crate::settings::{AzureSettings, GcsSettings, S3Settings, StorageSettings};
pub use crate::url::{Location, describe_cloud_location, parse_location};

/// What a failed storage call means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The key does not exist.
    NotFound,
    /// A create-only put found the key already present.
    AlreadyExists,
    /// Worth retrying: timeouts, connection resets, throttling (429/503), 5xx.
    Transient,
    /// Retrying will not help: permissions, bad credentials, missing bucket, invalid key.
    Permanent,
    /// The location or a setting is wrong (not a location URL, a plain-http endpoint without
    /// `allow_http`, settings the client cannot be built from): no call was made, retrying
    /// cannot help; the configuration must change. [`StorageError::hint`] names the setting.
    Config,
}

/// A classified storage error. `message` never contains credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    pub kind: ErrorKind,
    pub message: String,
    /// What to do, when the error knows better than its caller (set for [`ErrorKind::Config`]).
    pub hint: Option<String>,
}

impl StorageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
        }
    }
    /// A configuration error: `hint` names the setting to change.
    pub fn config(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Config,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn not_found(key: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("object {key} not found"))
    }
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there (used for catalog files that are rewritten whole).
    Overwrite,
    /// Fail with [`ErrorKind::AlreadyExists`] if the key exists. On stores without conditional
    /// create ([`Capabilities::conditional_create`] false) this is a best-effort check-then-put and
    /// the caller must tolerate the race (the repository layer compares content hashes).
    Create,
}

/// Facts about a backend that the layers above may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `PutMode::Create` is atomic at the store.
    pub conditional_create: bool,
    /// A successful put has been made durable (local: file and directory fsync'd).
    pub durable_put: bool,
    /// Requests worth having in flight at once: the backend's default
    /// ([`local::DEFAULT_CONCURRENCY`], [`cloud::DEFAULT_CONCURRENCY`]) unless
    /// [`StorageSettings::concurrency`] sets it. Callers that issue many requests (backup, restore,
    /// verify, expire) keep this many going, independently of the threads doing CPU work.
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root, `/`-separated, no leading `/`.
    pub key: String,
    pub size: u64,
}

/// The small, dumb interface every backend implements. Keys are `/`-separated relative paths made
/// of `[A-Za-z0-9._-]` components; implementations reject anything else as `Permanent`.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Store `data` under `key`. Returns only once the backend acknowledged a durable write.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// Bytes `start..end` of the object (end exclusive, clamped to the object's size).
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes>;
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`, or "").
    /// Order is unspecified.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Delete `key`; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    fn capabilities(&self) -> Capabilities;
    /// Human-readable location for messages (never contains credentials).
    fn describe(&self) -> String;
}

/// Limits applied around every call by [`retry::Retrying`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deadline for one attempt of one call.
    pub attempt_timeout: Duration,
    /// Attempts in total (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubles each retry, with jitter, capped at `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(60),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Check that `key` is a valid object key (see [`Store`]); a `Permanent` error otherwise.
///
/// Shared by every backend so that a key accepted by one store is accepted by all of them.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid_key(key, "it is empty"));
    }
    if key.starts_with('/') {
        return Err(invalid_key(key, "it must be relative"));
    }
    key.split('/')
        .try_for_each(|component| validate_component(key, component))
}

/// Split a list prefix into its directory part (whole components, no trailing `/`) and the partial
/// name after the last `/`, validating both.
pub(crate) fn split_list_prefix(prefix: &str) -> Result<(&str, &str)> {
    if prefix.starts_with('/') {
        return Err(invalid_key(prefix, "it must be relative"));
    }
    let (dir, rest) = match prefix.rfind('/') {
        Some(i) => (&prefix[..i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    if !dir.is_empty() {
        dir.split('/')
            .try_for_each(|component| validate_component(prefix, component))?;
    }
    if !rest.bytes().all(key_byte_allowed) {
        return Err(invalid_key(
            prefix,
            "only A-Z a-z 0-9 . _ - and / are allowed",
        ));
    }
    Ok((dir, rest))
}

fn validate_component(key: &str, component: &str) -> Result<()> {
    if component.is_empty() {
        return Err(invalid_key(key, "it has an empty path component"));
    }
    if component == "." || component == ".." {
        return Err(invalid_key(key, "`.` and `..` components are not allowed"));
    }
    if component.starts_with(local::TEMP_PREFIX) {
        return Err(invalid_key(
            key,
            "names starting with .tmp. are reserved for temporary files",
        ));
    }
    if !component.bytes().all(key_byte_allowed) {
        return Err(invalid_key(key, "only A-Z a-z 0-9 . _ - and / are allowed"));
    }
    Ok(())
}

fn key_byte_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn invalid_key(key: &str, why: &str) -> StorageError {
    StorageError::new(ErrorKind::Permanent, format!("invalid key {key:?}: {why}"))
}
