//! The notifier: every configured channel, sent to at once, each attempt under a deadline with
//! one retry when trying again could help. One broken channel never silences the others, and
//! no URL or password ever reaches a log or an error.

use std::collections::HashSet;
use std::fmt;

use super::channel::{AttemptError, Channel, error_chain};
use super::email::{email_channel, send_email};
use super::webhook::{post_webhook, webhook};
use super::{ATTEMPT_TIMEOUT, Delivery, Message, RETRY_PAUSE};
use crate::config::AlertsConfig;
use futures::future::join_all;

/// Every configured channel, ready to send.
pub struct Notifier {
    channels: Vec<Channel>,
}

/// Names only: the URLs and credentials inside must never reach a log.
impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channel_names())
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EmailConfig, SmtpTls, WebhookConfig};

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
