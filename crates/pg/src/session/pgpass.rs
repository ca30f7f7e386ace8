//! The password file (`~/.pgpass` or `PGPASSFILE`), read the way libpq reads it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// The password for this connection from the password file, as libpq finds it: `PGPASSFILE`,
/// else `~/.pgpass`; lines `host:port:database:user:password` where `*` matches anything and `\`
/// escapes `:` and `\`; a Unix socket counts as host `localhost`. Like libpq, a file others may
/// read is ignored.
pub(super) fn password_from_file(
    config: &Config,
    port: u16,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let path = match env("PGPASSFILE") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env("HOME")?).join(".pgpass"),
    };
    let meta = fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.mode() & 0o077 != 0 {
        return None;
    }
    let text = fs::read_to_string(&path).ok()?;
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(Host::Tcp(name)), _) => name.clone(),
        (Some(Host::Unix(_)), _) | (None, None) => "localhost".to_owned(),
        (None, Some(addr)) => addr.to_string(),
    };
    let wanted = [
        host,
        port.to_string(),
        config.get_dbname().unwrap_or_default().to_owned(),
        config.get_user().unwrap_or_default().to_owned(),
    ];
    text.lines()
        .find_map(|line| pgpass_line_matches(line, &wanted))
}

/// The password of one password file line if its first four fields match `wanted`.
fn pgpass_line_matches(line: &str, wanted: &[String; 4]) -> Option<String> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut rest = line;
    for want in wanted {
        let (field, after) = split_pgpass_field(rest)?;
        if field != "*" && field != *want {
            return None;
        }
        rest = after;
    }
    // The password is the rest of the line, backslashes removed before what they escape.
    let mut password = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) => password.push(next),
                None => password.push('\\'),
            }
        } else {
            password.push(c);
        }
    }
    Some(password)
}

/// One `:`-terminated field, unescaped, and what follows the colon.
fn split_pgpass_field(text: &str) -> Option<(String, &str)> {
    let mut field = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => field.push(chars.next()?.1),
            ':' => return Some((field, &text[i + 1..])),
            c => field.push(c),
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_fields() {
        let wanted = [
            "h".to_owned(),
            "1".to_owned(),
            "d".to_owned(),
            "u".to_owned(),
        ];
        assert_eq!(
            pgpass_line_matches("h:1:d:u:p", &wanted).as_deref(),
            Some("p")
        );
        assert_eq!(
            pgpass_line_matches("h:1:d:u:", &wanted).as_deref(),
            Some("")
        );
        assert_eq!(pgpass_line_matches("h:1:d:u", &wanted), None);
        assert_eq!(pgpass_line_matches("h:2:d:u:p", &wanted), None);
        assert_eq!(pgpass_line_matches("#h:1:d:u:p", &wanted), None);
        assert_eq!(
            pgpass_line_matches("*:*:*:*:a:b", &wanted).as_deref(),
            Some("a:b")
        );
    }
}
