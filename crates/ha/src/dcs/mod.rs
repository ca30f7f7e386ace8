//! This module owns the cluster's shared state in etcd v3 (docs/design/failover.md, "Keys in
//! etcd"): this member's lease, the leader key, the member keys, `initialize`, `optime`, `sync`,
//! `pause`, `switchover` and `history`, all under `<namespace>/<cluster>/`.
//!
//! Every public call has one deadline, `retry_timeout`, for all the requests it makes; each
//! request moves to the next etcd member when the one asked fails or does not answer (see
//! the `call` module). A call past its deadline returns [`DcsError::Unavailable`]; none hangs.
//!
//! Nothing runs in the background: the lease is renewed only when the caller (the loop) calls
//! [`Dcs::keep_alive`], [`Dcs::acquire_leader`] or [`Dcs::renew_leader`], so a stopped or frozen
//! agent stops renewing, and its keys expire, without anything else to stop.
//!
//! # Fencing contract
//! Record `sent = Instant::now()` just before [`Dcs::acquire_leader`] or [`Dcs::renew_leader`].
//! When the call returns `Ok(true)`, etcd renewed this member's lease after `sent`, for at least
//! `ttl` (granted TTLs are rounded up to whole seconds, and etcd only lengthens them), so the
//! leader key cannot expire before `sent + ttl`. [`Dcs::fencing_deadline`]`(sent)` is that instant
//! minus `retry_timeout`: the instant from which the leader must stop taking writes unless a
//! later renewal succeeded.
//!
//! An etcd leader that just lost quorum may still answer the keep-alive (see
//! [`Dcs::keep_alive`]); the other members do not see that renewal, but their new leader extends
//! every lease by an election timeout when elected, which covers the window in which the old one
//! can answer. The confirming read of [`Dcs::renew_leader`] needs a quorum.

mod call;
mod error;
mod history;
mod lease;
mod view;

use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use lifeboat_pg::lsn::Lsn;

use crate::config::HaConfig;
use crate::state::{ClusterView, MemberRecord, Switchover, SyncState};

pub use error::DcsError;
pub use history::HistoryEntry;
pub use lease::Lease;

use call::Endpoints;

/// This member's client of the cluster's keys in etcd. Share it behind an `Arc`; calls may run
/// concurrently, but the loop is meant to make them one at a time.
pub struct Dcs {
    endpoints: Endpoints,
    /// `<namespace>/<cluster>/`.
    prefix: String,
    name: String,
    ttl: Duration,
    /// This member's lease, once granted.
    lease: std::sync::Mutex<Option<i64>>,
    /// Held while granting, so that concurrent calls share one new lease.
    granting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Dcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dcs")
            .field("prefix", &self.prefix)
            .field("name", &self.name)
            .field("endpoint", &self.endpoints.current())
            .field("lease", &self.held_lease())
            .finish()
    }
}

impl Dcs {
    /// A client of the etcd endpoints of `[ha]`. Does not contact etcd (the first call does), so
    /// an agent starts while etcd is down and reports it through its calls.
    pub async fn connect(config: &HaConfig) -> Result<Self, DcsError> {
        Ok(Self {
            endpoints: Endpoints::connect(&config.etcd, config.retry_timeout).await?,
            prefix: view::prefix(&config.namespace, &config.cluster),
            name: config.name.clone(),
            ttl: config.ttl,
            lease: std::sync::Mutex::new(None),
            granting: tokio::sync::Mutex::new(()),
        })
    }

    /// This member's name, as in its keys.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The etcd endpoint the next request goes to first (the last one that answered).
    pub fn current_endpoint(&self) -> &str {
        self.endpoints.current()
    }

    /// See the module's "Fencing contract": `sent + ttl - retry_timeout`.
    pub fn fencing_deadline(&self, sent: Instant) -> Instant {
        (sent + self.ttl)
            .checked_sub(self.endpoints.retry_timeout)
            .unwrap_or(sent)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Every key of the cluster in one range read (linearizable: answered only with a quorum).
    pub async fn read(&self) -> Result<ClusterView, DcsError> {
        let deadline = self.endpoints.deadline();
        let prefix = self.prefix.clone();
        let response = self
            .endpoints
            .call("read the cluster's keys", deadline, 0, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let entries = response.kvs().iter().filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(self.prefix.as_str())?;
            Some(view::Entry {
                name,
                value: kv.value(),
                lease: kv.lease(),
                mod_revision: kv.mod_revision(),
            })
        });
        Ok(view::parse(&self.prefix, entries))
    }

    /// Takes the leader key for this member if no one holds it: renews (or grants) this
    /// member's lease, then creates `leader` = name under it, only if absent. `Ok(false)`: another
    /// member (or an earlier run of this one, under another lease) holds it. See the module's
    /// "Fencing contract".
    pub async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let deadline = self.endpoints.deadline();
        let lease = self.keep_alive_until(deadline).await?.id;
        let key = self.key(view::LEADER);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.name.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self
            .txn("take the leader key", deadline, lease, txn)
            .await?;
        if response.succeeded() {
            return Ok(true);
        }
        // An earlier attempt of this very call may have created it before its answer was lost.
        let holder = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        Ok(holder.is_some_and(|kv| kv.value() == self.name.as_bytes() && kv.lease() == lease))
    }

    /// Renews this member's lease and confirms the leader key still holds this member's name
    /// under it. `Ok(false)`: the lease had expired (the key went with it) or another member
    /// holds the key. See the module's "Fencing contract".
    pub async fn renew_leader(&self) -> Result<bool, DcsError> {
        let deadline = self.endpoints.deadline();
        let lease = self.keep_alive_until(deadline).await?;
        if lease.fresh {
            tracing::warn!(name = %self.name, "the lease had expired: the leader key is lost");
            return Ok(false);
        }
        let kv = self
            .get("confirm the leader key", deadline, view::LEADER)
            .await?;
        let kv = kv.as_ref();
        let held =
            kv.is_some_and(|kv| kv.value() == self.name.as_bytes() && kv.lease() == lease.id);
        if !held {
            tracing::warn!(
                name = %self.name,
                holder = %kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).unwrap_or_default(),
                "the leader key is no longer this member's"
            );
        }
        Ok(held)
    }

    /// Deletes the leader key if it holds this member's name. `Ok(false)`: it did not.
    pub async fn release_leader(&self) -> Result<bool, DcsError> {
        let deadline = self.endpoints.deadline();
        let key = self.key(view::LEADER);
        let txn = Txn::new()
            .when([Compare::value(
                key.as_str(),
                CompareOp::Equal,
                self.name.as_str(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let response = self.txn("release the leader key", deadline, 0, txn).await?;
        Ok(response.succeeded())
    }

    /// Writes `members/<name>` (this member's name from `[ha]`) under this member's lease,
    /// granting one if needed. It does not renew the lease: the loop calls
    /// [`keep_alive`](Self::keep_alive) (or renews the leader key) each time round.
    pub async fn publish_member(&self, record: &MemberRecord) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let what = "publish the member key";
        if record.name != self.name {
            // Readers skip a record whose name is not its key's: it would vanish unnoticed.
            return Err(DcsError::Invalid {
                what,
                message: format!(
                    "the record names member {:?}, this member is {:?}",
                    record.name, self.name
                ),
            });
        }
        let value = serde_json::to_string(record).map_err(|e| DcsError::Invalid {
            what,
            message: format!("the member record does not encode as JSON: {e}"),
        })?;
        let key = self.key(&format!("{}{}", view::MEMBERS, self.name));
        self.put_with_lease(what, deadline, &key, &value).await
    }

    /// Writes `initialize` = `system_identifier` if absent and returns the identifier stored
    /// (the first member's): a member whose own differs must not join.
    pub async fn initialize(&self, system_identifier: u64) -> Result<u64, DcsError> {
        let deadline = self.endpoints.deadline();
        let key = self.key(view::INITIALIZE);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                system_identifier.to_string(),
                None,
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.txn("initialize the cluster", deadline, 0, txn).await?;
        if response.succeeded() {
            return Ok(system_identifier);
        }
        let stored = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let text = String::from_utf8_lossy(stored.as_deref().unwrap_or_default()).into_owned();
        text.trim().parse().map_err(|_| DcsError::Corrupt {
            key,
            value: text,
            expected: "a system identifier (a decimal number)",
        })
    }

    /// Writes `optime`, the leader's WAL position; no lease, so it outlives the leader.
    pub async fn set_leader_position(&self, position: Lsn) -> Result<(), DcsError> {
        self.put(
            "publish the leader's position",
            view::OPTIME,
            position.to_string(),
        )
        .await
    }

    /// Writes `sync`, the synchronous standby set.
    pub async fn set_sync(&self, sync: &SyncState) -> Result<(), DcsError> {
        self.put_json("publish the synchronous standbys", view::SYNC, sync)
            .await
    }

    /// Sets (`true`) or clears the `pause` key.
    pub async fn set_pause(&self, paused: bool) -> Result<(), DcsError> {
        if paused {
            self.put("pause automatic failover", view::PAUSE, "true".to_string())
                .await
        } else {
            self.delete("resume automatic failover", view::PAUSE).await
        }
    }

    /// Writes (`Some`) or removes the `switchover` request.
    pub async fn set_switchover(&self, switchover: Option<&Switchover>) -> Result<(), DcsError> {
        match switchover {
            Some(request) => {
                self.put_json("request a switchover", view::SWITCHOVER, request)
                    .await
            }
            None => self.delete("clear the switchover", view::SWITCHOVER).await,
        }
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        what: &'static str,
        name: &str,
        value: &T,
    ) -> Result<(), DcsError> {
        let text = serde_json::to_string(value).map_err(|e| DcsError::Invalid {
            what,
            message: format!("the value does not encode as JSON: {e}"),
        })?;
        self.put(what, name, text).await
    }

    /// One key, if present.
    async fn get(
        &self,
        what: &'static str,
        deadline: tokio::time::Instant,
        name: &str,
    ) -> Result<Option<KeyValue>, DcsError> {
        let key = self.key(name);
        let mut response = self
            .endpoints
            .call(what, deadline, 0, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// Runs a transaction (repeated on another member if an attempt fails: build it so that a
    /// repeat is harmless).
    async fn txn(
        &self,
        what: &'static str,
        deadline: tokio::time::Instant,
        lease: i64,
        txn: Txn,
    ) -> Result<TxnResponse, DcsError> {
        self.endpoints
            .call(what, deadline, lease, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
    }

    /// Puts a key without lease.
    async fn put(&self, what: &'static str, name: &str, value: String) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let key = self.key(name);
        self.endpoints
            .call(what, deadline, 0, |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await
            .map(drop)
    }

    async fn delete(&self, what: &'static str, name: &str) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let key = self.key(name);
        self.endpoints
            .call(what, deadline, 0, |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_faults;
