//! `standby create`: a standby built from the repository instead of from the primary. The newest
//! backup is restored (or `--delta` brings an existing copy up to date) with `standby.signal`,
//! `primary_conninfo` naming the standby (`application_name`), a physical slot on the primary
//! (`primary_slot_name`) and `restore_command` as the fallback, so that the standby replays the
//! archive first and then streams; the primary only serves what the repository does not hold.
//!
//! Everything that can refuse happens before the first byte is written: the primary must be the
//! repository's cluster (system identifier) and the slot free. The slot is created after the
//! restore, so a failed restore leaves none holding WAL on the primary for nothing.

use std::time::Duration;

use lifeboat_pg::session::{ConnSpec, Session};
use lifeboat_repo::Repository;

use crate::restore::{EventSink, RestoreOptions, RestoreReport, restore};
use crate::{EngineError, Result};

/// What `standby create` needs beyond a restore's options.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// The restore: `standby` is set, the target is the end of the archive on the newest
    /// timeline.
    pub restore: RestoreOptions,
    /// The primary, as given (written into `primary_conninfo` with `application_name`).
    pub primary_conninfo: String,
    /// `application_name` and slot name.
    pub name: String,
    /// Create (if missing) and use a physical slot named `name` on the primary.
    pub slot: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StandbyReport {
    pub name: String,
    pub slot: Option<String>,
    pub slot_created: bool,
    pub restore: RestoreReport,
}

pub async fn create(
    repo: &Repository,
    options: &StandbyOptions,
    events: EventSink,
) -> Result<StandbyReport> {
    let identity = repo.identity().await?.ok_or_else(|| {
        EngineError::invalid(
            "the repository holds no backup",
            "take one with `lifeboat backup`",
        )
    })?;
    let spec = ConnSpec::new(Some(&options.primary_conninfo)).map_err(|e| {
        EngineError::invalid(
            format!("invalid --primary connection string: {e}"),
            "give libpq key=value pairs (host=... port=... user=...) or a postgres:// URL; put the password in ~/.pgpass",
        )
    })?;
    let pg = |what: &str, e: lifeboat_pg::session::SessionError| EngineError::Postgres {
        message: format!("{what}: {e}"),
        hint: "check --primary and that the primary is running; nothing was written".into(),
    };
    let session = Session::connect(&spec, Duration::from_secs(15))
        .await
        .map_err(|e| pg("cannot connect to the primary", e))?;
    let system = session
        .system_identifier()
        .await
        .map_err(|e| pg("cannot read the primary's system identifier", e))?;
    if system != identity.system_identifier {
        return Err(EngineError::invalid(
            format!(
                "the primary belongs to cluster {system}, the repository to cluster {}: a standby restored from this repository could never follow that primary; nothing was written",
                identity.system_identifier
            ),
            "give --primary the server whose WAL this repository archives, or use that server's repository",
        ));
    }
    if options.slot
        && session
            .slot_state(&options.name)
            .await
            .map_err(|e| pg("cannot read the primary's replication slots", e))?
            == Some(true)
    {
        return Err(EngineError::invalid(
            format!(
                "the replication slot {} on the primary is in use by a running standby; nothing was written",
                options.name
            ),
            "give this standby another --name, or stop the one using the slot first",
        ));
    }
    let mut restore_options = options.restore.clone();
    restore_options.standby = true;
    restore_options.primary_conninfo = Some(with_application_name(
        &options.primary_conninfo,
        &options.name,
    ));
    restore_options.primary_slot_name = options.slot.then(|| options.name.clone());
    let report = restore(repo, &restore_options, events).await?;
    // The slot is created once the copy exists: WAL the primary removed before then is in the
    // repository, which the standby reads first (restore_command).
    let slot_created = if options.slot && !restore_options.dry_run {
        session.ensure_physical_slot(&options.name).await.map_err(|e| EngineError::Postgres {
            message: format!(
                "the standby is restored in {}, but the replication slot {} could not be created on the primary: {e}",
                restore_options.target_dir.display(),
                options.name
            ),
            hint: format!(
                "create it with SELECT pg_create_physical_replication_slot('{}', true) as a superuser, then start the standby",
                options.name
            ),
        })?
    } else {
        false
    };
    Ok(StandbyReport {
        name: options.name.clone(),
        slot: restore_options.primary_slot_name,
        slot_created,
        restore: report,
    })
}

/// `conninfo` with `application_name` set to `name` (unless it sets one), in its own syntax.
pub fn with_application_name(conninfo: &str, name: &str) -> String {
    let trimmed = conninfo.trim();
    if trimmed.contains("application_name") {
        return trimmed.to_string();
    }
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let separator = if trimmed.contains('?') { '&' } else { '?' };
        return format!("{trimmed}{separator}application_name={name}");
    }
    format!("{trimmed} application_name={name}")
}

/// A slot and `application_name` from a directory name: PostgreSQL's slot names are lower-case
/// letters, digits and underscores, at most 63.
pub fn default_name(target_dir: &std::path::Path) -> String {
    let base = target_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '_') {
        name = "standby".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_connection_strings() {
        assert_eq!(
            default_name(std::path::Path::new("/srv/pg/Replica-1")),
            "replica_1"
        );
        assert_eq!(default_name(std::path::Path::new("/")), "standby");
        assert_eq!(
            with_application_name("host=/tmp port=5432", "r1"),
            "host=/tmp port=5432 application_name=r1"
        );
        assert_eq!(
            with_application_name("postgres://u@h/db", "r1"),
            "postgres://u@h/db?application_name=r1"
        );
        assert_eq!(
            with_application_name("postgres://u@h/db?sslmode=disable", "r1"),
            "postgres://u@h/db?sslmode=disable&application_name=r1"
        );
        assert_eq!(
            with_application_name("host=h application_name=x", "r1"),
            "host=h application_name=x"
        );
    }
}
