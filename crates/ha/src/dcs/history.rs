//! This module owns `history`, the cluster's list of leader changes (a JSON list in one key, no
//! lease), appended by read-modify-write in a transaction on the key's revision so that two
//! writers cannot lose each other's entry.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use serde::{Deserialize, Serialize};

use super::{Dcs, DcsError, view};

/// One leader change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the new leader took over, in seconds since the Unix epoch.
    pub time: u64,
    /// The previous leader, if known.
    pub from: Option<String>,
    /// The new leader.
    pub to: String,
    /// The timeline the new leader runs on after its promotion.
    pub timeline: TimelineId,
    /// Where the new timeline branched off the old one.
    pub lsn: Lsn,
}

impl HistoryEntry {
    /// An entry timed now.
    pub fn now(from: Option<String>, to: String, timeline: TimelineId, lsn: Lsn) -> Self {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            time,
            from,
            to,
            timeline,
            lsn,
        }
    }
}

impl Dcs {
    /// The leader changes recorded so far, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>, DcsError> {
        let deadline = self.endpoints.deadline();
        Ok(self.read_history(deadline).await?.0)
    }

    /// Appends `entry` to `history`. Repeating a call whose answer was lost does not add it twice
    /// (an entry equal to the last one is not appended again).
    pub async fn append_history(&self, entry: &HistoryEntry) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let key = self.key(view::HISTORY);
        loop {
            let (mut entries, revision) = self.read_history(deadline).await?;
            if entries.last() == Some(entry) {
                return Ok(());
            }
            entries.push(entry.clone());
            let value = serde_json::to_string(&entries).map_err(|e| DcsError::Invalid {
                what: "append to the history",
                message: format!("the history does not encode as JSON: {e}"),
            })?;
            // mod_revision 0 is an absent key: the first entry creates it.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            let response = self.txn("append to the history", deadline, 0, txn).await?;
            if response.succeeded() {
                return Ok(());
            }
            tracing::debug!("the history changed while appending to it; reading it again");
        }
    }

    /// The list and the key's mod_revision (0: absent).
    async fn read_history(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(Vec<HistoryEntry>, i64), DcsError> {
        let Some(kv) = self
            .get("read the history", deadline, view::HISTORY)
            .await?
        else {
            return Ok((Vec::new(), 0));
        };
        let entries = serde_json::from_slice(kv.value()).map_err(|_| DcsError::Corrupt {
            key: self.key(view::HISTORY),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            expected: "a JSON list of leader changes",
        })?;
        Ok((entries, kv.mod_revision()))
    }
}
