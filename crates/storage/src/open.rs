//! Opening a store: the [`Store`] a location names, built with the storage settings and wrapped in
//! [`Retrying`] with the settings' retry limits.

use std::sync::Arc;

use crate::cloud::CloudStore;
use crate::local::LocalStore;
use crate::retry::Retrying;
use crate::settings::StorageSettings;
use crate::url::{Location, parse_location};
use crate::{Result, Store};

/// Open the store at `location`, wrapped in [`Retrying`] with `settings.retry` (and
/// `settings.concurrency`, when set, as its [`crate::Capabilities::concurrency`]). A local directory
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
    Ok(match parse_location(location)? {
        Location::Local(path) => wrapped(
            if create {
                LocalStore::create_root(path)?
            } else {
                LocalStore::open(path)?
            },
            settings,
        ),
        Location::S3 { bucket, prefix } => {
            wrapped(CloudStore::s3(&bucket, &prefix, &settings.s3)?, settings)
        }
        Location::Gcs { bucket, prefix } => {
            wrapped(CloudStore::gcs(&bucket, &prefix, &settings.gcs)?, settings)
        }
        Location::Azure { container, prefix } => wrapped(
            CloudStore::azure(&container, &prefix, &settings.azure)?,
            settings,
        ),
    })
}

fn wrapped<S: Store + 'static>(store: S, settings: &StorageSettings) -> Arc<dyn Store> {
    Arc::new(Retrying::new(store, settings.retry).with_concurrency(settings.concurrency))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::settings::{AzureSettings, S3Settings};

    /// `wal-push` finds its markers by the store's description before building the store.
    #[test]
    fn a_cloud_location_is_described_as_its_store_describes_itself() {
        let settings = StorageSettings {
            s3: S3Settings {
                endpoint: Some("https://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                ..S3Settings::default()
            },
            azure: AzureSettings {
                account: Some("devstoreaccount1".into()),
                access_key: Some("a2V5".into()),
                ..AzureSettings::default()
            },
            ..StorageSettings::default()
        };
        for location in [
            "s3://b",
            "s3://b/",
            "s3://b/team/db1/",
            "s3://b//x",
            "az://c/p/q",
        ] {
            let store = open(location, &settings).unwrap();
            assert_eq!(
                crate::describe_cloud_location(location).as_deref(),
                Some(store.describe().as_str()),
                "{location}"
            );
        }
        assert_eq!(crate::describe_cloud_location("/var/lib/repo"), None);
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
    fn concurrency_defaults_by_backend_kind_unless_set() {
        let s3 = StorageSettings {
            s3: S3Settings {
                endpoint: Some("https://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                ..S3Settings::default()
            },
            ..StorageSettings::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().to_str().unwrap();
        let concurrency = |location: &str, settings: &StorageSettings| {
            open(location, settings).unwrap().capabilities().concurrency
        };
        assert_eq!(
            concurrency("s3://b/p", &s3),
            crate::cloud::DEFAULT_CONCURRENCY
        );
        assert_eq!(
            concurrency(local, &StorageSettings::default()),
            crate::local::DEFAULT_CONCURRENCY
        );
        let set = |settings: &StorageSettings| StorageSettings {
            concurrency: Some(3),
            ..settings.clone()
        };
        assert_eq!(concurrency("s3://b/p", &set(&s3)), 3);
        assert_eq!(concurrency(local, &set(&StorageSettings::default())), 3);
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
