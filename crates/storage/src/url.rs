//! Storage locations and settings: parsing a location string and opening the matching store.
//!
//! A location is a filesystem path (absolute or relative), `file:///abs/path`,
//! `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or `az://container[/prefix]` (also `azure://`).
//! The settings structs deserialize from TOML (unknown keys rejected) and never print secrets in
//! their `Debug` output. Every store opened here is wrapped in [`Retrying`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::cloud::CloudStore;
use crate::local::LocalStore;
use crate::retry::Retrying;
use crate::{Result, RetryPolicy, StorageError, Store, validate_key};

const ACCEPTED_FORMS: &str = "a filesystem path, file:///absolute/path, s3://bucket[/prefix], \
                              gs://bucket[/prefix] or az://container[/prefix]";

/// Everything needed to open any location. Cloud settings left `None` fall back to the standard
/// environment of each SDK (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
///
/// In TOML, durations of `retry` are strings such as `"60s"` or `"200ms"`:
/// `retry = { attempt_timeout = "60s", max_attempts = 5, initial_backoff = "200ms", max_backoff = "10s" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(deserialize_with = "deserialize_retry")]
    pub retry: RetryPolicy,
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

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            Location::Local(path) => return write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => ("s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => ("gs", bucket, prefix),
            Location::Azure { container, prefix } => ("az", container, prefix),
        };
        if prefix.is_empty() {
            write!(f, "{scheme}://{bucket}")
        } else {
            write!(f, "{scheme}://{bucket}/{prefix}")
        }
    }
}

/// Parse a location string (see the module docs for the accepted forms). Cloud prefixes come back
/// without leading or trailing `/`.
pub fn parse_location(location: &str) -> Result<Location> {
    if location.is_empty() {
        return Err(bad_location(format!(
            "empty storage location; expected {ACCEPTED_FORMS}"
        )));
    }
    let Some((scheme, rest)) = split_scheme(location) else {
        return Ok(Location::Local(PathBuf::from(location)));
    };
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(bad_location(format!(
            "storage location {scheme}:... is missing the // after the scheme; expected \
             {ACCEPTED_FORMS}"
        )));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => parse_file_url(location),
        "s3" => {
            let (bucket, prefix) = parse_bucket_and_prefix(location, rest)?;
            Ok(Location::S3 { bucket, prefix })
        }
        "gs" => {
            let (bucket, prefix) = parse_bucket_and_prefix(location, rest)?;
            Ok(Location::Gcs { bucket, prefix })
        }
        "az" | "azure" => {
            let (container, prefix) = parse_bucket_and_prefix(location, rest)?;
            Ok(Location::Azure { container, prefix })
        }
        // Only the scheme is echoed: the rest of an unknown URL may carry credentials.
        other => Err(bad_location(format!(
            "unsupported storage location scheme {other:?}; expected {ACCEPTED_FORMS}"
        ))),
    }
}

/// `Some((scheme, rest))` (rest after the `:`) for `scheme://rest`, and for `known-scheme:rest`
/// (a mistyped URL rather than a relative path); `None` for anything else, which is a filesystem
/// path.
fn split_scheme(location: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = location.split_once(':')?;
    let looks_like_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic());
    if !looks_like_scheme {
        return None;
    }
    let known = ["file", "s3", "gs", "az", "azure", "http", "https"];
    if rest.starts_with("//") || known.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Some((scheme, rest));
    }
    None
}

fn parse_file_url(location: &str) -> Result<Location> {
    let bad = || {
        bad_location(format!(
            "invalid file URL {location:?}; expected file:///absolute/path"
        ))
    };
    let url = ::url::Url::parse(location).map_err(|_| bad())?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad());
    }
    // to_file_path rejects non-local hosts and decodes percent-escapes.
    url.to_file_path().map(Location::Local).map_err(|()| bad())
}

fn parse_bucket_and_prefix(location: &str, rest: &str) -> Result<(String, String)> {
    let scheme = location.split(':').next().unwrap_or_default();
    if rest.contains(['@', '?', '#']) {
        // Do not echo the location: user-info would be credentials.
        return Err(bad_location(format!(
            "storage location {scheme}://... must not contain credentials, a query or a fragment; \
             give credentials in the settings or the environment"
        )));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad_location(format!(
            "storage location {location:?} has no bucket or container name; expected \
             {ACCEPTED_FORMS}"
        )));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad_location(format!(
            "invalid bucket or container name {bucket:?} in {location:?}: only letters, digits, \
             '.', '_' and '-' are allowed"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        validate_key(prefix).map_err(|e| {
            bad_location(format!(
                "invalid prefix {prefix:?} in {location:?}: {}",
                e.message
            ))
        })?;
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// Open the store at `location`, wrapped in [`Retrying`] with `settings.retry`. A local directory
/// must already exist (see [`open_or_create`]). Opening does not contact a cloud store: a wrong
/// bucket or bad credentials show up on the first call.
pub fn open(location: &str, settings: &StorageSettings) -> Result<Arc<dyn Store>> {
    open_impl(location, settings, false)
}

/// Like [`open`], but a missing local directory is created (mode 0700, parents as `mkdir -p`);
/// this is what `lifeboat init` uses. For cloud locations it is the same as [`open`]: buckets and
/// containers are never created.
pub fn open_or_create(location: &str, settings: &StorageSettings) -> Result<Arc<dyn Store>> {
    open_impl(location, settings, true)
}

fn open_impl(location: &str, settings: &StorageSettings, create: bool) -> Result<Arc<dyn Store>> {
    let policy = settings.retry;
    Ok(match parse_location(location)? {
        Location::Local(path) => {
            let store = if create {
                LocalStore::create_root(path)?
            } else {
                LocalStore::open(path)?
            };
            Arc::new(Retrying::new(store, policy))
        }
        Location::S3 { bucket, prefix } => Arc::new(Retrying::new(
            CloudStore::s3(&bucket, &prefix, &settings.s3)?,
            policy,
        )),
        Location::Gcs { bucket, prefix } => Arc::new(Retrying::new(
            CloudStore::gcs(&bucket, &prefix, &settings.gcs)?,
            policy,
        )),
        Location::Azure { container, prefix } => Arc::new(Retrying::new(
            CloudStore::azure(&container, &prefix, &settings.azure)?,
            policy,
        )),
    })
}

/// A location string that is not a location: a configuration error naming where it comes from.
fn bad_location(message: String) -> StorageError {
    StorageError::config(
        message,
        format!(
            "correct the repository location (--repo, LIFEBOAT_REPO or `repo` in the config \
             file): {ACCEPTED_FORMS}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_accepted_forms() {
        let cases = [
            ("/var/backups/pg", Location::Local("/var/backups/pg".into())),
            ("backups/pg", Location::Local("backups/pg".into())),
            ("./repo", Location::Local("./repo".into())),
            (
                "file:///var/backups/pg",
                Location::Local("/var/backups/pg".into()),
            ),
            (
                "file:///var/my%20backups",
                Location::Local("/var/my backups".into()),
            ),
            ("s3://bucket", s3("bucket", "")),
            ("s3://bucket/", s3("bucket", "")),
            ("s3://bucket/a/b/", s3("bucket", "a/b")),
            ("S3://bucket/a", s3("bucket", "a")),
            (
                "gs://b/p",
                Location::Gcs {
                    bucket: "b".into(),
                    prefix: "p".into(),
                },
            ),
            (
                "az://c/p",
                Location::Azure {
                    container: "c".into(),
                    prefix: "p".into(),
                },
            ),
            (
                "azure://c",
                Location::Azure {
                    container: "c".into(),
                    prefix: String::new(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_location(input).unwrap(), expected, "{input}");
        }
        assert_eq!(
            parse_location("s3://bucket/a/b").unwrap().to_string(),
            "s3://bucket/a/b"
        );
    }

    #[test]
    fn rejects_everything_else_listing_accepted_forms() {
        for input in [
            "",
            "http://example.com/x",
            "ftp://host/x",
            "s3:bucket",
            "s3://",
            "s3:///prefix",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/a b",
            "file://remotehost/x",
            "file:relative",
        ] {
            let err = parse_location(input).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Config, "{input}");
            assert!(err.hint.as_deref().unwrap().contains("--repo"), "{input}");
        }
        let err = parse_location("https://host/x").unwrap_err();
        assert!(
            err.message.contains("s3://bucket[/prefix]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn credentials_in_a_location_are_rejected_without_echoing_them() {
        let err = parse_location("s3://AKIAXXX:s3cr3t@bucket/p").unwrap_err();
        assert!(!err.message.contains("s3cr3t") && !err.message.contains("AKIAXXX"));
        let err = parse_location("https://user:s3cr3t@host/p").unwrap_err();
        assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    }

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
            [s3]
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            "#,
        )
        .unwrap();
        assert_eq!(settings.retry.attempt_timeout, Duration::from_secs(5));
        assert_eq!(settings.retry.max_attempts, 3);
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
        ] {
            assert!(toml::from_str::<StorageSettings>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_endpoints_need_allow_http_and_fail_at_once_naming_it() {
        let azure = |allow_http| StorageSettings {
            azure: AzureSettings {
                account: Some("devstoreaccount1".into()),
                access_key: Some("a2V5".into()),
                endpoint: Some("http://127.0.0.1:1/devstoreaccount1".into()),
                allow_http,
                ..AzureSettings::default()
            },
            ..StorageSettings::default()
        };
        for allow_http in [None, Some(false)] {
            let err = open("az://c/p", &azure(allow_http)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Config, "{err}");
            assert!(
                err.hint
                    .as_deref()
                    .unwrap()
                    .contains("[azure] allow_http = true"),
                "{err:?}"
            );
        }
        open("az://c/p", &azure(Some(true))).unwrap();
        let s3 = |allow_http| StorageSettings {
            s3: S3Settings {
                endpoint: Some("http://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                allow_http,
                ..S3Settings::default()
            },
            ..StorageSettings::default()
        };
        let err = open("s3://b/p", &s3(None)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config, "{err}");
        assert!(
            err.hint.as_deref().unwrap().contains("[s3] allow_http"),
            "{err:?}"
        );
        open("s3://b/p", &s3(Some(true))).unwrap();
    }

    #[test]
    fn open_requires_an_existing_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("repo");
        let location = missing.to_str().unwrap();
        let err = open(location, &StorageSettings::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.contains("does not exist"), "{}", err.message);
        let store = open_or_create(location, &StorageSettings::default()).unwrap();
        assert_eq!(store.describe(), location);
        open(location, &StorageSettings::default()).unwrap();
    }
}
