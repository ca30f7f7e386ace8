//! Is the WAL a backup or a restore needs in the repository? Names every missing segment.

use std::time::{Duration, Instant};

use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::{Repository, keys};

use crate::{EngineError, Result};

/// Segments from `first` to `last` inclusive (same timeline).
pub fn segment_range(
    first: &WalSegmentName,
    last: &WalSegmentName,
    seg_size: u64,
) -> Result<Vec<WalSegmentName>> {
    let bad =
        |e: lifeboat_pg::walname::NameError| EngineError::Internal(format!("bad WAL range: {e}"));
    let from = first.segno(seg_size).map_err(bad)?;
    let to = last.segno(seg_size).map_err(bad)?;
    Ok((from..=to)
        .map(|n| WalSegmentName::from_segno(first.timeline, n, seg_size))
        .collect())
}

/// The segments of `first..=last` the repository does not hold (one listing per log directory).
pub async fn missing_segments(
    repo: &Repository,
    first: &WalSegmentName,
    last: &WalSegmentName,
    seg_size: u64,
) -> Result<Vec<WalSegmentName>> {
    let wanted = segment_range(first, last, seg_size)?;
    let mut present = std::collections::HashSet::new();
    let mut listed = std::collections::HashSet::new();
    for seg in &wanted {
        let key = keys::wal(&WalFileName::Segment(*seg));
        let dir = match key.rfind('/') {
            Some(i) => key[..=i].to_string(),
            None => key.clone(),
        };
        if listed.insert(dir.clone()) {
            for object in repo
                .store()
                .list(&dir)
                .await
                .map_err(lifeboat_repo::RepoError::from)?
            {
                present.insert(object.key);
            }
        }
    }
    Ok(wanted
        .into_iter()
        .filter(|seg| !present.contains(&keys::wal(&WalFileName::Segment(*seg))))
        .collect())
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
                    "the WAL this backup needs did not reach the repository within {} s: missing {}",
                    timeout.as_secs(),
                    name_list(&missing)
                ),
                "check that archive_command runs `lifeboat wal-push %p` with this repository, and look at pg_stat_archiver and the server log for archiving errors; `lifeboat check` tests the whole path",
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_millis(200));
    }
}

/// `A, B, C` or `A … Z (N segments)` for long runs.
pub fn name_list(names: &[WalSegmentName]) -> String {
    match names {
        [] => String::new(),
        [a] => a.to_string(),
        _ if names.len() <= 5 => names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        [first, .., last] => format!(
            "{} ({} segments: {first} … {last})",
            names
                .iter()
                .take(3)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            names.len()
        ),
    }
}
