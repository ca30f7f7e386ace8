//! Object-store backend (S3 and S3-compatible servers, GCS, Azure Blob) on top of `object_store`.
//!
//! This module owns building the clients from settings and the environment, mapping keys under the
//! location's prefix, and turning `object_store` errors into [`ErrorKind`]s. The client's own
//! retries are turned off: [`crate::retry::Retrying`] makes every retry decision, so attempts and
//! deadlines are bounded in one place.
//!
//! Conditional create uses `PutMode::Create` (`If-None-Match: *`). A backend that answers "not
//! implemented" makes the store fall back to head-then-put and report
//! `conditional_create: false` from then on. moto 5.2 (our test server) honours `If-None-Match: *`
//! on PutObject: a second create gets 412 Precondition Failed, which maps to `AlreadyExists`, so the
//! conformance suite exercises the atomic path, not the fallback.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutOptions, RetryConfig};

use crate::url::{AzureSettings, GcsSettings, S3Settings};
use crate::{
    Capabilities, ErrorKind, ObjectMeta, PutMode, Result, StorageError, Store, split_list_prefix,
    validate_key,
};

/// Backstop for a whole HTTP request. The real per-attempt deadline is the caller's
/// [`crate::RetryPolicy::attempt_timeout`]; this only keeps a bare `CloudStore` from hanging forever
/// and must not cut large uploads short, hence generous.
const CLIENT_TIMEOUT: &str = "15m";
/// Fail fast on a dead endpoint so the retry loop gets to try again.
const CONNECT_TIMEOUT: &str = "10s";
/// A connection that delivers no bytes for this long is dead, even if the request deadline is far.
const READ_TIMEOUT: &str = "60s";
/// Longest error detail kept in a message: server error bodies can be large.
const MAX_DETAIL: usize = 600;

/// A store in a bucket (or container) under an optional key prefix.
pub struct CloudStore {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    prefix: String,
    /// Where this store points, for messages: `s3://bucket/prefix`.
    location: String,
    /// Cleared when the backend turns out not to support create-only puts.
    conditional_create: AtomicBool,
    redactor: Redactor,
}

impl fmt::Debug for CloudStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudStore")
            .field("location", &self.location)
            .field(
                "conditional_create",
                &self.conditional_create.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl CloudStore {
    /// An S3 (or S3-compatible) bucket. Configuration starts from the standard `AWS_*` environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...); settings that are `Some` override it. With a
    /// custom endpoint, requests are path-style (`endpoint/bucket/key`), which S3-compatible servers
    /// expect.
    pub fn s3(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Self> {
        let location = display_location("s3", bucket, prefix);
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(v) = &settings.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &settings.region {
            b = b.with_region(v);
        }
        if let Some(v) = &settings.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &settings.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = &settings.session_token {
            b = b.with_token(v);
        }
        if let Some(v) = settings.allow_http {
            b = b.with_allow_http(v);
        }
        refuse_plain_http(
            &location,
            b.get_config_value(&AmazonS3ConfigKey::Endpoint)
                .or_else(|| b.get_config_value(&AmazonS3ConfigKey::S3Endpoint)),
            b.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)),
            "[s3] allow_http = true (or AWS_ALLOW_HTTP=true)",
        )?;
        let custom_endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint).is_some()
            || b.get_config_value(&AmazonS3ConfigKey::S3Endpoint).is_some();
        if custom_endpoint {
            b = b.with_virtual_hosted_style_request(false);
        }
        let conditional = b
            .get_config_value(&AmazonS3ConfigKey::ConditionalPut)
            .is_none_or(|v| v != "disabled");
        let redactor = Redactor::new(
            [
                AmazonS3ConfigKey::AccessKeyId,
                AmazonS3ConfigKey::SecretAccessKey,
                AmazonS3ConfigKey::Token,
            ]
            .iter()
            .filter_map(|k| b.get_config_value(k)),
        );
        for (key, value) in client_config() {
            b = b.with_config(AmazonS3ConfigKey::Client(key), value);
        }
        let store = b
            .with_retry(no_client_retries())
            .build()
            .map_err(|e| build_error(&location, &e, &redactor, "[s3]"))?;
        Self::with_redactor(Arc::new(store), prefix, location, conditional, redactor)
    }

    /// A Google Cloud Storage bucket. Credentials come from `settings.service_account_path`, else
    /// the standard environment (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, ...).
    pub fn gcs(bucket: &str, prefix: &str, settings: &GcsSettings) -> Result<Self> {
        let location = display_location("gs", bucket, prefix);
        let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
        if let Some(v) = &settings.service_account_path {
            b = b.with_service_account_path(v);
        }
        let redactor = Redactor::new(
            [GoogleConfigKey::ServiceAccountKey]
                .iter()
                .filter_map(|k| b.get_config_value(k)),
        );
        for (key, value) in client_config() {
            b = b.with_config(GoogleConfigKey::Client(key), value);
        }
        let store = b
            .with_retry(no_client_retries())
            .build()
            .map_err(|e| build_error(&location, &e, &redactor, "[gcs]"))?;
        Self::with_redactor(Arc::new(store), prefix, location, true, redactor)
    }

    /// An Azure Blob Storage container. Starts from the standard `AZURE_*` environment; settings
    /// that are `Some` override it.
    pub fn azure(container: &str, prefix: &str, settings: &AzureSettings) -> Result<Self> {
        let location = display_location("az", container, prefix);
        let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container);
        if let Some(v) = &settings.account {
            b = b.with_account(v);
        }
        if let Some(v) = &settings.access_key {
            b = b.with_access_key(v);
        }
        if let Some(v) = &settings.endpoint {
            b = b.with_endpoint(v.clone());
        }
        if let Some(v) = settings.use_emulator {
            b = b.with_use_emulator(v);
        }
        if let Some(v) = settings.allow_http {
            b = b.with_allow_http(v);
        }
        // The emulator setting allows http by itself (object_store turns allow_http on for it).
        if b.get_config_value(&AzureConfigKey::UseEmulator)
            .is_none_or(|v| v != "true")
        {
            refuse_plain_http(
                &location,
                b.get_config_value(&AzureConfigKey::Endpoint),
                b.get_config_value(&AzureConfigKey::Client(ClientConfigKey::AllowHttp)),
                "[azure] allow_http = true (or AZURE_ALLOW_HTTP=true)",
            )?;
        }
        let redactor = Redactor::new(
            [
                AzureConfigKey::AccessKey,
                AzureConfigKey::ClientSecret,
                AzureConfigKey::SasKey,
                AzureConfigKey::Token,
            ]
            .iter()
            .filter_map(|k| b.get_config_value(k)),
        );
        for (key, value) in client_config() {
            b = b.with_config(AzureConfigKey::Client(key), value);
        }
        let store = b
            .with_retry(no_client_retries())
            .build()
            .map_err(|e| build_error(&location, &e, &redactor, "[azure]"))?;
        Self::with_redactor(Arc::new(store), prefix, location, true, redactor)
    }

    /// Wrap any `object_store` implementation (tests, or a backend configured by hand). `location`
    /// is only used in messages.
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: String,
    ) -> Result<Self> {
        Self::with_redactor(store, prefix, location, true, Redactor::default())
    }

    fn with_redactor(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: String,
        conditional_create: bool,
        redactor: Redactor,
    ) -> Result<Self> {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix).map_err(|e| {
                StorageError::new(ErrorKind::Permanent, format!("prefix of {location}: {e}"))
            })?;
        }
        Ok(Self {
            store,
            prefix: prefix.to_owned(),
            location,
            conditional_create: AtomicBool::new(conditional_create),
            redactor,
        })
    }

    fn path(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        let full = self.full_key(key);
        Path::parse(&full).map_err(|e| {
            StorageError::new(ErrorKind::Permanent, format!("invalid key {key:?}: {e}"))
        })
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// Create-only put for backends without conditional writes: racy, see [`PutMode::Create`].
    async fn create_by_check(&self, path: &Path, key: &str, data: Bytes) -> Result<()> {
        match self.store.head(path).await {
            Ok(_) => return Err(self.already_exists(key)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.classify(Op::Head, key, &e)),
        }
        self.store
            .put(path, data.into())
            .await
            .map(drop)
            .map_err(|e| self.classify(Op::Put, key, &e))
    }

    fn already_exists(&self, key: &str) -> StorageError {
        StorageError::new(
            ErrorKind::AlreadyExists,
            format!("object {key} already exists at {}", self.location),
        )
    }

    /// Classify an `object_store` error from `op` on `key`.
    fn classify(&self, op: Op, key: &str, err: &object_store::Error) -> StorageError {
        use object_store::Error as E;
        let detail = self.redactor.clean(&chain_text(err));
        let failed = format!("{} {key} at {} failed", op.name(), self.location);
        let permanent = |why: &str| {
            StorageError::new(ErrorKind::Permanent, format!("{failed}: {why} ({detail})"))
        };
        let transient = |why: &str| {
            StorageError::new(ErrorKind::Transient, format!("{failed}: {why} ({detail})"))
        };
        if is_plain_http_refused(err) {
            return StorageError::config(
                format!("{failed}: the endpoint is plain http, which is not allowed ({detail})"),
                "use an https endpoint, or set allow_http = true in the store's section of the \
                 config file ([s3] or [azure]; AWS_ALLOW_HTTP / AZURE_ALLOW_HTTP in the environment)",
            );
        }
        match err {
            // A 404 on a write or listing, or one that names the bucket, means the bucket (not the
            // object) is missing. A HEAD has no body, so there a missing bucket looks like a
            // missing object; the next write reports it.
            E::NotFound { .. } if op.is_write_or_list() || names_missing_bucket(&detail) => {
                permanent("the bucket or container does not exist")
            }
            E::NotFound { .. } => StorageError::new(
                ErrorKind::NotFound,
                format!("object {key} not found at {}", self.location),
            ),
            E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. }
                if op == Op::Put =>
            {
                self.already_exists(key)
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                permanent("access denied; check the credentials and their permissions")
            }
            E::Generic { .. } => match http_failure(err) {
                Failure::Transport(kind) => match kind {
                    HttpErrorKind::Connect => transient("cannot connect"),
                    HttpErrorKind::Timeout => transient("request timed out"),
                    _ => transient("connection failed"),
                },
                Failure::Status(status) => match status {
                    408 | 429 => transient("the server is throttling or timed out the request"),
                    500..=599 => transient("server error"),
                    300..=399 => permanent("redirected; check the region and endpoint"),
                    400 => permanent("bad request; check the region and endpoint"),
                    401 | 403 => {
                        permanent("access denied; check the credentials and their permissions")
                    }
                    404 => permanent("the bucket or container does not exist"),
                    _ => permanent("request rejected"),
                },
                // S3 can report a failure inside a 200 response (e.g. InternalError).
                Failure::ErrorBody => transient("server reported an error"),
                Failure::BareRedirect => permanent("redirected; check the region and endpoint"),
                Failure::Unknown => transient("unexpected error"),
            },
            // 409 outside a create-only put: another operation on the key is in flight.
            E::AlreadyExists { .. } => transient("conflicting operation in progress"),
            E::Precondition { .. } | E::NotModified { .. } => permanent("precondition failed"),
            E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => permanent("not supported by this store"),
            // Task join failures and variants added in future releases: let the retry loop decide.
            _ => transient("unexpected error"),
        }
    }
}

#[async_trait]
impl Store for CloudStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let path = self.path(key)?;
        if mode == PutMode::Overwrite {
            return self
                .store
                .put(&path, data.into())
                .await
                .map(drop)
                .map_err(|e| self.classify(Op::Put, key, &e));
        }
        if !self.conditional_create.load(Ordering::Relaxed) {
            return self.create_by_check(&path, key, data).await;
        }
        let opts = PutOptions::from(object_store::PutMode::Create);
        match self.store.put_opts(&path, data.clone().into(), opts).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_implemented(&e) => {
                if self.conditional_create.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        store = %self.location,
                        "the store does not support create-only puts; falling back to a racy \
                         check-then-put"
                    );
                }
                self.create_by_check(&path, key, data).await
            }
            Err(e) => Err(self.classify(Op::Put, key, &e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.classify(Op::Get, key, &e))?;
        result
            .bytes()
            .await
            .map_err(|e| self.classify(Op::Get, key, &e))
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        if start < end {
            match self.store.get_range(&path, start..end).await {
                Ok(data) => return Ok(data),
                // Range not satisfiable (start at or past the end, or an empty object) or a server
                // that ignored the range: answer from the object's size below.
                Err(e) if is_unsatisfiable_range(&e) => {}
                Err(e) => return Err(self.classify(Op::Get, key, &e)),
            }
        }
        let size = self.head(key).await?.size;
        if start >= end.min(size) {
            return Ok(Bytes::new());
        }
        let all = self.get(key).await?;
        let hi = usize::try_from(end.min(size))
            .unwrap_or(usize::MAX)
            .min(all.len());
        let lo = usize::try_from(start).unwrap_or(usize::MAX).min(hi);
        Ok(all.slice(lo..hi))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| self.classify(Op::Head, key, &e))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: meta.size,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (dir, _) = split_list_prefix(prefix)?;
        // object_store lists by whole path segments, so list the directory part and filter the
        // partial name ourselves.
        let dir_path = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (false, true) => Some(self.prefix.clone()),
            (true, false) => Some(dir.to_owned()),
            (false, false) => Some(format!("{}/{dir}", self.prefix)),
        };
        let dir_path = dir_path.map(|p| Path::parse(&p)).transpose().map_err(|e| {
            StorageError::new(
                ErrorKind::Permanent,
                format!("invalid prefix {prefix:?}: {e}"),
            )
        })?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(dir_path.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.classify(Op::List, list_label(prefix), &e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(&strip)?.to_owned();
                key.starts_with(prefix)
                    .then_some(ObjectMeta { key, size: m.size })
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) => Ok(()),
            // Some backends (GCS, Azure) answer 404 for a missing object: that is success here.
            Err(e @ object_store::Error::NotFound { .. }) => {
                let detail = chain_text(&e);
                if names_missing_bucket(&detail) {
                    Err(self.classify(Op::Delete, key, &e))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(self.classify(Op::Delete, key, &e)),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: self.conditional_create.load(Ordering::Relaxed),
            // An object store acknowledges a put only once the object is durably stored.
            durable_put: true,
        }
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }

    fn is_write_or_list(self) -> bool {
        matches!(self, Op::Put | Op::List | Op::Delete)
    }
}

/// What the HTTP layer said, as far as it can be recovered from an error chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Transport(HttpErrorKind),
    Status(u16),
    ErrorBody,
    BareRedirect,
    Unknown,
}

/// Walk the error chain for the HTTP failure behind an `object_store` error. The transport error
/// type is public and downcast; the status code is not exposed by a public type, so it is read from
/// the request error's message ("... status code: 503 Service Unavailable ...").
fn http_failure(err: &object_store::Error) -> Failure {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Failure::Transport(http.kind());
        }
        let text = e.to_string();
        if let Some(status) = status_in(&text) {
            return Failure::Status(status);
        }
        if text.contains("Server returned error response") {
            return Failure::ErrorBody;
        }
        if text.contains("Received redirect without LOCATION") {
            return Failure::BareRedirect;
        }
        current = e.source();
    }
    Failure::Unknown
}

/// How a listing is named in messages: the prefix, or a marker for "everything".
fn list_label(prefix: &str) -> &str {
    if prefix.is_empty() {
        "(all keys)"
    } else {
        prefix
    }
}

fn status_in(text: &str) -> Option<u16> {
    const MARKER: &str = "status code: ";
    let at = text.find(MARKER)? + MARKER.len();
    text.get(at..at + 3)?.parse().ok()
}

fn is_not_implemented(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. } => {
            true
        }
        object_store::Error::Generic { .. } => http_failure(err) == Failure::Status(501),
        _ => false,
    }
}

fn is_unsatisfiable_range(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::Generic { .. })
        && (http_failure(err) == Failure::Status(416)
            || chain_text(err).contains("non-partial response"))
}

fn names_missing_bucket(detail: &str) -> bool {
    ["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]
        .iter()
        .any(|marker| detail.contains(marker))
}

/// The error's message and those of its sources, skipping a source whose text its parent already
/// includes (most `object_store` errors embed their source's message).
fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

/// The client could not be built from the settings: a configuration error, before any call.
fn build_error(
    location: &str,
    err: &object_store::Error,
    redactor: &Redactor,
    section: &str,
) -> StorageError {
    StorageError::config(
        format!(
            "cannot configure {location}: {}",
            redactor.clean(&chain_text(err))
        ),
        format!(
            "check the {section} section of the config file and the store's environment \
             variables (README, \"Configuration reference\")"
        ),
    )
}

/// An `http://` endpoint needs `allow_http`: without it every request would fail with "URL scheme
/// is not allowed". Said once, here, naming the setting, instead of at the first call.
fn refuse_plain_http(
    location: &str,
    endpoint: Option<String>,
    allow_http: Option<String>,
    setting: &str,
) -> Result<()> {
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    let plain = endpoint
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
    if plain && allow_http.is_none_or(|v| !v.eq_ignore_ascii_case("true")) {
        // Only the scheme is shown: an endpoint URL may carry a secret.
        return Err(StorageError::config(
            format!(
                "cannot configure {location}: its endpoint is plain http (http://...), which is \
                 not allowed unless allow_http is set"
            ),
            format!("set {setting} for a plain-http endpoint, or use https"),
        ));
    }
    Ok(())
}

/// The HTTP client refused to send a request over plain http (`allow_http` is off).
fn is_plain_http_refused(err: &object_store::Error) -> bool {
    chain_text(err).contains("URL scheme is not allowed")
}

fn no_client_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        retry_timeout: Duration::ZERO,
        ..RetryConfig::default()
    }
}

fn client_config() -> [(ClientConfigKey, &'static str); 3] {
    [
        (ClientConfigKey::Timeout, CLIENT_TIMEOUT),
        (ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT),
        (ClientConfigKey::ReadTimeout, READ_TIMEOUT),
    ]
}

fn display_location(scheme: &str, bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

/// Keeps credentials out of error messages: removes known secret values, and reduces XML error
/// bodies (which can echo the access key and the string that was signed) to their code and message.
#[derive(Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    fn new(secrets: impl Iterator<Item = String>) -> Self {
        // Very short values would blank out unrelated text and are not real secrets anyway.
        Self {
            secrets: secrets.filter(|s| s.len() >= 4).collect(),
        }
    }

    fn clean(&self, text: &str) -> String {
        let mut text = reduce_xml_error(text);
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "<redacted>");
        }
        if text.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}

fn reduce_xml_error(text: &str) -> String {
    let Some(start) = text.find("<?xml").or_else(|| text.find("<Error>")) else {
        return text.to_owned();
    };
    let code = xml_element(&text[start..], "Code");
    let message = xml_element(&text[start..], "Message");
    let mut out = text[..start].trim_end().to_owned();
    match (code, message) {
        (Some(c), Some(m)) => out.push_str(&format!(" {c}: {m}")),
        (Some(c), None) => out.push_str(&format!(" {c}")),
        (None, Some(m)) => out.push_str(&format!(" {m}")),
        (None, None) => out.push_str(" (error body omitted)"),
    }
    out
}

fn xml_element<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, PutMultipartOptions,
        PutPayload, PutResult,
    };

    use super::*;

    /// An in-memory store that, like an S3-compatible server without conditional writes, answers
    /// create-only puts with "not implemented".
    #[derive(Debug, Default)]
    struct NoConditionalPut(InMemory);

    impl fmt::Display for NoConditionalPut {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("NoConditionalPut")
        }
    }

    #[async_trait]
    impl ObjectStore for NoConditionalPut {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            if matches!(opts.mode, object_store::PutMode::Create) {
                return Err(object_store::Error::NotImplemented {
                    operation: "put_opts with PutMode::Create".into(),
                    implementer: self.to_string(),
                });
            }
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn create_falls_back_to_check_then_put_when_not_implemented() {
        let store = CloudStore::from_object_store(
            Arc::new(NoConditionalPut::default()),
            "pre",
            "mem://bucket/pre".into(),
        )
        .unwrap();
        assert!(store.capabilities().conditional_create);
        store
            .put("k", Bytes::from_static(b"one"), PutMode::Create)
            .await
            .unwrap();
        assert!(
            !store.capabilities().conditional_create,
            "fallback must be reported"
        );
        let err = store
            .put("k", Bytes::from_static(b"two"), PutMode::Create)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
        assert_eq!(store.get("k").await.unwrap(), Bytes::from_static(b"one"));
        store
            .put("k", Bytes::from_static(b"three"), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap(), Bytes::from_static(b"three"));
    }

    #[tokio::test]
    async fn in_memory_store_round_trips_under_a_prefix() {
        let inner = Arc::new(InMemory::new());
        let store =
            CloudStore::from_object_store(inner.clone(), "a/b", "mem://x/a/b".into()).unwrap();
        store
            .put("c/d", Bytes::from_static(b"xyz"), PutMode::Create)
            .await
            .unwrap();
        assert!(inner.head(&Path::from("a/b/c/d")).await.is_ok());
        assert_eq!(
            store.get_range("c/d", 1, 10).await.unwrap(),
            Bytes::from_static(b"yz")
        );
        assert_eq!(store.list("c/").await.unwrap()[0].key, "c/d");
        store.delete("c/d").await.unwrap();
        store.delete("c/d").await.unwrap();
        assert_eq!(
            store.head("c/d").await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn status_is_read_from_request_error_text() {
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 Service Unavailable: slow down"),
            Some(503)
        );
        assert_eq!(status_in("HTTP error: error sending request"), None);
    }

    #[test]
    fn xml_error_bodies_are_reduced_and_secrets_removed() {
        let redactor = Redactor::new(["SECRETKEY123".to_owned()].into_iter());
        let text = "PUT failed - status code: 403 Forbidden: <?xml version=\"1.0\"?><Error>\
                    <Code>SignatureDoesNotMatch</Code><Message>bad</Message>\
                    <AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId><StringToSign>x</StringToSign>\
                    </Error> with SECRETKEY123";
        let clean = redactor.clean(text);
        assert!(clean.contains("SignatureDoesNotMatch: bad"), "{clean}");
        assert!(!clean.contains("AKIAEXAMPLE"), "{clean}");
        assert!(!clean.contains("SECRETKEY123"), "{clean}");
        assert!(clean.contains("403"), "{clean}");
    }

    #[test]
    fn long_details_are_truncated() {
        let clean = Redactor::default().clean(&"é".repeat(1000));
        assert!(clean.len() <= MAX_DETAIL + 3);
    }

    #[test]
    fn generic_errors_classify_by_status() {
        let store = CloudStore::from_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            "p",
            "mem://x/p".into(),
        )
        .unwrap();
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.into(),
        };
        let cases = [
            (
                "Server returned non-2xx status code: 503 Service Unavailable",
                ErrorKind::Transient,
            ),
            (
                "Server returned non-2xx status code: 429 Too Many Requests",
                ErrorKind::Transient,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request",
                ErrorKind::Permanent,
            ),
            (
                "Server returned non-2xx status code: 404 Not Found",
                ErrorKind::Permanent,
            ),
            ("something odd", ErrorKind::Transient),
        ];
        for (msg, kind) in cases {
            assert_eq!(
                store.classify(Op::Get, "k", &generic(msg)).kind,
                kind,
                "{msg}"
            );
        }
        let transport = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(HttpErrorKind::Connect, std::fmt::Error)),
        };
        assert_eq!(
            store.classify(Op::Put, "k", &transport).kind,
            ErrorKind::Transient
        );
        let not_found = object_store::Error::NotFound {
            path: "p/k".into(),
            source: "404".into(),
        };
        assert_eq!(
            store.classify(Op::Get, "k", &not_found).kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            store.classify(Op::Put, "k", &not_found).kind,
            ErrorKind::Permanent
        );
        let exists = object_store::Error::Precondition {
            path: "p/k".into(),
            source: "412".into(),
        };
        assert_eq!(
            store.classify(Op::Put, "k", &exists).kind,
            ErrorKind::AlreadyExists
        );
    }
}
