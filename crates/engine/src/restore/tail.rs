//! The streamed tail: WAL that `wal-stream` stored for the segment after the last complete one, so
//! that recovery reaches the last streamed commit instead of stopping at the last archived segment.
//!
//! Restore writes it as `pg_wal/<segment>`, padded with zeros to the segment size (as
//! pg_receivewal's `.partial` is used): PostgreSQL asks `restore_command` for the segment first,
//! which says "not found" (a streamed prefix is never handed out as a complete segment), then
//! reads the file from `pg_wal`, replays up to its end and ends recovery there (or at an earlier
//! target). Every page of the prefix is checked to be the page of that segment it claims to be,
//! so that a misplaced piece ends the tail early instead of being replayed.

use lifeboat_pg::history::TimelineHistory;
use lifeboat_pg::recovery::{RecoveryTarget, TargetTimeline};
use lifeboat_pg::walheader;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::backup::Entry;
use lifeboat_repo::wal::ArchivedSegments;

use super::*;

/// The streamed prefix of the segment recovery will need after the archive ends.
#[derive(Debug, Clone)]
pub(super) struct StreamedTail {
    pub segment: WalSegmentName,
    pub bytes: Vec<u8>,
}

impl StreamedTail {
    /// The position just past the last streamed byte.
    pub fn end_lsn(&self, seg_size: u64) -> Option<lifeboat_pg::lsn::Lsn> {
        self.segment
            .start_lsn(seg_size)
            .ok()
            .and_then(|start| start.checked_add(self.bytes.len() as u64))
    }
}

/// The tail recovery can use, if any: pieces of the first segment missing from the archive on
/// the timeline recovery ends on (the backup's, the one given, or the newest for `latest`),
/// counting from where recovery enters that timeline (the backup's stop, or the timeline's branch
/// point). Damaged pieces shorten it, with a warning each.
pub(super) async fn find(
    repo: &Repository,
    manifest: &Manifest,
    opts: &RestoreOptions,
    seg_size: u64,
    warnings: &mut Vec<String>,
) -> Result<Option<StreamedTail>> {
    // A standby streams the newest WAL from its primary; a one-off recovery ends at the tail.
    if opts.standby || matches!(opts.target, RecoveryTarget::Immediate) {
        return Ok(None);
    }
    if manifest
        .entries
        .iter()
        .any(|e| matches!(e, Entry::Link { path, .. } if path == "pg_wal"))
    {
        return Ok(None);
    }
    let pieces = repo.list_stream_pieces(None).await?;
    if pieces.is_empty() {
        return Ok(None);
    }
    let listing = repo.list_wal().await?;
    let end_timeline = match opts.timeline {
        TargetTimeline::Current => manifest.timeline,
        TargetTimeline::Id(tli) => tli,
        TargetTimeline::Latest => listing
            .iter()
            .filter_map(|w| match w.name {
                WalFileName::History(tli) => Some(tli),
                _ => None,
            })
            .chain(std::iter::once(manifest.timeline))
            .max_by_key(|tli| tli.get())
            .unwrap_or(manifest.timeline),
    };
    let Some(entry) = entry_point(repo, manifest, end_timeline).await? else {
        return Ok(None);
    };
    let archived = ArchivedSegments::from_listing(end_timeline, seg_size, &listing);
    let entry_segno = entry.segment_number(seg_size);
    let next = if archived.contains(entry_segno) {
        archived.contiguous_end(entry_segno) + 1
    } else {
        entry_segno
    };
    let segment = WalSegmentName::from_segno(end_timeline, next, seg_size);
    // A piece that claims bytes past the segment's end is not WAL of this cluster: never read.
    let of_segment: Vec<_> = pieces
        .into_iter()
        .filter(|p| p.segment == segment && u64::from(p.end) <= seg_size)
        .collect();
    if of_segment.is_empty() {
        return Ok(None);
    }
    let prefix = repo.read_streamed_prefix(&segment, &of_segment).await?;
    for (key, why) in &prefix.unusable {
        warnings.push(format!(
            "streamed WAL {key} cannot be used ({why}): recovery stops where the usable streamed WAL of {segment} ends"
        ));
    }
    let usable = checked_len(&prefix.bytes, &segment, seg_size, warnings);
    if usable == 0 {
        return Ok(None);
    }
    let mut bytes = prefix.bytes;
    bytes.truncate(usable);
    Ok(Some(StreamedTail { segment, bytes }))
}

/// Where recovery from `manifest` enters `timeline`: the backup's stop on its own timeline, else
/// the point the timeline branched off (from its history file), when its history passes through
/// the backup's start; `None` when it does not or the history cannot be read.
async fn entry_point(
    repo: &Repository,
    manifest: &Manifest,
    timeline: lifeboat_pg::timeline::TimelineId,
) -> Result<Option<lifeboat_pg::lsn::Lsn>> {
    if timeline == manifest.timeline {
        return Ok(Some(manifest.stop_lsn));
    }
    let Some(bytes) = repo.get_wal(&WalFileName::History(timeline)).await? else {
        return Ok(None);
    };
    let Some(history) = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| TimelineHistory::parse(timeline, text).ok())
    else {
        return Ok(None);
    };
    if history.timeline_of(manifest.start_lsn) != manifest.timeline {
        return Ok(None);
    }
    Ok(history
        .entries
        .last()
        .map(|branch| branch.switch_point.max(manifest.stop_lsn)))
}

/// How much of `bytes` (a segment's streamed prefix) is made of the pages of `segment`: the long
/// header must name the segment, and every later page header its own address. What stops it
/// early is added to `warnings`.
pub(crate) fn checked_len(
    bytes: &[u8],
    segment: &WalSegmentName,
    seg_size: u64,
    warnings: &mut Vec<String>,
) -> usize {
    let header = match walheader::validate_segment_header(bytes, seg_size, segment) {
        Ok(header) => header,
        Err(e) => {
            warnings.push(format!(
                "the streamed WAL of {segment} does not start with its page header ({e}); it is not used"
            ));
            return 0;
        }
    };
    let Ok(start) = segment.start_lsn(seg_size) else {
        return 0;
    };
    let page = usize::try_from(header.block_size).unwrap_or(8192).max(512);
    let mut offset = page;
    while offset + 16 <= bytes.len() {
        let magic = u16::from_le_bytes([bytes[offset], bytes[offset + 1]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&bytes[offset + 8..offset + 16]);
        let addr = u64::from_le_bytes(addr);
        if magic != header.magic || addr != start.0 + offset as u64 {
            warnings.push(format!(
                "the streamed WAL of {segment} holds a wrong page at offset {offset}: only what precedes it is used"
            ));
            return offset;
        }
        offset += page;
    }
    bytes.len()
}

/// Write the tail as `pg_wal/<segment>` of the restored directory, zero-padded to the segment
/// size, fsynced; never through a link.
pub(super) fn write(target_dir: &Path, tail: &StreamedTail, seg_size: u64) -> Result<()> {
    let path = target_dir.join("pg_wal").join(tail.segment.to_string());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    std::io::Write::write_all(&mut file, &tail.bytes)
        .and_then(|()| file.set_len(seg_size))
        .and_then(|()| file.sync_all())
        .map_err(io(format!("cannot write {}", path.display())))?;
    fsync_dir(&target_dir.join("pg_wal"))
}
