//! The webhook channel: its configuration (`url` or `url_file`, only http and https) and one
//! POST of the message as JSON, with a `text` line for Slack and Mattermost. The URL often
//! carries a token: it is redacted from every error.

use serde::Serialize;

use super::channel::{AttemptError, Channel, error_chain, first_line, innermost};
use super::{ATTEMPT_TIMEOUT, Message, one_line};
use crate::config::WebhookConfig;

pub(super) fn webhook(
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

#[derive(Serialize)]
pub(super) struct WebhookBody<'a> {
    #[serde(flatten)]
    pub(super) message: &'a Message,
    /// One line: what Slack and Mattermost incoming webhooks display.
    pub(super) text: String,
}

pub(super) async fn post_webhook(
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

/// Belt and braces: no library's message may carry the webhook URL (and its token) out.
fn redact(text: &str, url: &str) -> String {
    if url.is_empty() {
        text.to_string()
    } else {
        text.replace(url, "<webhook URL>")
    }
}
