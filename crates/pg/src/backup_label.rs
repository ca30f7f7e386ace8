//! The `backup_label` file: where a base backup's WAL replay must start.
//!
//! This module owns the parsing of the text `pg_backup_stop` (`pg_stop_backup` before 15)
//! returns and a restore writes back as `backup_label`: the start LSN and its WAL file, the
//! checkpoint replay starts from, how and where the backup was taken, its label and timeline.
//! PostgreSQL reads this file to start recovery, so the text itself is what a backup stores; the
//! parsed form tells the engine which WAL the backup needs.

use std::str::FromStr;

use crate::lsn::Lsn;
use crate::timeline::TimelineId;
use crate::walname::WalSegmentName;

/// Whether the backup was taken from a primary or a standby (`BACKUP FROM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFrom {
    /// A primary (older servers wrote `master`, which reads as this).
    Primary,
    /// A standby: replay must also reach the backup's end LSN from pg_control.
    Standby,
}

/// A parsed `backup_label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: the redo point of the backup's start checkpoint.
    pub start_lsn: Lsn,
    /// The WAL file holding `start_lsn` (given beside it): the first one a restore needs.
    pub start_wal_file: WalSegmentName,
    /// `CHECKPOINT LOCATION`: the checkpoint record replay starts from.
    pub checkpoint_lsn: Lsn,
    /// `BACKUP METHOD`: `streamed` for the non-exclusive backups Lifeboat takes.
    pub backup_method: String,
    /// `BACKUP FROM`.
    pub backup_from: BackupFrom,
    /// `START TIME`, as the server wrote it (`2024-05-01 10:00:00 UTC`, in its time zone).
    pub start_time: String,
    /// `LABEL`: the label given to the backup start.
    pub label: String,
    /// `START TIMELINE`; the start WAL file's timeline where the line is missing.
    pub start_timeline: TimelineId,
    /// `INCREMENTAL FROM LSN` and `INCREMENTAL FROM TLI` (PostgreSQL 17 incremental backups).
    pub incremental_from: Option<(Lsn, TimelineId)>,
}

/// Why a text is not a backup label. Messages name the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupLabelError {
    /// A line PostgreSQL would have written differently.
    #[error(
        "invalid backup_label line {line} ({text:?}): {reason}; the backup label is damaged, \
         take a new backup"
    )]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A field given twice.
    #[error(
        "invalid backup_label: {field} appears twice (lines {first} and {second}); the backup \
         label is damaged, take a new backup"
    )]
    Duplicate {
        /// The field name.
        field: &'static str,
        /// Line of the first occurrence.
        first: usize,
        /// Line of the second.
        second: usize,
    },
    /// A field every label of a supported version has.
    #[error(
        "invalid backup_label: no {0} line; this is not a backup label of PostgreSQL 13 or later, \
         or it is truncated"
    )]
    Missing(&'static str),
}

const START_WAL: &str = "START WAL LOCATION";
const CHECKPOINT: &str = "CHECKPOINT LOCATION";
const METHOD: &str = "BACKUP METHOD";
const FROM: &str = "BACKUP FROM";
const START_TIME: &str = "START TIME";
const LABEL: &str = "LABEL";
const TIMELINE: &str = "START TIMELINE";
const INCR_LSN: &str = "INCREMENTAL FROM LSN";
const INCR_TLI: &str = "INCREMENTAL FROM TLI";
const FIELDS: [&str; 9] = [
    START_WAL, CHECKPOINT, METHOD, FROM, START_TIME, LABEL, TIMELINE, INCR_LSN, INCR_TLI,
];

impl BackupLabel {
    /// Parses the text of a `backup_label`. Lines this version does not know are ignored, so
    /// labels of newer servers still parse.
    pub fn parse(text: &str) -> Result<Self, BackupLabelError> {
        // (value, line number) per field, in FIELDS order.
        let mut found: [Option<(&str, usize)>; FIELDS.len()] = [None; FIELDS.len()];
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            let Some(slot) = FIELDS.iter().position(|f| *f == key) else {
                continue;
            };
            if let Some((_, first)) = found[slot] {
                return Err(BackupLabelError::Duplicate {
                    field: FIELDS[slot],
                    first,
                    second: number,
                });
            }
            found[slot] = Some((value, number));
        }
        let field = |name: &'static str| {
            let slot = FIELDS.iter().position(|f| *f == name).unwrap_or(0);
            found[slot]
        };
        let required = |name: &'static str| field(name).ok_or(BackupLabelError::Missing(name));
        let bad = |line: usize, reason: String| BackupLabelError::BadLine {
            line,
            text: text.lines().nth(line - 1).unwrap_or_default().to_owned(),
            reason,
        };

        // "0/2000028 (file 000000010000000000000002)"
        let (value, line) = required(START_WAL)?;
        let (lsn_text, file_text) = value
            .strip_suffix(')')
            .and_then(|v| v.split_once(" (file "))
            .ok_or_else(|| bad(line, "expected \"<LSN> (file <WAL file>)\"".into()))?;
        let start_lsn = parse_lsn(lsn_text).map_err(|e| bad(line, e))?;
        let start_wal_file: WalSegmentName =
            file_text.parse().map_err(|e| bad(line, format!("{e}")))?;

        let (value, line) = required(CHECKPOINT)?;
        let checkpoint_lsn = parse_lsn(value).map_err(|e| bad(line, e))?;

        let (backup_method, _) = required(METHOD)?;

        let (value, line) = required(FROM)?;
        let backup_from = match value {
            "primary" | "master" => BackupFrom::Primary,
            "standby" => BackupFrom::Standby,
            _ => return Err(bad(line, "expected primary or standby".into())),
        };

        let (start_time, _) = required(START_TIME)?;
        let (label, _) = required(LABEL)?;

        let start_timeline = match field(TIMELINE) {
            Some((value, line)) => {
                let tli = TimelineId::parse_decimal(value).map_err(|e| bad(line, e.to_string()))?;
                if tli != start_wal_file.timeline {
                    return Err(bad(
                        line,
                        format!(
                            "timeline {} differs from that of the start WAL file {start_wal_file}",
                            tli.get()
                        ),
                    ));
                }
                tli
            }
            None => start_wal_file.timeline,
        };

        let incremental_from = match (field(INCR_LSN), field(INCR_TLI)) {
            (None, None) => None,
            (Some((lsn, lsn_line)), Some((tli, tli_line))) => Some((
                parse_lsn(lsn).map_err(|e| bad(lsn_line, e))?,
                TimelineId::parse_decimal(tli).map_err(|e| bad(tli_line, e.to_string()))?,
            )),
            (Some(_), None) => return Err(BackupLabelError::Missing(INCR_TLI)),
            (None, Some(_)) => return Err(BackupLabelError::Missing(INCR_LSN)),
        };

        Ok(BackupLabel {
            start_lsn,
            start_wal_file,
            checkpoint_lsn,
            backup_method: backup_method.to_owned(),
            backup_from,
            start_time: start_time.to_owned(),
            label: label.to_owned(),
            start_timeline,
            incremental_from,
        })
    }
}

impl FromStr for BackupLabel {
    type Err = BackupLabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackupLabel::parse(s)
    }
}

fn parse_lsn(text: &str) -> Result<Lsn, String> {
    text.parse()
        .map_err(|e: crate::lsn::LsnParseError| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// As PostgreSQL 15's pg_backup_stop returns it.
    const SAMPLE: &str = "\
START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2024-05-01 10:00:00 UTC
LABEL: lifeboat 2024-05-01T10:00:00Z: nightly
START TIMELINE: 1
";

    #[test]
    fn parses_a_real_label() {
        let label = BackupLabel::parse(SAMPLE).unwrap();
        assert_eq!(
            label,
            BackupLabel {
                start_lsn: Lsn(0x200_0028),
                start_wal_file: "000000010000000000000002".parse().unwrap(),
                checkpoint_lsn: Lsn(0x200_0060),
                backup_method: "streamed".into(),
                backup_from: BackupFrom::Primary,
                start_time: "2024-05-01 10:00:00 UTC".into(),
                label: "lifeboat 2024-05-01T10:00:00Z: nightly".into(),
                start_timeline: TimelineId::ONE,
                incremental_from: None,
            }
        );
        assert_eq!(SAMPLE.parse::<BackupLabel>().unwrap(), label);
    }

    #[test]
    fn standby_incremental_and_unknown_lines() {
        let text = "\
START WAL LOCATION: 1/A0000028 (file 0000000300000001000000A0)
CHECKPOINT LOCATION: 1/A0000060
BACKUP METHOD: streamed
BACKUP FROM: standby
START TIME: 2024-05-01 10:00:00 CEST
LABEL: x
START TIMELINE: 3
INCREMENTAL FROM LSN: 1/90000028
INCREMENTAL FROM TLI: 2
SOMETHING NEW: whatever
";
        let label = BackupLabel::parse(text).unwrap();
        assert_eq!(label.backup_from, BackupFrom::Standby);
        assert_eq!(label.start_timeline.get(), 3);
        assert_eq!(
            label.incremental_from,
            Some((Lsn(0x1_9000_0028), TimelineId::new(2).unwrap()))
        );
    }

    #[test]
    fn missing_timeline_comes_from_the_file_name() {
        let text = SAMPLE.replace("START TIMELINE: 1\n", "");
        assert_eq!(
            BackupLabel::parse(&text).unwrap().start_timeline,
            TimelineId::ONE
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = BackupLabel::parse("").unwrap_err();
        assert_eq!(err, BackupLabelError::Missing("START WAL LOCATION"));
        assert!(
            err.to_string().contains("no START WAL LOCATION line"),
            "{err}"
        );

        let text = SAMPLE.replace(
            "(file 000000010000000000000002)",
            "000000010000000000000002",
        );
        let err = BackupLabel::parse(&text).unwrap_err();
        assert!(
            matches!(err, BackupLabelError::BadLine { line: 1, .. }),
            "{err}"
        );

        let text = SAMPLE.replace("CHECKPOINT LOCATION: 0/2000060", "CHECKPOINT LOCATION: 0-2");
        let err = BackupLabel::parse(&text).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid backup_label line 2"),
            "{err}"
        );

        let text = SAMPLE.replace("START TIMELINE: 1", "START TIMELINE: 2");
        let err = BackupLabel::parse(&text).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");

        let text = SAMPLE.replace("BACKUP FROM: primary", "BACKUP FROM: elsewhere");
        assert!(BackupLabel::parse(&text).is_err());

        let text = format!("{SAMPLE}LABEL: again\n");
        assert_eq!(
            BackupLabel::parse(&text).unwrap_err(),
            BackupLabelError::Duplicate {
                field: "LABEL",
                first: 6,
                second: 8
            }
        );

        let text = SAMPLE.replace("LABEL: lifeboat 2024-05-01T10:00:00Z: nightly\n", "");
        assert_eq!(
            BackupLabel::parse(&text).unwrap_err(),
            BackupLabelError::Missing("LABEL")
        );

        let text = format!("{SAMPLE}INCREMENTAL FROM LSN: 0/1\n");
        assert_eq!(
            BackupLabel::parse(&text).unwrap_err(),
            BackupLabelError::Missing("INCREMENTAL FROM TLI")
        );
    }
}
