//! WAL continuity: for each timeline a checked backup is on, the segments from the oldest such
//! backup's start segment through the last one archived (and at least through every backup's stop
//! segment) must all be there and intact. Each run of missing or damaged segments is one finding
//! naming the backups it makes unrestorable and how far the others still restore; a hole among
//! the newest segments, which `wal-push` may still be storing, is looked for again first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::{ClusterIdentity, Repository, keys};

use super::read::{Outcome, read_wal};
use super::report::{BackupWindow, Counters, Finding, FindingKind, GAP_NAMED_MAX, GapDetail};
use super::{BackupInfo, WalFound, Windows, segment_name};
use crate::Result;

/// A segment missing among the newest [`RECENT_SEGMENTS`] of its timeline may be on its way
/// (`wal-push` stores up to `archive.push_parallel` segments at once, default 8): it is looked
/// for again after [`RECENT_HOLE_WAIT`] before it is reported.
const RECENT_SEGMENTS: u64 = 16;
const RECENT_HOLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Check the continuity of the WAL the `backups` need, from what `listed` shows and what reading
/// found (`wal`, to which the recent holes looked for again are added). The windows each backup
/// restores to, and one finding per gap.
pub(super) async fn check(
    repo: &Repository,
    identity: Option<&ClusterIdentity>,
    backups: &[BackupInfo],
    listed: &[(WalFileName, u64)],
    wal: &mut WalFound,
    seg_size: u64,
    counters: &mut Counters,
) -> Result<(Windows, Vec<Finding>)> {
    let mut present_segments: BTreeMap<TimelineId, BTreeSet<u64>> = BTreeMap::new();
    let mut usable_segments: BTreeMap<TimelineId, BTreeSet<u64>> = BTreeMap::new();
    for (name, _) in listed {
        if let WalFileName::Segment(seg) = name
            && !wal.vanished.contains(name)
            && let Ok(n) = seg.segno(seg_size)
        {
            present_segments.entry(seg.timeline).or_default().insert(n);
            if !wal.damaged.contains_key(name) {
                usable_segments.entry(seg.timeline).or_default().insert(n);
            }
        }
    }
    // `wal-push` stores the segments PostgreSQL has ready in parallel, so while archiving runs
    // a segment among the newest can be missing for a moment with later ones already there.
    // Look again once, after a pause, before calling such a hole a gap.
    let suspects = recent_holes(backups, &present_segments, seg_size);
    if !suspects.is_empty() {
        tracing::info!(
            "{} recent segments missing ({}); looking again in {} s in case they are being archived",
            suspects.len(),
            suspects[0],
            RECENT_HOLE_WAIT.as_secs()
        );
        tokio::time::sleep(RECENT_HOLE_WAIT).await;
        for seg in suspects {
            let name = WalFileName::Segment(seg);
            let Ok(n) = seg.segno(seg_size) else {
                continue;
            };
            match read_wal(repo, &name, identity).await? {
                Outcome::Gone => continue,
                Outcome::Intact => {
                    // Recorded with its stored size; unknown (head failed), it is read again next run.
                    if let Ok(meta) = repo.store().head(&keys::wal(&name)).await {
                        wal.verified.push((name, meta.size));
                    }
                    usable_segments.entry(seg.timeline).or_default().insert(n);
                }
                Outcome::Damaged(reason) => {
                    wal.damaged.insert(name, reason);
                }
            }
            counters.wal_files += 1;
            counters.wal_read += 1;
            present_segments.entry(seg.timeline).or_default().insert(n);
        }
    }
    let empty = BTreeSet::new();
    let mut windows: Windows = HashMap::new();
    for b in backups {
        let usable = usable_segments.get(&b.timeline).unwrap_or(&empty);
        let complete = (b.start_segno..=b.stop_segno).all(|n| usable.contains(&n));
        let end = complete.then(|| {
            let mut end = b.stop_segno;
            while usable.contains(&(end + 1)) {
                end += 1;
            }
            end
        });
        windows.insert(b.label.clone(), (complete, end));
    }
    let mut findings = Vec::new();
    let timelines: BTreeSet<TimelineId> = backups.iter().map(|b| b.timeline).collect();
    for timeline in timelines {
        let usable = usable_segments.get(&timeline).unwrap_or(&empty);
        let present = present_segments.get(&timeline).unwrap_or(&empty);
        let on_timeline: Vec<&BackupInfo> =
            backups.iter().filter(|b| b.timeline == timeline).collect();
        let Some(from) = on_timeline.iter().map(|b| b.start_segno).min() else {
            continue;
        };
        // Everything a backup on this timeline could need: through the last segment archived, and
        // at least through every backup's stop segment.
        let last_needed = on_timeline
            .iter()
            .map(|b| b.stop_segno)
            .max()
            .unwrap_or(from);
        let to = present
            .iter()
            .next_back()
            .copied()
            .unwrap_or(from)
            .max(last_needed);
        for (first, last) in missing_runs(usable, from, to) {
            let present_in_run = present.range(first..=last).count() as u64;
            let gap = Gap {
                timeline,
                first,
                last,
                damaged_in_run: present_in_run > 0,
            };
            if let Some(finding) = gap.finding(&on_timeline, &windows, seg_size) {
                counters.wal_missing += last - first + 1 - present_in_run;
                findings.push(finding);
            }
        }
    }
    Ok((windows, findings))
}

/// One run of missing (or damaged) segments, `first..=last`, on `timeline`.
struct Gap {
    timeline: TimelineId,
    first: u64,
    last: u64,
    /// Whether some of them are there but damaged.
    damaged_in_run: bool,
}

impl Gap {
    /// The finding, naming which backups of `on_timeline` it makes unrestorable and how far the
    /// others (`windows`) restore; none when it affects no backup.
    fn finding(
        &self,
        on_timeline: &[&BackupInfo],
        windows: &Windows,
        seg_size: u64,
    ) -> Option<Finding> {
        let Gap {
            timeline,
            first,
            last,
            damaged_in_run,
        } = *self;
        let name = |n: u64| segment_name(timeline, n, seg_size);
        // Named one by one up to a bound: a stray segment far ahead (or a crafted name)
        // must not make a gap of 2^40 segments allocate them all.
        let missing: Vec<String> = (first..=last).take(GAP_NAMED_MAX).map(name).collect();
        let mut unrestorable = Vec::new();
        let mut restores_to = Vec::new();
        let mut affected = Vec::new();
        for b in on_timeline {
            if b.start_segno > last {
                continue;
            }
            affected.push(b.label.clone());
            if b.stop_segno >= first {
                unrestorable.push(b.label.clone());
            } else if let Some((_, Some(end))) = windows.get(&b.label) {
                restores_to.push(BackupWindow {
                    backup: b.label.clone(),
                    wal_end: name(*end),
                });
            }
        }
        if affected.is_empty() {
            return None;
        }
        let count = last - first + 1;
        let what_missing = if damaged_in_run {
            "missing or damaged"
        } else {
            "missing"
        };
        let mut what = format!(
            "WAL on timeline {} {what_missing}: {} ({count} segment{})",
            timeline.get(),
            segment_list(&missing, &name(last), count),
            if count == 1 { "" } else { "s" }
        );
        for label in &unrestorable {
            what.push_str(&format!(
                "; backup {label} cannot be restored (it needs these segments to become consistent)"
            ));
        }
        for w in &restores_to {
            what.push_str(&format!(
                "; backup {} restores to any moment up to the end of segment {}",
                w.backup, w.wal_end
            ));
        }
        let kind = if unrestorable.is_empty() {
            FindingKind::WalGap
        } else {
            FindingKind::BackupWalMissing
        };
        Some(Finding {
            kind,
            object: if count == 1 {
                name(first)
            } else {
                format!("{}..{}", name(first), name(last))
            },
            what,
            backups: affected,
            action: if unrestorable.is_empty() {
                "if these segments are still in the cluster's pg_wal (or another copy of the archive), push them with `lifeboat wal-push PATH`; otherwise take a new backup (`lifeboat backup`) so that moments after the gap can be restored".into()
            } else {
                "restore from another backup; if these segments are still in the cluster's pg_wal (or another copy of the archive), push them with `lifeboat wal-push PATH`; otherwise take a new backup (`lifeboat backup`)".into()
            },
            gap: Some(GapDetail {
                timeline: timeline.get(),
                first_missing: name(first),
                last_missing: name(last),
                count,
                missing,
                unrestorable,
                restores_to,
            }),
        })
    }
}

/// Segments missing, on a timeline some backup is on, after the oldest such backup's start and
/// among the newest [`RECENT_SEGMENTS`] archived on it.
fn recent_holes(
    backups: &[BackupInfo],
    present: &BTreeMap<TimelineId, BTreeSet<u64>>,
    seg_size: u64,
) -> Vec<WalSegmentName> {
    let mut out = Vec::new();
    for (timeline, segs) in present {
        let Some(from) = backups
            .iter()
            .filter(|b| b.timeline == *timeline)
            .map(|b| b.start_segno)
            .min()
        else {
            continue;
        };
        let Some(&newest) = segs.iter().next_back() else {
            continue;
        };
        let lowest = from.max(newest.saturating_sub(RECENT_SEGMENTS));
        for n in lowest..newest {
            if !segs.contains(&n)
                && let Ok(name) = WalSegmentName::checked_from_segno(*timeline, n, seg_size)
            {
                out.push(name);
            }
        }
    }
    out
}

/// Runs of segment numbers in `from..=to` that `usable` lacks, as (first, last).
fn missing_runs(usable: &BTreeSet<u64>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut expect = from;
    for &n in usable.range(from..=to) {
        if n > expect {
            runs.push((expect, n - 1));
        }
        expect = n + 1;
    }
    if expect <= to {
        runs.push((expect, to));
    }
    runs
}

/// Every name when there are a few; the first, the last and the count otherwise (the JSON report
/// lists them all).
fn segment_list(names: &[String], last: &str, count: u64) -> String {
    match names {
        [] => String::new(),
        _ if count <= 6 && names.len() as u64 == count => names.join(", "),
        [first, ..] => format!("{first} .. {last} (every segment between them)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_pg::walname::DEFAULT_WAL_SEGMENT_SIZE;

    const SEG: u64 = DEFAULT_WAL_SEGMENT_SIZE;

    #[test]
    fn missing_runs_are_exact() {
        let usable: BTreeSet<u64> = [2, 3, 5, 9].into_iter().collect();
        assert_eq!(missing_runs(&usable, 2, 9), vec![(4, 4), (6, 8)]);
        assert_eq!(
            missing_runs(&usable, 1, 11),
            vec![(1, 1), (4, 4), (6, 8), (10, 11)]
        );
        assert_eq!(missing_runs(&usable, 2, 3), vec![]);
    }

    #[test]
    fn only_recent_holes_after_a_backup_are_looked_at_again() {
        let seg = |n| WalSegmentName::from_segno(TimelineId::ONE, n, SEG);
        let backup = BackupInfo {
            label: "b".into(),
            timeline: TimelineId::ONE,
            start: seg(10),
            stop: seg(10),
            start_segno: 10,
            stop_segno: 10,
            stop_time: time::OffsetDateTime::UNIX_EPOCH,
            chunks: 0,
        };
        let present: BTreeMap<TimelineId, BTreeSet<u64>> = [(
            TimelineId::ONE,
            [3, 10, 11, 13, 40, 50, 52].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        // 12 and 14..39 are older than the newest 16 (52 - 16 = 36): reported at once.
        let holes = recent_holes(&[backup], &present, SEG);
        let expected: Vec<WalSegmentName> =
            [36, 37, 38, 39, 41, 42, 43, 44, 45, 46, 47, 48, 49, 51]
                .into_iter()
                .map(seg)
                .collect();
        assert_eq!(holes, expected);
    }
}
