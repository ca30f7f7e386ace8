//! This module owns [`DcsError`], what a call to etcd can fail with, and the rule that tells a
//! transient failure (try again, maybe on another member) from a refusal (trying again cannot
//! help).

use std::time::Duration;

/// Why a call to etcd failed. Every message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// No etcd member answered within the call's deadline (`retry_timeout`): members down,
    /// unreachable, or no quorum. The outcome of a write is unknown.
    #[error(
        "etcd did not answer ({what}) within {timeout:?} on any of {endpoints}; last failure: \
         {last}. Check that a majority of the etcd members run and are reachable from this host \
         (etcdctl --endpoints {endpoints} endpoint health)"
    )]
    Unavailable {
        what: &'static str,
        timeout: Duration,
        endpoints: String,
        last: String,
    },
    /// etcd answered with a refusal that trying again cannot change (permissions, a request
    /// it does not understand).
    #[error(
        "etcd refused {what}: {message}. Check the etcd version (3.4 or later) and, when \
         authentication is enabled, the user's permissions on the cluster's prefix"
    )]
    Refused { what: &'static str, message: String },
    /// The lease this member used expired on etcd (the agent did not renew it in time); the
    /// caller grants a new one and writes its keys again.
    #[error(
        "this member's etcd lease {lease:x} expired ({what}): keys bound to it are gone; a new \
         lease is granted on the next call"
    )]
    LeaseExpired { what: &'static str, lease: i64 },
    /// A key holds a value this version cannot read, where guessing would be unsafe.
    #[error(
        "etcd key {key} holds {value:?}, which is not {expected}. Find out who wrote it; if it \
         is stale, remove it with: etcdctl del {key}"
    )]
    Corrupt {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// The caller asked for something this client must not write (a bug in the caller).
    #[error("cannot {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// `[ha]` names no endpoint or one etcd-client cannot use.
    #[error("invalid etcd endpoint {endpoint:?} in [ha] etcd: {message}. Use http://HOST:PORT")]
    Endpoint { endpoint: String, message: String },
}

/// How [`super::call::Endpoints::call`] treats a failed attempt.
pub(super) enum Failure {
    /// Try again, on the next endpoint, while the deadline allows.
    Transient(String),
    /// Return at once.
    Final(DcsError),
}

/// Sorts one etcd-client error. `lease` is the lease the request used (0: none), to report an
/// expired one as [`DcsError::LeaseExpired`].
pub(super) fn classify(what: &'static str, lease: i64, error: etcd_client::Error) -> Failure {
    use tonic::Code;
    match error {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            // etcd says "requested lease not found" for a put or keep-alive on a dead lease.
            Code::NotFound if lease != 0 && status.message().contains("lease") => {
                Failure::Final(DcsError::LeaseExpired { what, lease })
            }
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange => Failure::Final(DcsError::Refused {
                what,
                message: status.message().to_string(),
            }),
            // Unavailable (no leader, leader changed, member stopping, connection refused),
            // DeadlineExceeded, ResourceExhausted (too many requests), Unknown, Internal...
            _ => Failure::Transient(format!("{:?}: {}", status.code(), status.message())),
        },
        etcd_client::Error::InvalidArgs(message) => {
            Failure::Final(DcsError::Refused { what, message })
        }
        other => Failure::Transient(other.to_string()),
    }
}
