//! Is the WAL a backup or a restore needs in the repository? Names the first missing segments.
//!
//! Memory is bounded whatever the range asked about (a target of `FFFFFFFF/FFFFFFFF` spans 2^40
//! segments): the check walks the repository's listing, which holds what exists, and never the
//! range itself. A report names the first [`NAMED_MAX`] missing segments and counts the rest.

use std::time::{Duration, Instant};

use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::wal::ArchivedSegments;
use lifeboat_repo::{Repository, keys};

use crate::{EngineError, Result};

/// Missing segments named one by one; the rest are counted.
pub const NAMED_MAX: usize = 5;

/// A range with at most this many log directories (`wal/<timeline+log>/`) is listed directory by
/// directory; a wider one with one listing of the timeline's WAL.
const LIST_DIRS_MAX: u64 = 4;

/// What of `first..=last` the repository lacks: the first few missing segments, by name, and
/// how many are missing in all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Missing {
    /// The first missing segments, in order, at most [`NAMED_MAX`].
    pub named: Vec<WalSegmentName>,
    /// Every missing segment counted (may exceed `named.len()` by far).
    pub count: u64,
    /// The last missing segment (when more are missing than named).
    pub last: Option<WalSegmentName>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first missing segment.
    pub fn first(&self) -> Option<&WalSegmentName> {
        self.named.first()
    }
}

impl std::fmt::Display for Missing {
    /// `A, B, C` when all are named, else `A, B, C and N more (up to Z): N+3 segments`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self
            .named
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let more = self.count.saturating_sub(self.named.len() as u64);
        if more == 0 {
            return f.write_str(&names);
        }
        write!(f, "{names} and {more} more")?;
        if let Some(last) = &self.last {
            write!(f, " up to {last}")?;
        }
        write!(f, " ({} segments in all)", self.count)
    }
}

/// What of `from..=to` (segment numbers) `present` lacks, without walking the range: only the
/// present numbers inside it are visited.
pub fn missing_in(present: &ArchivedSegments, from: u64, to: u64) -> Missing {
    let mut out = Missing::default();
    if to < from {
        return out;
    }
    out.count = (to - from + 1) - present.count_in(from, to);
    if out.count == 0 {
        return out;
    }
    let mut last_gap = None;
    for gap in present.gaps_in(from, to) {
        let room = NAMED_MAX.saturating_sub(out.named.len());
        out.named.extend(
            (gap.first..=gap.last)
                .take(room)
                .filter_map(|n| present.name(n)),
        );
        last_gap = Some(gap);
    }
    if out.count > out.named.len() as u64 {
        out.last = last_gap.and_then(|g| present.name(g.last));
    }
    out
}

/// The segments of `first..=last` the repository does not hold (an object listed shorter than an
/// object header, such as a 0-byte one, counts as missing). A narrow range is listed one log
/// directory at a time; a wide one with one listing of the timeline's WAL, so that neither the
/// listing calls nor the memory grow with the width of the range.
pub async fn missing_segments(
    repo: &Repository,
    first: &WalSegmentName,
    last: &WalSegmentName,
    seg_size: u64,
) -> Result<Missing> {
    let bad =
        |e: lifeboat_pg::walname::NameError| EngineError::Internal(format!("bad WAL range: {e}"));
    let from = first.segno(seg_size).map_err(bad)?;
    let to = last.segno(seg_size).map_err(bad)?;
    if to < from || first.timeline != last.timeline {
        return Ok(Missing::default());
    }
    let timeline = first.timeline;
    let per_log = (1u64 << 32) / seg_size;
    let (log_from, log_to) = (from / per_log, to / per_log);
    let prefixes: Vec<String> = if log_to - log_from < LIST_DIRS_MAX {
        (log_from..=log_to)
            .map(|log| {
                keys::wal_dir(&WalSegmentName::from_segno(
                    timeline,
                    log * per_log,
                    seg_size,
                ))
            })
            .collect()
    } else {
        vec![keys::wal_timeline_prefix(timeline)]
    };
    let mut present = ArchivedSegments::new(timeline, seg_size);
    for prefix in prefixes {
        for object in repo
            .store()
            .list(&prefix)
            .await
            .map_err(lifeboat_repo::RepoError::from)?
        {
            // An object shorter than an object header cannot hold the segment: not there.
            if object.size < lifeboat_repo::codec::HEADER_LEN as u64 {
                continue;
            }
            if let Some(WalFileName::Segment(s)) = keys::parse_wal_key(&object.key)
                && s.timeline == timeline
                && let Ok(n) = s.segno(seg_size)
                && (from..=to).contains(&n)
            {
                present.insert(n);
            }
        }
    }
    Ok(missing_in(&present, from, to))
}

/// Wait until every segment of `first..=last` is in the repository, or fail naming the missing.
pub async fn wait_for_segments(
    repo: &Repository,
    first: &WalSegmentName,
    last: &WalSegmentName,
    seg_size: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // The archiver usually stores the last segment some tens of milliseconds after the switch:
    // look often at first, then back off so a slow archive is not polled in a busy loop.
    let mut pause = Duration::from_millis(10);
    loop {
        let missing = missing_segments(repo, first, last, seg_size).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(EngineError::invalid(
                format!(
                    "the WAL this backup needs did not reach the repository within {} s: missing {missing}",
                    timeout.as_secs(),
                ),
                "check that archive_command runs `lifeboat wal-push %p` with this repository, and look at pg_stat_archiver and the server log for archiving errors; `lifeboat check` tests the whole path",
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_pg::timeline::TimelineId;
    use lifeboat_pg::walname::DEFAULT_WAL_SEGMENT_SIZE as SEG;

    fn tli() -> TimelineId {
        TimelineId::new(1).expect("timeline")
    }

    fn set(present: impl IntoIterator<Item = u64>) -> ArchivedSegments {
        let mut set = ArchivedSegments::new(tli(), SEG);
        for n in present {
            set.insert(n);
        }
        set
    }

    fn names(m: &Missing) -> Vec<String> {
        m.named.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn nothing_missing() {
        let present = set(3..=9);
        let m = missing_in(&present, 3, 9);
        assert!(m.is_empty());
        assert_eq!(m.to_string(), "");
    }

    #[test]
    fn holes_are_named_in_order_and_counted() {
        let present = set([3, 4, 6, 9]);
        let m = missing_in(&present, 3, 10);
        assert_eq!(m.count, 4);
        assert_eq!(
            names(&m),
            vec![
                "000000010000000000000005",
                "000000010000000000000007",
                "000000010000000000000008",
                "00000001000000000000000A"
            ]
        );
        assert_eq!(m.last, None);
    }

    /// The whole LSN space (2^40 segments of 16 MiB) is a count, not a vector: this used to
    /// allocate 13 TB.
    #[test]
    fn the_widest_range_is_bounded() {
        let present = set(1..=8);
        let last = WalSegmentName::from_lsn(tli(), lifeboat_pg::lsn::Lsn(u64::MAX), SEG);
        let to = last.segno(SEG).expect("segno");
        let m = missing_in(&present, 1, to);
        assert_eq!(m.count, to - 8);
        assert_eq!(m.named.len(), NAMED_MAX);
        assert_eq!(
            m.first().map(|s| s.to_string()).as_deref(),
            Some("000000010000000000000009")
        );
        assert_eq!(m.last, Some(last));
        let text = m.to_string();
        assert!(text.starts_with("000000010000000000000009, "), "{text}");
        assert!(text.contains("up to 00000001FFFFFFFF000000FF"), "{text}");
    }

    #[test]
    fn the_last_missing_skips_present_tail() {
        let present = set([1, 98, 99, 100]);
        let m = missing_in(&present, 1, 100);
        assert_eq!(m.count, 96);
        assert_eq!(
            m.last.map(|s| s.to_string()).as_deref(),
            Some("000000010000000000000061")
        );
    }
}
