//! The questions and commands of the failover agent (`lifeboat serve` with `[ha]`): one round
//! trip that tells a member's role, timeline and WAL position ([`MemberObservation`]),
//! promotion, `ALTER SYSTEM` with a reload, and the physical slots a leader keeps for the
//! other members (named with [`MEMBER_SLOT_PREFIX`], so no other slot is ever dropped).

use std::time::Duration;

use super::{Result, Session};
use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// Slots the leader keeps for members are `lifeboat_ha_<member>`; only these are dropped.
pub const MEMBER_SLOT_PREFIX: &str = "lifeboat_ha_";

/// The settings the agent may change with [`Session::alter_system`].
const MANAGED_SETTINGS: [&str; 4] = [
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "synchronous_standby_names",
];

/// One member's PostgreSQL, as one query saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberObservation {
    pub in_recovery: bool,
    /// Primary: the timeline it writes; standby: the timeline it receives (else the one of its
    /// last restartpoint).
    pub timeline: Option<TimelineId>,
    /// Primary: flushed position; standby: the larger of received and replayed.
    pub wal_position: Option<Lsn>,
    pub replayed: Option<Lsn>,
    /// Standby: its WAL receiver streams.
    pub streaming: bool,
    /// Primary: `application_name`s of the standbys streaming from it.
    pub connected_standbys: Vec<String>,
}

/// The slot name for member `name`.
pub fn member_slot(name: &str) -> String {
    format!("{MEMBER_SLOT_PREFIX}{name}")
}

impl Session {
    /// This member's role and position in one round trip.
    pub async fn observe_member(&self) -> Result<MemberObservation> {
        let what = "observing the server's role and WAL position";
        let row = self
            .client
            .query_one(
                "select pg_is_in_recovery(), \
                 case when pg_is_in_recovery() then coalesce( \
                     (select received_tli::text from pg_stat_wal_receiver where received_tli > 0), \
                     (select timeline_id::text from pg_control_checkpoint())) \
                   else (('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)::text end, \
                 case when pg_is_in_recovery() then \
                     greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text \
                   else pg_current_wal_flush_lsn()::text end, \
                 pg_last_wal_replay_lsn()::text, \
                 coalesce((select status from pg_stat_wal_receiver), ''), \
                 coalesce((select string_agg(application_name, E'\\n') from pg_stat_replication \
                           where state = 'streaming'), '')",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let get = |i: usize| -> Result<Option<String>> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| self.query_error(what, &e))
        };
        let in_recovery: bool = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        let timeline = match get(1)? {
            Some(text) => Some(
                TimelineId::parse_decimal(&text)
                    .map_err(|e| self.unexpected(what, format!("timeline {text:?}: {e}")))?,
            ),
            None => None,
        };
        let lsn = |i: usize| -> Result<Option<Lsn>> {
            get(i)?.map(|t| self.parse_lsn(what, &t)).transpose()
        };
        Ok(MemberObservation {
            in_recovery,
            timeline,
            wal_position: lsn(2)?,
            replayed: lsn(3)?,
            streaming: get(4)?.as_deref() == Some("streaming"),
            connected_standbys: get(5)?
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// `pg_promote`, waiting up to `wait` for the server to leave recovery; false when it had
    /// not left it by then.
    pub async fn promote(&self, wait: Duration) -> Result<bool> {
        let secs = i32::try_from(wait.as_secs().max(1)).unwrap_or(i32::MAX);
        let text = self
            .query_text(
                "promoting the server",
                "select pg_promote(true, $1)::text",
                &[&secs],
            )
            .await?;
        Ok(text == "true")
    }

    /// `ALTER SYSTEM SET name = value` for one of the settings the agent manages, without
    /// reloading (see [`reload`](Self::reload)).
    pub async fn alter_system(&self, name: &str, value: &str) -> Result<()> {
        let what = format!("setting {name} with ALTER SYSTEM");
        if !MANAGED_SETTINGS.contains(&name) || value.contains('\0') {
            return Err(self.unexpected(
                &what,
                "not a setting the failover agent manages, or a value with a NUL".to_owned(),
            ));
        }
        // ALTER SYSTEM takes no parameters; the value is a standard string literal.
        let sql = format!("alter system set {name} = '{}'", value.replace('\'', "''"));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.query_error(&what, &e))
    }

    /// `CHECKPOINT` (after a promotion, it writes the new timeline into pg_control, which
    /// pg_rewind reads).
    pub async fn checkpoint(&self) -> Result<()> {
        self.client
            .batch_execute("checkpoint")
            .await
            .map_err(|e| self.query_error("running CHECKPOINT", &e))
    }

    /// `pg_reload_conf()`.
    pub async fn reload(&self) -> Result<()> {
        self.query_text(
            "reloading the configuration",
            "select pg_reload_conf()::text",
            &[],
        )
        .await
        .map(drop)
    }

    /// Makes sure a slot exists for each member in `members` and drops the inactive member
    /// slots (prefix [`MEMBER_SLOT_PREFIX`]) of members not listed. Returns the slots dropped.
    pub async fn keep_member_slots(&self, members: &[String]) -> Result<Vec<String>> {
        let keep: Vec<String> = members.iter().map(|m| member_slot(m)).collect();
        for slot in &keep {
            self.ensure_physical_slot(slot).await?;
        }
        let what = "dropping the slots of members that left";
        let rows = self
            .client
            .query(
                "select slot_name::text from pg_replication_slots \
                 where slot_type = 'physical' and not active \
                   and starts_with(slot_name::text, $1) and slot_name::text <> all($2)",
                &[&MEMBER_SLOT_PREFIX, &keep],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let mut dropped = Vec::new();
        for row in rows {
            let slot: String = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
            self.client
                .execute("select pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| self.query_error(what, &e))?;
            dropped.push(slot);
        }
        Ok(dropped)
    }
}
