//! The e-mail channel: its configuration (addresses, server, TLS mode, credentials from
//! `password_file`) and sending one message through SMTP, with errors that say what to check.

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::channel::{AttemptError, Channel, error_chain, first_line};
use super::{ATTEMPT_TIMEOUT, Message};
use crate::config::{EmailConfig, SmtpTls};

pub(super) fn email_channel(email: &EmailConfig) -> Result<Channel, String> {
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

pub(super) async fn send_email(
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
