//! This module owns the cluster's key names under `<namespace>/<cluster>/` and the reading of one
//! range of them into a [`ClusterView`]. The store is shared and its contents untrusted: a value
//! that does not parse is left out with a warning, never an error that would stop the loop.

use lifeboat_pg::lsn::Lsn;
use serde::de::DeserializeOwned;

use crate::state::{ClusterView, LeaderKey, MemberRecord};

pub(super) const INITIALIZE: &str = "initialize";
pub(super) const LEADER: &str = "leader";
pub(super) const OPTIME: &str = "optime";
pub(super) const MEMBERS: &str = "members/";
pub(super) const SYNC: &str = "sync";
pub(super) const HISTORY: &str = "history";
pub(super) const PAUSE: &str = "pause";
pub(super) const SWITCHOVER: &str = "switchover";

/// `<namespace>/<cluster>/`, the prefix of every key of the cluster.
pub(super) fn prefix(namespace: &str, cluster: &str) -> String {
    let namespace = namespace.trim_end_matches('/');
    format!("{namespace}/{cluster}/")
}

/// One key of the range, its name relative to the cluster's prefix.
pub(super) struct Entry<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    pub lease: i64,
    pub mod_revision: i64,
}

/// The view of one range read. `full_key` names a key in warnings.
pub(super) fn parse<'a>(prefix: &str, entries: impl IntoIterator<Item = Entry<'a>>) -> ClusterView {
    let mut view = ClusterView::default();
    for entry in entries {
        let full_key = format!("{prefix}{}", entry.name);
        let text = String::from_utf8_lossy(entry.value);
        match entry.name {
            INITIALIZE => view.initialize = parse_text(&full_key, &text, "a system identifier"),
            LEADER => {
                view.leader = Some(LeaderKey {
                    name: text.into_owned(),
                    lease: entry.lease,
                    mod_revision: entry.mod_revision,
                });
            }
            OPTIME => view.last_leader_position = parse_text::<Lsn>(&full_key, &text, "an LSN"),
            SYNC => view.sync = parse_json(&full_key, &text),
            SWITCHOVER => view.switchover = parse_json(&full_key, &text),
            PAUSE => view.paused = true,
            HISTORY => {}
            name => match name.strip_prefix(MEMBERS) {
                Some(member) => {
                    if let Some(record) = parse_json::<MemberRecord>(&full_key, &text) {
                        if record.name == member {
                            view.members.push(record);
                        } else {
                            tracing::warn!(
                                key = %full_key, name = %record.name,
                                "ignoring a member key whose record names another member"
                            );
                        }
                    }
                }
                None => tracing::debug!(key = %full_key, "ignoring an unknown key"),
            },
        }
    }
    view.members.sort_by(|a, b| a.name.cmp(&b.name));
    view
}

fn parse_text<T: std::str::FromStr>(key: &str, text: &str, expected: &str) -> Option<T> {
    let parsed = text.trim().parse().ok();
    if parsed.is_none() {
        tracing::warn!(key, value = %text, "ignoring a value that is not {expected}");
    }
    parsed
}

fn parse_json<T: DeserializeOwned>(key: &str, text: &str) -> Option<T> {
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(key, value = %text, error = %e, "ignoring a value that does not parse");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::state::{Role, SyncState};

    fn entry<'a>(name: &'a str, value: &'a str) -> Entry<'a> {
        Entry {
            name,
            value: value.as_bytes(),
            lease: 7,
            mod_revision: 42,
        }
    }

    #[test]
    fn prefix_ignores_a_trailing_slash() {
        assert_eq!(prefix("/lifeboat", "main"), "/lifeboat/main/");
        assert_eq!(prefix("/lifeboat/", "main"), "/lifeboat/main/");
    }

    #[test]
    fn every_key_lands_in_its_field_and_bad_values_are_left_out() {
        let member = MemberRecord {
            name: "a".to_string(),
            role: Role::Primary,
            timeline: None,
            wal_position: Some(Lsn(0x300_0060)),
            replayed: None,
            conninfo: "host=a".to_string(),
            api_url: "http://a:8008".to_string(),
            system_identifier: 7,
            version: "0.1.0".to_string(),
        };
        let json = serde_json::to_string(&member).unwrap();
        let sync = r#"{"leader":"a","standbys":["b"]}"#;
        let view = parse(
            "/lifeboat/main/",
            [
                entry("initialize", "7311234567890"),
                entry("leader", "a"),
                entry("optime", "0/3000060"),
                entry("members/a", &json),
                entry("members/b", "{not json"),
                entry("members/c", &json),
                entry("sync", sync),
                entry("switchover", "[]"),
                entry("pause", ""),
                entry("history", "[]"),
                entry("something-new", "x"),
            ],
        );
        assert_eq!(view.initialize, Some(7_311_234_567_890));
        let leader = view.leader.unwrap();
        assert_eq!((leader.name.as_str(), leader.lease), ("a", 7));
        assert_eq!(leader.mod_revision, 42);
        assert_eq!(view.last_leader_position, Some(Lsn(0x300_0060)));
        // b does not parse; c's record names a.
        assert_eq!(view.members, vec![member]);
        assert_eq!(
            view.sync,
            Some(SyncState {
                leader: "a".to_string(),
                standbys: vec!["b".to_string()]
            })
        );
        assert_eq!(view.switchover, None);
        assert!(view.paused);
    }

    #[test]
    fn an_unreadable_initialize_or_optime_is_absent() {
        let view = parse(
            "/p/c/",
            [entry("initialize", "abc"), entry("optime", "nowhere")],
        );
        assert_eq!(view.initialize, None);
        assert_eq!(view.last_leader_position, None);
        assert_eq!(view, ClusterView::default());
    }
}
