//! The restore plan: which backup, which WAL it needs, where each file goes, and why a restore
//! must be refused. Nothing here writes; `--dry-run` prints this plan.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::recovery::RecoveryTarget;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::{CONFIG_RESTORE_DIR, Manifest};
use serde::Serialize;

use crate::walcheck::missing_segments;
use crate::{EngineError, Result};

mod target_time;
use target_time::strip_zone;
pub use target_time::{
    TARGET_TIME_FORMS, TargetTime, TargetZone, parse_target_time, read_target_time,
};

/// Where the configuration files kept outside PGDATA are restored, inside the target directory.
pub const CONFIG_DIR: &str = CONFIG_RESTORE_DIR;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup: String,
    pub backup_stop_time: String,
    pub backup_stop_lsn: Lsn,
    pub timeline: u32,
    /// First and last WAL segment recovery needs (the last: an LSN target's, else the newest).
    pub wal_from: String,
    pub wal_to: Option<String>,
    /// Where the streamed WAL recovery uses after the last archived segment ends (`wal-stream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_wal_to: Option<Lsn>,
    pub files: u64,
    pub bytes: u64,
    pub target_dir: PathBuf,
    /// Tablespace OID → directory it is restored into.
    pub tablespaces: BTreeMap<u32, PathBuf>,
    pub warnings: Vec<String>,
    /// Files and directories the restore removes (with `--delta`: what the backup does not hold).
    pub files_to_remove: u64,
    /// Files the restore writes (with `--delta`: those that differ from the backup).
    pub files_to_rewrite: u64,
    /// With `--delta`, the paths behind the two counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<PathBuf>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Vec<PathBuf>>,
}

fn refuse(message: String, hint: &str) -> EngineError {
    EngineError::invalid(message, hint)
}

/// Choose the backup: the one named, or the newest that can reach the target.
pub fn choose<'a>(
    manifests: &'a [Manifest],
    label: Option<&str>,
    target: &RecoveryTarget,
) -> Result<&'a Manifest> {
    if manifests.is_empty() {
        return Err(refuse(
            "the repository holds no complete backup".into(),
            "take one with `lifeboat backup`",
        ));
    }
    if let Some(label) = label.filter(|l| *l != "latest") {
        return manifests.iter().find(|m| m.label == label).ok_or_else(|| {
            refuse(
                format!("there is no complete backup labelled {label}"),
                "`lifeboat list` shows the backups",
            )
        });
    }
    let chosen = match target {
        RecoveryTarget::Time(text) => {
            let target = read_target_time(text).ok_or_else(|| {
                refuse(
                    format!("cannot read the target time {text:?}"),
                    &format!("write it as {TARGET_TIME_FORMS}"),
                )
            })?;
            // Without a zone the server reads the time in its own TimeZone, which may be up to
            // 14 hours either side of UTC (and lifeboat does not resolve zone names): choose a
            // backup that ended before the earliest reading.
            let (wanted, latest) = target.bounds();
            if target.zone == TargetZone::None {
                tracing::warn!(
                    "the target time {text:?} names no time zone; add one (e.g. +00) so lifeboat can choose the newest backup that reaches it"
                );
            }
            let chosen = manifests.iter().rev().find(|m| m.stop_time < wanted);
            if chosen.is_none()
                && target.zone != TargetZone::Fixed
                && manifests[0].stop_time < latest
            {
                let bare = strip_zone(text);
                let (why, hint) = match target.zone {
                    TargetZone::Named => (
                        "lifeboat does not resolve time zone names, so it takes",
                        format!(
                            "write the zone's UTC offset instead of its name (e.g. {bare}+01:00 for a time in Paris in winter), or name the backup with --backup"
                        ),
                    ),
                    _ => (
                        "it names no time zone, so the restored server reads it in its own TimeZone, and lifeboat takes",
                        format!(
                            "add the time zone: {bare}+00 (or {bare} UTC) if the time is in UTC, else its offset (e.g. {bare}+01:00); or name the backup with --backup"
                        ),
                    ),
                };
                return Err(refuse(
                    format!(
                        "cannot tell which backup ended before the target time {text:?}: {why} it as anything from 14 hours before to 14 hours after that time read as UTC, and the oldest backup ended at {} (within that span)",
                        lifeboat_repo::timestamp::text(manifests[0].stop_time)
                    ),
                    &hint,
                ));
            }
            chosen
        }
        RecoveryTarget::Lsn(lsn) => manifests.iter().rev().find(|m| m.stop_lsn <= *lsn),
        _ => manifests.last(),
    };
    chosen.ok_or_else(|| {
        refuse(
            format!(
                "no backup ended before the target; the oldest ended at {} (LSN {})",
                lifeboat_repo::timestamp::text(manifests[0].stop_time),
                manifests[0].stop_lsn
            ),
            "choose a later target, or restore without one",
        )
    })
}

/// Where each tablespace goes: `--tablespace-map` (by OID or name), else its original location.
pub fn tablespace_dirs(
    manifest: &Manifest,
    map: &HashMap<String, PathBuf>,
) -> Result<BTreeMap<u32, PathBuf>> {
    let mut out = BTreeMap::new();
    for ts in &manifest.tablespaces {
        let dest = map
            .get(&ts.oid.to_string())
            .or_else(|| map.get(&ts.name))
            .cloned()
            .unwrap_or_else(|| PathBuf::from(&ts.location));
        if !dest.is_absolute() {
            return Err(refuse(
                format!(
                    "tablespace {} ({}) would go to the relative path {}",
                    ts.name,
                    ts.oid,
                    dest.display()
                ),
                "give --tablespace-map OID=/absolute/dir",
            ));
        }
        out.insert(ts.oid, dest);
    }
    for key in map.keys() {
        if !manifest
            .tablespaces
            .iter()
            .any(|t| t.oid.to_string() == *key || t.name == *key)
        {
            return Err(refuse(
                format!(
                    "--tablespace-map names {key}, which is not a tablespace of backup {}",
                    manifest.label
                ),
                "the backup's tablespaces are listed by `lifeboat restore --dry-run`",
            ));
        }
    }
    Ok(out)
}

/// The manifest must keep [`Manifest::check_rules`] (every path inside the target, no link at a
/// name restore writes, nothing under a link), or nothing is written.
pub fn check_manifest(manifest: &Manifest) -> Result<()> {
    let problems = manifest.check_rules();
    if problems.is_empty() {
        return Ok(());
    }
    Err(refuse(
        format!(
            "backup {} cannot be restored safely: its manifest breaks the rules that keep a restore inside its target: {}",
            manifest.label,
            problems.join("; ")
        ),
        "the manifest is damaged or was tampered with: restore another backup and run `lifeboat verify`",
    ))
}

/// `--delta` removes whatever the backup does not hold: it may only update a PostgreSQL data
/// directory (`PG_VERSION`) of the repository's cluster (the system identifier in
/// `global/pg_control`, where it can be read). A missing or empty directory is a plain restore.
pub fn check_delta_target(dir: &Path, system_identifier: u64) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut listing) => {
            if listing.next().is_none() {
                return Ok(());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(EngineError::io(
                format!("cannot read the target directory {}", dir.display()),
                e,
            ));
        }
    }
    let hint = "--delta updates a data directory of the repository's cluster in place (a previous restore of it) and removes what the backup does not hold; restore into an empty or missing directory instead";
    if holds_only_the_marker(dir) {
        tracing::info!(
            "{} holds nothing but the marker of a restore killed at its first write: --delta finishes it",
            dir.display()
        );
        return Ok(());
    }
    match interrupted_restore(dir) {
        Some(Ok(id)) if id == system_identifier => {
            tracing::info!(
                "{} holds an interrupted restore of this repository's cluster: --delta finishes it",
                dir.display()
            );
            return Ok(());
        }
        Some(Ok(id)) => {
            return Err(refuse(
                format!(
                    "{} holds an interrupted restore of another cluster (system identifier {id}; the repository's is {system_identifier}): --delta would replace it",
                    dir.display()
                ),
                hint,
            ));
        }
        Some(Err(problem)) => tracing::warn!("{problem}"),
        None => {}
    }
    if !fs::symlink_metadata(dir.join("PG_VERSION")).is_ok_and(|m| m.is_file()) {
        return Err(refuse(
            format!(
                "{} is not a PostgreSQL data directory (it has no PG_VERSION): --delta would remove everything in it that the backup does not hold",
                dir.display()
            ),
            hint,
        ));
    }
    let control = dir.join("global").join("pg_control");
    match fs::read(&control) {
        Ok(bytes) => match lifeboat_pg::control::parse_control_file(&bytes) {
            Ok(c) if c.system_identifier != system_identifier => {
                return Err(refuse(
                    format!(
                        "{} is the data directory of another cluster (system identifier {}; the repository's is {}): --delta would replace it",
                        dir.display(),
                        c.system_identifier,
                        system_identifier
                    ),
                    hint,
                ));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "{} cannot be read ({e}); --delta goes on, since {} holds PG_VERSION",
                control.display(),
                dir.display()
            ),
        },
        Err(e) => tracing::warn!(
            "{} cannot be read ({e}); --delta goes on, since {} holds PG_VERSION",
            control.display(),
            dir.display()
        ),
    }
    Ok(())
}

/// Written into the target directory before anything else and removed as the restore's last step:
/// a directory holding it is a restore of the cluster it names that did not finish, which
/// `--delta` may complete even before `PG_VERSION` was written.
pub const RESTORE_MARKER: &str = "lifeboat_restore_incomplete";

/// The marker's text: the system identifier of the cluster being restored, and the backup.
pub fn restore_marker_text(system_identifier: u64, label: &str) -> String {
    format!("system_identifier = {system_identifier}\nbackup = {label}\n")
}

/// The system identifier an interrupted restore in `dir` was restoring: `None` without a marker,
/// an error naming the problem when the marker is not a regular file or cannot be read.
pub fn interrupted_restore(dir: &Path) -> Option<std::result::Result<u64, String>> {
    let path = dir.join(RESTORE_MARKER);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return Some(Err(format!(
            "{} is not a regular file; it is ignored",
            path.display()
        )));
    }
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Some(Err(format!("cannot read {}: {e}", path.display()))),
    };
    let id = text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "system_identifier")
            .then(|| value.trim().parse::<u64>().ok())
            .flatten()
    });
    Some(id.ok_or_else(|| {
        format!(
            "{} names no system identifier; it is ignored",
            path.display()
        )
    }))
}

/// Whether `dir`'s only entry is a regular file named [`RESTORE_MARKER`], whatever it holds: a
/// restore killed between creating the marker and writing it leaves that, and there is nothing
/// in it to lose.
fn holds_only_the_marker(dir: &Path) -> bool {
    let Ok(listing) = fs::read_dir(dir) else {
        return false;
    };
    let names: Vec<_> = listing
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .take(2)
        .collect();
    names.len() == 1
        && names[0] == RESTORE_MARKER
        && fs::symlink_metadata(dir.join(RESTORE_MARKER)).is_ok_and(|m| m.is_file())
}

/// Refuse a target that holds anything (unless delta) or where a server runs.
pub fn check_target(dir: &Path, delta: bool, what: &str) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut listing) => {
            if let Some(pid) = running_postmaster(dir) {
                return Err(refuse(
                    format!("a postmaster (pid {pid}) is running in {}", dir.display()),
                    "stop that server first; a restore never writes under a running server",
                ));
            }
            if !delta && listing.next().is_some() {
                if interrupted_restore(dir).is_some() {
                    return Err(refuse(
                        format!(
                            "the {what} {} holds a restore that did not finish",
                            dir.display()
                        ),
                        "add --delta to finish it (only what differs from the backup is written), or restore into an empty or missing directory",
                    ));
                }
                return Err(refuse(
                    format!("the {what} {} is not empty", dir.display()),
                    "restore into an empty or missing directory, or add --delta to update this one in place",
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(refuse(
            format!("the {what} {} is not a directory", dir.display()),
            "choose a directory",
        )),
        Err(e) => Err(EngineError::io(
            format!("cannot read the {what} {}", dir.display()),
            e,
        )),
    }
}

/// A tablespace's directory must be empty or missing, unless `delta_allowed` (it is already this
/// target's tablespace).
pub fn check_tablespace_dir(dir: &Path, oid: u32, delta_allowed: bool) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut listing) => {
            if !delta_allowed && listing.next().is_some() {
                return Err(refuse(
                    format!(
                        "the directory {} of tablespace {oid} is not empty (it may be the live cluster's tablespace)",
                        dir.display()
                    ),
                    &format!(
                        "restore the tablespace elsewhere with --tablespace-map {oid}=/new/dir"
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::io(
            format!("cannot read the tablespace directory {}", dir.display()),
            e,
        )),
    }
}

fn running_postmaster(dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    lifeboat_pg::cluster::pid_alive(pid).then_some(pid)
}

/// Check that the WAL recovery needs is archived; errors name the missing segments. Returns the
/// last segment checked and warnings.
pub async fn check_wal(
    repo: &Repository,
    manifest: &Manifest,
    target: &RecoveryTarget,
    seg_size: u64,
) -> Result<(Option<String>, Vec<String>)> {
    let (start, stop) = (manifest.start_wal, manifest.stop_wal);
    let missing = missing_segments(repo, &start, &stop, seg_size).await?;
    if !missing.is_empty() {
        return Err(refuse(
            format!(
                "backup {} cannot be restored: WAL it needs is missing from the repository: {missing}",
                manifest.label,
            ),
            "restore another backup (lifeboat list), or put the missing segments back",
        ));
    }
    let mut warnings = Vec::new();
    let last_archived = repo
        .list_wal()
        .await?
        .into_iter()
        .filter_map(|w| match w.name {
            WalFileName::Segment(s) if s.timeline == stop.timeline => Some(s),
            _ => None,
        })
        .max();
    let end = match target {
        RecoveryTarget::Lsn(lsn) => {
            let seg = WalSegmentName::from_lsn(stop.timeline, *lsn, seg_size);
            if seg < stop { stop } else { seg }
        }
        _ => last_archived.unwrap_or(stop).max(stop),
    };
    let missing = missing_segments(repo, &stop, &end, seg_size).await?;
    if !missing.is_empty() {
        let first = missing
            .first()
            .map_or_else(|| end.to_string(), |s| s.to_string());
        let message = match target {
            RecoveryTarget::Lsn(lsn) if last_archived.is_none_or(|l| l < end) => format!(
                "the target LSN {lsn} lies beyond the WAL archived after backup {}: recovery would stop at {first}, the first segment missing from the repository (missing: {missing})",
                manifest.label
            ),
            _ => format!(
                "WAL between backup {} and the target is missing from the repository, from {first} on: {missing}",
                manifest.label
            ),
        };
        match target {
            RecoveryTarget::Lsn(_) | RecoveryTarget::Latest => {
                return Err(refuse(
                    message,
                    "recovery would stop at the first missing segment; choose a target before it (--target-lsn), or put the segments back",
                ));
            }
            _ => warnings.push(format!(
                "{message}; recovery stops there if the target lies beyond it"
            )),
        }
    }
    Ok((Some(end.to_string()), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> time::OffsetDateTime {
        lifeboat_repo::timestamp::parse(text).unwrap()
    }

    /// A manifest with only what the backup choice looks at.
    fn manifest(label: &str, stop_lsn: u64, stop_time: &str) -> Manifest {
        lifeboat_repo::backup::testing::ManifestBuilder::new(label)
            .lsns(stop_lsn - 1, stop_lsn)
            .time(stop_time)
            .build()
    }

    #[test]
    fn target_times_in_the_forms_postgresql_accepts() {
        let exact = [
            ("2026-11-23 10:15:00+00", "2026-11-23T10:15:00Z"),
            ("2026-11-23T10:15:00Z", "2026-11-23T10:15:00Z"),
            ("2026-11-23 10:15:00 UTC", "2026-11-23T10:15:00Z"),
            ("2026-11-23 10:15:00 utc", "2026-11-23T10:15:00Z"),
            ("2026-11-23 10:15:00 GMT", "2026-11-23T10:15:00Z"),
            ("2026-11-23 10:15:00.25+01", "2026-11-23T09:15:00.25Z"),
            ("2026-11-23 10:15:00 +0100", "2026-11-23T09:15:00Z"),
            ("2026-11-23 10:15:00-05:30", "2026-11-23T15:45:00Z"),
            ("2026-11-23 10:15+01:00", "2026-11-23T09:15:00Z"),
        ];
        for (text, want) in exact {
            let t = read_target_time(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(t.zone, TargetZone::Fixed, "{text}");
            assert!(t.has_zone, "{text}");
            assert_eq!(t.instant, utc(want), "{text}");
        }
        let plain = read_target_time(" 2026-11-23 10:15:00 ").unwrap();
        assert_eq!(plain.zone, TargetZone::None);
        assert_eq!(plain.instant, utc("2026-11-23T10:15:00Z"));
        assert_eq!(
            plain.for_postgres(" 2026-11-23 10:15:00 "),
            "2026-11-23 10:15:00"
        );
        let day = read_target_time("2026-11-23").unwrap();
        assert_eq!(day.instant, utc("2026-11-23T00:00:00Z"));
        assert_eq!(
            read_target_time("2026-11-23 10:15:00 UTC")
                .unwrap()
                .for_postgres("x"),
            "2026-11-23 10:15:00.000000+00"
        );
        for bad in [
            "",
            "abc",
            "2026-13-01 00:00:00",
            "2026-11-23 25:00:00",
            "2026-11-23 10:15:00 +16",
            "2026-11-23 10:15:00 +1",
            "2026-11-23 10:15:00 ../../etc/passwd",
            "2026-11-23 10:15:00 No/Such_Zone",
            "2026-11-23 10:15:00.",
            "2026-11-23x10:15:00",
        ] {
            assert!(read_target_time(bad).is_none(), "{bad:?}");
        }
    }

    /// A zone name is accepted when the system's tz database holds it, and passed on to
    /// PostgreSQL as written (it resolves it); lifeboat chooses the backup as for a zone-less time.
    #[test]
    fn named_zones_are_passed_on() {
        if !Path::new("/usr/share/zoneinfo/Europe/Paris").exists() {
            return; // no tz database on this machine
        }
        let text = "2026-11-23 10:15:00 Europe/Paris";
        let t = read_target_time(text).unwrap();
        assert_eq!(t.zone, TargetZone::Named);
        assert!(!t.has_zone);
        assert_eq!(t.for_postgres(text), text);
    }

    /// A zone-less target that only the zone keeps from choosing a backup says so.
    #[test]
    fn a_zone_less_target_that_cannot_choose_says_the_zone_is_why() {
        let ms = vec![manifest("b1", 100, "2026-11-23T10:00:00Z")];
        let target = RecoveryTarget::Time("2026-11-23 12:00:00".into());
        let err = choose(&ms, None, &target).unwrap_err();
        let (message, hint) = (err.to_string(), err.hint().unwrap_or_default());
        assert!(message.contains("names no time zone"), "{message}");
        assert!(hint.contains("2026-11-23 12:00:00+00"), "{hint}");
        // With the zone it chooses.
        let target = RecoveryTarget::Time("2026-11-23 12:00:00 UTC".into());
        assert_eq!(choose(&ms, None, &target).unwrap().label, "b1");
        // Before every backup even with the widest zone: the plain message.
        let target = RecoveryTarget::Time("2026-11-22 12:00:00".into());
        let err = choose(&ms, None, &target).unwrap_err().to_string();
        assert!(err.contains("no backup ended before the target"), "{err}");
    }

    #[test]
    fn an_unreadable_target_time_names_the_forms() {
        let ms = vec![manifest("b1", 100, "2026-11-23T10:00:00Z")];
        let target = RecoveryTarget::Time("2026-11-23 12:00:00 PST".into());
        let err = choose(&ms, None, &target).unwrap_err();
        let hint = err.hint().unwrap_or_default();
        assert!(
            hint.contains("Europe/Paris") && hint.contains("+01:00"),
            "{hint}"
        );
    }

    #[test]
    fn delta_finishes_a_restore_killed_between_creating_and_writing_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        // An empty marker and nothing else: the restore's first write, cut short.
        fs::write(dir.path().join(RESTORE_MARKER), "").unwrap();
        check_delta_target(dir.path(), 7).unwrap();
        // Anything beside it, and the marker has to prove whose restore it was.
        fs::write(dir.path().join("other"), "x").unwrap();
        assert!(check_delta_target(dir.path(), 7).is_err());
    }
}
