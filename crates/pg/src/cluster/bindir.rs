//! Finding the server programs: the bindir of the default install and of a given major, the major
//! of a data directory or a bindir, and where each program comes from (server programs only from
//! the cluster's own major, client programs possibly from a newer install).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ClusterError, Result, io_err, run, said};

// ---------------------------------------------------------------------------------------------
// Finding the server programs
// ---------------------------------------------------------------------------------------------

/// The directory holding `initdb`, `postgres`, `pg_ctl`, `psql` and friends.
///
/// Looks, in order, at `pg_config --bindir` (if `initdb` is there), the highest-versioned
/// `/usr/lib/postgresql/*/bin` (Debian, Ubuntu), then the highest `/usr/pgsql-*/bin` (RHEL and
/// derivatives). The error lists every place it looked.
pub fn pg_bindir() -> Result<PathBuf> {
    let mut looked = Vec::new();

    match Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
            looked.push(format!("{} (from pg_config --bindir)", dir.display()));
        }
        Ok(out) => looked.push(format!("pg_config --bindir (failed: {})", out.status)),
        Err(e) => looked.push(format!("pg_config --bindir (not runnable: {e})")),
    }

    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
    ] {
        if let Some(dir) = highest_versioned_bindir(Path::new(parent), prefix, suffix) {
            return Ok(dir);
        }
        looked.push(format!("{parent}/{prefix}*/{suffix}"));
    }

    Err(ClusterError::BinariesNotFound { looked })
}

/// Among `parent/<prefix><version>/<suffix>` directories containing `initdb`, the one with the
/// highest version (`15` > `9.6`).
fn highest_versioned_bindir(parent: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let entries = fs::read_dir(parent).ok()?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = parse_version(name.to_str()?.strip_prefix(prefix)?)?;
            let bindir = entry.path().join(suffix);
            bindir.join("initdb").is_file().then_some((version, bindir))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, dir)| dir)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else is not a version.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    if s.is_empty() {
        return None;
    }
    s.split('.').map(|part| part.parse().ok()).collect()
}

/// The major version in a PostgreSQL version text: `"13"` (PG_VERSION), `"13.23"`, `"18beta1"`,
/// `"17devel"`, `"15.18 (Debian 15.18-0+deb12u1)"` → 13, 13, 18, 17, 15. From PostgreSQL 10 on a
/// major is one number; older ones (`"9.6"`) are not supported by Lifeboat and give `None`.
pub fn parse_major(text: &str) -> Option<u32> {
    let digits: String = text
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&major| major >= 10)
}

/// The major version of a `server_version_num` (150004 → 15).
pub fn major_of_version_num(num: u32) -> u32 {
    num / 10_000
}

/// The major version a data directory was made by, from its `PG_VERSION` file.
pub fn data_dir_major(datadir: &Path) -> Result<u32> {
    let path = datadir.join("PG_VERSION");
    let text =
        fs::read_to_string(&path).map_err(io_err(format!("could not read {}", path.display())))?;
    parse_major(&text).ok_or_else(|| {
        ClusterError::Invalid(format!(
            "{} says {:?}, which is not a PostgreSQL major version (10 or later)",
            path.display(),
            text.trim()
        ))
    })
}

/// The major version of the server programs in `bindir`, from `postgres --version` (which also
/// proves that they run here: a missing shared library shows up now, not at the first start).
pub fn bindir_major(bindir: &Path) -> Result<u32> {
    let program = bindir.join("postgres");
    let out = run(Command::new(&program).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(ClusterError::Failed {
            program: format!("{} --version", program.display()),
            status: out.status.to_string(),
            detail: said(&out),
        });
    }
    text.split_once("(PostgreSQL)")
        .and_then(|(_, version)| parse_major(version))
        .ok_or_else(|| {
            ClusterError::Invalid(format!(
                "{} --version printed {:?}, which names no PostgreSQL version",
                program.display(),
                text.trim()
            ))
        })
}

/// The directory holding the server programs of PostgreSQL `major`: a data directory can only
/// be run by the `postgres` and `pg_ctl` of its own major. Looks, in order, at
/// `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), `/usr/pgsql-<major>/bin` (RHEL and
/// derivatives), `pg_config --bindir`, and the directories on `PATH` that hold `postgres`, and
/// takes the first whose `postgres --version` is of that major. The error lists every place it
/// looked and what it found there.
pub fn bindir_for_major(major: u32) -> Result<PathBuf> {
    let mut candidates = vec![
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ];
    if let Some(dir) = pg_config_bindir() {
        candidates.push(dir);
    }
    candidates.extend(path_dirs_with("postgres"));
    find_major_bindir(major, &candidates)
}

/// The first of `candidates` whose server programs are of `major`.
fn find_major_bindir(major: u32, candidates: &[PathBuf]) -> Result<PathBuf> {
    let mut looked: Vec<String> = Vec::new();
    for dir in candidates {
        let shown = dir.display().to_string();
        if looked.iter().any(|l| l.starts_with(&format!("{shown} ("))) {
            continue;
        }
        if !dir.join("postgres").is_file() || !dir.join("pg_ctl").is_file() {
            looked.push(format!("{shown} (no postgres and pg_ctl there)"));
            continue;
        }
        match bindir_major(dir) {
            Ok(found) if found == major => return Ok(dir.clone()),
            Ok(found) => looked.push(format!("{shown} (PostgreSQL {found})")),
            Err(e) => looked.push(format!("{shown} (its postgres does not run: {e})")),
        }
    }
    Err(ClusterError::MajorNotFound { major, looked })
}

/// `pg_config --bindir`, when pg_config runs.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The directories on `PATH` holding a file `program`, in `PATH` order.
fn path_dirs_with(program: &str) -> Vec<PathBuf> {
    let Some(path) = std::env::var_os("PATH") else {
        return Vec::new();
    };
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute() && dir.join(program).is_file())
        .collect()
}

/// Programs that must come from the same major as the data directory they work on: they read or
/// write its files directly. Every other program (psql, pg_isready, pgbench, pg_amcheck,
/// pg_basebackup, pg_dump ...) is a client, and a newer client talks to an older server.
const SERVER_PROGRAMS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "postmaster",
    "pg_checksums",
    "pg_controldata",
    "pg_resetwal",
    "pg_rewind",
    "pg_upgrade",
    "pg_waldump",
];

/// Directories where client programs are looked for when a cluster's own bin directory lacks
/// one (a server-only install, or a major that predates the program, like pg_amcheck before
/// 14): every versioned bin directory, newest first, then `pg_config --bindir`, then `PATH`.
/// Found once per process.
fn client_dirs() -> &'static [PathBuf] {
    static DIRS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs = Vec::new();
        for (parent, prefix, suffix) in [
            ("/usr/lib/postgresql", "", "bin"),
            ("/usr", "pgsql-", "bin"),
        ] {
            dirs.extend(versioned_bindirs(Path::new(parent), prefix, suffix));
        }
        dirs.extend(pg_config_bindir());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
        }
        dirs
    })
}

/// `parent/<prefix><version>/<suffix>` directories, highest version first.
fn versioned_bindirs(parent: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = parse_version(name.to_str()?.strip_prefix(prefix)?)?;
            let dir = entry.path().join(suffix);
            dir.is_dir().then_some((version, dir))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// Where `program` is run from for a cluster whose server programs are in `bindir`: a server
/// program always from `bindir`; a client program from `bindir` when it is there, else from the
/// first of [`client_dirs`] that has it.
pub fn program_path(bindir: &Path, program: &str) -> PathBuf {
    let own = bindir.join(program);
    if SERVER_PROGRAMS.contains(&program) || own.is_file() {
        return own;
    }
    client_dirs()
        .iter()
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or(own)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(parse_version("15") > parse_version("9.6"));
        assert!(parse_version("10") > parse_version("9"));
        assert_eq!(parse_version("main"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn majors_parse_from_every_form_postgresql_writes() {
        assert_eq!(parse_major("13\n"), Some(13));
        assert_eq!(parse_major(" 13.23"), Some(13));
        assert_eq!(parse_major("18beta1"), Some(18));
        assert_eq!(parse_major("17devel"), Some(17));
        assert_eq!(parse_major("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(
            parse_major("9.6"),
            None,
            "two-number majors are not supported"
        );
        assert_eq!(parse_major("main"), None);
        assert_eq!(parse_major(""), None);
        assert_eq!(major_of_version_num(130_023), 13);
        assert_eq!(major_of_version_num(180_004), 18);
    }

    /// A bin directory whose `postgres --version` says `version` (and a `pg_ctl`).
    fn fake_bindir(root: &Path, name: &str, version: &str) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        let postgres = dir.join("postgres");
        fs::write(
            &postgres,
            format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        fs::set_permissions(&postgres, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("pg_ctl"), "").unwrap();
        dir
    }

    #[test]
    fn the_bindir_of_a_major_is_found_and_its_absence_explained() {
        let root = tempfile::tempdir().unwrap();
        let v15 = fake_bindir(root.path(), "15", "15.18 (Debian 15.18-0+deb12u1)");
        let v13 = fake_bindir(root.path(), "13", "13.23");
        let empty = root.path().join("missing");
        let broken = root.path().join("broken");
        fs::create_dir_all(&broken).unwrap();
        fs::write(broken.join("postgres"), "").unwrap();
        fs::write(broken.join("pg_ctl"), "").unwrap();
        let all = [empty.clone(), broken.clone(), v15.clone(), v13.clone()];

        assert_eq!(find_major_bindir(13, &all).unwrap(), v13);
        assert_eq!(find_major_bindir(15, &all).unwrap(), v15);
        assert_eq!(bindir_major(&v15).unwrap(), 15);

        let err = find_major_bindir(14, &all).unwrap_err();
        assert!(matches!(err, ClusterError::MajorNotFound { major: 14, .. }));
        let text = err.to_string();
        assert!(text.contains("PostgreSQL 14"), "{text}");
        for (dir, said) in [
            (&empty, "no postgres and pg_ctl there"),
            (&broken, "its postgres does not run"),
            (&v15, "PostgreSQL 15"),
            (&v13, "PostgreSQL 13"),
        ] {
            assert!(
                text.contains(&format!("{} ({said}", dir.display())),
                "{said}: {text}"
            );
        }
    }

    #[test]
    fn server_programs_never_come_from_another_major() {
        let root = tempfile::tempdir().unwrap();
        let bindir = fake_bindir(root.path(), "13", "13.23");
        // Server programs: from the cluster's own directory, present or not.
        assert_eq!(program_path(&bindir, "postgres"), bindir.join("postgres"));
        assert_eq!(
            program_path(&bindir, "pg_checksums"),
            bindir.join("pg_checksums")
        );
        // A client program it lacks: from wherever one is installed (the test machine has psql),
        // never a path that does not exist when there is one.
        let psql = program_path(&bindir, "psql");
        if client_dirs().iter().any(|d| d.join("psql").is_file()) {
            assert!(psql.is_file(), "{}", psql.display());
            assert_ne!(psql.parent(), Some(bindir.as_path()));
        }
    }
}
