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

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use futures::future::join_all;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use lifeboat_repo::records::{ActiveAlert, AlertState, SentAlert};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{AlertsConfig, EmailConfig, SmtpTls, WebhookConfig};
use crate::status::{Finding, Severity};

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
                        since: now_text.clone(),
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
                repeat_due(active.last_notified.as_deref(), now, repeat)
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
                since: Some(active.since.clone()),
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
                    active.since
                ),
                host: host.into(),
                time: now_text.clone(),
                since: Some(active.since),
            });
        }
    }
    messages
}

fn repeat_due(last_notified: Option<&str>, now: OffsetDateTime, repeat: Duration) -> bool {
    let Some(last) = last_notified else {
        return true;
    };
    if repeat.is_zero() {
        return false;
    }
    match OffsetDateTime::parse(last, &Rfc3339) {
        Ok(last) => now - last >= repeat,
        // A damaged timestamp: announcing again is better than staying silent forever.
        Err(_) => true,
    }
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
    let now_text = rfc3339(now);
    if msg.kind == Kind::Firing
        && !delivery.delivered.is_empty()
        && let Some(active) = state.active.get_mut(&msg.key)
    {
        active.last_notified = Some(now_text.clone());
        active.notifications = active.notifications.saturating_add(1);
    }
    state.sent.push(SentAlert {
        time: now_text,
        key: msg.key.clone(),
        kind: msg.kind.as_str().into(),
        summary: msg.summary.clone(),
        delivered: delivery.delivered.clone(),
        failed: delivery.failed.clone(),
    });
    let excess = state.sent.len().saturating_sub(SENT_KEPT);
    state.sent.drain(..excess);
}

/// The outcome of one message over every channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Names of the channels that took it.
    pub delivered: Vec<String>,
    /// `"name: why"` for each channel that did not.
    pub failed: Vec<String>,
}

/// Every configured channel, ready to send.
pub struct Notifier {
    channels: Vec<Channel>,
}

enum Channel {
    Webhook {
        name: String,
        url: String,
        client: reqwest::Client,
    },
    Email {
        name: String,
        /// Boxed: far larger than a webhook channel.
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        /// `server:port`, for errors.
        server: String,
        from: Mailbox,
        to: Mailboxes,
    },
}

impl Channel {
    fn name(&self) -> &str {
        match self {
            Channel::Webhook { name, .. } | Channel::Email { name, .. } => name,
        }
    }
}

/// Names only: the URLs and credentials inside must never reach a log.
impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channel_names())
            .finish()
    }
}

/// Why one attempt failed, and whether trying again could help.
struct AttemptError {
    why: String,
    retry: bool,
}

impl Notifier {
    /// Build every channel of `[alerts]`, reading `url_file` and `password_file`. An error names
    /// the key at fault and what to do, and never contains a URL or password.
    pub fn from_config(config: &AlertsConfig) -> Result<Notifier, String> {
        let mut channels = Vec::new();
        if !config.webhook.is_empty() {
            let client = reqwest::Client::builder()
                .timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(ATTEMPT_TIMEOUT)
                // A redirect would be followed with the body re-posted somewhere else; and its
                // error would carry the URL. A webhook answers directly.
                .redirect(reqwest::redirect::Policy::none())
                // Alerts are hours apart: a pooled connection would be stale by the next one.
                .pool_max_idle_per_host(0)
                .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| {
                    format!(
                        "cannot set up the HTTP client for [[alerts.webhook]]: {}; this is a \
                         problem with the TLS set-up of this host (e.g. its CA certificates)",
                        error_chain(&e.without_url())
                    )
                })?;
            for (i, hook) in config.webhook.iter().enumerate() {
                channels.push(webhook(i, hook, &client)?);
            }
        }
        if let Some(email) = &config.email {
            channels.push(email_channel(email)?);
        }
        let mut names = HashSet::new();
        for channel in &channels {
            if !names.insert(channel.name()) {
                return Err(format!(
                    "two alert channels are named {:?}: give each [[alerts.webhook]] its own \
                     `name`, so logs and the dashboard can tell them apart",
                    channel.name()
                ));
            }
        }
        Ok(Notifier { channels })
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Channel names in configuration order: webhooks, then e-mail.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels.iter().map(|c| c.name().to_string()).collect()
    }

    /// Send `msg` to every channel at once; per channel, in configuration order, `Ok` or why not.
    pub async fn send_each(&self, msg: &Message) -> Vec<(String, Result<(), String>)> {
        join_all(self.channels.iter().map(|channel| async move {
            (
                channel.name().to_string(),
                send_with_retry(channel, msg).await,
            )
        }))
        .await
    }

    /// Send `msg` to every channel at once, each with a deadline and one retry.
    pub async fn send(&self, msg: &Message) -> Delivery {
        let mut delivery = Delivery::default();
        for (name, outcome) in self.send_each(msg).await {
            match outcome {
                Ok(()) => delivery.delivered.push(name),
                Err(why) => delivery.failed.push(format!("{name}: {why}")),
            }
        }
        delivery
    }
}

fn webhook(
    index: usize,
    hook: &WebhookConfig,
    client: &reqwest::Client,
) -> Result<Channel, String> {
    let name = hook
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("webhook #{}", index + 1));
    let at = format!("[[alerts.webhook]] {name:?}");
    let url = match (&hook.url, &hook.url_file) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at} sets both `url` and `url_file`: keep one (`url_file` is better, since \
                 webhook URLs usually carry a secret)"
            ));
        }
        (None, None) => {
            return Err(format!(
                "{at} has no `url_file` or `url`: set `url_file` to a file whose first line is \
                 the webhook URL"
            ));
        }
        (Some(url), None) => url.trim().to_string(),
        (None, Some(path)) => first_line(path)
            .map(|line| line.trim().to_string())
            .map_err(|why| format!("{at}: cannot use `url_file` {}: {why}", path.display()))?,
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| {
        // The parser's message does not repeat the input, which may hold a token.
        format!(
            "{at}: the URL is not valid ({e}): write it in full, like https://hooks.example.com/..."
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{at}: the URL's scheme is {:?}: only http and https webhooks are supported",
            parsed.scheme()
        ));
    }
    Ok(Channel::Webhook {
        name,
        url,
        client: client.clone(),
    })
}

fn email_channel(email: &EmailConfig) -> Result<Channel, String> {
    if email.to.is_empty() {
        return Err(
            "[alerts.email] has no recipients: set `to = [\"oncall@example.com\"]`".to_string(),
        );
    }
    let name = format!("email to {}", email.to.join(", "));
    let from: Mailbox = email.from.trim().parse().map_err(|e| {
        format!(
            "[alerts.email] `from` {:?} is not an e-mail address ({e}): write it like \
             \"lifeboat@example.com\" or \"Lifeboat <lifeboat@example.com>\"",
            email.from
        )
    })?;
    let mut to = Mailboxes::new();
    for address in &email.to {
        let mailbox: Mailbox = address.trim().parse().map_err(|e| {
            format!(
                "[alerts.email] `to` entry {address:?} is not an e-mail address ({e}): write it \
                 like \"oncall@example.com\""
            )
        })?;
        to.push(mailbox);
    }
    let server = email.server.trim();
    if server.is_empty() {
        return Err(
            "[alerts.email] `server` is empty: set it to the SMTP server's host name".to_string(),
        );
    }
    let builder = match email.tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(server),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(server),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            server,
        )),
    }
    .map_err(|e| {
        format!(
            "[alerts.email]: cannot set up TLS for {server}: {}; check `server` (a host name \
             the certificate is for) and `tls`",
            error_chain(&e)
        )
    })?;
    let port = email.port.unwrap_or(match email.tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let mut builder = builder.port(port).timeout(Some(ATTEMPT_TIMEOUT));
    let host = lifeboat_repo::lock::this_host();
    if host != "unknown" {
        builder = builder.hello_name(ClientId::Domain(host));
    }
    match (&email.username, &email.password_file) {
        (Some(user), Some(path)) => {
            let password = first_line(path).map_err(|why| {
                format!(
                    "[alerts.email]: cannot use `password_file` {}: {why}",
                    path.display()
                )
            })?;
            if email.tls == SmtpTls::None {
                tracing::warn!(
                    "[alerts.email] sends the SMTP password unencrypted (tls = \"none\"); use \
                     \"starttls\" or \"tls\" unless {server} is on this host"
                );
            }
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        (Some(_), None) => {
            return Err(
                "[alerts.email] sets `username` but no `password_file`: add \
                        `password_file`, a file whose first line is the SMTP password"
                    .to_string(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "[alerts.email] sets `password_file` but no `username`: add the SMTP \
                        `username`, or remove `password_file`"
                    .to_string(),
            );
        }
        (None, None) => {}
    }
    Ok(Channel::Email {
        name,
        transport: Box::new(builder.build()),
        server: format!("{server}:{port}"),
        from,
        to,
    })
}

/// The first line of a secret's file, which must not be empty. Not trimmed beyond the line end, as
/// for the passphrase file: a password may end in a space.
fn first_line(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.trim().is_empty() {
        return Err("its first line is empty".to_string());
    }
    Ok(line)
}

async fn send_with_retry(channel: &Channel, msg: &Message) -> Result<(), String> {
    let first = match attempt(channel, msg).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if !first.retry {
        return Err(first.why);
    }
    tracing::debug!(
        "alert channel {}: {}; trying once more",
        channel.name(),
        first.why
    );
    tokio::time::sleep(RETRY_PAUSE).await;
    attempt(channel, msg).await.map_err(|e| e.why)
}

async fn attempt(channel: &Channel, msg: &Message) -> Result<(), AttemptError> {
    let work = async {
        match channel {
            Channel::Webhook { url, client, .. } => post_webhook(client, url, msg).await,
            Channel::Email {
                transport,
                server,
                from,
                to,
                ..
            } => send_email(transport, server, from, to, msg).await,
        }
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(AttemptError {
            why: format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
            retry: true,
        }),
    }
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    #[serde(flatten)]
    message: &'a Message,
    /// One line: what Slack and Mattermost incoming webhooks display.
    text: String,
}

async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    msg: &Message,
) -> Result<(), AttemptError> {
    let body = WebhookBody {
        message: msg,
        text: msg.text(),
    };
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| AttemptError {
            why: redact(&describe_http_error(e), url),
            retry: true,
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // The server's own words (Slack says e.g. "invalid_token") tell the operator what to fix.
    let said = response.text().await.unwrap_or_default();
    let said: String = one_line(&said).chars().take(200).collect();
    let mut why = format!("the server answered HTTP {status}");
    if !said.is_empty() {
        why.push_str(&format!(" ({said})"));
    }
    why.push_str(match status.as_u16() {
        401 | 403 | 404 | 410 => ": the webhook URL may be wrong or revoked; check url_file",
        300..=399 => ": the webhook URL redirects; use the final URL",
        _ => "",
    });
    Err(AttemptError {
        why: redact(&why, url),
        retry: status.is_server_error() || matches!(status.as_u16(), 408 | 429),
    })
}

fn describe_http_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        let cause = innermost(&e);
        format!("cannot connect to the webhook's server: {cause}")
    } else {
        error_chain(&e)
    }
}

async fn send_email(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    server: &str,
    from: &Mailbox,
    to: &Mailboxes,
    msg: &Message,
) -> Result<(), AttemptError> {
    let email = lettre::Message::builder()
        .from(from.clone())
        .mailbox(lettre::message::header::To::from(to.clone()))
        .subject(msg.subject())
        .header(ContentType::TEXT_PLAIN)
        .body(msg.body())
        .map_err(|e| AttemptError {
            why: format!("cannot build the e-mail: {e}"),
            retry: false,
        })?;
    transport
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| AttemptError {
            why: describe_smtp_error(&e, server),
            retry: !e.is_permanent(),
        })
}

fn describe_smtp_error(e: &lettre::transport::smtp::Error, server: &str) -> String {
    let chain = error_chain(e);
    if e.is_permanent() {
        format!("the SMTP server {server} refused the message: {chain}")
    } else if e.is_tls() {
        format!("TLS with the SMTP server {server} failed: {chain}; check `tls` and `port`")
    } else if e.is_timeout() {
        format!(
            "the SMTP server {server} did not answer within {}s",
            ATTEMPT_TIMEOUT.as_secs()
        )
    } else {
        format!("sending through the SMTP server {server} failed: {chain}")
    }
}

/// `error: source: source`, skipping a source its parent already quoted.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn innermost(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// Belt and braces: no library's message may carry the webhook URL (and its token) out.
fn redact(text: &str, url: &str) -> String {
    if url.is_empty() {
        text.to_string()
    } else {
        text.replace(url, "<webhook URL>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            active.last_notified.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
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

    #[test]
    fn config_errors_name_the_key_and_hide_secrets() {
        let secret = "https://hooks.example.com/services/T000/B000/SECRETTOKEN";
        let both = AlertsConfig {
            webhook: vec![WebhookConfig {
                url: Some(secret.into()),
                url_file: Some("/nonexistent".into()),
                name: Some("ops".into()),
            }],
            ..Default::default()
        };
        let e = Notifier::from_config(&both).expect_err("both url and url_file");
        assert!(e.contains("\"ops\"") && e.contains("url_file"), "{e}");
        assert!(!e.contains("SECRETTOKEN"), "{e}");
        let missing = AlertsConfig {
            webhook: vec![WebhookConfig {
                url: None,
                url_file: Some("/nonexistent/url".into()),
                name: None,
            }],
            ..Default::default()
        };
        let e = Notifier::from_config(&missing).expect_err("missing url_file");
        assert!(
            e.contains("webhook #1") && e.contains("/nonexistent/url"),
            "{e}"
        );
        let bad = AlertsConfig {
            webhook: vec![WebhookConfig {
                url: Some("not a url SECRETTOKEN".into()),
                url_file: None,
                name: None,
            }],
            ..Default::default()
        };
        let e = Notifier::from_config(&bad).expect_err("bad url");
        assert!(!e.contains("SECRETTOKEN"), "{e}");
        let ok = AlertsConfig {
            webhook: vec![WebhookConfig {
                url: Some(secret.into()),
                url_file: None,
                name: None,
            }],
            email: Some(EmailConfig {
                server: "127.0.0.1".into(),
                port: Some(2525),
                tls: SmtpTls::None,
                from: "lifeboat@example.com".into(),
                to: vec!["a@example.com".into()],
                username: None,
                password_file: None,
            }),
            ..Default::default()
        };
        let n = Notifier::from_config(&ok).expect("valid");
        assert_eq!(
            n.channel_names(),
            vec!["webhook #1", "email to a@example.com"]
        );
        assert!(!format!("{n:?}").contains("SECRETTOKEN"));
    }

    #[tokio::test]
    async fn unreachable_webhook_fails_without_showing_its_url() {
        // Bind then drop: a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = AlertsConfig {
            webhook: vec![WebhookConfig {
                url: Some(format!("http://127.0.0.1:{port}/hooks/SECRETTOKEN")),
                url_file: None,
                name: None,
            }],
            ..Default::default()
        };
        let notifier = Notifier::from_config(&config).expect("valid");
        let msg = Message::test("db1");
        // The daemon sends from spawned tasks.
        fn spawnable<T: Send + 'static>(_: &T) {}
        let shared = std::sync::Arc::new(notifier);
        let (n, m) = (shared.clone(), msg.clone());
        let task = async move { n.send(&m).await };
        spawnable(&task);
        let delivery = task.await;
        assert!(delivery.delivered.is_empty());
        assert_eq!(delivery.failed.len(), 1);
        assert!(
            delivery.failed[0].starts_with("webhook #1: "),
            "{delivery:?}"
        );
        assert!(!delivery.failed[0].contains("SECRETTOKEN"), "{delivery:?}");
    }
}
