//! `list`: the complete backups, oldest first, and the window a restore can reach.

use lifeboat_pg::walname::WalSegmentName;
use lifeboat_repo::Repository;
use lifeboat_repo::backup::Manifest;
use lifeboat_repo::wal::ArchivedSegments;
use serde::Serialize;

use crate::Result;
use crate::backup_report::BackupReport;

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub backups: Vec<BackupReport>,
    pub window: Window,
}

/// What a restore can reach: from the end of the oldest backup to the end of the WAL archived
/// without a gap after the newest backup.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Window {
    /// The oldest backup's stop time: no restore reaches an earlier moment.
    pub earliest: Option<String>,
    /// The newest backup's stop time: later moments need the WAL up to `latest_wal`.
    pub latest_backup: Option<String>,
    /// The last segment archived, without a gap, after the newest backup's stop segment: recovery
    /// can replay up to its end.
    pub latest_wal: Option<String>,
}

impl Window {
    /// The window of `manifests` (oldest first) with `latest_wal` as the end of the archive.
    pub fn of(manifests: &[Manifest], latest_wal: Option<String>) -> Self {
        let stop = |m: &Manifest| lifeboat_repo::timestamp::text(m.stop_time);
        Self {
            earliest: manifests.first().map(stop),
            latest_backup: manifests.last().map(stop),
            latest_wal,
        }
    }
}

pub async fn list(repo: &Repository) -> Result<Listing> {
    let (manifests, unreadable) = repo.readable_manifests().await?;
    for (label, problem) in &unreadable {
        tracing::warn!(
            "backup {label} is unreadable and not listed: {problem}; run `lifeboat verify`"
        );
    }
    let backups: Vec<BackupReport> = manifests.iter().map(BackupReport::from_manifest).collect();
    let mut window = Window::of(&manifests, None);
    if let (Some(newest), Some(identity)) = (manifests.last(), repo.identity().await?) {
        let seg_size = identity.wal_segment_size;
        window.latest_wal = Some(
            contiguous_end(repo, &newest.stop_wal, seg_size)
                .await?
                .to_string(),
        );
    }
    Ok(Listing { backups, window })
}

/// The last segment of the unbroken run of archived segments that starts at `from` (on its
/// timeline).
pub async fn contiguous_end(
    repo: &Repository,
    from: &WalSegmentName,
    seg_size: u64,
) -> Result<WalSegmentName> {
    let Ok(start) = from.segno(seg_size) else {
        return Ok(*from);
    };
    let archived = ArchivedSegments::from_listing(from.timeline, seg_size, &repo.list_wal().await?);
    let end = archived.contiguous_end(start);
    Ok(WalSegmentName::from_segno(from.timeline, end, seg_size))
}
