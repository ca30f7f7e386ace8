//! SQL sessions with a running server: the questions and commands a backup needs (settings,
//! identity, tablespaces, backup start and stop, WAL switches, restore points).
//!
//! This module owns [`Session`], one connection over tokio-postgres. Where to connect is a
//! [`ConnSpec`] (`conninfo`, with the password file in `pgpass`); errors are [`SessionError`]
//! (`error`). A non-exclusive backup belongs to the connection that started it (the server aborts
//! it when the connection ends), so a session never reconnects: losing the connection fails the
//! backup instead of silently starting over. Connections are made without TLS; use a Unix socket
//! or a trusted network.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::lsn::Lsn;
use crate::walname::WalSegmentName;

mod conninfo;
mod error;
pub mod ha;
mod pgpass;
mod role;
#[cfg(test)]
mod tests;
mod walsender;

pub use conninfo::{ConnSpec, DEFAULT_PORT, DEFAULT_SOCKET_DIRS};
use error::describe;
pub use error::{Result, SessionError};
pub use role::RoleStatus;
pub use walsender::{ReceiverServerStatus, ReplicationClient, SlotStatus, WalSenderStatus};

/// Oldest server release a backup can use: 13 (`server_version_num` 130000).
pub const MIN_SERVER_VERSION_NUM: u32 = 130_000;

/// A row of `pg_stat_archiver`; times are RFC 3339 in UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
}

/// A tablespace other than `pg_default` and `pg_global`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// Its OID, the name of its link in `pg_tblspc`.
    pub oid: u32,
    /// Its name.
    pub name: String,
    /// Where its files are (the target of `pg_tblspc/<oid>`). Relative for an in-place
    /// tablespace (`allow_in_place_tablespaces`), which lives inside the data directory.
    pub location: PathBuf,
}

/// What the server returns when a backup stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStopped {
    /// End of the backup: replay must reach this LSN for the copy to be consistent.
    pub lsn: Lsn,
    /// The `backup_label` file to write into the restored data directory.
    pub backup_label: String,
    /// The `tablespace_map` file, when the cluster has tablespaces.
    pub tablespace_map: Option<String>,
}

/// One connection to a server. Call it within a tokio runtime: the connection is driven by a
/// task of its own. Dropping the session closes the connection, which aborts a backup it
/// started.
pub struct Session {
    client: Client,
    target: String,
    version_num: u32,
    /// Notices and warnings the server sent, oldest first, until taken.
    notices: Arc<Mutex<Vec<String>>>,
    /// Why the connection ended, once it has.
    closed: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field("version_num", &self.version_num)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects, giving up after `timeout`, and reads the server version. On servers that have
    /// `idle_session_timeout` (14+) it is turned off for this session: a backup's session sits
    /// idle while files are copied, and losing it would abort the backup.
    pub async fn connect(spec: &ConnSpec, timeout: Duration) -> Result<Session> {
        let target = spec.target();
        let mut config = spec.config.clone();
        config.connect_timeout(timeout);
        let (client, mut connection) =
            match tokio::time::timeout(timeout, config.connect(NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    return Err(SessionError::Connect {
                        hint: connect_hint(&e, spec).to_owned(),
                        detail: describe(&e),
                        target,
                    });
                }
                Err(_) => {
                    return Err(SessionError::ConnectTimeout {
                        target,
                        after: timeout,
                    });
                }
            };

        let notices = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(None));
        let (task_notices, task_closed) = (Arc::clone(&notices), Arc::clone(&closed));
        // Drives the connection and keeps what it says outside of query results. Ends when the
        // client is dropped (after telling the server goodbye) or the connection fails.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        lock(&task_notices).push(format!(
                            "{}: {}",
                            notice.severity(),
                            notice.message()
                        ));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        *lock(&task_closed) = Some(describe(&e));
                        break;
                    }
                    None => {
                        *lock(&task_closed) = Some("the connection was closed".to_owned());
                        break;
                    }
                }
            }
        });

        let mut session = Session {
            client,
            target,
            version_num: 0,
            notices,
            closed,
        };
        let version = session
            .query_text(
                "reading server_version_num",
                "select current_setting('server_version_num')",
                &[],
            )
            .await?;
        session.version_num = version.parse().map_err(|_| SessionError::Unexpected {
            what: "reading server_version_num".into(),
            target: session.target.clone(),
            detail: format!("{version:?} is not a number"),
        })?;
        if session.version_num >= 140_000 {
            session
                .query_text(
                    "turning off idle_session_timeout",
                    "select set_config('idle_session_timeout', '0', false)",
                    &[],
                )
                .await?;
        }
        Ok(session)
    }

    /// Where this session is connected, as in messages.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The server's version number (`server_version_num`, e.g. 150004 for 15.4).
    #[must_use]
    pub fn server_version_num(&self) -> u32 {
        self.version_num
    }

    /// The notices and warnings the server has sent since the last call, oldest first (e.g.
    /// `WARNING: still waiting for all required WAL segments to be archived` while a backup
    /// stops).
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }

    /// The current value of setting `name` (`current_setting`), as the server shows it.
    pub async fn setting(&self, name: &str) -> Result<String> {
        self.query_text(
            &format!("reading setting {name}"),
            "select current_setting($1)",
            &[&name],
        )
        .await
    }

    /// The server's data directory. Reading it needs superuser or `pg_read_all_settings`.
    pub async fn data_directory(&self) -> Result<PathBuf> {
        self.setting("data_directory").await.map(PathBuf::from)
    }

    /// The cluster's system identifier, as in `pg_control` and WAL page headers.
    pub async fn system_identifier(&self) -> Result<u64> {
        let what = "reading the system identifier";
        let text = self
            .query_text(
                what,
                "select system_identifier::text from pg_control_system()",
                &[],
            )
            .await?;
        // int8 on the SQL side: identifiers with the top bit set come back negative.
        text.parse::<u64>()
            .ok()
            .or_else(|| {
                text.parse::<i64>()
                    .ok()
                    .map(|v| u64::from_ne_bytes(v.to_ne_bytes()))
            })
            .ok_or_else(|| self.unexpected(what, format!("{text:?} is not a number")))
    }

    /// Whether the server is a standby or otherwise replaying WAL.
    pub async fn is_in_recovery(&self) -> Result<bool> {
        let text = self
            .query_text(
                "asking whether the server is in recovery",
                "select pg_is_in_recovery()::text",
                &[],
            )
            .await?;
        Ok(text == "true")
    }

    /// The tablespaces that have a location of their own (all but `pg_default` and `pg_global`).
    pub async fn tablespaces(&self) -> Result<Vec<Tablespace>> {
        let what = "listing tablespaces";
        let rows = self
            .client
            .query(
                "select oid::int8, spcname::text, pg_tablespace_location(oid) \
                 from pg_tablespace where pg_tablespace_location(oid) <> '' order by oid",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        rows.iter()
            .map(|row| {
                let oid: i64 = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
                let name: String = row.try_get(1).map_err(|e| self.query_error(what, &e))?;
                let location: String = row.try_get(2).map_err(|e| self.query_error(what, &e))?;
                Ok(Tablespace {
                    oid: u32::try_from(oid)
                        .map_err(|_| self.unexpected(what, format!("OID {oid} out of range")))?,
                    name,
                    location: PathBuf::from(location),
                })
            })
            .collect()
    }

    /// Starts a non-exclusive backup labelled `label`; returns its start LSN. `fast` asks for an
    /// immediate checkpoint instead of a spread one. The backup lasts until
    /// [`Session::backup_stop`] on this same session, or until the session ends (which aborts
    /// it). Uses `pg_backup_start` on 15 and later, `pg_start_backup` on 13 and 14.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn> {
        let what = "starting the backup";
        self.require_backup_support(what)?;
        if label.contains(['\n', '\r']) {
            return Err(SessionError::InvalidArgument(format!(
                "invalid backup label {label:?}: it is written as one line of backup_label; use a \
                 label without line breaks"
            )));
        }
        let sql = if self.version_num >= 150_000 {
            "select pg_backup_start($1, $2)::text"
        } else {
            "select pg_start_backup($1, $2, false)::text"
        };
        let text = self.query_text(what, sql, &[&label, &fast]).await?;
        self.parse_lsn(what, &text)
    }

    /// Stops the backup this session started. With `wait_for_archive`, waits until the WAL the
    /// backup needs has been archived (the server sends warnings meanwhile: see
    /// [`Session::take_notices`]; a `statement_timeout` also bounds this wait). Uses
    /// `pg_backup_stop` on 15 and later, `pg_stop_backup` on 13 and 14.
    pub async fn backup_stop(&self, wait_for_archive: bool) -> Result<BackupStopped> {
        let what = "stopping the backup";
        self.require_backup_support(what)?;
        let sql = if self.version_num >= 150_000 {
            "select lsn::text, labelfile, spcmapfile from pg_backup_stop($1)"
        } else {
            "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, $1)"
        };
        let row = self
            .client
            .query_one(sql, &[&wait_for_archive])
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let lsn: String = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        let backup_label: Option<String> =
            row.try_get(1).map_err(|e| self.query_error(what, &e))?;
        let tablespace_map: Option<String> =
            row.try_get(2).map_err(|e| self.query_error(what, &e))?;
        Ok(BackupStopped {
            lsn: self.parse_lsn(what, &lsn)?,
            backup_label: backup_label
                .ok_or_else(|| self.unexpected(what, "no backup label".to_owned()))?,
            tablespace_map: tablespace_map.filter(|map| !map.is_empty()),
        })
    }

    /// Switches to a new WAL segment so the current one can be archived; returns the switch
    /// position and the name of the segment that was completed. If nothing was written since the
    /// last switch the server does not switch and this names the segment completed before.
    pub async fn switch_wal(&self) -> Result<(Lsn, WalSegmentName)> {
        let what = "switching WAL";
        let row = self
            .client
            .query_one(
                "select lsn::text, pg_walfile_name(lsn) from pg_switch_wal() as lsn",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let lsn: String = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        let name: String = row.try_get(1).map_err(|e| self.query_error(what, &e))?;
        let name = name
            .parse()
            .map_err(|e| self.unexpected(what, format!("{e}")))?;
        Ok((self.parse_lsn(what, &lsn)?, name))
    }

    /// Creates a restore point named `name` (a target for `recovery_target_name`); returns its
    /// LSN.
    pub async fn create_restore_point(&self, name: &str) -> Result<Lsn> {
        let what = format!("creating restore point {name:?}");
        let text = self
            .query_text(&what, "select pg_create_restore_point($1)::text", &[&name])
            .await?;
        self.parse_lsn(&what, &text)
    }

    /// The current WAL write position (`pg_current_wal_lsn`; a primary only). This is how far WAL
    /// has been written out, not inserted: a record just inserted (a restore point, say) may lie
    /// beyond it until something writes or flushes WAL.
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let what = "reading the current WAL position";
        let text = self
            .query_text(what, "select pg_current_wal_lsn()::text", &[])
            .await?;
        self.parse_lsn(what, &text)
    }

    /// Makes sure the physical replication slot `name` exists, reserving WAL from now on; true
    /// when it was created by this call (a slot of that name, of any kind, counts as existing).
    pub async fn ensure_physical_slot(&self, name: &str) -> Result<bool> {
        let what = format!("creating the replication slot {name:?}");
        let created = self
            .query_text(
                &what,
                "select (count(*) = 0)::text from pg_replication_slots where slot_name = $1",
                &[&name],
            )
            .await?;
        if created != "true" {
            return Ok(false);
        }
        self.query_text(
            &what,
            "select slot_name::text from pg_create_physical_replication_slot($1, true)",
            &[&name],
        )
        .await?;
        Ok(true)
    }

    /// Whether a replication slot `name` exists (`Some(active)`), and whether a process uses it.
    pub async fn slot_state(&self, name: &str) -> Result<Option<bool>> {
        let what = format!("reading the replication slot {name:?}");
        let state = self
            .query_text(
                &what,
                "select coalesce((select active::text from pg_replication_slots \
                 where slot_name = $1), 'none')",
                &[&name],
            )
            .await?;
        Ok(match state.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }

    /// The state `pg_stat_replication` shows for the client named `application_name`
    /// (`streaming`, `catchup`, ...), if one is connected.
    pub async fn replication_client_state(&self, application_name: &str) -> Result<Option<String>> {
        let what = "reading pg_stat_replication";
        let state = self
            .query_text(
                what,
                "select coalesce((select state from pg_stat_replication \
                 where application_name = $1 limit 1), '')",
                &[&application_name],
            )
            .await?;
        Ok((!state.is_empty()).then_some(state))
    }

    /// Sets this session's `statement_timeout`; zero turns it off.
    pub async fn set_statement_timeout(&self, timeout: Duration) -> Result<()> {
        let mut ms = timeout.as_millis();
        if ms == 0 && !timeout.is_zero() {
            ms = 1;
        }
        // The setting is an int of milliseconds.
        let ms = ms.min(i32::MAX as u128).to_string();
        self.query_text(
            "setting statement_timeout",
            "select set_config('statement_timeout', $1, false)",
            &[&ms],
        )
        .await
        .map(drop)
    }

    fn require_backup_support(&self, what: &str) -> Result<()> {
        if self.version_num < MIN_SERVER_VERSION_NUM {
            return Err(SessionError::Unsupported {
                target: self.target.clone(),
                version: self.version_num,
                what: what.to_owned(),
            });
        }
        Ok(())
    }

    /// The databases that accept connections, templates left out, by name (what `dump` dumps).
    pub async fn databases(&self) -> Result<Vec<String>> {
        let what = "listing the databases";
        let sql = "select datname::text from pg_database \
                   where datallowconn and not datistemplate order by 1";
        let rows = self.client.query(sql, &[]).await;
        let rows = rows.map_err(|e| self.query_error(what, &e))?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| self.query_error(what, &e)))
            .collect()
    }

    /// One row, one non-null text column.
    /// `pg_stat_archiver`: what the archiver last stored and last failed on, and when.
    pub async fn archiver_stats(&self) -> Result<ArchiverStats> {
        let what = "reading pg_stat_archiver";
        let row = self
            .client
            .query_one(
                "select archived_count::text, last_archived_wal, \
                        to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                        failed_count::text, last_failed_wal, \
                        to_char(last_failed_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                 from pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let text = |i: usize| -> Result<Option<String>> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| self.query_error(what, &e))
        };
        let count = |i: usize| -> Result<u64> {
            let t = text(i)?.unwrap_or_default();
            t.parse()
                .map_err(|_| self.unexpected(what, format!("count {t:?}")))
        };
        Ok(ArchiverStats {
            archived_count: count(0)?,
            last_archived_wal: text(1)?,
            last_archived_time: text(2)?,
            failed_count: count(3)?,
            last_failed_wal: text(4)?,
            last_failed_time: text(5)?,
        })
    }

    async fn query_text(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<String> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .map_err(|e| self.query_error(what, &e))?;
        let value: Option<String> = row.try_get(0).map_err(|e| self.query_error(what, &e))?;
        value.ok_or_else(|| self.unexpected(what, "NULL".to_owned()))
    }

    fn parse_lsn(&self, what: &str, text: &str) -> Result<Lsn> {
        text.parse()
            .map_err(|e| self.unexpected(what, format!("{e}")))
    }

    fn unexpected(&self, what: &str, detail: String) -> SessionError {
        SessionError::Unexpected {
            what: what.to_owned(),
            target: self.target.clone(),
            detail,
        }
    }

    fn query_error(&self, what: &str, e: &tokio_postgres::Error) -> SessionError {
        let mut detail = describe(e);
        if e.is_closed() {
            if let Some(reason) = lock(&self.closed).clone() {
                detail = format!("the connection to the server was lost ({reason})");
            } else {
                detail = "the connection to the server was lost".to_owned();
            }
            detail.push_str("; a backup this session started is aborted, start it again");
        } else if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            detail.push_str(
                "; connect as a superuser, or grant the role what it needs (pg_read_all_settings, \
                 EXECUTE on the backup functions)",
            );
        }
        SessionError::Query {
            what: what.to_owned(),
            target: self.target.clone(),
            detail,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What to check after a failed connection.
fn connect_hint(e: &tokio_postgres::Error, spec: &ConnSpec) -> &'static str {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if code == &SqlState::INVALID_PASSWORD
            || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return "check the user name and password (PGPASSWORD, the password file) and the \
                    server's pg_hba.conf";
        }
        if code == &SqlState::INVALID_CATALOG_NAME {
            return "connect to an existing database (dbname= or PGDATABASE)";
        }
        if code == &SqlState::TOO_MANY_CONNECTIONS {
            return "the server has no free connection slots: retry later or raise max_connections";
        }
        return "fix what the server reports, then retry";
    }
    let text = e.to_string();
    if text.contains("password missing") {
        if spec.has_password() {
            return "check the password";
        }
        return "the server asks for a password: set PGPASSWORD, add a line to the password file \
                (~/.pgpass or PGPASSFILE), or give password= in the connection string";
    }
    "is the server running and listening there? check host and port (PGHOST, PGPORT, or the \
     connection string) and the server's listen_addresses, port and unix_socket_directories"
}
