//! Storage locations: parsing a location string into a [`Location`].
//!
//! A location is a filesystem path (absolute or relative), `file:///abs/path`,
//! `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or `az://container[/prefix]` (also `azure://`).
//! Opening the store a location names is [`crate::open()`]'s job; the settings it needs are in
//! [`crate::settings`].

use std::fmt;
use std::path::PathBuf;

use crate::{Result, StorageError, validate_key};

const ACCEPTED_FORMS: &str = "a filesystem path, file:///absolute/path, s3://bucket[/prefix], \
                              gs://bucket[/prefix] or az://container[/prefix]";

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            Location::Local(path) => return write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => ("s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => ("gs", bucket, prefix),
            Location::Azure { container, prefix } => ("az", container, prefix),
        };
        if prefix.is_empty() {
            write!(f, "{scheme}://{bucket}")
        } else {
            write!(f, "{scheme}://{bucket}/{prefix}")
        }
    }
}

/// What the store of an object-store location (S3, GCS, Azure) will say it is (`describe()`),
/// without building it; `None` for a local path or a location that does not parse.
pub fn describe_cloud_location(location: &str) -> Option<String> {
    match parse_location(location).ok()? {
        Location::Local(_) => None,
        cloud => Some(cloud.to_string()),
    }
}

/// Parse a location string (see the module docs for the accepted forms). Cloud prefixes come back
/// without leading or trailing `/`.
pub fn parse_location(location: &str) -> Result<Location> {
    if location.is_empty() {
        return Err(bad_location(format!(
            "empty storage location; expected {ACCEPTED_FORMS}"
        )));
    }
    let Some((scheme, rest)) = split_scheme(location) else {
        return Ok(Location::Local(PathBuf::from(location)));
    };
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(bad_location(format!(
            "storage location {scheme}:... is missing the // after the scheme; expected \
             {ACCEPTED_FORMS}"
        )));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => parse_file_url(location),
        "s3" => {
            let (bucket, prefix) = parse_bucket_and_prefix(location, rest)?;
            Ok(Location::S3 { bucket, prefix })
        }
        "gs" => {
            let (bucket, prefix) = parse_bucket_and_prefix(location, rest)?;
            Ok(Location::Gcs { bucket, prefix })
        }
        "az" | "azure" => {
            let (container, prefix) = parse_bucket_and_prefix(location, rest)?;
            Ok(Location::Azure { container, prefix })
        }
        // Only the scheme is echoed: the rest of an unknown URL may carry credentials.
        other => Err(bad_location(format!(
            "unsupported storage location scheme {other:?}; expected {ACCEPTED_FORMS}"
        ))),
    }
}

/// `Some((scheme, rest))` (rest after the `:`) for `scheme://rest`, and for `known-scheme:rest`
/// (a mistyped URL rather than a relative path); `None` for anything else, which is a filesystem
/// path.
fn split_scheme(location: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = location.split_once(':')?;
    let looks_like_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic());
    if !looks_like_scheme {
        return None;
    }
    let known = ["file", "s3", "gs", "az", "azure", "http", "https"];
    if rest.starts_with("//") || known.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Some((scheme, rest));
    }
    None
}

fn parse_file_url(location: &str) -> Result<Location> {
    let bad = || {
        bad_location(format!(
            "invalid file URL {location:?}; expected file:///absolute/path"
        ))
    };
    let url = ::url::Url::parse(location).map_err(|_| bad())?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad());
    }
    // to_file_path rejects non-local hosts and decodes percent-escapes.
    url.to_file_path().map(Location::Local).map_err(|()| bad())
}

fn parse_bucket_and_prefix(location: &str, rest: &str) -> Result<(String, String)> {
    let scheme = location.split(':').next().unwrap_or_default();
    if rest.contains(['@', '?', '#']) {
        // Do not echo the location: user-info would be credentials.
        return Err(bad_location(format!(
            "storage location {scheme}://... must not contain credentials, a query or a fragment; \
             give credentials in the settings or the environment"
        )));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad_location(format!(
            "storage location {location:?} has no bucket or container name; expected \
             {ACCEPTED_FORMS}"
        )));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad_location(format!(
            "invalid bucket or container name {bucket:?} in {location:?}: only letters, digits, \
             '.', '_' and '-' are allowed"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        validate_key(prefix).map_err(|e| {
            bad_location(format!(
                "invalid prefix {prefix:?} in {location:?}: {}",
                e.message
            ))
        })?;
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// A location string that is not a location: a configuration error naming where it comes from.
fn bad_location(message: String) -> StorageError {
    StorageError::config(
        message,
        format!(
            "correct the repository location (--repo, LIFEBOAT_REPO or `repo` in the config \
             file): {ACCEPTED_FORMS}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_accepted_forms() {
        let cases = [
            ("/var/backups/pg", Location::Local("/var/backups/pg".into())),
            ("backups/pg", Location::Local("backups/pg".into())),
            ("./repo", Location::Local("./repo".into())),
            (
                "file:///var/backups/pg",
                Location::Local("/var/backups/pg".into()),
            ),
            (
                "file:///var/my%20backups",
                Location::Local("/var/my backups".into()),
            ),
            ("s3://bucket", s3("bucket", "")),
            ("s3://bucket/", s3("bucket", "")),
            ("s3://bucket/a/b/", s3("bucket", "a/b")),
            ("S3://bucket/a", s3("bucket", "a")),
            (
                "gs://b/p",
                Location::Gcs {
                    bucket: "b".into(),
                    prefix: "p".into(),
                },
            ),
            (
                "az://c/p",
                Location::Azure {
                    container: "c".into(),
                    prefix: "p".into(),
                },
            ),
            (
                "azure://c",
                Location::Azure {
                    container: "c".into(),
                    prefix: String::new(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_location(input).unwrap(), expected, "{input}");
        }
        assert_eq!(
            parse_location("s3://bucket/a/b").unwrap().to_string(),
            "s3://bucket/a/b"
        );
    }

    #[test]
    fn rejects_everything_else_listing_accepted_forms() {
        for input in [
            "",
            "http://example.com/x",
            "ftp://host/x",
            "s3:bucket",
            "s3://",
            "s3:///prefix",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/a b",
            "file://remotehost/x",
            "file:relative",
        ] {
            let err = parse_location(input).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Config, "{input}");
            assert!(err.hint.as_deref().unwrap().contains("--repo"), "{input}");
        }
        let err = parse_location("https://host/x").unwrap_err();
        assert!(
            err.message.contains("s3://bucket[/prefix]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn credentials_in_a_location_are_rejected_without_echoing_them() {
        let err = parse_location("s3://AKIAXXX:s3cr3t@bucket/p").unwrap_err();
        assert!(!err.message.contains("s3cr3t") && !err.message.contains("AKIAXXX"));
        let err = parse_location("https://user:s3cr3t@host/p").unwrap_err();
        assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    }
}
