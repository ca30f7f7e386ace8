//! Values written into `postgresql.conf` and `postgresql.auto.conf`: one quoting, used by every
//! place that writes a setting (restore, drills, the demo, test clusters).

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
