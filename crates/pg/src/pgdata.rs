//! What a base backup copies from a data directory, and which files hold checksummed pages.
//!
//! This module owns the rules PostgreSQL documents for low-level base backups and applies in its
//! own base backup (`basebackup.c`): contents of directories that the server empties or rebuilds
//! at start are left out but the directories kept, files that belong to the running server
//! (`postmaster.pid`, ...) or that the backup writes itself (`backup_label`, ...) are left out
//! wherever they appear, as are temporary files and relations and the data of unlogged relations.
//! It also recognises relation files by name ([`relation_segment`]), so the backup knows which
//! files to verify page by page and from which block number each file starts.
//!
//! Paths are relative to the data directory. Files of a tablespace appear under
//! `pg_tblspc/<oid>/<version dir>/...`, as they do through the tablespace's symbolic link.

use std::collections::HashSet;
use std::path::{Component, Path};

use crate::page::RELSEG_BLOCKS;

/// The control file. A backup copies it last, as `pg_basebackup` does, so that it is at least as
/// new as every other file copied.
pub const CONTROL_FILE: &str = "global/pg_control";

/// Top-level directories whose contents the server removes, rebuilds or does not need at start:
/// kept empty in a backup so their permissions survive.
const EXCLUDED_DIR_CONTENTS: [&str; 7] = [
    // Temporary statistics (extensions like pg_stat_statements keep files here too).
    "pg_stat_tmp",
    // Replication slots would hold back WAL on the restored server, which has no consumers.
    "pg_replslot",
    // Emptied at start.
    "pg_dynshmem",
    "pg_notify",
    "pg_snapshots",
    // Zeroed at start.
    "pg_subtrans",
    // Only kept for debugging by the server.
    "pg_serial",
];

/// Directories inside `pg_wal` a restored server expects to exist: kept, empty.
const KEPT_WAL_DIRS: [&str; 2] = [
    "archive_status",
    // Since PostgreSQL 17: WAL summaries for incremental backups, rebuilt by the server.
    "summaries",
];

/// Entries left out wherever they appear, matched by exact name.
const EXCLUDED_FILES: [&str; 9] = [
    // Lock and command line of the running server.
    "postmaster.pid",
    "postmaster.opts",
    // Half-written ALTER SYSTEM result.
    "postgresql.auto.conf.tmp",
    // Names the running server's log files; rewritten at start.
    "current_logfiles",
    "current_logfiles.tmp",
    // The backup stores what pg_backup_stop returns instead: a copied one would belong to
    // another backup (or to the restore this server came from).
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    // Also matched as a prefix below; listed for completeness of the exact names.
    "pg_internal.init",
];

/// Relation cache init files, and their temporary versions `pg_internal.init.<pid>`: rebuilt at
/// start.
const RELCACHE_INIT_PREFIX: &str = "pg_internal.init";

/// Temporary files and directories (sorts, hashes, `CREATE DATABASE` scratch).
const TEMP_PREFIX: &str = "pgsql_tmp";

/// What to do with one entry of the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Copy it: a file's contents, or a directory and (asking again for each) what it holds.
    Copy,
    /// Leave it out, and for a directory everything inside.
    SkipEntirely,
    /// Create the directory with its permissions, empty: do not look inside.
    KeepDirectoryOnly,
}

/// What a base backup does with the entry at `rel` (relative to the data directory, as a walk
/// meets it). Call it for every entry, descending only into directories that get
/// [`Disposition::Copy`]. `is_dir` is whether the entry is, or links to, a directory: `pg_wal` and
/// the entries of `pg_tblspc` may be symbolic links and count as directories.
///
/// Unlogged relations need the listing of the whole directory: see [`unlogged_skips`].
/// `pg_wal` itself is [`Disposition::Copy`] so that the walk meets `pg_wal/archive_status`, which
/// is kept; everything else in it is skipped, because WAL comes from the archive.
#[must_use]
pub fn disposition(rel: &Path, is_dir: bool) -> Disposition {
    let Some(parts) = utf8_parts(rel) else {
        // PostgreSQL names everything it owns in ASCII; anything else is the user's: copy it.
        return Disposition::Copy;
    };
    let Some((&name, parents)) = parts.split_last() else {
        return Disposition::Copy;
    };

    if name.starts_with(TEMP_PREFIX)
        || name.starts_with(RELCACHE_INIT_PREFIX)
        || EXCLUDED_FILES.contains(&name)
    {
        return Disposition::SkipEntirely;
    }

    match parents {
        [] if is_dir && EXCLUDED_DIR_CONTENTS.contains(&name) => {
            return Disposition::KeepDirectoryOnly;
        }
        ["pg_wal"] if is_dir && KEPT_WAL_DIRS.contains(&name) => {
            return Disposition::KeepDirectoryOnly;
        }
        // Below a directory whose contents are left out (for callers that look inside anyway).
        [top, ..] if *top == "pg_wal" || EXCLUDED_DIR_CONTENTS.contains(top) => {
            return Disposition::SkipEntirely;
        }
        _ => {}
    }

    if is_database_dir_parts(parents) && is_temp_relation(name) {
        return Disposition::SkipEntirely;
    }
    Disposition::Copy
}

/// Whether `rel` is a database directory, one that holds relation files: `base/<oid>` or
/// `pg_tblspc/<oid>/<version dir>/<oid>`. Only there do [`unlogged_skips`] apply.
#[must_use]
pub fn is_database_dir(rel: &Path) -> bool {
    utf8_parts(rel).is_some_and(|parts| is_database_dir_parts(&parts))
}

fn is_database_dir_parts(parts: &[&str]) -> bool {
    match parts {
        ["base", db] => is_oid(db),
        ["pg_tblspc", spc, version, db] => {
            is_oid(spc) && is_tablespace_version_dir(version) && is_oid(db)
        }
        _ => false,
    }
}

/// The directory a server of major version `major` with catalog version `catversion` uses inside
/// each tablespace (`TABLESPACE_VERSION_DIRECTORY`), e.g. `PG_15_202209061`. A tablespace location
/// can hold directories of other server versions too; a backup copies only its own.
#[must_use]
pub fn tablespace_version_dir(major: u32, catversion: u32) -> String {
    format!("PG_{major}_{catversion}")
}

/// `PG_<major>_<catversion>`, the shape of a tablespace version directory.
fn is_tablespace_version_dir(name: &str) -> bool {
    name.strip_prefix("PG_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(major, cat)| {
            !major.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && is_digits(cat)
        })
}

/// From the names in one database directory, those to leave out because they belong to unlogged
/// relations: every file of a relation that has an init fork (`<relfilenode>_init`), except the
/// init fork itself. The restored server recreates the main fork from the init fork at the end of
/// recovery, so the (unlogged, hence unrecoverable) data is not wanted.
///
/// Only meaningful for a database directory ([`is_database_dir`]).
#[must_use]
pub fn unlogged_skips(file_names: &[&str]) -> HashSet<String> {
    let unlogged: HashSet<u32> = file_names
        .iter()
        .filter_map(|name| parse_relation_file(name))
        .filter(|file| file.fork == Fork::Init && file.segno == 0)
        .map(|file| file.relfilenode)
        .collect();
    if unlogged.is_empty() {
        return HashSet::new();
    }
    file_names
        .iter()
        .filter(|name| {
            parse_relation_file(name)
                .is_some_and(|file| file.fork != Fork::Init && unlogged.contains(&file.relfilenode))
        })
        .map(|name| (*name).to_owned())
        .collect()
}

/// Which fork of a relation a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fork {
    /// The data itself: `<relfilenode>`.
    Main,
    /// The free space map: `<relfilenode>_fsm`.
    Fsm,
    /// The visibility map: `<relfilenode>_vm`.
    Vm,
    /// The initial contents of an unlogged relation: `<relfilenode>_init`.
    Init,
}

/// A file that holds pages of a relation, which carry checksums when the cluster has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelationSegment {
    /// The relation's file number (`relfilenode`).
    pub relfilenode: u32,
    /// Which fork.
    pub fork: Fork,
    /// Which 1 GiB segment of the fork: 0 for `<n>`, `k` for `<n>.k`.
    pub segno: u32,
}

impl RelationSegment {
    /// Block number of the file's first page within its fork, the number its checksum mixes in.
    #[must_use]
    pub fn first_block(&self) -> u32 {
        // Cannot overflow: parse_relation_file keeps segno below 2^32 / RELSEG_BLOCKS.
        self.segno * RELSEG_BLOCKS
    }
}

/// Whether the file at `rel` (relative to the data directory) holds relation pages, and which:
/// `base/<db>/<relfilenode>[_fsm|_vm|_init][.N]`, `global/<relfilenode>...` and
/// `pg_tblspc/<oid>/<version dir>/<db>/<relfilenode>...`. Anything else — `global/pg_control`,
/// `pg_filenode.map`, `PG_VERSION`, `pg_internal.init`, temporary relations (`t3_16384`),
/// configuration files — is `None`.
#[must_use]
pub fn relation_segment(rel: &Path) -> Option<RelationSegment> {
    let parts = utf8_parts(rel)?;
    let (name, parents) = parts.split_last()?;
    let in_relation_dir = matches!(parents, ["global"]) || is_database_dir_parts(parents);
    if in_relation_dir {
        parse_relation_file(name)
    } else {
        None
    }
}

/// `<relfilenode>[_fsm|_vm|_init][.N]`, as PostgreSQL names the files of a relation.
fn parse_relation_file(name: &str) -> Option<RelationSegment> {
    let (stem, segno) = match name.split_once('.') {
        Some((stem, seg)) => {
            // PostgreSQL writes segment numbers from 1, without leading zeros.
            if !is_digits(seg) || seg.starts_with('0') {
                return None;
            }
            let segno: u32 = seg.parse().ok()?;
            // Block numbers are 32 bits: a fork has at most 2^32 / RELSEG_BLOCKS segments.
            if segno > u32::MAX / RELSEG_BLOCKS {
                return None;
            }
            (stem, segno)
        }
        None => (name, 0),
    };
    let (number, fork) = match stem.split_once('_') {
        Some((number, "fsm")) => (number, Fork::Fsm),
        Some((number, "vm")) => (number, Fork::Vm),
        Some((number, "init")) => (number, Fork::Init),
        Some(_) => return None,
        None => (stem, Fork::Main),
    };
    if !is_oid(number) {
        return None;
    }
    Some(RelationSegment {
        relfilenode: number.parse().ok()?,
        fork,
        segno,
    })
}

/// A temporary relation's file: `t<backend id>_<relfilenode>[_fork][.N]`. Backed up never: the
/// session that owned it is gone after a restore.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, file)) = rest.split_once('_') else {
        return false;
    };
    is_digits(backend) && parse_relation_file(file).is_some()
}

/// Decimal digits that fit an OID (32 bits).
fn is_oid(s: &str) -> bool {
    is_digits(s) && s.parse::<u32>().is_ok()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The path's names as text, or `None` for a path that is not plainly relative (`..`, absolute)
/// or not UTF-8.
fn utf8_parts(rel: &Path) -> Option<Vec<&str>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(path: &str, is_dir: bool) -> Disposition {
        disposition(Path::new(path), is_dir)
    }

    #[test]
    fn ordinary_entries_are_copied() {
        for (path, is_dir) in [
            ("base", true),
            ("base/1", true),
            ("base/1/1259", false),
            ("base/1/PG_VERSION", false),
            ("global", true),
            ("global/pg_control", false),
            ("global/1262", false),
            ("PG_VERSION", false),
            ("postgresql.conf", false),
            ("postgresql.auto.conf", false),
            ("pg_hba.conf", false),
            ("pg_xact", true),
            ("pg_xact/0000", false),
            ("pg_multixact/offsets/0000", false),
            ("pg_logical/snapshots", true),
            ("pg_tblspc", true),
            ("pg_tblspc/16384", true),
            ("pg_tblspc/16384/PG_15_202209061/5/16385", false),
            ("log/postgresql.log", false),
            ("./base/1/1259", false),
        ] {
            assert_eq!(d(path, is_dir), Disposition::Copy, "{path}");
        }
    }

    #[test]
    fn directories_kept_empty() {
        for dir in [
            "pg_dynshmem",
            "pg_notify",
            "pg_serial",
            "pg_snapshots",
            "pg_stat_tmp",
            "pg_subtrans",
            "pg_replslot",
        ] {
            assert_eq!(d(dir, true), Disposition::KeepDirectoryOnly, "{dir}");
            assert_eq!(
                d(&format!("{dir}/anything"), false),
                Disposition::SkipEntirely
            );
            // Only at the top: elsewhere the name means nothing to PostgreSQL.
            assert_eq!(d(&format!("base/{dir}"), true), Disposition::Copy);
        }
        // A plain file that happens to have such a name is just a file.
        assert_eq!(d("pg_notify", false), Disposition::Copy);
    }

    #[test]
    fn pg_wal_keeps_only_its_status_directories() {
        assert_eq!(d("pg_wal", true), Disposition::Copy);
        assert_eq!(
            d("pg_wal/archive_status", true),
            Disposition::KeepDirectoryOnly
        );
        assert_eq!(d("pg_wal/summaries", true), Disposition::KeepDirectoryOnly);
        for path in [
            "pg_wal/000000010000000000000001",
            "pg_wal/00000002.history",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_wal/lifeboat",
            "pg_wal/xlogtemp.123",
        ] {
            assert_eq!(d(path, false), Disposition::SkipEntirely, "{path}");
        }
        assert_eq!(d("pg_wal/lifeboat", true), Disposition::SkipEntirely);
    }

    #[test]
    fn excluded_files_anywhere() {
        for path in [
            "postmaster.pid",
            "postmaster.opts",
            "postgresql.auto.conf.tmp",
            "current_logfiles",
            "current_logfiles.tmp",
            "backup_label",
            "tablespace_map",
            "backup_manifest",
            "global/pg_internal.init",
            "base/16384/pg_internal.init",
            "base/16384/pg_internal.init.12345",
            "pg_tblspc/16390/PG_15_202209061/5/pg_internal.init",
            "base/1/backup_label",
        ] {
            assert_eq!(d(path, false), Disposition::SkipEntirely, "{path}");
        }
        // Near misses are kept.
        for path in ["backup_label.old", "postmaster.pid.bak", "my_backup_label"] {
            assert_eq!(d(path, false), Disposition::Copy, "{path}");
        }
    }

    #[test]
    fn temporary_files_and_directories() {
        for (path, is_dir) in [
            ("base/pgsql_tmp", true),
            ("base/pgsql_tmp/pgsql_tmp123.0", false),
            ("pg_tblspc/16390/PG_15_202209061/pgsql_tmp", true),
            ("pgsql_tmp_anything", false),
            ("base/5/pgsql_tmp42", false),
        ] {
            assert_eq!(d(path, is_dir), Disposition::SkipEntirely, "{path}");
        }
    }

    #[test]
    fn temporary_relations_in_database_directories() {
        for path in [
            "base/5/t3_16384",
            "base/5/t3_16384_fsm",
            "base/5/t12_16384.2",
            "pg_tblspc/16390/PG_15_202209061/5/t3_16384_vm",
        ] {
            assert_eq!(d(path, false), Disposition::SkipEntirely, "{path}");
        }
        for path in [
            "base/5/t_16384",
            "base/5/t3_",
            "base/5/tx_16384",
            // Not a database directory.
            "t3_16384",
            "global/t3_16384",
        ] {
            assert_eq!(d(path, false), Disposition::Copy, "{path}");
        }
    }

    #[test]
    fn database_directories() {
        assert!(is_database_dir(Path::new("base/1")));
        assert!(is_database_dir(Path::new("base/16384")));
        assert!(is_database_dir(Path::new(
            "pg_tblspc/16390/PG_15_202209061/16384"
        )));
        for path in [
            "base",
            "base/pgsql_tmp",
            "global",
            "base/1/2",
            "pg_tblspc/16390/PG_15_202209061",
            "pg_tblspc/16390/other/16384",
            "pg_tblspc/x/PG_15_202209061/16384",
            "base/99999999999",
        ] {
            assert!(!is_database_dir(Path::new(path)), "{path}");
        }
        assert_eq!(tablespace_version_dir(15, 202_209_061), "PG_15_202209061");
    }

    #[test]
    fn unlogged_relations_keep_only_the_init_fork() {
        let names = [
            "16384",
            "16384.1",
            "16384_fsm",
            "16384_vm",
            "16384_init",
            "16387",
            "16387_init",
            "16390",
            "16390.1",
            "16390_fsm",
            "163840",
            "PG_VERSION",
            "pg_filenode.map",
            "t3_16384",
        ];
        let skips = unlogged_skips(&names);
        let mut skips: Vec<&str> = skips.iter().map(String::as_str).collect();
        skips.sort_unstable();
        assert_eq!(
            skips,
            ["16384", "16384.1", "16384_fsm", "16384_vm", "16387"]
        );
        assert!(unlogged_skips(&["16390", "16390_fsm", "PG_VERSION"]).is_empty());
        assert!(unlogged_skips(&[]).is_empty());
    }

    #[test]
    fn relation_files() {
        let seg = |relfilenode, fork, segno| {
            Some(RelationSegment {
                relfilenode,
                fork,
                segno,
            })
        };
        let cases = [
            ("base/1/1259", seg(1259, Fork::Main, 0)),
            ("base/16384/16385.3", seg(16385, Fork::Main, 3)),
            ("base/16384/16385_fsm", seg(16385, Fork::Fsm, 0)),
            ("base/16384/16385_vm.1", seg(16385, Fork::Vm, 1)),
            ("base/16384/16385_init", seg(16385, Fork::Init, 0)),
            ("global/1262", seg(1262, Fork::Main, 0)),
            ("global/1262_vm", seg(1262, Fork::Vm, 0)),
            (
                "pg_tblspc/16390/PG_15_202209061/16384/16391.2",
                seg(16391, Fork::Main, 2),
            ),
            ("base/1/4294967295", seg(u32::MAX, Fork::Main, 0)),
            ("base/1/16385.32767", seg(16385, Fork::Main, 32767)),
        ];
        for (path, want) in cases {
            assert_eq!(relation_segment(Path::new(path)), want, "{path}");
        }
        assert_eq!(
            relation_segment(Path::new("base/16384/16385.3"))
                .unwrap()
                .first_block(),
            3 * RELSEG_BLOCKS
        );
        for path in [
            "global/pg_control",
            "global/pg_filenode.map",
            "global/pg_internal.init",
            "base/1/PG_VERSION",
            "base/1/pg_filenode.map",
            "base/1/pg_internal.init",
            "base/1/t3_16384",
            "base/1/16385_abc",
            "base/1/16385.0",
            "base/1/16385.01",
            "base/1/16385.32768",
            "base/1/16385.",
            "base/1/16385_",
            "base/1/4294967296",
            "base/1/_fsm",
            "base/1/-1",
            "base/1/+1",
            "base/1",
            "base/x/16385",
            "1259",
            "pg_xact/0000",
            "pg_multixact/members/0000",
            "postgresql.conf",
            "pg_tblspc/16390/PG_15_202209061/16391",
            "pg_tblspc/16390/other/16384/16391",
            "/base/1/1259",
            "../base/1/1259",
        ] {
            assert_eq!(relation_segment(Path::new(path)), None, "{path}");
        }
    }

    #[test]
    fn odd_paths_are_copied() {
        assert_eq!(d("", true), Disposition::Copy);
        assert_eq!(d("../etc/passwd", false), Disposition::Copy);
    }
}
