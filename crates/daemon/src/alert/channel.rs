//! What the channels share: the [`Channel`] itself (a webhook or an e-mail transport, built by
//! `webhook` and `email`), why one attempt failed, and the helpers their configuration and error
//! messages use (a secret file's first line, an error's chain of causes).

use lettre::message::{Mailbox, Mailboxes};
use lettre::{AsyncSmtpTransport, Tokio1Executor};

pub(super) enum Channel {
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
    pub(super) fn name(&self) -> &str {
        match self {
            Channel::Webhook { name, .. } | Channel::Email { name, .. } => name,
        }
    }
}

/// Why one attempt failed, and whether trying again could help.
pub(super) struct AttemptError {
    pub(super) why: String,
    pub(super) retry: bool,
}

/// The first line of a secret's file, which must not be empty. Not trimmed beyond the line end, as
/// for the passphrase file: a password may end in a space.
pub(super) fn first_line(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.trim().is_empty() {
        return Err("its first line is empty".to_string());
    }
    Ok(line)
}

/// `error: source: source`, skipping a source its parent already quoted.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

pub(super) fn innermost(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}
