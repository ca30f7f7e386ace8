//! Deadlines and retries around any [`Store`].
//!
//! [`Retrying`] runs every attempt of every call under [`RetryPolicy::attempt_timeout`] and retries
//! `Transient` failures with capped exponential backoff and full jitter. All retry decisions for
//! every backend live here (the object_store client's own retries are turned off), so the number of
//! attempts and the time a call may take are bounded in one place.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    Capabilities, ErrorKind, ObjectMeta, PutMode, Result, RetryPolicy, StorageError, Store,
};

/// A [`Store`] that adds per-attempt deadlines and retries to `inner`.
///
/// Note for callers: a put is retried when an attempt times out, even though that attempt may have
/// landed after all. A retried [`PutMode::Create`] can therefore return
/// [`ErrorKind::AlreadyExists`] for an object this very call wrote; the repository layer resolves
/// that by comparing the stored content with what it meant to write. (On the local store an
/// abandoned attempt may even still be running in the background when the retry starts.)
#[derive(Debug, Clone)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
    /// Replaces the backend's [`Capabilities::concurrency`] when set.
    concurrency: Option<usize>,
}

impl<S: Store> Retrying<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            concurrency: None,
        }
    }

    /// Report `concurrency` (at least 1) instead of the backend's default; `None` keeps it.
    pub fn with_concurrency(mut self, concurrency: Option<usize>) -> Self {
        self.concurrency = concurrency.map(|n| n.max(1));
        self
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn run<T, F, Fut>(&self, op: &str, key: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let max_attempts = self.policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let error = match tokio::time::timeout(self.policy.attempt_timeout, call()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if e.kind != ErrorKind::Transient => return Err(e),
                Ok(Err(e)) => e,
                Err(_elapsed) => StorageError::new(
                    ErrorKind::Transient,
                    format!(
                        "{op} {key} on {} timed out after {}",
                        self.inner.describe(),
                        fmt_duration(self.policy.attempt_timeout)
                    ),
                ),
            };
            if attempt >= max_attempts {
                let plural = if attempt == 1 { "" } else { "s" };
                let message = format!(
                    "{} (gave up after {attempt} attempt{plural})",
                    error.message
                );
                return Err(StorageError { message, ..error });
            }
            let delay = self.backoff(attempt);
            tracing::warn!(
                op,
                key,
                store = %self.inner.describe(),
                attempt,
                max_attempts,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "storage call failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Full jitter: a uniformly random delay up to `initial * 2^(attempt-1)`, capped at
    /// `max_backoff`, so that many clients failing together do not retry in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let ceiling = self
            .policy
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.policy.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[async_trait]
impl<S: Store> Store for Retrying<S> {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let mut attempts = 0u32;
        self.run("put", key, || {
            attempts += 1;
            let look_first = attempts > 1 && mode == PutMode::Create;
            // `Bytes` clones share the buffer, so a retry does not copy the payload.
            let data = data.clone();
            async move {
                // A create-only put that failed in transit may have landed; or the key existed
                // and the server refused before reading the body and dropped the connection,
                // which reaches us as a broken pipe instead of its 412, on every attempt. Look
                // before sending again: an existing object is `AlreadyExists`, as the 412 would
                // have been, and the caller compares contents as it does for that.
                if look_first {
                    match self.inner.head(key).await {
                        Ok(_) => {
                            return Err(StorageError::new(
                                ErrorKind::AlreadyExists,
                                format!("{key} exists (found after a failed create-only put)"),
                            ));
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
                self.inner.put(key, data, mode).await
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.run("get", key, || self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.run("get_range", key, || self.inner.get_range(key, start, end))
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.run("head", key, || self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let label = if prefix.is_empty() {
            "(all keys)"
        } else {
            prefix
        };
        self.run("list", label, || self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.run("delete", key, || self.inner.delete(key)).await
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        if let Some(n) = self.concurrency {
            caps.concurrency = n;
        }
        caps
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails with the queued errors, then succeeds; `hang` makes every call sleep first.
    #[derive(Debug, Default)]
    struct Flaky {
        errors: Mutex<Vec<StorageError>>,
        calls: AtomicU32,
        hang: Option<Duration>,
    }

    impl Flaky {
        fn failing(errors: Vec<StorageError>) -> Self {
            Self {
                errors: Mutex::new(errors),
                ..Self::default()
            }
        }
        async fn call(&self) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(d) = self.hang {
                tokio::time::sleep(d).await;
            }
            let next = self.errors.lock().unwrap().pop();
            next.map_or(Ok(()), Err)
        }
    }

    #[async_trait]
    impl Store for Flaky {
        async fn put(&self, _: &str, _: Bytes, _: PutMode) -> Result<()> {
            self.call().await
        }
        async fn get(&self, _: &str) -> Result<Bytes> {
            self.call().await.map(|()| Bytes::from_static(b"ok"))
        }
        async fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Bytes> {
            self.call().await.map(|()| Bytes::new())
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta> {
            self.call().await.map(|()| ObjectMeta {
                key: key.into(),
                size: 0,
            })
        }
        async fn list(&self, _: &str) -> Result<Vec<ObjectMeta>> {
            self.call().await.map(|()| Vec::new())
        }
        async fn delete(&self, _: &str) -> Result<()> {
            self.call().await
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                conditional_create: true,
                durable_put: true,
                concurrency: 1,
            }
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(200),
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    fn transient() -> StorageError {
        StorageError::new(ErrorKind::Transient, "connection reset")
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let store = Retrying::new(Flaky::failing(vec![transient(), transient()]), policy(3));
        assert_eq!(store.get("k").await.unwrap(), Bytes::from_static(b"ok"));
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_create_put_failed_in_transit_looks_for_the_object_before_sending_again() {
        // The put fails in transit; the HEAD then finds the key: `AlreadyExists`, as a 412 would.
        let store = Retrying::new(Flaky::failing(vec![transient()]), policy(5));
        let err = store
            .put("k", Bytes::new(), PutMode::Create)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::AlreadyExists, "{}", err.message);
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 2);
        // A put that may replace is simply sent again.
        let store = Retrying::new(Flaky::failing(vec![transient()]), policy(5));
        store
            .put("k", Bytes::new(), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_says_so() {
        let errors = vec![transient(), transient(), transient(), transient()];
        let store = Retrying::new(Flaky::failing(errors), policy(3));
        let err = store
            .put("k", Bytes::new(), PutMode::Create)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transient);
        assert!(err.message.contains("after 3 attempts"), "{}", err.message);
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn non_transient_errors_are_returned_at_once() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Permanent,
        ] {
            let store = Retrying::new(
                Flaky::failing(vec![StorageError::new(kind, "no")]),
                policy(5),
            );
            let err = store.head("k").await.unwrap_err();
            assert_eq!(err.kind, kind);
            assert_eq!(err.message, "no");
            assert_eq!(store.inner().calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn each_attempt_has_a_deadline() {
        let flaky = Flaky {
            hang: Some(Duration::from_secs(30)),
            ..Flaky::default()
        };
        let store = Retrying::new(flaky, policy(2));
        let started = std::time::Instant::now();
        let err = store.delete("k").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.kind, ErrorKind::Transient);
        assert!(
            err.message.contains("timed out after 0.2s"),
            "{}",
            err.message
        );
        assert!(err.message.contains("after 2 attempts"), "{}", err.message);
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn backoff_is_capped() {
        let store = Retrying::new(Flaky::default(), policy(100));
        for attempt in 1..100 {
            assert!(store.backoff(attempt) <= Duration::from_millis(5));
        }
    }
}
