//! This module owns this member's lease: granted on first use and again after it expired,
//! renewed by one keep-alive request and answer at a time (never a background stream, which would
//! keep a frozen or fenced agent's keys alive), revoked on a clean stop.

use std::time::Duration;

use etcd_client::PutOptions;
use tokio::time::Instant;

use super::{Dcs, DcsError};

/// This member's lease after a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The lease was granted by this call: there was none, or the previous one had expired and
    /// every key bound to it (the member key, the leader key) is gone.
    pub fresh: bool,
}

/// etcd leases have whole seconds; rounding up keeps the lease at least `ttl` long, which the
/// fencing contract relies on.
fn ttl_seconds(ttl: Duration) -> i64 {
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(whole.max(1)).unwrap_or(i64::MAX)
}

impl Dcs {
    /// Renews this member's lease once (granting one if there is none or it expired). The loop
    /// calls this each time round when it does not hold the leader key, so that its member key
    /// lives `ttl` past the last loop that ran.
    ///
    /// etcd renews leases on its leader without consensus: a leader cut off from the other
    /// members still renews until it notices, within an election timeout. So a renewal alone
    /// proves nothing about quorum; [`Dcs::renew_leader`] confirms with a linearizable read.
    pub async fn keep_alive(&self) -> Result<Lease, DcsError> {
        self.keep_alive_until(self.endpoints.deadline()).await
    }

    /// Revokes this member's lease, if it has one: its member key, and the leader key if it holds
    /// it, vanish at once instead of after `ttl`. For a clean stop.
    pub async fn revoke_lease(&self) -> Result<(), DcsError> {
        let Some(id) = self.held_lease() else {
            return Ok(());
        };
        let deadline = self.endpoints.deadline();
        let result = self
            .endpoints
            .call("revoke the lease", deadline, id, |mut c| async move {
                c.lease_revoke(id).await
            })
            .await;
        match result {
            Ok(_) | Err(DcsError::LeaseExpired { .. }) => {
                self.forget_lease(id);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn keep_alive_until(&self, deadline: Instant) -> Result<Lease, DcsError> {
        if let Some(id) = self.held_lease() {
            let renewed = self
                .endpoints
                .call("renew the lease", deadline, id, |mut c| async move {
                    // One request, one answer; the stream closes when both halves are dropped.
                    match c.lease_keep_alive(id).await {
                        Ok(_) => Ok(true),
                        // etcd-client's word for an answer with TTL 0: the lease is gone.
                        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                        Err(e) => Err(e),
                    }
                })
                .await;
            match renewed {
                Ok(true) => return Ok(Lease { id, fresh: false }),
                Ok(false) | Err(DcsError::LeaseExpired { .. }) => {
                    tracing::warn!(lease = %format!("{id:x}"), "this member's etcd lease expired");
                    self.forget_lease(id);
                }
                Err(e) => return Err(e),
            }
        }
        let id = self.grant_lease(deadline).await?;
        Ok(Lease { id, fresh: true })
    }

    /// Puts `key` under this member's lease as it is (granting one if needed, and a new one once
    /// if etcd says it expired).
    pub(super) async fn put_with_lease(
        &self,
        what: &'static str,
        deadline: Instant,
        key: &str,
        value: &str,
    ) -> Result<(), DcsError> {
        let mut tries = 0;
        loop {
            let id = match self.held_lease() {
                Some(id) => id,
                None => self.grant_lease(deadline).await?,
            };
            let result = self
                .endpoints
                .call(what, deadline, id, |mut c| {
                    let (key, value) = (key.to_string(), value.to_string());
                    async move {
                        c.put(key, value, Some(PutOptions::new().with_lease(id)))
                            .await
                    }
                })
                .await;
            match result {
                Err(DcsError::LeaseExpired { .. }) if tries == 0 => {
                    self.forget_lease(id);
                    tries += 1;
                }
                other => return other.map(drop),
            }
        }
    }

    /// Grants a lease, unless a concurrent call just did (then that one is this member's).
    async fn grant_lease(&self, deadline: Instant) -> Result<i64, DcsError> {
        let _one_at_a_time = self.granting.lock().await;
        if let Some(id) = self.held_lease() {
            return Ok(id);
        }
        let ttl = ttl_seconds(self.ttl);
        // A grant whose answer is lost leaves an unused lease that expires after `ttl`.
        let response = self
            .endpoints
            .call("grant a lease", deadline, 0, |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        let id = response.id();
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        tracing::debug!(lease = %format!("{id:x}"), ttl, "granted an etcd lease");
        Ok(id)
    }

    pub(super) fn held_lease(&self) -> Option<i64> {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets `id` unless another call already replaced it.
    fn forget_lease(&self, id: i64) {
        let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if *lease == Some(id) {
            *lease = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_secs(10)), 10);
        assert_eq!(ttl_seconds(Duration::from_millis(10_001)), 11);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
    }
}
