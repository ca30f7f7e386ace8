//! The restore plan: which backup, which WAL it needs, where each file goes, and why a restore
//! must be refused. Nothing here writes; `--dry-run` prints this plan.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::recovery::RecoveryTarget;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::{Entry, Manifest, Root, is_safe_relative_path};
use serde::Serialize;
use time::OffsetDateTime;

use crate::walcheck::missing_segments;
use crate::{EngineError, Result};

/// Where the configuration files kept outside PGDATA are restored, inside the target directory.
pub const CONFIG_DIR: &str = "restored_config";

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup: String,
    pub backup_stop_time: String,
    pub backup_stop_lsn: Lsn,
    pub timeline: u32,
    /// First and last WAL segment recovery needs that the check could name (the last is the
    /// target's segment for an LSN target, else the last archived one).
    pub wal_from: String,
    pub wal_to: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub target_dir: PathBuf,
    /// Tablespace OID → directory it is restored into.
    pub tablespaces: BTreeMap<u32, PathBuf>,
    pub warnings: Vec<String>,
}

fn refuse(message: String, hint: &str) -> EngineError {
    EngineError::invalid(message, hint)
}

/// The widest distance between a local time and UTC (UTC-12 to UTC+14).
const MAX_ZONE_OFFSET: time::Duration = time::Duration::hours(14);

/// A target time as lifeboat reads it: the instant, and whether the text named its time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetTime {
    pub instant: OffsetDateTime,
    pub has_zone: bool,
}

impl TargetTime {
    /// The form written into `recovery_target_time`: PostgreSQL rejects `Z`, and a zone-less
    /// time stays as the user wrote it (the restored server reads it in its own TimeZone).
    pub fn for_postgres(&self, original: &str) -> String {
        if !self.has_zone {
            return original.trim().to_string();
        }
        let utc = self.instant.to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
            utc.year(),
            u8::from(utc.month()),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second(),
            utc.microsecond()
        )
    }
}

/// Read a target time as PostgreSQL writes timestamps: `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM]]`,
/// with `T` or a space, `Z` for UTC.
pub fn read_target_time(text: &str) -> Option<TargetTime> {
    let t = text.trim();
    // After `YYYY-MM-DD HH:MM:SS` only fractions and a zone may follow.
    let has_zone = t
        .get(19..)
        .is_some_and(|rest| rest.contains(['Z', 'z', '+', '-']));
    parse_target_time(t).map(|instant| TargetTime { instant, has_zone })
}

/// Parse a recovery target time (see [`read_target_time`]); a time without a zone is read as UTC.
pub fn parse_target_time(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let t = text.trim();
    if let Ok(v) = OffsetDateTime::parse(t, &Rfc3339) {
        return Some(v);
    }
    let mut s = t.replacen(' ', "T", 1);
    // Zone: Z, +HH, +HHMM, +HH:MM, or none.
    let zone_at = s
        .char_indices()
        .skip(11)
        .find(|(_, c)| *c == '+' || *c == '-' || *c == 'Z')
        .map(|(i, _)| i);
    let zone = match zone_at {
        Some(i) => s.split_off(i),
        None => "Z".to_string(),
    };
    let zone = match zone.as_str() {
        "Z" => "Z".to_string(),
        z if z.len() == 3 => format!("{z}:00"),
        z if z.len() == 5 && !z.contains(':') => format!("{}:{}", &z[..3], &z[3..]),
        z => z.to_string(),
    };
    OffsetDateTime::parse(&format!("{s}{zone}"), &Rfc3339).ok()
}

fn manifest_time(m: &Manifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&m.stop_time, &time::format_description::well_known::Rfc3339).ok()
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
                    "write it as PostgreSQL does, e.g. 2026-11-23 10:15:00+00",
                )
            })?;
            // Without a zone the server reads the time in its own TimeZone, which may be up to
            // 14 hours either side of UTC: choose a backup that ended before the earliest reading.
            let wanted = if target.has_zone {
                target.instant
            } else {
                tracing::warn!(
                    "the target time {text:?} names no time zone; add one (e.g. +00) so lifeboat can choose the newest backup that reaches it"
                );
                target.instant - MAX_ZONE_OFFSET
            };
            manifests
                .iter()
                .rev()
                .find(|m| manifest_time(m).is_some_and(|t| t < wanted))
        }
        RecoveryTarget::Lsn(lsn) => manifests.iter().rev().find(|m| m.stop_lsn <= *lsn),
        _ => manifests.last(),
    };
    chosen.ok_or_else(|| {
        refuse(
            format!(
                "no backup ended before the target; the oldest ended at {} (LSN {})",
                manifests[0].stop_time, manifests[0].stop_lsn
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

/// Every manifest path must stay inside what it is restored into, and nothing may be written
/// through a link the manifest itself creates.
pub fn check_paths(manifest: &Manifest) -> Result<()> {
    let links: Vec<&str> = manifest
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Link { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    for entry in &manifest.entries {
        let path = entry.path();
        let bad = !is_safe_relative_path(path)
            || links.iter().any(|l| {
                path != *l && path.starts_with(&format!("{l}/")) && !is_wal_dir_child(l, path)
            });
        if bad {
            return Err(refuse(
                format!(
                    "backup {} holds the path {path:?}, which would be written outside the target directory",
                    manifest.label
                ),
                "the manifest is damaged or was tampered with: restore another backup and run `lifeboat verify`",
            ));
        }
        if let Entry::File(f) = entry
            && f.root == Root::Pgdata
            && path.starts_with("pg_tblspc/")
        {
            let oid = path.split('/').nth(1).and_then(|s| s.parse::<u32>().ok());
            if !oid.is_some_and(|o| manifest.tablespaces.iter().any(|t| t.oid == o)) {
                return Err(refuse(
                    format!(
                        "backup {} holds {path:?} under an unknown tablespace",
                        manifest.label
                    ),
                    "the manifest is damaged: restore another backup and run `lifeboat verify`",
                ));
            }
        }
    }
    Ok(())
}

/// `pg_wal` is restored as a directory even when it was a link, so its children are fine.
fn is_wal_dir_child(link: &str, _path: &str) -> bool {
    link == "pg_wal"
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
    let bad_name = |e: lifeboat_pg::walname::NameError| {
        EngineError::Internal(format!(
            "backup {} names a bad WAL segment: {e}",
            manifest.label
        ))
    };
    let start: WalSegmentName = manifest.start_wal.parse().map_err(bad_name)?;
    let stop: WalSegmentName = manifest.stop_wal.parse().map_err(bad_name)?;
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
