//! Which files a backup copies: a walk of the data directory (and, through `pg_tblspc`, of every
//! tablespace) that applies PostgreSQL's copy and skip rules from `lifeboat_pg::pgdata`.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lifeboat_pg::pgdata::{self, Disposition};
use lifeboat_repo::backup::{Entry, Root};

use crate::{EngineError, Result};

/// A file to copy, as found by the walk.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// Path in the manifest: relative to PGDATA (tablespace files under `pg_tblspc/<oid>/`), or
    /// for [`Root::Config`] the absolute source path without its leading `/`.
    pub rel: String,
    pub abs: PathBuf,
    pub root: Root,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// Segment number when the file holds relation pages (checksums apply), else `None`.
    pub relation_segno: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Scan {
    /// Directories and symbolic links, parents before children.
    pub entries: Vec<Entry>,
    pub files: Vec<PlannedFile>,
    /// `global/pg_control`, copied after everything else.
    pub pg_control: Option<PlannedFile>,
    /// Tablespace links found in `pg_tblspc`: oid and where they point.
    pub tablespace_links: Vec<(u32, PathBuf)>,
}

pub const PG_CONTROL: &str = "global/pg_control";

/// Walk `pgdata`. `tablespace_dir` is this server's directory inside each tablespace
/// (`PG_15_202209061`): others there belong to other server versions and are not copied.
pub fn scan(pgdata: &Path, tablespace_dir: &str) -> Result<Scan> {
    let mut scan = Scan::default();
    walk(pgdata, "", tablespace_dir, &mut scan)?;
    Ok(scan)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |e| EngineError::io(what, e)
}

fn walk(dir: &Path, rel_dir: &str, tablespace_dir: &str, scan: &mut Scan) -> Result<()> {
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        // A directory dropped while we walk (DROP DATABASE): WAL replay removes it again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => return Ok(()),
        Err(e) => return Err(io(format!("cannot list {}", dir.display()))(e)),
    };
    for item in listing {
        let item = item.map_err(io(format!("cannot list {}", dir.display())))?;
        let name = item.file_name().to_string_lossy().into_owned();
        names.push((name, item.path()));
    }
    names.sort();
    let name_refs: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    let unlogged: HashSet<String> = if pgdata::is_database_dir(Path::new(rel_dir)) {
        pgdata::unlogged_skips(&name_refs)
    } else {
        HashSet::new()
    };

    for (name, abs) in names {
        if unlogged.contains(&name) {
            continue;
        }
        let rel = if rel_dir.is_empty() {
            name.clone()
        } else {
            format!("{rel_dir}/{name}")
        };
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("cannot stat {}", abs.display()))(e)),
        };
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&abs).map_err(io(format!(
                "cannot read the symbolic link {}",
                abs.display()
            )))?;
            if rel_dir == "pg_tblspc" {
                let oid: u32 = name.parse().map_err(|_| {
                    EngineError::invalid(
                        format!(
                            "{} is not a tablespace link (its name is not an OID)",
                            abs.display()
                        ),
                        "remove what does not belong in pg_tblspc, then retry",
                    )
                })?;
                scan.tablespace_links.push((oid, target.clone()));
                // Tablespace contents are stored under pg_tblspc/<oid>/ as if the link were a
                // directory; restore recreates the link (or relocates the tablespace).
                let resolved = fs::canonicalize(&abs).map_err(io(format!(
                    "cannot follow the tablespace link {}",
                    abs.display()
                )))?;
                walk(&resolved, &rel, tablespace_dir, scan)?;
                continue;
            }
            scan.entries.push(Entry::Link {
                path: rel.clone(),
                target: target.to_string_lossy().into_owned(),
            });
            // pg_wal moved elsewhere by a link: the directory's contents are never copied, but
            // a restore needs the directory and its archive_status.
            if rel == "pg_wal" {
                scan.entries.push(Entry::Dir {
                    path: "pg_wal/archive_status".into(),
                    mode: 0o700,
                    root: Root::Pgdata,
                });
            }
            continue;
        }
        let is_dir = file_type.is_dir();
        if !is_dir && !file_type.is_file() {
            continue; // sockets, fifos: nothing to back up
        }
        match pgdata::disposition(Path::new(&rel), is_dir) {
            Disposition::SkipEntirely => continue,
            Disposition::KeepDirectoryOnly => {
                if is_dir {
                    push_dir(scan, &rel, &meta);
                    if rel == "pg_wal" {
                        scan.entries.push(Entry::Dir {
                            path: "pg_wal/archive_status".into(),
                            mode: meta.permissions().mode() & 0o7777,
                            root: Root::Pgdata,
                        });
                    }
                }
                continue;
            }
            Disposition::Copy => {}
        }
        let in_tablespace_root =
            rel_dir.starts_with("pg_tblspc/") && rel_dir.matches('/').count() == 1;
        if in_tablespace_root && name != tablespace_dir {
            continue;
        }
        if is_dir {
            push_dir(scan, &rel, &meta);
            walk(&abs, &rel, tablespace_dir, scan)?;
        } else {
            let planned = PlannedFile {
                relation_segno: pgdata::relation_segment(Path::new(&rel)).map(|r| r.segno),
                rel: rel.clone(),
                abs,
                root: Root::Pgdata,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime: meta.mtime(),
            };
            if rel == PG_CONTROL {
                scan.pg_control = Some(planned);
            } else {
                scan.files.push(planned);
            }
        }
    }
    Ok(())
}

fn push_dir(scan: &mut Scan, rel: &str, meta: &fs::Metadata) {
    scan.entries.push(Entry::Dir {
        path: rel.to_string(),
        mode: meta.permissions().mode() & 0o7777,
        root: Root::Pgdata,
    });
}

/// A configuration file kept outside the data directory (Debian's /etc/postgresql/...), to be
/// stored with the backup. `None` when the file is inside PGDATA (the walk has it) or missing.
pub fn outside_config_file(pgdata: &Path, path: &Path) -> Result<Option<PlannedFile>> {
    let canonical_pgdata = fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_path_buf());
    let Ok(canonical) = fs::canonicalize(path) else {
        return Ok(None);
    };
    if canonical.starts_with(&canonical_pgdata) {
        return Ok(None);
    }
    let meta =
        fs::metadata(&canonical).map_err(io(format!("cannot stat {}", canonical.display())))?;
    let rel = canonical
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
    Ok(Some(PlannedFile {
        rel,
        abs: canonical,
        root: Root::Config,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        mtime: meta.mtime(),
        relation_segno: None,
    }))
}
