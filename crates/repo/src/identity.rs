//! The cluster a repository belongs to: bound by the first `wal-push` (or backup), checked by all
//! later ones so WAL of two clusters can never mix in one repository.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIdentity {
    pub system_identifier: u64,
    pub pg_major: u32,
    pub wal_segment_size: u64,
}
