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
    /// Where the WAL `wal-stream` stored for the segment after `latest_wal` ends: recovery to
    /// the end replays up to this position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_to: Option<String>,
}

impl Window {
    /// The window of `manifests` (oldest first) with `latest_wal` as the end of the archive.
    pub fn of(manifests: &[Manifest], latest_wal: Option<String>) -> Self {
        let stop = |m: &Manifest| lifeboat_repo::timestamp::text(m.stop_time);
        Self {
            earliest: manifests.first().map(stop),
            latest_backup: manifests.last().map(stop),
            latest_wal,
            streamed_to: None,
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
        let end = contiguous_end(repo, &newest.stop_wal, seg_size).await?;
        window.latest_wal = Some(end.to_string());
        window.streamed_to = streamed_after(repo, &end, seg_size).await?;
    }
    Ok(Listing { backups, window })
}

/// Where the streamed pieces of the segment after `end` reach without a break (from the
/// listing: `restore` reads and checks them).
async fn streamed_after(
    repo: &Repository,
    end: &WalSegmentName,
    seg_size: u64,
) -> Result<Option<String>> {
    let Ok(next) = end.next(seg_size) else {
        return Ok(None);
    };
    let pieces = repo.list_stream_pieces_of(&next).await?;
    let Some(last) = lifeboat_repo::wal::streamed_chain(&pieces).pop() else {
        return Ok(None);
    };
    Ok(next
        .start_lsn(seg_size)
        .ok()
        .and_then(|start| start.checked_add(u64::from(last.end)))
        .map(|lsn| lsn.to_string()))
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
