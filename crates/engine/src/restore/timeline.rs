//! `--target-timeline N`: refused before anything is written unless PostgreSQL could follow it
//! from the backup. Otherwise the restore would "succeed" and the server refuse to start
//! ("recovery target timeline N does not exist", or "requested timeline N is not a child of
//! this server's history").

use lifeboat_pg::history::TimelineHistory;
use lifeboat_pg::recovery::TargetTimeline;
use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::Repository;
use lifeboat_repo::backup::Manifest;

use crate::{EngineError, Result};

/// A timeline other than the backup's own needs its history file in the repository, and that
/// history must hold the backup's start on the backup's timeline (PostgreSQL's own rule).
pub async fn check_target_timeline(
    repo: &Repository,
    manifest: &Manifest,
    timeline: &TargetTimeline,
) -> Result<()> {
    let target = match timeline {
        TargetTimeline::Id(tli) if *tli != manifest.timeline => *tli,
        _ => return Ok(()),
    };
    let choose = "give --target-timeline latest (the newest timeline in the repository) or current, or a timeline whose history file `lifeboat info` lists";
    let name = WalFileName::History(target);
    let Some(bytes) = repo.get_wal(&name).await? else {
        return Err(EngineError::invalid(
            format!(
                "timeline {target} has no history file ({name}) in the repository: PostgreSQL could not follow it from backup {} (timeline {}) and would refuse to start; nothing was written",
                manifest.label, manifest.timeline
            ),
            choose,
        ));
    };
    let history = std::str::from_utf8(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| TimelineHistory::parse(target, text).map_err(|e| e.to_string()))
        .map_err(|why| {
            EngineError::invalid(
                format!("the history file {name} in the repository cannot be read: {why}; nothing was written"),
                choose,
            )
        })?;
    let at_start = history.timeline_of(manifest.start_lsn);
    if at_start != manifest.timeline {
        let branch = history
            .switch_point_of(manifest.timeline)
            .map_or_else(String::new, |at| {
                format!(", which left timeline {} at {at}", manifest.timeline)
            });
        return Err(EngineError::invalid(
            format!(
                "timeline {target} does not pass through backup {} (timeline {}, started at {}): in its history that point is on timeline {at_start}{branch}; PostgreSQL would refuse to start, so nothing was written",
                manifest.label, manifest.timeline, manifest.start_lsn
            ),
            "restore a backup taken on that timeline's line of history before it branched off (lifeboat list), or give another --target-timeline",
        ));
    }
    Ok(())
}
