//! Object-store backend (S3 and S3-compatible servers, GCS, Azure Blob) on top of `object_store`.
//!
//! This module owns the [`CloudStore`]: mapping keys under the location's prefix and the [`Store`]
//! calls. Building the clients from settings and the environment is in `build`; turning
//! `object_store` errors into [`ErrorKind`]s (and keeping secrets out of their messages) is in
//! `classify`. The client's own retries are turned off: [`crate::retry::Retrying`] makes every
//! retry decision, so attempts and deadlines are bounded in one place.
//!
//! Conditional create uses `PutMode::Create` (`If-None-Match: *`). A backend that answers "not
//! implemented" makes the store fall back to head-then-put and report
//! `conditional_create: false` from then on. moto 5.2 (our test server) honours `If-None-Match: *`
//! on PutObject: a second create gets 412 Precondition Failed, which maps to `AlreadyExists`, so the
//! conformance suite exercises the atomic path, not the fallback.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions};

use crate::{
    Capabilities, ErrorKind, ObjectMeta, PutMode, Result, StorageError, Store, split_list_prefix,
    validate_key,
};

mod build;
mod classify;

/// Requests in flight by default ([`Capabilities::concurrency`]): each one mostly waits on the
/// network and the service, so throughput grows with requests in flight well past the core count.
pub const DEFAULT_CONCURRENCY: usize = 32;

use classify::{
    Op, Redactor, chain_text, is_not_implemented, is_unsatisfiable_range, names_missing_bucket,
};

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
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}

/// How a listing is named in messages: the prefix, or a marker for "everything".
fn list_label(prefix: &str) -> &str {
    if prefix.is_empty() {
        "(all keys)"
    } else {
        prefix
    }
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
}
