//! Physical replication client: the walsender protocol that `pg_receivewal` and standbys speak.
//!
//! This module owns [`ReplicationConnection`] (a `replication=true` connection: identity, slots,
//! timeline history) and [`WalStream`] (`START_REPLICATION ... PHYSICAL` in CopyBoth mode:
//! WAL data, keepalives, standby status updates, the end of a timeline). tokio-postgres has no
//! CopyBoth, so this is a small client of its own over `postgres-protocol`'s message encoding
//! and SCRAM (`startup`, `wire`). Connections are made without TLS, like [`crate::session`].
//! Errors are [`ReplicationError`], with the server's fields and predicates to branch on.

use std::time::Duration;

use crate::lsn::Lsn;
use crate::session::ConnSpec;
use crate::timeline::TimelineId;

mod error;
mod startup;
mod stream;
#[cfg(test)]
mod tests;
mod wire;

pub use error::{ReplicationError, Result, ServerError};
pub use stream::{StreamMessage, WalStream};
use wire::{Row, Wire, text_column};

/// Oldest release with `READ_REPLICATION_SLOT`.
const READ_REPLICATION_SLOT_VERSION_NUM: u32 = 150_000;

/// What `IDENTIFY_SYSTEM` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier, as in pg_control and WAL page headers.
    pub system_identifier: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush position (a standby: its replay position).
    pub xlogpos: Lsn,
}

/// Where a physical slot holds WAL from (`READ_REPLICATION_SLOT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPosition {
    /// The oldest WAL the slot keeps; `None` for a slot created without reserving WAL and never
    /// used, or one invalidated for holding too much (`max_slot_wal_keep_size`, wal_status
    /// `lost`): for a slot made by [`ReplicationConnection::create_physical_slot`], `None`
    /// means its WAL is gone and streaming must restart from the archive.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`, when there is one.
    pub restart_tli: Option<TimelineId>,
}

/// The outcome of [`ReplicationConnection::create_physical_slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCreated {
    /// Made now, holding WAL from `lsn`: the slot's `restart_lsn` on 15+; on 13 and 14 (no
    /// `READ_REPLICATION_SLOT`) the server's flush position just after, which may lie a little
    /// before `restart_lsn` (the insert position) but never in an older segment than WAL the
    /// server still has.
    Created { lsn: Lsn },
    /// A slot of that name existed already (physical or not: check with
    /// [`ReplicationConnection::read_replication_slot`]).
    AlreadyExists,
}

/// A physical replication connection, idle (not streaming).
pub struct ReplicationConnection {
    wire: Wire,
    version_num: u32,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.wire.target)
            .field("version_num", &self.version_num)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects with `replication=true` as `application_name` (what `synchronous_standby_names`
    /// and `pg_stat_replication` see), trying the hosts of `spec` in order; connecting and
    /// authenticating together must finish within `timeout`.
    pub async fn connect(
        spec: &ConnSpec,
        application_name: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let wire = tokio::time::timeout(timeout, startup::connect_any(spec, application_name))
            .await
            .map_err(|_| ReplicationError::ConnectTimeout {
                target: spec.target(),
                after: timeout,
            })??;
        let version_num = version_num(&wire.server_version).ok_or_else(|| {
            wire.protocol_error(
                "ParameterStatus",
                "reading server_version",
                format!("{:?} is not a version", wire.server_version),
            )
        })?;
        Ok(ReplicationConnection { wire, version_num })
    }

    /// Where this is connected (`host=... port=... user=... dbname=...`), for messages.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.wire.target
    }

    /// The server's version as `server_version_num` spells it (150004 for 15.4).
    #[must_use]
    pub fn server_version_num(&self) -> u32 {
        self.version_num
    }

    /// The notices and warnings the server sent since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<ServerError> {
        std::mem::take(&mut self.wire.notices)
    }

    /// `IDENTIFY_SYSTEM`: which cluster, on which timeline, how far.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let what = "IDENTIFY_SYSTEM";
        let row = self.one_row(what, "IDENTIFY_SYSTEM").await?;
        let id = self.required(what, &row, 0)?;
        let system_identifier = id
            .parse::<u64>()
            .map_err(|_| self.bad_row(what, format!("system identifier {id:?}")))?;
        let timeline = self.timeline(what, self.required(what, &row, 1)?)?;
        let xlogpos = self.lsn(what, self.required(what, &row, 2)?)?;
        Ok(SystemIdentity {
            system_identifier,
            timeline,
            xlogpos,
        })
    }

    /// The server's WAL segment size (`SHOW wal_segment_size`, in bytes), needed to choose a
    /// segment boundary to start at before any WAL has arrived.
    pub async fn wal_segment_size(&mut self) -> Result<u64> {
        let what = "SHOW wal_segment_size";
        let row = self.one_row(what, "SHOW wal_segment_size").await?;
        let text = self.required(what, &row, 0)?;
        let (number, unit) = text
            .find(|c: char| !c.is_ascii_digit())
            .map_or((text, ""), |at| text.split_at(at));
        let scale = match unit.trim() {
            "" | "B" => 1,
            "kB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            _ => 0,
        };
        number
            .parse::<u64>()
            .ok()
            .map(|n| n * scale)
            .filter(|size| crate::walname::is_valid_wal_segment_size(*size))
            .ok_or_else(|| self.bad_row(what, format!("wal_segment_size {text:?}")))
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15+): where physical slot `slot` holds WAL from, or
    /// `None` if there is no such slot. On older servers, an [`ReplicationError::Unsupported`]
    /// error (they answer the command with a syntax error).
    pub async fn read_replication_slot(&mut self, slot: &str) -> Result<Option<SlotPosition>> {
        let what = format!("reading replication slot {slot:?}");
        check_slot_name(slot)?;
        if self.version_num < READ_REPLICATION_SLOT_VERSION_NUM {
            return Err(ReplicationError::Unsupported {
                what: "READ_REPLICATION_SLOT".into(),
                target: self.wire.target.clone(),
                version: self.version_num,
                needs: 15,
                instead: format!(
                    "read restart_lsn from pg_replication_slots where slot_name = '{slot}' \
                     through an SQL session instead"
                ),
            });
        }
        let row = self
            .one_row(&what, &format!("READ_REPLICATION_SLOT {slot}"))
            .await?;
        let kind = text_column(&row, 0).map_err(|d| self.bad_row(&what, d))?;
        match kind {
            None => return Ok(None),
            Some("physical") => {}
            Some(other) => {
                return Err(ReplicationError::InvalidArgument(format!(
                    "replication slot {slot:?} on {} is a {other} slot: streaming WAL needs a \
                     physical slot; use another name",
                    self.wire.target
                )));
            }
        }
        let restart_lsn = match text_column(&row, 1).map_err(|d| self.bad_row(&what, d))? {
            Some(text) => Some(self.lsn(&what, text)?),
            None => None,
        };
        let restart_tli = match text_column(&row, 2).map_err(|d| self.bad_row(&what, d))? {
            Some(text) => Some(self.timeline(&what, text)?),
            None => None,
        };
        Ok(Some(SlotPosition {
            restart_lsn,
            restart_tli,
        }))
    }

    /// `CREATE_REPLICATION_SLOT slot PHYSICAL RESERVE_WAL`: a permanent slot that holds WAL from
    /// now on. A slot of that name that exists already is not an error.
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<SlotCreated> {
        let what = format!("creating replication slot {slot:?}");
        check_slot_name(slot)?;
        // The unparenthesized form: 15+ still accept it, 13 and 14 know no other.
        let sql = format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL");
        match self.one_row(&what, &sql).await {
            Ok(row) => {
                // The answer's consistent_point is 0/0 for physical slots (it is a logical
                // decoding position), so ask for the slot's restart_lsn where we can.
                let point = match text_column(&row, 1).map_err(|d| self.bad_row(&what, d))? {
                    Some(text) => self.lsn(&what, text)?,
                    None => Lsn::INVALID,
                };
                if point != Lsn::INVALID {
                    return Ok(SlotCreated::Created { lsn: point });
                }
                if self.version_num >= READ_REPLICATION_SLOT_VERSION_NUM
                    && let Some(SlotPosition {
                        restart_lsn: Some(lsn),
                        ..
                    }) = self.read_replication_slot(slot).await?
                {
                    return Ok(SlotCreated::Created { lsn });
                }
                let lsn = self.identify_system().await?.xlogpos;
                Ok(SlotCreated::Created { lsn })
            }
            Err(e) if e.server_error().is_some_and(|s| s.code == "42710") => {
                Ok(SlotCreated::AlreadyExists)
            }
            Err(e) => Err(e),
        }
    }

    /// `DROP_REPLICATION_SLOT slot`: for a slot the server invalidated (its WAL removed), which
    /// must be made again to hold WAL from now on. A slot that does not exist is fine.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<()> {
        let what = format!("dropping replication slot {slot:?}");
        check_slot_name(slot)?;
        match self
            .wire
            .simple_query(&what, &format!("DROP_REPLICATION_SLOT {slot}"))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.server_error().is_some_and(|s| s.code == "42704") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and content (what `pg_wal/<name>` holds
    /// on the server). Timeline 1 has none; the server answers with an error.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Vec<u8>)> {
        let what = format!("reading the history of timeline {}", tli.get());
        let row = self
            .one_row(&what, &format!("TIMELINE_HISTORY {}", tli.get()))
            .await?;
        let name = self.required(&what, &row, 0)?.to_owned();
        let content = match row.get(1) {
            Some(Some(bytes)) => bytes.to_vec(),
            _ => return Err(self.bad_row(&what, "no content column".into())),
        };
        Ok((name, content))
    }

    /// `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE tli`: streams WAL from `start` (a
    /// segment boundary, usually). On a timeline the server has left, the stream ends at the
    /// switch point with [`StreamMessage::End`]; starting exactly there ends it at once.
    pub async fn start_physical(
        self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<WalStream> {
        let sql = match slot {
            Some(slot) => {
                check_slot_name(slot)?;
                format!(
                    "START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {}",
                    tli.get()
                )
            }
            None => format!("START_REPLICATION PHYSICAL {start} TIMELINE {}", tli.get()),
        };
        WalStream::start(self, &sql).await
    }

    /// Runs a command that answers one row.
    async fn one_row(&mut self, what: &str, sql: &str) -> Result<Row> {
        let mut rows = self.wire.simple_query(what, sql).await?;
        if rows.len() != 1 {
            return Err(self.bad_row(what, format!("{} rows instead of one", rows.len())));
        }
        Ok(rows.swap_remove(0))
    }

    fn required<'a>(&self, what: &str, row: &'a Row, i: usize) -> Result<&'a str> {
        match text_column(row, i) {
            Ok(Some(text)) => Ok(text),
            Ok(None) => Err(self.bad_row(what, format!("column {} is NULL", i + 1))),
            Err(detail) => Err(self.bad_row(what, detail)),
        }
    }

    fn lsn(&self, what: &str, text: &str) -> Result<Lsn> {
        text.parse().map_err(|e| self.bad_row(what, format!("{e}")))
    }

    fn timeline(&self, what: &str, text: &str) -> Result<TimelineId> {
        TimelineId::parse_decimal(text).map_err(|e| self.bad_row(what, format!("{e}")))
    }

    fn bad_row(&self, what: &str, detail: String) -> ReplicationError {
        self.wire.protocol_error("DataRow", what, detail)
    }
}

/// Slot names are lower-case letters, digits and underscores (the server's own rule), which
/// also keeps them safe to put in a command unquoted.
fn check_slot_name(slot: &str) -> Result<()> {
    let ok = !slot.is_empty()
        && slot.len() < 64
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::InvalidArgument(format!(
            "invalid replication slot name {slot:?}: use 1 to 63 lower-case letters, digits and \
             underscores"
        )))
    }
}

/// `server_version_num` from `server_version` ("15.4 (Debian 15.4-1)", "16beta1", "9.6.3").
fn version_num(text: &str) -> Option<u32> {
    let version = text.split_whitespace().next()?;
    let mut parts = version.split('.');
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let major = digits(parts.next()?)?;
    let second = parts.next().and_then(digits).unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + second)
    } else {
        let third = parts.next().and_then(digits).unwrap_or(0);
        Some(major * 10_000 + second * 100 + third)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_num("15.4 (Debian 15.4-1.pgdg120+1)"), Some(150_004));
        assert_eq!(version_num("16beta1"), Some(160_000));
        assert_eq!(version_num("13.12"), Some(130_012));
        assert_eq!(version_num("9.6.3"), Some(90_603));
        assert_eq!(version_num("x"), None);
        assert_eq!(version_num(""), None);
    }

    #[test]
    fn slot_names() {
        assert!(check_slot_name("lifeboat_1").is_ok());
        for bad in ["", "Lifeboat", "a b", "x;DROP", "a\"b", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
    }
}
