//! Turning `object_store` errors into [`ErrorKind`]s a caller can act on, reading what the HTTP
//! layer said from the error chain, and keeping credentials out of the messages ([`Redactor`]).

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};

use super::CloudStore;
use crate::{ErrorKind, StorageError};

/// Longest error detail kept in a message: server error bodies can be large.
const MAX_DETAIL: usize = 600;

impl CloudStore {
    /// Classify an `object_store` error from `op` on `key`.
    pub(super) fn classify(&self, op: Op, key: &str, err: &object_store::Error) -> StorageError {
        use object_store::Error as E;
        let detail = self.redactor.clean(&chain_text(err));
        let failed = format!("{} {key} at {} failed", op.name(), self.location);
        let permanent = |why: &str| {
            StorageError::new(ErrorKind::Permanent, format!("{failed}: {why} ({detail})"))
        };
        let transient = |why: &str| {
            StorageError::new(ErrorKind::Transient, format!("{failed}: {why} ({detail})"))
        };
        if is_plain_http_refused(err) {
            return StorageError::config(
                format!("{failed}: the endpoint is plain http, which is not allowed ({detail})"),
                "use an https endpoint, or set allow_http = true in the store's section of the \
                 config file ([s3] or [azure]; AWS_ALLOW_HTTP / AZURE_ALLOW_HTTP in the environment)",
            );
        }
        match err {
            // A 404 on a write or listing, or one that names the bucket, means the bucket (not the
            // object) is missing. A HEAD has no body, so there a missing bucket looks like a
            // missing object; the next write reports it.
            E::NotFound { .. } if op.is_write_or_list() || names_missing_bucket(&detail) => {
                permanent("the bucket or container does not exist")
            }
            E::NotFound { .. } => StorageError::new(
                ErrorKind::NotFound,
                format!("object {key} not found at {}", self.location),
            ),
            E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. }
                if op == Op::Put =>
            {
                self.already_exists(key)
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                permanent("access denied; check the credentials and their permissions")
            }
            E::Generic { .. } => match http_failure(err) {
                Failure::Transport(kind) => match kind {
                    HttpErrorKind::Connect => transient("cannot connect"),
                    HttpErrorKind::Timeout => transient("request timed out"),
                    _ => transient("connection failed"),
                },
                Failure::Status(status) => match status {
                    408 | 429 => transient("the server is throttling or timed out the request"),
                    500..=599 => transient("server error"),
                    300..=399 => permanent("redirected; check the region and endpoint"),
                    400 => permanent("bad request; check the region and endpoint"),
                    401 | 403 => {
                        permanent("access denied; check the credentials and their permissions")
                    }
                    404 => permanent("the bucket or container does not exist"),
                    _ => permanent("request rejected"),
                },
                // S3 can report a failure inside a 200 response (e.g. InternalError).
                Failure::ErrorBody => transient("server reported an error"),
                Failure::BareRedirect => permanent("redirected; check the region and endpoint"),
                Failure::Unknown => transient("unexpected error"),
            },
            // 409 outside a create-only put: another operation on the key is in flight.
            E::AlreadyExists { .. } => transient("conflicting operation in progress"),
            E::Precondition { .. } | E::NotModified { .. } => permanent("precondition failed"),
            E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => permanent("not supported by this store"),
            // Task join failures and variants added in future releases: let the retry loop decide.
            _ => transient("unexpected error"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }

    fn is_write_or_list(self) -> bool {
        matches!(self, Op::Put | Op::List | Op::Delete)
    }
}

/// What the HTTP layer said, as far as it can be recovered from an error chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Transport(HttpErrorKind),
    Status(u16),
    ErrorBody,
    BareRedirect,
    Unknown,
}

/// Walk the error chain for the HTTP failure behind an `object_store` error. The transport error
/// type is public and downcast; the status code is not exposed by a public type, so it is read from
/// the request error's message ("... status code: 503 Service Unavailable ...").
fn http_failure(err: &object_store::Error) -> Failure {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Failure::Transport(http.kind());
        }
        let text = e.to_string();
        if let Some(status) = status_in(&text) {
            return Failure::Status(status);
        }
        if text.contains("Server returned error response") {
            return Failure::ErrorBody;
        }
        if text.contains("Received redirect without LOCATION") {
            return Failure::BareRedirect;
        }
        current = e.source();
    }
    Failure::Unknown
}

fn status_in(text: &str) -> Option<u16> {
    const MARKER: &str = "status code: ";
    let at = text.find(MARKER)? + MARKER.len();
    text.get(at..at + 3)?.parse().ok()
}

pub(super) fn is_not_implemented(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. } => {
            true
        }
        object_store::Error::Generic { .. } => http_failure(err) == Failure::Status(501),
        _ => false,
    }
}

pub(super) fn is_unsatisfiable_range(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::Generic { .. })
        && (http_failure(err) == Failure::Status(416)
            || chain_text(err).contains("non-partial response"))
}

pub(super) fn names_missing_bucket(detail: &str) -> bool {
    ["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]
        .iter()
        .any(|marker| detail.contains(marker))
}

/// The error's message and those of its sources, skipping a source whose text its parent already
/// includes (most `object_store` errors embed their source's message).
pub(super) fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

/// The HTTP client refused to send a request over plain http (`allow_http` is off).
fn is_plain_http_refused(err: &object_store::Error) -> bool {
    chain_text(err).contains("URL scheme is not allowed")
}

/// Keeps credentials out of error messages: removes known secret values, and reduces XML error
/// bodies (which can echo the access key and the string that was signed) to their code and message.
#[derive(Default)]
pub(super) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub(super) fn new(secrets: impl Iterator<Item = String>) -> Self {
        // Very short values would blank out unrelated text and are not real secrets anyway.
        Self {
            secrets: secrets.filter(|s| s.len() >= 4).collect(),
        }
    }

    pub(super) fn clean(&self, text: &str) -> String {
        let mut text = reduce_xml_error(text);
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "<redacted>");
        }
        if text.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}

fn reduce_xml_error(text: &str) -> String {
    let Some(start) = text.find("<?xml").or_else(|| text.find("<Error>")) else {
        return text.to_owned();
    };
    let code = xml_element(&text[start..], "Code");
    let message = xml_element(&text[start..], "Message");
    let mut out = text[..start].trim_end().to_owned();
    match (code, message) {
        (Some(c), Some(m)) => out.push_str(&format!(" {c}: {m}")),
        (Some(c), None) => out.push_str(&format!(" {c}")),
        (None, Some(m)) => out.push_str(&format!(" {m}")),
        (None, None) => out.push_str(" (error body omitted)"),
    }
    out
}

fn xml_element<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::client::{HttpError, HttpErrorKind};

    use super::*;

    #[test]
    fn status_is_read_from_request_error_text() {
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 Service Unavailable: slow down"),
            Some(503)
        );
        assert_eq!(status_in("HTTP error: error sending request"), None);
    }

    #[test]
    fn xml_error_bodies_are_reduced_and_secrets_removed() {
        let redactor = Redactor::new(["SECRETKEY123".to_owned()].into_iter());
        let text = "PUT failed - status code: 403 Forbidden: <?xml version=\"1.0\"?><Error>\
                    <Code>SignatureDoesNotMatch</Code><Message>bad</Message>\
                    <AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId><StringToSign>x</StringToSign>\
                    </Error> with SECRETKEY123";
        let clean = redactor.clean(text);
        assert!(clean.contains("SignatureDoesNotMatch: bad"), "{clean}");
        assert!(!clean.contains("AKIAEXAMPLE"), "{clean}");
        assert!(!clean.contains("SECRETKEY123"), "{clean}");
        assert!(clean.contains("403"), "{clean}");
    }

    #[test]
    fn long_details_are_truncated() {
        let clean = Redactor::default().clean(&"é".repeat(1000));
        assert!(clean.len() <= MAX_DETAIL + 3);
    }

    #[test]
    fn generic_errors_classify_by_status() {
        let store = CloudStore::from_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            "p",
            "mem://x/p".into(),
        )
        .unwrap();
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.into(),
        };
        let cases = [
            (
                "Server returned non-2xx status code: 503 Service Unavailable",
                ErrorKind::Transient,
            ),
            (
                "Server returned non-2xx status code: 429 Too Many Requests",
                ErrorKind::Transient,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request",
                ErrorKind::Permanent,
            ),
            (
                "Server returned non-2xx status code: 404 Not Found",
                ErrorKind::Permanent,
            ),
            ("something odd", ErrorKind::Transient),
        ];
        for (msg, kind) in cases {
            assert_eq!(
                store.classify(Op::Get, "k", &generic(msg)).kind,
                kind,
                "{msg}"
            );
        }
        let transport = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(HttpErrorKind::Connect, std::fmt::Error)),
        };
        assert_eq!(
            store.classify(Op::Put, "k", &transport).kind,
            ErrorKind::Transient
        );
        let not_found = object_store::Error::NotFound {
            path: "p/k".into(),
            source: "404".into(),
        };
        assert_eq!(
            store.classify(Op::Get, "k", &not_found).kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            store.classify(Op::Put, "k", &not_found).kind,
            ErrorKind::Permanent
        );
        let exists = object_store::Error::Precondition {
            path: "p/k".into(),
            source: "412".into(),
        };
        assert_eq!(
            store.classify(Op::Put, "k", &exists).kind,
            ErrorKind::AlreadyExists
        );
    }
}
