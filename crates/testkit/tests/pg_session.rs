//! `lifeboat_pg`'s backup knowledge checked against real PostgreSQL clusters: page checksums of
//! every relation file, the walk of a data directory a base backup makes, and recovery settings
//! the server accepts. (SQL sessions are tested in `lifeboat_pg::session` itself, which needs an
//! async runtime this crate does not have.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::page::{BLCKSZ, PageCheck, check_page, checksum_page, page_checksum_field};
use lifeboat_pg::pgdata::{
    Disposition, Fork, disposition, is_database_dir, relation_segment, unlogged_skips,
};
use lifeboat_pg::recovery::{
    RecoveryTarget, TargetAction, TargetTimeline, quote_conf_value, recovery_settings,
};
use lifeboat_testkit::{StopMode, TestCluster, chown_to_owner};

const START: Duration = Duration::from_secs(60);

/// What a base backup's walk of a data directory makes of it.
#[derive(Debug, Default)]
struct Walk {
    /// Files copied, relative to the data directory.
    files: BTreeSet<PathBuf>,
    /// Directories created and looked into.
    dirs: BTreeSet<PathBuf>,
    /// Directories created empty.
    kept_empty: BTreeSet<PathBuf>,
    /// Entries left out (directories without what is inside).
    skipped: BTreeSet<PathBuf>,
}

/// Walks `root/rel` as a backup would: asking [`disposition`] of every entry, descending into
/// copied directories (following the symbolic links of `pg_tblspc`), and leaving out what
/// [`unlogged_skips`] names in database directories.
fn walk(root: &Path, rel: &Path, out: &mut Walk) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        names.push(
            entry?
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("non-UTF-8 name {n:?} in {}", dir.display()))?,
        );
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let unlogged = if is_database_dir(rel) {
        unlogged_skips(&name_refs)
    } else {
        Default::default()
    };
    for name in &names {
        let path = rel.join(name);
        // Follows links: pg_tblspc/<oid> is a link to a directory.
        let meta = fs::metadata(root.join(&path))?;
        if unlogged.contains(name) {
            out.skipped.insert(path);
            continue;
        }
        match disposition(&path, meta.is_dir()) {
            Disposition::SkipEntirely => {
                out.skipped.insert(path);
            }
            Disposition::KeepDirectoryOnly => {
                out.kept_empty.insert(path);
            }
            Disposition::Copy if meta.is_dir() => {
                out.dirs.insert(path.clone());
                walk(root, &path, out)?;
            }
            Disposition::Copy => {
                out.files.insert(path);
            }
        }
    }
    Ok(())
}

/// Checks every page of every relation file among `files`; returns counts per outcome and the
/// forks seen.
fn check_all_pages(
    root: &Path,
    files: &BTreeSet<PathBuf>,
) -> anyhow::Result<(BTreeMap<&'static str, usize>, BTreeSet<String>)> {
    let mut counts = BTreeMap::new();
    let mut forks = BTreeSet::new();
    for rel in files {
        let Some(segment) = relation_segment(rel) else {
            continue;
        };
        forks.insert(format!("{:?}", segment.fork));
        let bytes = fs::read(root.join(rel))?;
        ensure!(
            bytes.len() % BLCKSZ == 0,
            "{} is {} bytes, not whole pages",
            rel.display(),
            bytes.len()
        );
        for (i, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
            let blkno = segment.first_block() + u32::try_from(i)?;
            // The server is stopped: every page is older than any backup that could start now.
            let verdict = check_page(page, blkno, Lsn(u64::MAX));
            let key = match verdict {
                PageCheck::Valid => "valid",
                PageCheck::Zero => "zero",
                other => bail!("{} block {blkno}: {other:?}", rel.display()),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    Ok((counts, forks))
}

#[test]
fn every_page_of_a_real_cluster_checks_and_the_walk_follows_the_rules() -> anyhow::Result<()> {
    let pg = TestCluster::start_new("")?;
    let spc_dir = pg.dir().join("spc");
    fs::create_dir(&spc_dir)?;
    chown_to_owner(&spc_dir)?;
    pg.psql(&format!(
        "create tablespace extra location {}",
        quote_conf_value(&spc_dir.to_string_lossy())
    ))?;
    pg.psql("create database app")?;
    pg.psql_db(
        "app",
        "create table t (id int primary key, v text); \
         insert into t select g, md5(g::text) from generate_series(1, 20000) g; \
         create unlogged table u (id int primary key); insert into u select generate_series(1, 500); \
         create table s (id int) tablespace extra; insert into s select generate_series(1, 3000)",
    )?;
    // Vacuum makes the visibility maps and free space maps (and cannot run in a transaction).
    pg.psql_db("app", "vacuum analyze")?;
    pg.psql("checkpoint")?;

    // The walk of a running server.
    let root = pg.datadir.clone();
    let mut seen = Walk::default();
    walk(&root, Path::new(""), &mut seen)?;
    for skipped in ["postmaster.pid", "postmaster.opts"] {
        assert!(
            seen.skipped.contains(Path::new(skipped)),
            "{skipped} copied"
        );
    }
    for kept in [
        "pg_wal/archive_status",
        "pg_notify",
        "pg_subtrans",
        "pg_stat_tmp",
    ] {
        assert!(seen.kept_empty.contains(Path::new(kept)), "{kept} not kept");
    }
    assert!(
        !seen.files.iter().any(|f| f.starts_with("pg_wal")),
        "WAL copied"
    );
    assert!(seen.files.contains(Path::new("global/pg_control")));
    assert!(seen.files.contains(Path::new("PG_VERSION")));
    assert!(seen.files.contains(Path::new("postgresql.conf")));

    // The unlogged table: init fork copied, main fork left out.
    let app_oid = pg.psql("select oid from pg_database where datname = 'app'")?;
    let u_file = pg.psql_db("app", "select pg_relation_filepath('u')")?;
    let u_init = PathBuf::from(format!("{u_file}_init"));
    assert!(seen.files.contains(&u_init), "{} missing", u_init.display());
    assert!(seen.skipped.contains(Path::new(&u_file)), "{u_file} copied");
    let t_file = pg.psql_db("app", "select pg_relation_filepath('t')")?;
    assert!(seen.files.contains(Path::new(&t_file)), "{t_file} missing");
    assert!(t_file.starts_with(&format!("base/{app_oid}/")));

    // The table in the tablespace, reached through pg_tblspc.
    let s_file = pg.psql_db("app", "select pg_relation_filepath('s')")?;
    assert!(s_file.starts_with("pg_tblspc/"), "{s_file}");
    assert!(seen.files.contains(Path::new(&s_file)), "{s_file} missing");
    let s_seg = relation_segment(Path::new(&s_file)).context("s is not a relation file")?;
    assert_eq!(s_seg.fork, Fork::Main);

    // Every page of every relation file, once the server is stopped and everything is on disk.
    pg.stop(StopMode::Fast)?;
    let (counts, forks) = check_all_pages(&root, &seen.files)?;
    let valid = counts.get("valid").copied().unwrap_or(0);
    assert!(valid > 300, "only {valid} valid pages: {counts:?}");
    for fork in ["Main", "Fsm", "Vm", "Init"] {
        assert!(forks.contains(fork), "no {fork} fork seen: {forks:?}");
    }

    // One flipped byte in a copy of a page of t makes it bad; the stored checksum is unchanged.
    let bytes = fs::read(root.join(&t_file))?;
    let mut page = bytes[..BLCKSZ].to_vec();
    assert_eq!(check_page(&page, 0, Lsn(u64::MAX)), PageCheck::Valid);
    page[BLCKSZ - 100] ^= 0x01;
    assert_eq!(
        check_page(&page, 0, Lsn(u64::MAX)),
        PageCheck::Bad {
            stored: page_checksum_field(&bytes[..BLCKSZ]),
            computed: checksum_page(&page, 0),
        }
    );
    // The same page judged as another block is bad too: the block number is in the checksum.
    assert!(matches!(
        check_page(&bytes[..BLCKSZ], 1, Lsn(u64::MAX)),
        PageCheck::Bad { .. }
    ));
    Ok(())
}

/// Text of `current_setting(name)` as hex, so line breaks and quotes compare exactly.
fn setting_hex(pg: &TestCluster, name: &str) -> anyhow::Result<String> {
    Ok(pg.psql(&format!(
        "select encode(convert_to(current_setting('{name}'), 'UTF8'), 'hex')"
    ))?)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn append_auto_conf(pg: &TestCluster, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = pg.datadir.join("postgresql.auto.conf");
    let mut file = fs::OpenOptions::new().append(true).open(&path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[test]
fn recovery_settings_are_read_back_by_a_real_server() -> anyhow::Result<()> {
    let pg = TestCluster::start_new("")?;
    // What an earlier restore may have left behind: a target of another kind.
    pg.append_conf("recovery_target_name = 'left over'")?;

    let restore = "cp '/archive dir/%f' \"%p\" \\ it's\nsecond line";
    let time = "2024-05-01 10:00:00+00";
    let text = recovery_settings(
        restore,
        &RecoveryTarget::Time(time.into()),
        TargetAction::Pause,
        &TargetTimeline::Current,
        Some("host=primary password='a\\b'"),
    )?;
    pg.stop(StopMode::Fast)?;
    append_auto_conf(&pg, &text)?;
    // No recovery.signal: the server starts normally but reads (and checks) every setting.
    pg.start(START)?;

    assert_eq!(setting_hex(&pg, "restore_command")?, hex(restore));
    assert_eq!(pg.psql("show recovery_target_time")?, time);
    assert_eq!(pg.psql("show recovery_target_name")?, "");
    assert_eq!(pg.psql("show recovery_target_action")?, "pause");
    assert_eq!(pg.psql("show recovery_target_timeline")?, "current");
    assert_eq!(
        setting_hex(&pg, "primary_conninfo")?,
        hex("host=primary password='a\\b'")
    );

    // Without the emptied targets the leftover and the new target clash, and the server
    // refuses to start: the reason recovery_settings writes every target.
    pg.stop(StopMode::Fast)?;
    append_auto_conf(
        &pg,
        "recovery_target_name = 'left over'\nrecovery_target_lsn = '0/1'\n",
    )?;
    let err = pg
        .start(START)
        .err()
        .context("the server started with two recovery targets")?;
    assert!(
        err.to_string()
            .contains("multiple recovery targets specified"),
        "{err}"
    );
    Ok(())
}
