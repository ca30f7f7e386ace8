//! Alerts: which findings to announce (de-duplication against the persisted [`AlertState`]) and
//! the channels that carry them (webhook, SMTP).
//!
//! [`plan`] and [`record_delivery`] are pure, so the rules (fire once, repeat after
//! `alerts.repeat`, retry what no channel took, resolve once) are unit-tested without a network.
//! [`Notifier::send`] never fails as a whole: it reports per channel, because one broken channel
//! must not silence the others.
//!
//! Webhook URLs often embed a token and the SMTP password is a secret: neither is ever logged or
//! put in an error. Channels are named by their `name`, "webhook #N" or "email to a@b".

//!
//! Parts: `policy` ([`plan`], [`record_delivery`]), `notifier` ([`Notifier`]: every channel at
//! once, deadlines and retry), `channel` (what the channels share), `webhook` and `email`
//! (building each channel from its configuration and sending one message through it). This
//! module holds the message and its outcome.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::status::Severity;

mod channel;
mod email;
mod notifier;
mod policy;
mod webhook;

pub use notifier::Notifier;
pub(crate) use policy::merge_alert_state;
pub use policy::{plan, record_delivery};

/// Deadline of one delivery attempt on one channel: a hung server must not hold up the others or
/// the daemon's check loop for long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before the single retry of a failed attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Sent messages kept in [`AlertState::sent`] for the dashboard.
pub const SENT_KEPT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Firing,
    Resolved,
    Test,
}

impl Kind {
    /// As recorded in [`SentAlert::kind`] and sent in the webhook's `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firing => "firing",
            Kind::Resolved => "resolved",
            Kind::Test => "test",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Firing => "FIRING",
            Kind::Resolved => "RESOLVED",
            Kind::Test => "TEST",
        }
    }
}

/// One notification. Serialised as-is (plus `text`) as the webhook's JSON body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub kind: Kind,
    /// The finding's stable key (`test` for a test message).
    pub key: String,
    /// None for resolved and test messages: the persisted state does not keep severities.
    pub severity: Option<Severity>,
    pub summary: String,
    pub detail: String,
    pub host: String,
    /// When the message was made (RFC 3339).
    pub time: String,
    /// When the problem was first seen (RFC 3339); None for a test message.
    pub since: Option<String>,
}

impl Message {
    /// What `lifeboat alert test` sends, stamped now.
    pub fn test(host: &str) -> Self {
        Self::test_at(host, OffsetDateTime::now_utc())
    }

    pub fn test_at(host: &str, now: OffsetDateTime) -> Self {
        Message {
            kind: Kind::Test,
            key: "test".into(),
            severity: None,
            summary: format!("test alert from lifeboat on {host}: alerts reach you"),
            detail: "Sent by `lifeboat alert test`. Nothing is wrong; no action is needed.".into(),
            host: host.into(),
            time: rfc3339(now),
            since: None,
        }
    }

    /// One line, for chat (the webhook's `text`) and logs.
    pub fn text(&self) -> String {
        let mut line = format!("[lifeboat {}] {}", self.host, self.kind.label());
        if let Some(severity) = self.severity {
            line.push_str(match severity {
                Severity::Warning => " (warning)",
                Severity::Critical => " (critical)",
            });
        }
        line.push_str(": ");
        line.push_str(&self.summary);
        match (self.kind, &self.since) {
            (Kind::Firing, Some(since)) => line.push_str(&format!(" (since {since})")),
            (Kind::Resolved, Some(since)) => {
                line.push_str(&format!(" (had been firing since {since})"))
            }
            _ => {}
        }
        one_line(&line)
    }

    /// `[lifeboat HOST] FIRING: summary`.
    pub fn subject(&self) -> String {
        one_line(&format!(
            "[lifeboat {}] {}: {}",
            self.host,
            self.kind.label(),
            self.summary
        ))
    }

    /// Plain-text e-mail body.
    pub fn body(&self) -> String {
        let mut body = format!("{}\n\n{}\n\n", self.summary, self.detail);
        body.push_str(&format!("Host:     {}\n", self.host));
        if let Some(severity) = self.severity {
            let s = match severity {
                Severity::Warning => "warning",
                Severity::Critical => "critical",
            };
            body.push_str(&format!("Severity: {s}\n"));
        }
        if let Some(since) = &self.since {
            body.push_str(&format!("Since:    {since}\n"));
        }
        body.push_str(&format!("Time:     {}\n", self.time));
        body.push_str(&format!("Key:      {}\n", self.key));
        body.push_str("\n-- \nSent by lifeboat.\n");
        body
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3339 to the second (what every record in the repository uses).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The outcome of one message over every channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Names of the channels that took it.
    pub delivered: Vec<String>,
    /// `"name: why"` for each channel that did not.
    pub failed: Vec<String>,
}
