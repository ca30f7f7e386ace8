//! Alert policy: which findings to announce now (fire once, repeat after `alerts.repeat`, retry
//! what no channel took, resolve once), de-duplicated against the persisted [`AlertState`], and
//! how each message's delivery is recorded, and how the stored state joins one built while the
//! repository could not be read. Pure functions: unit-tested without a network.

use std::collections::HashSet;
use std::time::Duration;

use lifeboat_repo::records::{ActiveAlert, AlertState, SentAlert};
use time::OffsetDateTime;

use super::{Delivery, Kind, Message, SENT_KEPT, rfc3339};
use crate::status::Finding;

/// Decide what to send now, updating `state.active`.
///
/// A new finding becomes active and fires. A finding still active fires again only when its last
/// message reached no channel (`last_notified` is None), or when `repeat` (non-zero) has passed
/// since it was last delivered. An active alert no longer found is removed and resolves once
/// (best effort: the state keeps no pending "resolved", so a resolution no channel took is lost).
/// Call [`record_delivery`] with each message's outcome.
pub fn plan(
    state: &mut AlertState,
    findings: &[Finding],
    now: OffsetDateTime,
    repeat: Duration,
    host: &str,
) -> Vec<Message> {
    let now_text = rfc3339(now);
    // What the state records: to the second, as the messages say it.
    let stamp = now.replace_nanosecond(0).unwrap_or(now);
    let mut messages = Vec::new();
    let mut seen = HashSet::new();
    for finding in findings {
        // Health should not report one key twice; if it does, the first one speaks for it.
        if !seen.insert(finding.key.as_str()) {
            continue;
        }
        let due = match state.active.get_mut(&finding.key) {
            None => {
                state.active.insert(
                    finding.key.clone(),
                    ActiveAlert {
                        key: finding.key.clone(),
                        summary: finding.summary.clone(),
                        detail: finding.detail.clone(),
                        since: stamp,
                        last_notified: None,
                        notifications: 0,
                    },
                );
                true
            }
            Some(active) => {
                // Keep the words current (e.g. "lag is 12m" growing to "lag is 40m").
                active.summary.clone_from(&finding.summary);
                active.detail.clone_from(&finding.detail);
                repeat_due(active.last_notified, now, repeat)
            }
        };
        if due && let Some(active) = state.active.get(&finding.key) {
            messages.push(Message {
                kind: Kind::Firing,
                key: finding.key.clone(),
                severity: Some(finding.severity),
                summary: finding.summary.clone(),
                detail: finding.detail.clone(),
                host: host.into(),
                time: now_text.clone(),
                since: Some(rfc3339(active.since)),
            });
        }
    }
    let gone: Vec<String> = state
        .active
        .keys()
        .filter(|k| !seen.contains(k.as_str()))
        .cloned()
        .collect();
    for key in gone {
        if let Some(active) = state.active.remove(&key) {
            messages.push(Message {
                kind: Kind::Resolved,
                key,
                severity: None,
                summary: active.summary,
                detail: format!(
                    "The health check no longer finds this problem (it had been found since {}). \
                     No action is needed.",
                    rfc3339(active.since)
                ),
                host: host.into(),
                time: now_text.clone(),
                since: Some(rfc3339(active.since)),
            });
        }
    }
    messages
}

fn repeat_due(
    last_notified: Option<OffsetDateTime>,
    now: OffsetDateTime,
    repeat: Duration,
) -> bool {
    let Some(last) = last_notified else {
        return true;
    };
    !repeat.is_zero() && now - last >= repeat
}

/// Record how `msg` went: a firing alert counts as notified when at least one channel took it
/// (otherwise [`plan`] tries it again next check), and every attempt that reached a channel is
/// kept in `state.sent` (newest [`SENT_KEPT`]). With no channel configured nothing is recorded.
pub fn record_delivery(
    state: &mut AlertState,
    msg: &Message,
    delivery: &Delivery,
    now: OffsetDateTime,
) {
    if delivery.delivered.is_empty() && delivery.failed.is_empty() {
        return;
    }
    let stamp = now.replace_nanosecond(0).unwrap_or(now);
    if msg.kind == Kind::Firing
        && !delivery.delivered.is_empty()
        && let Some(active) = state.active.get_mut(&msg.key)
    {
        active.last_notified = Some(stamp);
        active.notifications = active.notifications.saturating_add(1);
    }
    state.sent.push(SentAlert {
        time: stamp,
        key: msg.key.clone(),
        kind: msg.kind.as_str().into(),
        summary: msg.summary.clone(),
        delivered: delivery.delivered.clone(),
        failed: delivery.failed.clone(),
    });
    let excess = state.sent.len().saturating_sub(SENT_KEPT);
    state.sent.drain(..excess);
}

/// Fold the stored alert state into the one built while it could not be read: alerts active
/// before the restart stay active (so they resolve once, or stay quiet while they persist).
pub(crate) fn merge_alert_state(current: &mut AlertState, stored: AlertState) {
    for (key, active) in stored.active {
        current.active.entry(key).or_insert(active);
    }
    let mut sent = stored.sent;
    sent.append(&mut current.sent);
    let excess = sent.len().saturating_sub(SENT_KEPT);
    sent.drain(..excess);
    current.sent = sent;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::webhook::WebhookBody;
    use crate::status::Severity;
    use time::macros::datetime;

    const REPEAT: Duration = Duration::from_secs(4 * 3600);

    fn finding(key: &str) -> Finding {
        Finding {
            key: key.into(),
            severity: Severity::Critical,
            summary: format!("{key} is wrong"),
            detail: "fix it".into(),
        }
    }

    fn delivered() -> Delivery {
        Delivery {
            delivered: vec!["webhook #1".into()],
            failed: vec![],
        }
    }

    fn undelivered() -> Delivery {
        Delivery {
            delivered: vec![],
            failed: vec!["webhook #1: cannot connect".into()],
        }
    }

    /// One check: plan, then record every message as `delivery`.
    fn check(
        state: &mut AlertState,
        findings: &[Finding],
        now: OffsetDateTime,
        delivery: &Delivery,
    ) -> Vec<Message> {
        let messages = plan(state, findings, now, REPEAT, "db1");
        for m in &messages {
            record_delivery(state, m, delivery, now);
        }
        messages
    }

    #[test]
    fn new_finding_fires_once() {
        let mut state = AlertState::default();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        let msgs = check(&mut state, &[finding("backup_age")], t0, &delivered());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].kind, Kind::Firing);
        assert_eq!(msgs[0].key, "backup_age");
        assert_eq!(msgs[0].since.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(msgs[0].host, "db1");
        let active = &state.active["backup_age"];
        assert_eq!(active.notifications, 1);
        assert_eq!(active.last_notified, Some(t0));
        assert_eq!(state.sent.len(), 1);
        assert_eq!(state.sent[0].kind, "firing");
    }

    #[test]
    fn persisting_finding_does_not_refire_before_repeat() {
        let mut state = AlertState::default();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        check(&mut state, &[finding("backup_age")], t0, &delivered());
        for minutes in [1, 30, 120, 239] {
            let t = t0 + time::Duration::minutes(minutes);
            let msgs = check(&mut state, &[finding("backup_age")], t, &delivered());
            assert!(msgs.is_empty(), "re-fired after {minutes} min: {msgs:?}");
        }
        assert_eq!(state.active["backup_age"].notifications, 1);
        // With repeat 0, never again.
        let later = t0 + time::Duration::days(30);
        assert!(
            plan(
                &mut state,
                &[finding("backup_age")],
                later,
                Duration::ZERO,
                "db1"
            )
            .is_empty()
        );
    }

    #[test]
    fn persisting_finding_refires_after_repeat() {
        let mut state = AlertState::default();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        check(&mut state, &[finding("backup_age")], t0, &delivered());
        let t1 = t0 + time::Duration::hours(4);
        let msgs = check(&mut state, &[finding("backup_age")], t1, &delivered());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].kind, Kind::Firing);
        assert_eq!(msgs[0].since.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(state.active["backup_age"].notifications, 2);
        // The next repeat counts from the last notification, not from `since`.
        let t2 = t1 + time::Duration::hours(3);
        assert!(check(&mut state, &[finding("backup_age")], t2, &delivered()).is_empty());
        let t3 = t1 + time::Duration::hours(4);
        assert_eq!(
            check(&mut state, &[finding("backup_age")], t3, &delivered()).len(),
            1
        );
    }

    #[test]
    fn gone_finding_resolves_once() {
        let mut state = AlertState::default();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        check(
            &mut state,
            &[finding("backup_age"), finding("wal_archive_lag")],
            t0,
            &delivered(),
        );
        let t1 = t0 + time::Duration::minutes(5);
        let msgs = check(&mut state, &[finding("wal_archive_lag")], t1, &delivered());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].kind, Kind::Resolved);
        assert_eq!(msgs[0].key, "backup_age");
        assert_eq!(msgs[0].summary, "backup_age is wrong");
        assert_eq!(msgs[0].since.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert!(!state.active.contains_key("backup_age"));
        assert!(state.active.contains_key("wal_archive_lag"));
        let t2 = t1 + time::Duration::minutes(5);
        assert!(check(&mut state, &[finding("wal_archive_lag")], t2, &delivered()).is_empty());
        // Coming back is a new alert, with a new `since`.
        let t3 = t2 + time::Duration::minutes(5);
        let msgs = check(
            &mut state,
            &[finding("backup_age"), finding("wal_archive_lag")],
            t3,
            &delivered(),
        );
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].since.as_deref(), Some("2026-01-01T00:15:00Z"));
    }

    #[test]
    fn undelivered_alert_is_retried_next_check() {
        let mut state = AlertState::default();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        check(&mut state, &[finding("backup_age")], t0, &undelivered());
        assert_eq!(state.active["backup_age"].last_notified, None);
        assert_eq!(state.sent.len(), 1);
        assert_eq!(state.sent[0].failed, vec!["webhook #1: cannot connect"]);
        let t1 = t0 + time::Duration::seconds(30);
        let msgs = check(&mut state, &[finding("backup_age")], t1, &delivered());
        assert_eq!(msgs.len(), 1, "an undelivered alert must be tried again");
        assert_eq!(msgs[0].since.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(state.active["backup_age"].notifications, 1);
        let t2 = t1 + time::Duration::seconds(30);
        assert!(check(&mut state, &[finding("backup_age")], t2, &delivered()).is_empty());
    }

    #[test]
    fn persisting_finding_updates_words_and_sent_is_capped() {
        let mut state = AlertState::default();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        check(&mut state, &[finding("lag")], t0, &delivered());
        let mut changed = finding("lag");
        changed.summary = "lag is 40m".into();
        check(
            &mut state,
            &[changed],
            t0 + time::Duration::minutes(1),
            &delivered(),
        );
        assert_eq!(state.active["lag"].summary, "lag is 40m");
        let msg = Message::test_at("db1", t0);
        for _ in 0..SENT_KEPT + 10 {
            record_delivery(&mut state, &msg, &undelivered(), t0);
        }
        assert_eq!(state.sent.len(), SENT_KEPT);
        // No channel configured: nothing recorded.
        let before = state.clone();
        record_delivery(&mut state, &msg, &Delivery::default(), t0);
        assert_eq!(state, before);
    }

    #[test]
    fn message_forms() {
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        let mut state = AlertState::default();
        let mut f = finding("backup_age");
        f.summary = "newest backup\nis 30h old".into();
        let msgs = plan(&mut state, &[f], t0, REPEAT, "db1");
        assert_eq!(
            msgs[0].text(),
            "[lifeboat db1] FIRING (critical): newest backup is 30h old (since 2026-01-01T00:00:00Z)"
        );
        assert_eq!(
            msgs[0].subject(),
            "[lifeboat db1] FIRING: newest backup is 30h old"
        );
        let test = Message::test_at("db1", t0);
        assert_eq!(
            test.subject(),
            "[lifeboat db1] TEST: test alert from lifeboat on db1: alerts reach you"
        );
        assert!(test.body().contains("Host:     db1"));
        let json = serde_json::to_value(WebhookBody {
            message: &test,
            text: test.text(),
        })
        .expect("serialises");
        assert_eq!(json["kind"], "test");
        assert_eq!(json["host"], "db1");
        assert_eq!(json["time"], "2026-01-01T00:00:00Z");
        assert!(json["text"].as_str().is_some_and(|t| t.contains("TEST")));
    }

    fn active(key: &str, summary: &str) -> ActiveAlert {
        ActiveAlert {
            key: key.into(),
            summary: summary.into(),
            detail: String::new(),
            since: datetime!(2026-01-01 00:00:00 UTC),
            last_notified: Some(datetime!(2026-01-01 00:00:00 UTC)),
            notifications: 1,
        }
    }

    fn sent(key: &str) -> SentAlert {
        SentAlert {
            time: datetime!(2026-01-01 00:00:00 UTC),
            key: key.into(),
            kind: "firing".into(),
            summary: String::new(),
            delivered: vec!["webhook #1".into()],
            failed: vec![],
        }
    }

    #[test]
    fn stored_alerts_join_those_raised_while_the_repository_was_unreadable() {
        let mut current = AlertState::default();
        current.active.insert(
            "repository_unreachable".into(),
            active("repository_unreachable", "now"),
        );
        current
            .active
            .insert("wal_archive_lag".into(), active("wal_archive_lag", "now"));
        current.sent.push(sent("repository_unreachable"));
        let mut stored = AlertState::default();
        stored.active.insert(
            "wal_archive_lag".into(),
            active("wal_archive_lag", "before"),
        );
        stored
            .active
            .insert("backup_age".into(), active("backup_age", "before"));
        stored.sent = (0..SENT_KEPT).map(|_| sent("backup_age")).collect();
        merge_alert_state(&mut current, stored);
        let keys: Vec<&str> = current.active.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["backup_age", "repository_unreachable", "wal_archive_lag"]
        );
        assert_eq!(current.active["wal_archive_lag"].summary, "now");
        assert_eq!(current.sent.len(), SENT_KEPT);
        assert_eq!(
            current.sent.last().map(|s| s.key.as_str()),
            Some("repository_unreachable")
        );
    }
}
