//! Storage settings: what opening a cloud location needs besides the location (S3, GCS and Azure
//! settings, `allow_http`) and the retry limits. The structs deserialize from TOML (unknown keys
//! rejected) and never print secrets in their `Debug` output.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::{Result, RetryPolicy};

/// Everything needed to open any location. Cloud settings left `None` fall back to the standard
/// environment of each SDK (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
///
/// Lifeboat's config file does not deserialize this struct whole: it builds `retry` from
/// `[storage] timeout_seconds` and `max_attempts` and takes its `[s3]`, `[gcs]` and `[azure]`
/// sections as they are. Deserialized directly, `retry` is a table whose durations are strings
/// such as `"60s"` or `"200ms"` (`retry = { attempt_timeout = "60s", max_attempts = 5 }`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(deserialize_with = "deserialize_retry")]
    pub retry: RetryPolicy,
    /// Requests in flight at once (at least 1); `None`: the backend's default
    /// ([`crate::Capabilities::concurrency`]).
    #[serde(deserialize_with = "deserialize_concurrency")]
    pub concurrency: Option<usize>,
    pub s3: S3Settings,
    pub gcs: GcsSettings,
    pub azure: AzureSettings,
}

/// S3 and S3-compatible stores. Each `Some` overrides the matching `AWS_*` environment variable.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:9000` for an S3-compatible server; requests are then path-style.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints (off by default).
    pub allow_http: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct GcsSettings {
    /// Path to a service-account JSON key file.
    pub service_account_path: Option<String>,
}

#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AzureSettings {
    /// Storage account name.
    pub account: Option<String>,
    pub access_key: Option<String>,
    /// Custom blob endpoint (e.g. an Azurite emulator).
    pub endpoint: Option<String>,
    pub use_emulator: Option<bool>,
    /// Allow a plain-HTTP `endpoint` (off by default).
    pub allow_http: Option<bool>,
}

/// Shows whether a secret is set, never its value.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureSettings")
            .field("account", &self.account)
            .field("access_key", &redacted(&self.access_key))
            .field("endpoint", &self.endpoint)
            .field("use_emulator", &self.use_emulator)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

fn deserialize_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    match Option::<usize>::deserialize(d)? {
        Some(0) => Err(D::Error::custom("concurrency must be at least 1")),
        n => Ok(n),
    }
}

/// TOML form of [`RetryPolicy`]: durations as human-readable strings, every field optional.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RetryPolicyToml {
    attempt_timeout: Option<String>,
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
}

fn deserialize_retry<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
    use serde::de::Error;
    let raw = RetryPolicyToml::deserialize(d)?;
    let defaults = RetryPolicy::default();
    let duration = |name: &str, value: Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s)
            .map_err(|e| D::Error::custom(format!("retry.{name}: invalid duration {s:?}: {e}"))),
    };
    let policy = RetryPolicy {
        attempt_timeout: duration(
            "attempt_timeout",
            raw.attempt_timeout,
            defaults.attempt_timeout,
        )?,
        max_attempts: raw.max_attempts.unwrap_or(defaults.max_attempts),
        initial_backoff: duration(
            "initial_backoff",
            raw.initial_backoff,
            defaults.initial_backoff,
        )?,
        max_backoff: duration("max_backoff", raw.max_backoff, defaults.max_backoff)?,
    };
    if policy.attempt_timeout.is_zero() {
        return Err(D::Error::custom(
            "retry.attempt_timeout must be greater than zero",
        ));
    }
    if policy.max_attempts == 0 {
        return Err(D::Error::custom("retry.max_attempts must be at least 1"));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let settings = StorageSettings {
            s3: S3Settings {
                access_key_id: Some("AKIAEXAMPLEID".into()),
                secret_access_key: Some("very-secret-key".into()),
                session_token: Some("session-token-value".into()),
                region: Some("eu-west-1".into()),
                ..S3Settings::default()
            },
            azure: AzureSettings {
                access_key: Some("azure-secret-key".into()),
                ..AzureSettings::default()
            },
            ..StorageSettings::default()
        };
        let debug = format!("{settings:?}");
        for secret in [
            "AKIAEXAMPLEID",
            "very-secret-key",
            "session-token-value",
            "azure-secret-key",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            debug.contains("eu-west-1") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn settings_deserialize_from_toml() {
        let settings: StorageSettings = toml::from_str(
            r#"
            retry = { attempt_timeout = "5s", max_attempts = 3 }
            concurrency = 12
            [s3]
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            "#,
        )
        .unwrap();
        assert_eq!(settings.retry.attempt_timeout, Duration::from_secs(5));
        assert_eq!(settings.retry.max_attempts, 3);
        assert_eq!(settings.concurrency, Some(12));
        assert_eq!(
            settings.retry.max_backoff,
            RetryPolicy::default().max_backoff
        );
        assert_eq!(
            settings.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(settings.s3.allow_http, Some(true));
        assert_eq!(
            toml::from_str::<StorageSettings>("").unwrap().retry,
            RetryPolicy::default()
        );

        for bad in [
            "[s3]\nsecret_key = \"x\"",
            "retry = { max_attempts = 0 }",
            "retry = { attempt_timeout = \"soon\" }",
            "unknown = 1",
            "concurrency = 0",
        ] {
            assert!(toml::from_str::<StorageSettings>(bad).is_err(), "{bad}");
        }
    }
}
