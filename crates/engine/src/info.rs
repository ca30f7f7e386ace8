//! `info`: what a repository is and what WAL it holds, per timeline, with every gap named.

use std::collections::BTreeMap;

use lifeboat_pg::walname::{DEFAULT_WAL_SEGMENT_SIZE, WalFileName, WalSegmentName};
use lifeboat_repo::wal::{ArchivedSegments, streamed_chain};
use lifeboat_repo::{ClusterIdentity, Repository};
use serde::Serialize;

use crate::Result;

#[derive(Debug, Clone, Serialize)]
pub struct RepoInfo {
    pub location: String,
    pub repo_id: String,
    pub format_version: u32,
    pub created: String,
    pub encrypted: bool,
    pub compression: String,
    pub compression_level: i32,
    /// None until the first WAL file (or backup) binds the repository to a cluster.
    pub cluster: Option<ClusterIdentity>,
    pub timelines: Vec<TimelineInfo>,
    pub history_files: Vec<String>,
    pub wal_files: u64,
    pub wal_stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimelineInfo {
    pub timeline: u32,
    pub first_segment: String,
    pub last_segment: String,
    pub segments: u64,
    pub gaps: Vec<Gap>,
    pub partial_files: Vec<String>,
    pub backup_files: Vec<String>,
    /// Where the WAL `wal-stream` stored beyond the complete segments ends: the end of the
    /// unbroken run of pieces of this timeline's newest streamed segment (from the listing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_to: Option<String>,
    /// Streamed pieces stored for this timeline (of segments not yet complete).
    pub streamed_pieces: u64,
}

/// Consecutive segments missing between two archived ones.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    pub count: u64,
}

pub async fn info(repo: &Repository) -> Result<RepoInfo> {
    let cluster = repo.identity().await?;
    let seg_size = cluster.map_or(DEFAULT_WAL_SEGMENT_SIZE, |c| c.wal_segment_size);
    let wal = repo.list_wal().await?;
    let config = repo.config();

    #[derive(Default)]
    struct Acc {
        partial: Vec<String>,
        backup: Vec<String>,
    }
    let pieces = repo.list_stream_pieces(None).await?;
    let mut segments = ArchivedSegments::per_timeline(seg_size, &wal);
    // A timeline with segments, or with only `.partial` or `.backup` files, is shown.
    let mut per_timeline: BTreeMap<u32, Acc> = segments
        .keys()
        .copied()
        .chain(pieces.iter().map(|p| p.segment.timeline))
        .map(|t| (t.get(), Acc::default()))
        .collect();
    let mut history_files = Vec::new();
    for stored in &wal {
        match &stored.name {
            WalFileName::Segment(_) => {}
            WalFileName::Partial(seg) => per_timeline
                .entry(seg.timeline.get())
                .or_default()
                .partial
                .push(stored.name.to_string()),
            WalFileName::Backup { segment, .. } => per_timeline
                .entry(segment.timeline.get())
                .or_default()
                .backup
                .push(stored.name.to_string()),
            WalFileName::History(_) => history_files.push(stored.name.to_string()),
        }
    }

    let mut timelines = Vec::new();
    for (tli, acc) in per_timeline {
        let Some(timeline) = lifeboat_pg::timeline::TimelineId::new(tli) else {
            continue;
        };
        let archived = segments
            .remove(&timeline)
            .unwrap_or_else(|| ArchivedSegments::new(timeline, seg_size));
        let name = |n: u64| WalSegmentName::from_segno(timeline, n, seg_size).to_string();
        let (first, last) = match (archived.first(), archived.last()) {
            (Some(f), Some(l)) => (name(f), name(l)),
            _ => (String::new(), String::new()),
        };
        let gaps = archived
            .gaps()
            .map(|g| Gap {
                first_missing: name(g.first),
                last_missing: name(g.last),
                count: g.count(),
            })
            .collect();
        let of_timeline: Vec<_> = pieces
            .iter()
            .filter(|p| p.segment.timeline == timeline)
            .cloned()
            .collect();
        let streamed_to = of_timeline
            .iter()
            .map(|p| p.segment)
            .max()
            .and_then(|newest| {
                let of_newest: Vec<_> = of_timeline
                    .iter()
                    .filter(|p| p.segment == newest)
                    .cloned()
                    .collect();
                let end = streamed_chain(&of_newest).last()?.end;
                newest
                    .start_lsn(seg_size)
                    .ok()?
                    .checked_add(u64::from(end))
                    .map(|lsn| lsn.to_string())
            });
        timelines.push(TimelineInfo {
            timeline: tli,
            streamed_to,
            streamed_pieces: of_timeline.len() as u64,
            first_segment: first,
            last_segment: last,
            segments: archived.len(),
            gaps,
            partial_files: acc.partial,
            backup_files: acc.backup,
        });
    }

    Ok(RepoInfo {
        location: repo.location(),
        repo_id: config.repo_id.clone(),
        format_version: config.version,
        created: config.created.clone(),
        encrypted: repo.codec().is_encrypted(),
        compression: config.compression.algorithm.to_string(),
        compression_level: config.compression.level,
        cluster,
        timelines,
        history_files,
        wal_files: wal.len() as u64,
        wal_stored_bytes: wal.iter().map(|w| w.stored_size).sum(),
    })
}
