//! The PostgreSQL programs a dump runs (`pg_dump`, `pg_dumpall`, `pg_restore`): found by the
//! server's major the way the cluster's other programs are (crates/pg/src/cluster/bindir.rs), their
//! own major checked against the server's, and set up to connect through libpq's environment
//! only, so that no password ever reaches a command line.

use std::path::{Path, PathBuf};

use lifeboat_pg::cluster::{bindir_for_major, parse_major, pg_bindir, program_path};
use lifeboat_pg::session::ConnSpec;

use crate::{EngineError, Result};

/// A program found, with what `--version` said and its major.
#[derive(Debug, Clone)]
pub struct Program {
    pub path: PathBuf,
    /// `pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)`, as printed.
    pub version: String,
    pub major: u32,
}

/// `program` for a server of `major`: from that major's bin directory (a client program missing
/// there from the newest install that has it), else from the default install. Refused when it is
/// older than `at_least` (pg_dump cannot dump a newer server; pg_restore cannot read an archive
/// written by a newer pg_dump).
pub fn find(program: &str, major: u32, at_least: u32) -> Result<Program> {
    let bindir = bindir_for_major(major).or_else(|_| pg_bindir()).map_err(|e| {
        EngineError::invalid(
            format!("cannot find {program} for PostgreSQL {major}: {e}"),
            format!(
                "install the PostgreSQL {major} client programs (Debian: postgresql-client-{major})"
            ),
        )
    })?;
    let path = program_path(&bindir, program);
    let found = version_of(&path)?;
    if found.major < at_least {
        return Err(EngineError::invalid(
            format!(
                "{} is PostgreSQL {} ({}), older than the {} it must handle",
                path.display(),
                found.major,
                found.version,
                at_least
            ),
            format!(
                "install the PostgreSQL {at_least} (or newer) client programs (Debian: postgresql-client-{at_least})"
            ),
        ));
    }
    Ok(found)
}

/// `path --version`, parsed.
fn version_of(path: &Path) -> Result<Program> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| EngineError::io(format!("cannot run {} --version", path.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = text
        .split_once("(PostgreSQL)")
        .and_then(|(_, v)| parse_major(v))
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            EngineError::invalid(
                format!(
                    "{} --version printed {text:?} ({}), which names no PostgreSQL version",
                    path.display(),
                    out.status
                ),
                "check the PostgreSQL client installation",
            )
        })?;
    Ok(Program {
        path: path.to_path_buf(),
        version: text,
        major,
    })
}

/// A command for `program` that connects as `spec` says, through the environment only: libpq's
/// variables set from `spec` (the password among them), the ones that could redirect it
/// (`PGSERVICE`, `PGOPTIONS`, `PGPASSFILE`) removed.
pub fn command(program: &Program, spec: &ConnSpec) -> std::process::Command {
    let mut cmd = std::process::Command::new(&program.path);
    for name in [
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGPASSFILE",
        "PGHOSTADDR",
        "PGPASSWORD",
    ] {
        cmd.env_remove(name);
    }
    for (name, value) in spec.libpq_env() {
        cmd.env(name, value);
    }
    cmd.env("PGCONNECT_TIMEOUT", "30");
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// The last `max` bytes of a program's stderr, as text, for an error message.
pub fn tail(stderr: &[u8], max: usize) -> String {
    let from = stderr.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&stderr[from..]).trim().to_string();
    if text.is_empty() {
        "(it printed nothing on stderr)".into()
    } else {
        text
    }
}
