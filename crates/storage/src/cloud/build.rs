//! Building a [`CloudStore`] for S3 (and S3-compatible servers), GCS and Azure from the storage
//! settings and the standard environment of each SDK: client timeouts, no client retries, and a
//! plain-http endpoint refused at once unless `allow_http` is set.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{ClientConfigKey, RetryConfig};

use super::CloudStore;
use super::classify::{Redactor, chain_text};
use crate::settings::{AzureSettings, GcsSettings, S3Settings};
use crate::{Result, StorageError};

/// Backstop for a whole HTTP request. The real per-attempt deadline is the caller's
/// [`crate::RetryPolicy::attempt_timeout`]; this only keeps a bare `CloudStore` from hanging forever
/// and must not cut large uploads short, hence generous.
const CLIENT_TIMEOUT: &str = "15m";
/// Fail fast on a dead endpoint so the retry loop gets to try again.
const CONNECT_TIMEOUT: &str = "10s";
/// A connection that delivers no bytes for this long is dead, even if the request deadline is far.
const READ_TIMEOUT: &str = "60s";

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
        // Over TLS, a SHA-256 of the body in the signature adds nothing to what TLS and every
        // object's own hash (checked on each read) already guarantee, and costs a pass over each
        // uploaded byte; requests in the clear keep it. AWS_UNSIGNED_PAYLOAD still decides.
        let allow_http = b
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !allow_http && std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
            b = b.with_unsigned_payload(true);
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
