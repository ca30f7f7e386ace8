//! Values written into `postgresql.conf` and `postgresql.auto.conf`: one quoting, used by every
//! place that writes a setting (restore, drills, the demo, test clusters); and sizes spelled as
//! in those files ("16MB"), for Lifeboat's own settings that measure WAL.

use serde::{Deserialize, Deserializer};

/// `value` as a single-quoted string for PostgreSQL's configuration files, read back by the
/// server as exactly `value`: a quote doubled, a backslash doubled (the parser reads C-like
/// escapes), and line breaks written as `\n` and `\r` because a quoted string cannot span lines.
///
/// A NUL character cannot be represented (the server would cut the value there); callers refuse
/// values holding one (see [`crate::recovery::recovery_settings`]).
#[must_use]
pub fn quote_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Bytes: an integer, or a number with a unit, 1024-based as in postgresql.conf: "512kB",
/// "16MB", "16MiB", "1GB", "1TB".
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => u32::MAX,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| shift != u32::MAX)
        .and_then(|n| n.checked_mul(1u64 << shift.min(40)))
        .ok_or_else(|| {
            format!("{text:?} is not a size like \"16MiB\", \"1GiB\" or a number of bytes")
        })
}

/// A size in a configuration file (serde's `deserialize_with`): a number of bytes (`4096`) or
/// text [`parse_byte_size`] reads (`"16MiB"`).
pub fn deserialize_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_byte_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_byte_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_byte_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        for bad in ["", "MiB", "1.5GB", "3 parsecs", "99999999999TB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    /// PostgreSQL's reading of a quoted value (guc-file.l: the STRING token
    /// `'([^'\\\n]|\\.|'')*'`, then DeescapeQuotedString): `None` where the server's lexer would
    /// not take the text as one string.
    fn server_reads(quoted: &str) -> Option<String> {
        let inner = quoted.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\n' => return None,
                '\\' => match chars.next()? {
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    d @ '0'..='7' => {
                        let mut code = d.to_digit(8)?;
                        for _ in 0..2 {
                            match chars.peek().and_then(|c| c.to_digit(8)) {
                                Some(v) => {
                                    code = code * 8 + v;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(code)?);
                    }
                    other => out.push(other),
                },
                '\'' => {
                    // Inside the token a quote only comes doubled.
                    if chars.next()? != '\'' {
                        return None;
                    }
                    out.push('\'');
                }
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn quotes_backslashes_and_line_breaks() {
        assert_eq!(quote_value(""), "''");
        assert_eq!(quote_value("plain %f %p"), "'plain %f %p'");
        assert_eq!(quote_value("it's"), "'it''s'");
        assert_eq!(quote_value(r"C:\x\'y"), r"'C:\\x\\''y'");
        assert_eq!(quote_value("a\nb\rc\td"), "'a\\nb\\rc\td'");
        assert!(!quote_value("a\nb").contains('\n'));
    }

    #[test]
    fn round_trips_through_the_servers_rules() {
        for value in [
            "",
            "lifeboat --repo '/tmp/a b' wal-fetch %f %p",
            r"\\server\share\0\n",
            "line one\nline two\r\n",
            "tab\there 'quoted' \\'",
            "ünïcødé ☃ ''''",
            "/tmp/x'; archive_command = 'rm -rf /",
            "ends with a backslash \\",
        ] {
            let quoted = quote_value(value);
            assert_eq!(
                server_reads(&quoted).as_deref(),
                Some(value),
                "{value:?} -> {quoted}"
            );
        }
    }
}
