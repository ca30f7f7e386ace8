//! What the server knows of a WAL receiver: its walsender (`pg_stat_replication`) and its physical
//! slot (`pg_replication_slots`), the truth a DBA checks rather than what the receiver says of
//! itself. Read by the daemon's health loop.

use super::{Result, Session};

/// The walsender serving a receiver, from `pg_stat_replication`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalSenderStatus {
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    pub sent_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    /// The server's current WAL position minus `flush_lsn`: WAL the receiver has not stored yet.
    pub lag_bytes: Option<u64>,
    /// Seconds since the receiver's last reply (`reply_time`).
    pub reply_age_seconds: Option<f64>,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: Option<String>,
    /// `flush_lag`: how long ago the newest WAL the receiver has stored was written on the
    /// server; what a crash of the server now would lose, in time (0 when caught up).
    pub exposure_seconds: Option<f64>,
}

/// A physical replication slot, from `pg_replication_slots`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotStatus {
    pub active: bool,
    pub restart_lsn: Option<String>,
    /// The server's current WAL position minus `restart_lsn`: WAL the slot keeps on the server.
    pub retained_bytes: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13 and later).
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is lost (None: unlimited or unknown).
    pub safe_wal_size: Option<i64>,
}

/// The walsender and the slot of one receiver, and the server's `max_slot_wal_keep_size`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceiverServerStatus {
    /// None: no walsender for the slot or the application name (the receiver is not connected).
    pub sender: Option<WalSenderStatus>,
    /// None: the slot does not exist.
    pub slot: Option<SlotStatus>,
    /// In MB, `-1` for unlimited (None before PostgreSQL 13).
    pub max_slot_wal_keep_size_mb: Option<i64>,
    /// The server's `synchronous_standby_names`: when it names the receiver, commits wait for it.
    pub synchronous_standby_names: String,
}

/// The server's current WAL position: the insert position on a primary, the replayed one on a
/// standby (where `pg_current_wal_lsn()` is an error).
const CURRENT_LSN: &str = "(case when pg_is_in_recovery() then pg_last_wal_replay_lsn() \
                           else pg_current_wal_lsn() end)";

impl Session {
    /// The walsender of the receiver using `slot` (else the newest with `application_name`), and
    /// the slot itself.
    pub async fn receiver_status(
        &self,
        slot: &str,
        application_name: &str,
    ) -> Result<ReceiverServerStatus> {
        let what = "reading pg_stat_replication and pg_replication_slots";
        let text = |row: &tokio_postgres::Row, i: usize| -> Result<Option<String>> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| self.query_error(what, &e))
        };
        let number = |row: &tokio_postgres::Row, i: usize| -> Result<Option<f64>> {
            text(row, i)?
                .map(|t| {
                    t.parse::<f64>()
                        .map_err(|_| self.unexpected(what, format!("number {t:?}")))
                })
                .transpose()
        };
        let bytes = |v: Option<f64>| v.map(|b| b.max(0.0) as u64);
        let (wal_status, safe_wal_size) = if self.version_num >= 130_000 {
            ("wal_status", "safe_wal_size::text")
        } else {
            ("null::text", "null::text")
        };
        let slot_row = self
            .client
            .query_opt(
                &format!(
                    "select active::text, restart_lsn::text, \
                            greatest({CURRENT_LSN} - restart_lsn, 0)::text, {wal_status}, {safe_wal_size} \
                     from pg_replication_slots where slot_name = $1"
                ),
                &[&slot],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let slot_status = match slot_row {
            Some(row) => Some(SlotStatus {
                active: text(&row, 0)?.as_deref() == Some("true"),
                restart_lsn: text(&row, 1)?,
                retained_bytes: bytes(number(&row, 2)?),
                wal_status: text(&row, 3)?,
                safe_wal_size: number(&row, 4)?.map(|v| v as i64),
            }),
            None => None,
        };
        let sender_row = self
            .client
            .query_opt(
                &format!(
                    "select state, sent_lsn::text, flush_lsn::text, \
                            greatest({CURRENT_LSN} - flush_lsn, 0)::text, \
                            extract(epoch from clock_timestamp() - reply_time)::text, sync_state, \
                            extract(epoch from flush_lag)::text \
                     from pg_stat_replication \
                     where pid = (select active_pid from pg_replication_slots where slot_name = $1) \
                        or application_name = $2 \
                     order by pid = (select active_pid from pg_replication_slots where slot_name = $1) desc nulls last, \
                              backend_start desc \
                     limit 1"
                ),
                &[&slot, &application_name],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let sender = match sender_row {
            Some(row) => Some({
                let lag = number(&row, 3)?;
                WalSenderStatus {
                    state: text(&row, 0)?.unwrap_or_default(),
                    sent_lsn: text(&row, 1)?,
                    flush_lsn: text(&row, 2)?,
                    lag_bytes: bytes(lag),
                    reply_age_seconds: number(&row, 4)?,
                    sync_state: text(&row, 5)?,
                    // Null once the receiver has caught up and nothing new was written: nothing is
                    // exposed then.
                    exposure_seconds: match (lag, number(&row, 6)?) {
                        (None, _) => None,
                        (Some(_), flush_lag) => Some(flush_lag.unwrap_or(0.0)),
                    },
                }
            }),
            None => None,
        };
        let max_slot_wal_keep_size_mb = if self.version_num >= 130_000 {
            // Read in MB whatever unit the server shows it in.
            let row = self
                .client
                .query_one(
                    "select setting from pg_settings where name = 'max_slot_wal_keep_size'",
                    &[],
                )
                .await
                .map_err(|e| self.query_error(what, &e))?;
            number(&row, 0)?.map(|v| v as i64)
        } else {
            None
        };
        let synchronous_standby_names = self.setting("synchronous_standby_names").await?;
        Ok(ReceiverServerStatus {
            sender,
            slot: slot_status,
            max_slot_wal_keep_size_mb,
            synchronous_standby_names,
        })
    }

    /// Every client `pg_stat_replication` lists (standbys, receivers, base backups), with how far
    /// behind the server it is, newest connection last.
    pub async fn replication_clients(&self) -> Result<Vec<ReplicationClient>> {
        let what = "reading pg_stat_replication";
        let rows = self
            .client
            .query(
                &format!(
                    "select coalesce(application_name, ''), coalesce(state, ''), \
                            coalesce(sync_state, ''), \
                            greatest({CURRENT_LSN} - flush_lsn, 0)::text, \
                            greatest({CURRENT_LSN} - replay_lsn, 0)::text, \
                            extract(epoch from replay_lag)::text \
                     from pg_stat_replication order by backend_start"
                ),
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let mut clients = Vec::with_capacity(rows.len());
        for row in rows {
            let text = |i: usize| -> Result<Option<String>> {
                row.try_get::<_, Option<String>>(i)
                    .map_err(|e| self.query_error(what, &e))
            };
            let number = |i: usize| -> Result<Option<f64>> {
                Ok(text(i)?.and_then(|t| t.parse::<f64>().ok()))
            };
            clients.push(ReplicationClient {
                application_name: text(0)?.unwrap_or_default(),
                state: text(1)?.unwrap_or_default(),
                sync_state: text(2)?.unwrap_or_default(),
                flush_lag_bytes: number(3)?.map(|b| b.max(0.0) as u64),
                replay_lag_bytes: number(4)?.map(|b| b.max(0.0) as u64),
                replay_lag_seconds: number(5)?,
            });
        }
        Ok(clients)
    }
}

/// One client of `pg_stat_replication`: a standby's lag as the primary sees it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReplicationClient {
    pub application_name: String,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// The server's position minus what the client flushed (None: not reported).
    pub flush_lag_bytes: Option<u64>,
    /// The server's position minus what the client replayed (a WAL receiver never replays).
    pub replay_lag_bytes: Option<u64>,
    /// `replay_lag`: how long ago the newest replayed WAL was written on the server.
    pub replay_lag_seconds: Option<f64>,
}
