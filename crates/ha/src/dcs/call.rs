//! This module owns how a request reaches etcd: one client per endpoint, the endpoint in use,
//! and [`Endpoints::call`], which tries a request on one member after another until it is
//! answered or the call's deadline passes.
//!
//! One client per endpoint, rather than etcd-client's balanced channel over all of them, makes
//! "move to the next member on failure" explicit and testable: an attempt that fails or does not
//! answer within its share of the deadline moves the whole `Dcs` to the next endpoint, and it
//! stays there while that member answers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::{Instant, sleep, timeout};

use super::error::{DcsError, Failure, classify};

/// The shortest share of the deadline one attempt gets: enough for a healthy member on a slow
/// disk, short enough to leave time for another member after a dead one.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// Pause after a failed attempt, so a cluster without quorum is not asked in a tight loop.
const BACKOFF: Duration = Duration::from_millis(100);

pub(super) struct Endpoints {
    clients: Vec<(String, Client)>,
    /// Index into `clients` of the member asked first.
    current: AtomicUsize,
    /// Each call's whole budget (`retry_timeout`).
    pub(super) retry_timeout: Duration,
    /// One attempt's budget: a quarter of `retry_timeout`. When the etcd leader dies or freezes,
    /// an attempt on it and one on a follower that still forwards to it can both be swallowed;
    /// this leaves time for two more once the others elect a new leader.
    attempt: Duration,
}

impl Endpoints {
    /// One client per URL. etcd-client connects lazily, so this succeeds while etcd is down.
    pub(super) async fn connect(
        urls: &[String],
        retry_timeout: Duration,
    ) -> Result<Self, DcsError> {
        if urls.is_empty() {
            return Err(DcsError::Endpoint {
                endpoint: String::new(),
                message: "no endpoint given".to_string(),
            });
        }
        let attempt = (retry_timeout / 4).max(MIN_ATTEMPT).min(retry_timeout);
        let options = ConnectOptions::new()
            .with_connect_timeout(attempt)
            .with_timeout(attempt)
            // A member cut off from the others answers "no leader" at once instead of holding
            // the request until it times out.
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(urls.len());
        for url in urls {
            let client = Client::connect([url.as_str()], Some(options.clone()))
                .await
                .map_err(|e| DcsError::Endpoint {
                    endpoint: url.clone(),
                    message: e.to_string(),
                })?;
            clients.push((url.clone(), client));
        }
        Ok(Self {
            clients,
            current: AtomicUsize::new(0),
            retry_timeout,
            attempt,
        })
    }

    /// The deadline of a call starting now.
    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.retry_timeout
    }

    /// The endpoint asked first (the last one that answered).
    pub(super) fn current(&self) -> &str {
        &self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].0
    }

    /// Runs `op` on one member after another until it succeeds, fails for good, or `deadline`
    /// passes. `op` must be safe to repeat: an attempt that timed out may have been applied.
    /// `lease` is the lease the request uses (0: none), for [`DcsError::LeaseExpired`].
    pub(super) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        deadline: Instant,
        lease: i64,
        mut op: F,
    ) -> Result<T, DcsError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = "no attempt was made".to_string();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.unavailable(what, last));
            }
            let index = self.current.load(Ordering::Relaxed) % self.clients.len();
            let (url, client) = &self.clients[index];
            let budget = self.attempt.min(deadline - now);
            match timeout(budget, op(client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => match classify(what, lease, error) {
                    Failure::Final(error) => return Err(error),
                    Failure::Transient(message) => last = format!("{url}: {message}"),
                },
                Err(_) => last = format!("{url}: no answer within {budget:?}"),
            }
            tracing::debug!(what, endpoint = %url, failure = %last, "etcd attempt failed");
            // Another call may have moved on already; move only from the member that failed.
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % self.clients.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let pause = BACKOFF.min(deadline.saturating_duration_since(Instant::now()));
            sleep(pause).await;
        }
    }

    fn unavailable(&self, what: &'static str, last: String) -> DcsError {
        DcsError::Unavailable {
            what,
            timeout: self.retry_timeout,
            endpoints: self
                .clients
                .iter()
                .map(|(url, _)| url.as_str())
                .collect::<Vec<_>>()
                .join(","),
            last,
        }
    }
}
