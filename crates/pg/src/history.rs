//! Timeline history files (`00000002.history`): how a timeline branched from its ancestors.
//!
//! This module owns the parsing and writing of the file PostgreSQL writes when it starts a new
//! timeline. Each line names an ancestor timeline (in decimal), the LSN where the next timeline
//! branched off it, and a free-text reason, separated by tabs (shown here as `→`):
//!
//! ```text
//! 1→0/40000A0→no recovery target specified
//! ```
//!
//! Blank lines and `#` comments are ignored. The parser is as strict as PostgreSQL's own reader
//! about what matters (ancestors strictly increasing and older than the file's timeline) and as
//! lenient about the rest (any whitespace between fields, optional reason).

use std::fmt;

use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// One ancestor of a timeline.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// First LSN not on `parent`: where the following timeline branched off.
    pub switch_point: Lsn,
    /// Why the switch happened, as PostgreSQL wrote it (may be empty).
    pub reason: String,
}

/// The parsed history of one timeline: its ancestors, oldest first.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TimelineHistory {
    /// The timeline whose history this is (the file's name).
    pub timeline: TimelineId,
    /// The ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// Why a history file cannot be trusted. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The first field is not a decimal timeline ID.
    #[error(
        "timeline history line {line}: invalid parent timeline {found:?}: expected a decimal timeline ID"
    )]
    BadTimeline {
        /// Line number.
        line: usize,
        /// The text found.
        found: String,
    },
    /// The second field is missing.
    #[error("timeline history line {line}: missing switch point after parent timeline {parent}")]
    MissingSwitchPoint {
        /// Line number.
        line: usize,
        /// The parent timeline, in decimal.
        parent: u32,
    },
    /// The second field is not an LSN.
    #[error(
        "timeline history line {line}: invalid switch point {found:?}: expected an LSN like 0/40000A0"
    )]
    BadSwitchPoint {
        /// Line number.
        line: usize,
        /// The text found.
        found: String,
    },
    /// Parent timelines must increase from line to line.
    #[error(
        "timeline history line {line}: parent timeline {found} does not follow {previous}: timeline IDs must increase"
    )]
    NotIncreasing {
        /// Line number.
        line: usize,
        /// Parent on the previous entry, in decimal.
        previous: u32,
        /// Parent on this line, in decimal.
        found: u32,
    },
    /// A parent timeline must be older than the file's timeline.
    #[error(
        "timeline history line {line}: parent timeline {parent} is not older than timeline {timeline} of the file"
    )]
    NotOlder {
        /// Line number.
        line: usize,
        /// Parent on this line, in decimal.
        parent: u32,
        /// Timeline of the file, in decimal.
        timeline: u32,
    },
}

impl TimelineHistory {
    /// Parses the text of `timeline`'s history file.
    pub fn parse(timeline: TimelineId, text: &str) -> Result<Self, HistoryError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (parent_text, rest) = split_field(content);
            let parent =
                TimelineId::parse_decimal(parent_text).map_err(|_| HistoryError::BadTimeline {
                    line,
                    found: parent_text.to_owned(),
                })?;
            let (lsn_text, rest) = split_field(rest.trim_start());
            if lsn_text.is_empty() {
                return Err(HistoryError::MissingSwitchPoint {
                    line,
                    parent: parent.get(),
                });
            }
            let switch_point =
                lsn_text
                    .parse::<Lsn>()
                    .map_err(|_| HistoryError::BadSwitchPoint {
                        line,
                        found: lsn_text.to_owned(),
                    })?;
            if let Some(previous) = entries.last()
                && parent <= previous.parent
            {
                return Err(HistoryError::NotIncreasing {
                    line,
                    previous: previous.parent.get(),
                    found: parent.get(),
                });
            }
            if parent >= timeline {
                return Err(HistoryError::NotOlder {
                    line,
                    parent: parent.get(),
                    timeline: timeline.get(),
                });
            }
            entries.push(HistoryEntry {
                parent,
                switch_point,
                reason: rest.trim().to_owned(),
            });
        }
        Ok(TimelineHistory { timeline, entries })
    }

    /// The LSN where `parent` ended and its successor began, if `parent` is an ancestor.
    #[must_use]
    pub fn switch_point_of(&self, parent: TimelineId) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|entry| entry.parent == parent)
            .map(|entry| entry.switch_point)
    }

    /// Whether `tli` is this timeline or one of its ancestors.
    #[must_use]
    pub fn contains(&self, tli: TimelineId) -> bool {
        tli == self.timeline || self.entries.iter().any(|entry| entry.parent == tli)
    }

    /// The timeline that held `lsn` in this history: the first ancestor whose switch point lies
    /// beyond it, else this timeline.
    #[must_use]
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|entry| lsn < entry.switch_point)
            .map_or(self.timeline, |entry| entry.parent)
    }
}

/// Splits at the first whitespace, as PostgreSQL's `sscanf("%u\t%X/%X")` accepts any.
fn split_field(s: &str) -> (&str, &str) {
    s.split_once(char::is_whitespace).unwrap_or((s, ""))
}

impl fmt::Display for TimelineHistory {
    /// The file's text as PostgreSQL writes it: one tab-separated line per ancestor.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in &self.entries {
            writeln!(
                f,
                "{}\t{}\t{}",
                entry.parent.get(),
                entry.switch_point,
                entry.reason
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    const THREE: &str = "1\t0/40000A0\tno recovery target specified\n\
                         \n\
                         # a comment PostgreSQL would skip\n\
                         2\t1/2000000\tbefore 2024-05-01 12:00:00+00\n";

    #[test]
    fn parses_postgres_output() {
        let h = TimelineHistory::parse(tli(3), THREE).unwrap();
        assert_eq!(h.timeline, tli(3));
        assert_eq!(
            h.entries,
            vec![
                HistoryEntry {
                    parent: tli(1),
                    switch_point: lsn("0/40000A0"),
                    reason: "no recovery target specified".into(),
                },
                HistoryEntry {
                    parent: tli(2),
                    switch_point: lsn("1/2000000"),
                    reason: "before 2024-05-01 12:00:00+00".into(),
                },
            ]
        );
        assert_eq!(h.switch_point_of(tli(1)), Some(lsn("0/40000A0")));
        assert_eq!(h.switch_point_of(tli(2)), Some(lsn("1/2000000")));
        assert_eq!(h.switch_point_of(tli(3)), None);
        assert!(h.contains(tli(1)) && h.contains(tli(2)) && h.contains(tli(3)));
        assert!(!h.contains(tli(4)));
        assert_eq!(h.timeline_of(lsn("0/1000000")), tli(1));
        assert_eq!(h.timeline_of(lsn("0/40000A0")), tli(2));
        assert_eq!(h.timeline_of(lsn("1/2000000")), tli(3));
    }

    #[test]
    fn skipped_ancestors_are_allowed() {
        // Timeline 5 branched from 2, which branched from 1: 3 and 4 are not ancestors.
        let h = TimelineHistory::parse(tli(5), "1\t0/3000000\tx\n2\t0/5000000\ty\n").unwrap();
        assert!(!h.contains(tli(3)));
    }

    #[test]
    fn lenient_about_layout() {
        let h = TimelineHistory::parse(tli(2), "  1 0/40000a0\r\n").unwrap();
        assert_eq!(h.entries[0].switch_point, lsn("0/40000A0"));
        assert_eq!(h.entries[0].reason, "");
        assert!(
            TimelineHistory::parse(tli(1), "")
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "x\t0/1\tr",
                "timeline history line 1: invalid parent timeline \"x\": expected a decimal timeline ID",
            ),
            (
                "\n0\t0/1\tr",
                "timeline history line 2: invalid parent timeline \"0\": expected a decimal timeline ID",
            ),
            (
                "1",
                "timeline history line 1: missing switch point after parent timeline 1",
            ),
            (
                "# c\n1\t0-1\tr",
                "timeline history line 2: invalid switch point \"0-1\": expected an LSN like 0/40000A0",
            ),
            (
                "2\t0/1\tr\n2\t0/2\tr",
                "timeline history line 2: parent timeline 2 does not follow 2: timeline IDs must increase",
            ),
            (
                "1\t0/1\tr\n3\t0/2\tr",
                "timeline history line 2: parent timeline 3 is not older than timeline 3 of the file",
            ),
        ];
        for (text, want) in cases {
            let err = TimelineHistory::parse(tli(3), text).unwrap_err();
            assert_eq!(err.to_string(), want, "{text:?}");
        }
    }

    fn any_history() -> impl Strategy<Value = TimelineHistory> {
        (
            proptest::collection::btree_set(1u32..1000, 0..6),
            proptest::collection::vec((any::<u64>(), "[a-z0-9:+ -]{0,30}"), 6),
        )
            .prop_map(|(parents, details)| {
                let timeline = tli(parents.iter().max().map_or(1, |p| p + 1));
                let entries = parents
                    .into_iter()
                    .zip(details)
                    .map(|(parent, (point, reason))| HistoryEntry {
                        parent: tli(parent),
                        switch_point: Lsn(point),
                        reason: reason.trim().to_owned(),
                    })
                    .collect();
                TimelineHistory { timeline, entries }
            })
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(h in any_history()) {
            prop_assert_eq!(TimelineHistory::parse(h.timeline, &h.to_string()), Ok(h));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "([0-9a-fA-F/ \\t#\\n]|.){0,80}") {
            let _ = TimelineHistory::parse(tli(7), &s);
        }
    }
}
