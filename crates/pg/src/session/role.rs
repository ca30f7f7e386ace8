//! The server's role as a failover agent and the role endpoints need it: in recovery or not, its
//! timeline, its WAL positions and whether its WAL receiver streams, read in one query so the
//! answers belong to one moment.

use std::str::FromStr;

use super::{Result, Session};
use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// One reading of the server's role and positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleStatus {
    pub in_recovery: bool,
    /// Primary: the timeline it writes on; standby: the timeline its WAL receiver last received
    /// (None while it does not stream).
    pub timeline: Option<TimelineId>,
    /// Primary: WAL flushed to disk (`pg_current_wal_flush_lsn`).
    pub flushed: Option<Lsn>,
    /// Standby: WAL received and flushed by its receiver (`pg_last_wal_receive_lsn`).
    pub received: Option<Lsn>,
    /// Standby: WAL replayed (`pg_last_wal_replay_lsn`).
    pub replayed: Option<Lsn>,
    /// Standby: its WAL receiver's status is `streaming`.
    pub streaming: bool,
    /// Standby: the primary's WAL end as its walsender last reported it
    /// (`pg_stat_wal_receiver.latest_end_lsn`).
    pub sender_end: Option<Lsn>,
}

impl RoleStatus {
    /// Standby: bytes of WAL the primary had (as last heard) or this standby received that are
    /// not replayed yet: how stale a read here may be. None on a primary or when unknown.
    #[must_use]
    pub fn replay_lag_bytes(&self) -> Option<u64> {
        let replayed = self.replayed?;
        let ahead = self.sender_end.max(self.received)?;
        Some(ahead.0.saturating_sub(replayed.0))
    }
}

impl Session {
    /// The server's role, timeline, positions and WAL receiver. `pg_stat_wal_receiver` shows its
    /// columns only to superusers and `pg_read_all_stats`: without them, the receiver's facts are
    /// unknown (not streaming).
    pub async fn role_status(&self) -> Result<RoleStatus> {
        let what = "reading the server's role (pg_is_in_recovery, pg_stat_wal_receiver)";
        let row = self
            .client
            .query_one(
                "select pg_is_in_recovery()::text, \
                        case when pg_is_in_recovery() then null \
                             else pg_current_wal_flush_lsn()::text end, \
                        case when pg_is_in_recovery() then null \
                             else substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) end, \
                        pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                        (select status from pg_stat_wal_receiver limit 1), \
                        (select latest_end_lsn::text from pg_stat_wal_receiver limit 1), \
                        (select received_tli::text from pg_stat_wal_receiver limit 1)",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let text = |i: usize| -> Result<Option<String>> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| self.query_error(what, &e))
        };
        let lsn = |i: usize| -> Result<Option<Lsn>> {
            text(i)?
                .map(|t| Lsn::from_str(&t).map_err(|e| self.unexpected(what, e.to_string())))
                .transpose()
        };
        let in_recovery = text(0)?.as_deref() == Some("true");
        let timeline = match (text(2)?, text(7)?) {
            (Some(hex), _) => {
                Some(TimelineId::from_str(&hex).map_err(|e| self.unexpected(what, e.to_string()))?)
            }
            // 0 before the receiver first connected.
            (None, Some(decimal)) => TimelineId::parse_decimal(&decimal).ok(),
            (None, None) => None,
        };
        Ok(RoleStatus {
            in_recovery,
            timeline,
            flushed: lsn(1)?,
            received: lsn(3)?,
            replayed: lsn(4)?,
            streaming: text(5)?.as_deref() == Some("streaming"),
            sender_end: lsn(6)?,
        })
    }
}
