//! The checks a drill runs on the restored copy once recovery has ended: `pg_amcheck` on every
//! database and the operator's check queries, each giving one [`DrillCheck`] for the record.

use std::process::{Output, Stdio};

use lifeboat_pg::cluster::{self as pgc, LocalCluster};
use lifeboat_repo::records::DrillCheck;

/// At most this many lines of a tool's complaint go into a record.
const DETAIL_LINES: usize = 20;

fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[..lines.len().min(DETAIL_LINES)].join("\n");
    if lines.len() > DETAIL_LINES {
        out.push_str(&format!(
            "\n... and {} more lines",
            lines.len() - DETAIL_LINES
        ));
    }
    out
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `pg_amcheck --all`, installing amcheck where missing (without it a database is skipped). A
/// PostgreSQL 13 server's amcheck cannot check tables (`verify_heapam` came in 14), so there
/// only its btree indexes are checked, and the detail says so.
pub(super) fn amcheck(cluster: &LocalCluster, major: u32) -> DrillCheck {
    let name = "pg_amcheck".to_string();
    let indexes_only = major < 14;
    let mut cmd = cluster.command("pg_amcheck");
    cmd.args(["--all", "--install-missing"]);
    if indexes_only {
        cmd.args(["--index", "*"]);
    }
    let run = cmd.stdin(Stdio::null()).output();
    match run {
        Ok(out) if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) => {
            DrillCheck {
                name,
                passed: true,
                detail: if indexes_only {
                    format!(
                        "no corruption found in any database's btree indexes (PostgreSQL {major}'s \
                         amcheck cannot check tables)"
                    )
                } else {
                    "no corruption found in any database".into()
                },
            }
        }
        Ok(out) => DrillCheck {
            name,
            passed: false,
            detail: format!("({}) {}", out.status, first_lines(&output_text(&out))),
        },
        Err(e) => DrillCheck {
            name,
            passed: false,
            detail: format!(
                "could not run {}: {e}; install PostgreSQL's client programs (14 or later), or set drill.amcheck = false",
                pgc::program_path(&cluster.bindir, "pg_amcheck").display()
            ),
        },
    }
}

/// Field and row separators no query result holds by accident.
const FIELD_SEP: char = '\u{1f}';
const ROW_SEP: char = '\u{1e}';

/// One check query in `db`: it passes when it returns one value that is `t`/`true` or a number
/// greater than zero.
pub(super) fn run_check(cluster: &LocalCluster, db: &str, sql: &str) -> DrillCheck {
    let fail = |detail: String| DrillCheck {
        name: sql.to_string(),
        passed: false,
        detail,
    };
    let run = cluster
        .command("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg("-F")
        .arg(FIELD_SEP.to_string())
        .arg("-R")
        .arg(ROW_SEP.to_string())
        .args(["-d", db, "-c", sql])
        .stdin(Stdio::null())
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => return fail(format!("could not run psql: {e}")),
    };
    if !out.status.success() {
        return fail(format!(
            "failed: {}",
            first_lines(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let (passed, detail) = judge(text);
    DrillCheck {
        name: sql.to_string(),
        passed,
        detail,
    }
}

/// Judge psql's unaligned output (rows split by [`ROW_SEP`], fields by [`FIELD_SEP`]).
fn judge(text: &str) -> (bool, String) {
    if text.is_empty() {
        return (
            false,
            "returned no rows (it must return one value that is true or a number greater than 0)"
                .into(),
        );
    }
    let rows: Vec<&str> = text.split(ROW_SEP).collect();
    if rows.len() > 1 {
        return (
            false,
            format!(
                "returned {} rows (it must return one value that is true or a number greater than 0)",
                rows.len()
            ),
        );
    }
    let fields: Vec<&str> = rows[0].split(FIELD_SEP).collect();
    if fields.len() > 1 {
        return (
            false,
            format!(
                "returned {} columns (it must return one value that is true or a number greater than 0)",
                fields.len()
            ),
        );
    }
    let value = fields[0].trim();
    let passed = value == "t"
        || value.eq_ignore_ascii_case("true")
        || value.parse::<f64>().is_ok_and(|n| n > 0.0);
    let shown = if value.is_empty() { "NULL" } else { value };
    if passed {
        (true, format!("returned {shown}"))
    } else {
        (
            false,
            format!("returned {shown} (it must be true or a number greater than 0)"),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn judges_check_results() {
        assert!(judge("t").0);
        assert!(judge("true").0);
        assert!(judge("5").0);
        assert!(judge("0.5").0);
        let (ok, detail) = judge("0");
        assert!(!ok);
        assert!(detail.starts_with("returned 0 "), "{detail}");
        assert!(!judge("f").0);
        assert_eq!(
            judge("").1.split(' ').take(3).collect::<Vec<_>>(),
            ["returned", "no", "rows"]
        );
        assert!(judge("1\u{1e}2").1.starts_with("returned 2 rows"));
        assert!(judge("1\u{1f}2").1.starts_with("returned 2 columns"));
        assert!(!judge("-3").0);
        assert!(!judge("abc").0);
    }
}
