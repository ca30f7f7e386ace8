//! The archived segments of one timeline, as a listing shows them: the one place where runs and
//! gaps of the WAL archive are computed (`info`'s gaps, `list`'s and `expire`'s window, the WAL
//! check of `backup` and `restore`).
//!
//! Memory is bounded by what was listed: the set holds the listed segment numbers, and every
//! question about a range (`gaps_in`, `count_in`, `contiguous_end`) walks the listed numbers inside
//! it, never the range itself (a range may span 2^40 segments).

use std::collections::{BTreeMap, BTreeSet};

use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};

use super::StoredWal;

/// Consecutive segment numbers `first..=last` missing from a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
}

impl Gap {
    /// Segments missing in the gap (at least 1).
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// A set of archived (complete) segments of one timeline, by segment number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedSegments {
    timeline: TimelineId,
    seg_size: u64,
    segnos: BTreeSet<u64>,
}

impl ArchivedSegments {
    pub fn new(timeline: TimelineId, seg_size: u64) -> Self {
        Self {
            timeline,
            seg_size,
            segnos: BTreeSet::new(),
        }
    }

    /// The complete segments of `timeline` in a listing (`.partial`, `.backup` and history
    /// files, other timelines and names invalid at `seg_size` are left out).
    pub fn from_listing<'a>(
        timeline: TimelineId,
        seg_size: u64,
        listing: impl IntoIterator<Item = &'a StoredWal>,
    ) -> Self {
        let mut set = Self::new(timeline, seg_size);
        for stored in listing {
            if let WalFileName::Segment(s) = &stored.name {
                set.insert_name(s);
            }
        }
        set
    }

    /// The complete segments of a listing, one set per timeline that has any.
    pub fn per_timeline<'a>(
        seg_size: u64,
        listing: impl IntoIterator<Item = &'a StoredWal>,
    ) -> BTreeMap<TimelineId, Self> {
        let mut out: BTreeMap<TimelineId, Self> = BTreeMap::new();
        for stored in listing {
            if let WalFileName::Segment(s) = &stored.name
                && s.segno(seg_size).is_ok()
            {
                out.entry(s.timeline)
                    .or_insert_with(|| Self::new(s.timeline, seg_size))
                    .insert_name(s);
            }
        }
        out
    }

    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    /// Add segment number `segno`; true when it was not there yet.
    pub fn insert(&mut self, segno: u64) -> bool {
        self.segnos.insert(segno)
    }

    /// Add a segment by name; false (and nothing added) when it is already there, on another
    /// timeline or not a valid name at this segment size.
    pub fn insert_name(&mut self, segment: &WalSegmentName) -> bool {
        match segment.segno(self.seg_size) {
            Ok(n) if segment.timeline == self.timeline => self.insert(n),
            _ => false,
        }
    }

    pub fn contains(&self, segno: u64) -> bool {
        self.segnos.contains(&segno)
    }

    pub fn len(&self) -> u64 {
        self.segnos.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.segnos.is_empty()
    }

    /// The lowest segment number in the set.
    pub fn first(&self) -> Option<u64> {
        self.segnos.first().copied()
    }

    /// The highest segment number in the set.
    pub fn last(&self) -> Option<u64> {
        self.segnos.last().copied()
    }

    /// The segment numbers in `from..=to` that the set holds, in order.
    pub fn range(&self, from: u64, to: u64) -> impl DoubleEndedIterator<Item = u64> + '_ {
        let range = if from <= to {
            self.segnos.range(from..=to)
        } else {
            self.segnos.range(0..0)
        };
        range.copied()
    }

    /// How many of `from..=to` the set holds.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        self.range(from, to).count() as u64
    }

    /// The name of segment number `segno` on this timeline; `None` past the end of the WAL space.
    pub fn name(&self, segno: u64) -> Option<WalSegmentName> {
        WalSegmentName::checked_from_segno(self.timeline, segno, self.seg_size).ok()
    }

    /// The gaps between the first and the last segment of the set, in order.
    pub fn gaps(&self) -> impl Iterator<Item = Gap> + '_ {
        let ends = self.first().zip(self.last());
        ends.into_iter()
            .flat_map(move |(first, last)| self.gaps_in(first, last))
    }

    /// The gaps in `from..=to`, in order: runs of numbers the set lacks, a missing start or end
    /// of the range included (an empty set has one gap, the whole range).
    pub fn gaps_in(&self, from: u64, to: u64) -> impl Iterator<Item = Gap> + '_ {
        let mut expect = Some(from);
        let mut present = self.range(from, to);
        std::iter::from_fn(move || {
            loop {
                let first = expect.filter(|e| *e <= to)?;
                match present.next() {
                    Some(n) => {
                        expect = n.checked_add(1);
                        if n > first {
                            return Some(Gap { first, last: n - 1 });
                        }
                    }
                    None => {
                        expect = None;
                        return Some(Gap { first, last: to });
                    }
                }
            }
        })
    }

    /// The last segment number of the unbroken run that starts at `from`: `from` itself when the
    /// set lacks `from + 1` (whether or not it holds `from`).
    pub fn contiguous_end(&self, from: u64) -> u64 {
        let mut end = from;
        for n in self.segnos.range(from.saturating_add(1)..) {
            if Some(*n) != end.checked_add(1) {
                break;
            }
            end = *n;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_pg::walname::DEFAULT_WAL_SEGMENT_SIZE as SEG;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn set(segnos: &[u64]) -> ArchivedSegments {
        let mut s = ArchivedSegments::new(tli(1), SEG);
        for n in segnos {
            s.insert(*n);
        }
        s
    }

    fn pairs(gaps: impl Iterator<Item = Gap>) -> Vec<(u64, u64)> {
        gaps.map(|g| (g.first, g.last)).collect()
    }

    fn stored(name: &str) -> StoredWal {
        StoredWal {
            name: WalFileName::parse(name).unwrap(),
            stored_size: 100,
        }
    }

    #[test]
    fn gaps_lie_between_the_first_and_the_last() {
        assert_eq!(pairs(set(&[]).gaps()), []);
        assert_eq!(pairs(set(&[5]).gaps()), []);
        assert_eq!(pairs(set(&[3, 4, 6, 9, 10]).gaps()), [(5, 5), (7, 8)]);
        assert_eq!(set(&[3, 9]).gaps().map(|g| g.count()).sum::<u64>(), 5);
    }

    #[test]
    fn gaps_in_a_range_include_its_missing_ends() {
        let s = set(&[3, 4, 6, 9]);
        assert_eq!(pairs(s.gaps_in(3, 10)), [(5, 5), (7, 8), (10, 10)]);
        assert_eq!(pairs(s.gaps_in(1, 4)), [(1, 2)]);
        assert_eq!(pairs(s.gaps_in(3, 4)), []);
        assert_eq!(pairs(s.gaps_in(7, 8)), [(7, 8)]);
        assert_eq!(pairs(s.gaps_in(5, 4)), []);
        assert_eq!(pairs(set(&[]).gaps_in(2, 2)), [(2, 2)]);
        assert_eq!(s.count_in(4, 9), 3);
        assert_eq!(s.count_in(9, 4), 0);
    }

    /// The widest range is walked over what is listed, not over its numbers.
    #[test]
    fn the_widest_range_is_bounded_by_the_listing() {
        let s = set(&[1, 2, u64::MAX - 1]);
        let gaps: Vec<Gap> = s.gaps_in(0, u64::MAX).collect();
        assert_eq!(
            pairs(gaps.iter().copied()),
            [(0, 0), (3, u64::MAX - 2), (u64::MAX, u64::MAX)]
        );
        assert_eq!(gaps[1].count(), u64::MAX - 4);
        assert_eq!(s.contiguous_end(u64::MAX - 1), u64::MAX - 1);
        assert_eq!(pairs(set(&[u64::MAX]).gaps_in(u64::MAX, u64::MAX)), []);
    }

    #[test]
    fn the_contiguous_end_stops_before_the_first_gap() {
        let s = set(&[3, 4, 5, 7, 8]);
        assert_eq!(s.contiguous_end(3), 5);
        assert_eq!(s.contiguous_end(5), 5);
        // From a segment the set lacks: the run after it still counts.
        assert_eq!(s.contiguous_end(2), 5);
        assert_eq!(s.contiguous_end(6), 8);
        assert_eq!(s.contiguous_end(9), 9);
    }

    #[test]
    fn a_listing_gives_the_complete_segments_of_each_timeline() {
        let listing = [
            stored("000000010000000000000003"),
            stored("000000010000000000000005"),
            stored("000000010000000000000006.partial"),
            stored("000000010000000000000003.00000028.backup"),
            stored("00000002.history"),
            stored("000000020000000000000006"),
            // Not a segment at 16 MiB (256 segments per log): left out.
            stored("000000020000000000000100"),
        ];
        let one = ArchivedSegments::from_listing(tli(1), SEG, &listing);
        assert_eq!(one.range(0, u64::MAX).collect::<Vec<_>>(), [3, 5]);
        assert_eq!(one.name(4).unwrap().to_string(), "000000010000000000000004");
        let all = ArchivedSegments::per_timeline(SEG, &listing);
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), [tli(1), tli(2)]);
        assert_eq!(all[&tli(2)].len(), 1);
        assert_eq!(all[&tli(1)], one);
        let mut s = ArchivedSegments::new(tli(2), SEG);
        assert!(!s.insert_name(&"000000010000000000000003".parse().unwrap()));
        assert!(s.insert_name(&"000000020000000000000003".parse().unwrap()));
        assert!(!s.is_empty() && s.first() == Some(3) && s.last() == Some(3));
    }
}
