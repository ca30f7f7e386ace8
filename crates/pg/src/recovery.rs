//! Recovery settings for a restored cluster: how to fetch WAL, where to stop, what to do there.
//!
//! This module owns the text a restore appends to `postgresql.auto.conf` (read last, so it wins
//! over `postgresql.conf`) before starting the server with `recovery.signal` or
//! `standby.signal`, and the quoting of values for PostgreSQL's configuration file parser
//! ([`quote_conf_value`]). Values are checked here as far as PostgreSQL's own checks can be
//! repeated without a server, so a bad target fails before a restore rather than at server start.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all the WAL there is (no `recovery_target_*` setting).
    Latest,
    /// Stop as soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    /// Stop at this time (`recovery_target_time`), in any form PostgreSQL's `timestamptz` input
    /// takes; without a time zone it is read in the restored server's `TimeZone`.
    Time(String),
    /// Stop at this WAL position (`recovery_target_lsn`).
    Lsn(Lsn),
    /// Stop at the commit of this transaction (`recovery_target_xid`), in decimal.
    Xid(String),
    /// Stop at this restore point (`recovery_target_name`), made by `pg_create_restore_point`.
    Name(String),
}

/// What the server does when it reaches the target (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// End recovery and accept writes on a new timeline.
    Promote,
    /// Pause replay, so the result can be inspected before `pg_wal_replay_resume()` promotes.
    Pause,
    /// Shut the server down; starting it again without changes replays further.
    Shutdown,
}

/// Which timeline recovery follows (`recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The newest timeline found in the archive (PostgreSQL's default since 12).
    Latest,
    /// The timeline the backup was taken on.
    Current,
    /// This timeline; its history file must be in the archive.
    Id(TimelineId),
}

/// A value PostgreSQL would refuse, or that cannot be written to a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting} {value:?}: {reason}")]
pub struct RecoverySettingsError {
    /// The setting the value was for.
    pub setting: &'static str,
    /// The rejected value.
    pub value: String,
    /// What is wrong and what to give instead.
    pub reason: String,
}

/// Longest restore point name, in bytes (`MAXFNAMELEN - 1`).
const MAX_RESTORE_POINT_NAME: usize = 63;

/// Every target setting. All are written, the unused ones empty: the server refuses to start
/// with two targets set, and a restored `postgresql.auto.conf` may still hold one from the
/// restore its cluster came from.
const TARGET_SETTINGS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

impl RecoveryTarget {
    /// The setting and value that express this target; `None` for [`RecoveryTarget::Latest`].
    fn setting(&self) -> Option<(&'static str, String)> {
        match self {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Immediate => Some(("recovery_target", "immediate".to_owned())),
            RecoveryTarget::Time(time) => Some(("recovery_target_time", time.clone())),
            RecoveryTarget::Lsn(lsn) => Some(("recovery_target_lsn", lsn.to_string())),
            RecoveryTarget::Xid(xid) => Some(("recovery_target_xid", xid.clone())),
            RecoveryTarget::Name(name) => Some(("recovery_target_name", name.clone())),
        }
    }

    /// Checks the target as far as PostgreSQL's checks can be made without a server.
    pub fn validate(&self) -> Result<(), RecoverySettingsError> {
        let Some((setting, value)) = self.setting() else {
            return Ok(());
        };
        let fail = |reason: &str| RecoverySettingsError {
            setting,
            value: value.clone(),
            reason: reason.to_owned(),
        };
        check_representable(setting, &value)?;
        match self {
            RecoveryTarget::Latest | RecoveryTarget::Immediate | RecoveryTarget::Lsn(_) => Ok(()),
            RecoveryTarget::Time(time) => {
                let trimmed = time.trim();
                if trimmed.is_empty() {
                    return Err(fail(
                        "give a time such as '2024-05-01 10:00:00+00' (with a time zone, or the \
                         restored server's TimeZone applies)",
                    ));
                }
                // PostgreSQL refuses the relative words: they would mean a different moment at
                // every start of the server.
                if ["now", "today", "tomorrow", "yesterday"]
                    .iter()
                    .any(|word| trimmed.eq_ignore_ascii_case(word))
                {
                    return Err(fail(
                        "PostgreSQL accepts no relative time here; give an absolute time such as \
                         '2024-05-01 10:00:00+00'",
                    ));
                }
                if !trimmed.bytes().any(|b| b.is_ascii_digit()) {
                    return Err(fail(
                        "a timestamp has digits; give a time such as '2024-05-01 10:00:00+00'",
                    ));
                }
                Ok(())
            }
            RecoveryTarget::Xid(xid) => {
                if xid.is_empty() || !xid.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(fail("a transaction ID is a decimal number such as 1234"));
                }
                if xid.parse::<u64>().is_err() {
                    return Err(fail("a transaction ID fits in 64 bits"));
                }
                Ok(())
            }
            RecoveryTarget::Name(name) => {
                if name.is_empty() {
                    return Err(fail("give the name of a restore point"));
                }
                if name.len() > MAX_RESTORE_POINT_NAME {
                    return Err(fail(&format!(
                        "restore point names have at most {MAX_RESTORE_POINT_NAME} bytes"
                    )));
                }
                Ok(())
            }
        }
    }
}

impl TargetAction {
    /// The value PostgreSQL expects.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for TargetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetAction {
    type Err = RecoverySettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "promote" => Ok(TargetAction::Promote),
            "pause" => Ok(TargetAction::Pause),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(RecoverySettingsError {
                setting: "recovery_target_action",
                value: s.to_owned(),
                reason: "expected promote, pause or shutdown".to_owned(),
            }),
        }
    }
}

impl fmt::Display for TargetTimeline {
    /// `latest`, `current`, or the timeline in decimal, as `recovery_target_timeline` spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetTimeline::Latest => f.write_str("latest"),
            TargetTimeline::Current => f.write_str("current"),
            TargetTimeline::Id(tli) => write!(f, "{}", tli.get()),
        }
    }
}

impl FromStr for TargetTimeline {
    type Err = RecoverySettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            _ => TimelineId::parse_decimal(s)
                .map(TargetTimeline::Id)
                .map_err(|e| RecoverySettingsError {
                    setting: "recovery_target_timeline",
                    value: s.to_owned(),
                    reason: format!(
                        "expected latest, current or a timeline number in decimal ({})",
                        e.reason
                    ),
                }),
        }
    }
}

/// The lines to append to `postgresql.auto.conf` of a restored cluster: `restore_command`, every
/// `recovery_target_*` setting (the chosen one last, the others empty so that none left from an
/// earlier restore can combine with it), `recovery_target_action` (except for
/// [`RecoveryTarget::Latest`], which has no target to act at), `recovery_target_timeline`, and
/// `primary_conninfo` when the restored cluster is to follow a primary as a standby.
///
/// The caller also creates `recovery.signal` (or `standby.signal` for a standby).
pub fn recovery_settings(
    restore_command: &str,
    target: &RecoveryTarget,
    action: TargetAction,
    timeline: &TargetTimeline,
    standby_primary_conninfo: Option<&str>,
) -> Result<String, RecoverySettingsError> {
    if restore_command.trim().is_empty() {
        return Err(RecoverySettingsError {
            setting: "restore_command",
            value: restore_command.to_owned(),
            reason: "recovery needs a command that fetches WAL files, with %f and %p".to_owned(),
        });
    }
    check_representable("restore_command", restore_command)?;
    target.validate()?;
    if let Some(conninfo) = standby_primary_conninfo {
        // The connection string may hold a password: never repeat it in a message.
        let hidden = |reason: &str| RecoverySettingsError {
            setting: "primary_conninfo",
            value: "(not shown)".to_owned(),
            reason: reason.to_owned(),
        };
        if conninfo.trim().is_empty() {
            return Err(hidden(
                "give the primary's connection string, or no standby settings at all",
            ));
        }
        if check_representable("primary_conninfo", conninfo).is_err() {
            return Err(hidden(
                "a NUL character cannot be written to a configuration file",
            ));
        }
    }

    let mut out = String::from("# Recovery settings written by Lifeboat for this restore.\n");
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{name} = {}", quote_conf_value(value));
    };
    line("restore_command", restore_command);
    let chosen = target.setting();
    for name in TARGET_SETTINGS {
        if chosen.as_ref().is_none_or(|(setting, _)| *setting != name) {
            line(name, "");
        }
    }
    if let Some((name, value)) = &chosen {
        line(name, value);
        line("recovery_target_action", action.as_str());
    }
    line("recovery_target_timeline", &timeline.to_string());
    if let Some(conninfo) = standby_primary_conninfo {
        line("primary_conninfo", conninfo);
    }
    Ok(out)
}

/// The one quoting of configuration values: see [`crate::conf::quote_value`].
pub use crate::conf::quote_value as quote_conf_value;

fn check_representable(setting: &'static str, value: &str) -> Result<(), RecoverySettingsError> {
    if value.contains('\0') {
        return Err(RecoverySettingsError {
            setting,
            value: value.to_owned(),
            reason: "a NUL character cannot be written to a configuration file".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RESTORE: &str = "lifeboat wal-fetch %f %p";

    #[test]
    fn quoting() {
        assert_eq!(quote_conf_value(""), "''");
        assert_eq!(quote_conf_value("plain %f %p"), "'plain %f %p'");
        assert_eq!(quote_conf_value("it's"), "'it''s'");
        assert_eq!(quote_conf_value(r"C:\x\'y"), r"'C:\\x\\''y'");
        assert_eq!(quote_conf_value("a\nb\rc\td"), "'a\\nb\\rc\td'");
        assert_eq!(quote_conf_value("host='h' pw=\\"), r"'host=''h'' pw=\\'");
    }

    #[test]
    fn latest_has_no_target_and_no_action() {
        let text = recovery_settings(
            RESTORE,
            &RecoveryTarget::Latest,
            TargetAction::Promote,
            &TargetTimeline::Latest,
            None,
        )
        .unwrap();
        assert_eq!(
            text,
            "# Recovery settings written by Lifeboat for this restore.\n\
             restore_command = 'lifeboat wal-fetch %f %p'\n\
             recovery_target = ''\n\
             recovery_target_lsn = ''\n\
             recovery_target_name = ''\n\
             recovery_target_time = ''\n\
             recovery_target_xid = ''\n\
             recovery_target_timeline = 'latest'\n"
        );
    }

    #[test]
    fn each_target() {
        let cases = [
            (RecoveryTarget::Immediate, "recovery_target = 'immediate'"),
            (
                RecoveryTarget::Time("2024-05-01 10:00:00+00".into()),
                "recovery_target_time = '2024-05-01 10:00:00+00'",
            ),
            (
                RecoveryTarget::Lsn(Lsn(0x1_0000_00A0)),
                "recovery_target_lsn = '1/A0'",
            ),
            (
                RecoveryTarget::Xid("1234".into()),
                "recovery_target_xid = '1234'",
            ),
            (
                RecoveryTarget::Name("before 'upgrade'".into()),
                "recovery_target_name = 'before ''upgrade'''",
            ),
        ];
        for (target, want) in cases {
            let text = recovery_settings(
                RESTORE,
                &target,
                TargetAction::Pause,
                &TargetTimeline::Current,
                None,
            )
            .unwrap();
            let lines: Vec<&str> = text.lines().collect();
            // The chosen target comes after the four emptied ones, then the action.
            assert_eq!(lines[6], want, "{text}");
            assert_eq!(lines[7], "recovery_target_action = 'pause'");
            assert_eq!(lines[8], "recovery_target_timeline = 'current'");
            assert_eq!(lines.len(), 9);
            let name = want.split(' ').next().unwrap();
            assert_eq!(text.matches(&format!("{name} =")).count(), 1, "{text}");
            assert_eq!(text.matches("= ''\n").count(), 4, "{text}");
        }
    }

    #[test]
    fn timeline_action_and_standby() {
        let text = recovery_settings(
            RESTORE,
            &RecoveryTarget::Immediate,
            TargetAction::Shutdown,
            &TargetTimeline::Id(TimelineId::new(12).unwrap()),
            Some("host=primary user=rep password='se cret'"),
        )
        .unwrap();
        assert!(text.contains("recovery_target_action = 'shutdown'\n"));
        assert!(text.contains("recovery_target_timeline = '12'\n"));
        assert!(
            text.ends_with("primary_conninfo = 'host=primary user=rep password=''se cret'''\n")
        );
    }

    #[test]
    fn parse_action_and_timeline() {
        for action in [
            TargetAction::Promote,
            TargetAction::Pause,
            TargetAction::Shutdown,
        ] {
            assert_eq!(action.to_string().parse::<TargetAction>().unwrap(), action);
        }
        assert!("stop".parse::<TargetAction>().is_err());
        assert_eq!(
            "latest".parse::<TargetTimeline>().unwrap(),
            TargetTimeline::Latest
        );
        assert_eq!(
            "current".parse::<TargetTimeline>().unwrap(),
            TargetTimeline::Current
        );
        assert_eq!(
            "26".parse::<TargetTimeline>().unwrap(),
            TargetTimeline::Id(TimelineId::new(26).unwrap())
        );
        for bad in ["0", "x", "", "0x1A", "Latest"] {
            assert!(bad.parse::<TargetTimeline>().is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_values() {
        let check = |target: RecoveryTarget| {
            recovery_settings(
                RESTORE,
                &target,
                TargetAction::Promote,
                &TargetTimeline::Latest,
                None,
            )
        };
        for bad in [
            RecoveryTarget::Time(String::new()),
            RecoveryTarget::Time("  ".into()),
            RecoveryTarget::Time("now".into()),
            RecoveryTarget::Time("Today".into()),
            RecoveryTarget::Time("yesterday".into()),
            RecoveryTarget::Time("lunchtime".into()),
            RecoveryTarget::Time("2024-05-01\0".into()),
            RecoveryTarget::Xid(String::new()),
            RecoveryTarget::Xid("12a".into()),
            RecoveryTarget::Xid("-1".into()),
            RecoveryTarget::Xid("+1".into()),
            RecoveryTarget::Xid("99999999999999999999999".into()),
            RecoveryTarget::Name(String::new()),
            RecoveryTarget::Name("x".repeat(64)),
        ] {
            assert!(check(bad.clone()).is_err(), "{bad:?}");
        }
        assert!(check(RecoveryTarget::Name("x".repeat(63))).is_ok());
        assert!(check(RecoveryTarget::Xid("18446744073709551615".into())).is_ok());

        let err = check(RecoveryTarget::Time("now".into())).unwrap_err();
        assert_eq!(err.setting, "recovery_target_time");
        assert!(
            err.to_string().starts_with(
                "invalid recovery_target_time \"now\": PostgreSQL accepts no relative"
            ),
            "{err}"
        );

        let err = recovery_settings(
            " ",
            &RecoveryTarget::Latest,
            TargetAction::Promote,
            &TargetTimeline::Latest,
            None,
        )
        .unwrap_err();
        assert_eq!(err.setting, "restore_command");
        let err = recovery_settings(
            RESTORE,
            &RecoveryTarget::Latest,
            TargetAction::Promote,
            &TargetTimeline::Latest,
            Some(""),
        )
        .unwrap_err();
        assert_eq!(err.setting, "primary_conninfo");
        let err = recovery_settings(
            RESTORE,
            &RecoveryTarget::Latest,
            TargetAction::Promote,
            &TargetTimeline::Latest,
            Some("password=sekrit\0"),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }
}
