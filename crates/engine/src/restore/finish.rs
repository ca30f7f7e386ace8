//! The files restore writes itself, last: `backup_label`, `tablespace_map`, the recovery
//! settings in `postgresql.auto.conf` (rendered, and so checked, before anything is written) and
//! the signal file. Never through a link.

use super::*;

/// The block restore appends to `postgresql.auto.conf`, rendered (and so checked) before anything
/// is written.
pub(super) fn recovery_conf(manifest: &Manifest, opts: &RestoreOptions) -> Result<String> {
    let mut conf = format!(
        "# Recovery settings added by lifeboat restore of backup {} (removed by the next restore)\n",
        manifest.label
    );
    if opts.archive_off {
        conf.push_str("archive_mode = 'off'\n");
    }
    // PostgreSQL refuses a `Z` zone in recovery_target_time: write the instant as +00.
    let target = match &opts.target {
        RecoveryTarget::Time(text) => RecoveryTarget::Time(
            plan::read_target_time(text).map_or_else(|| text.clone(), |t| t.for_postgres(text)),
        ),
        other => other.clone(),
    };
    conf.push_str(
        &lifeboat_pg::recovery::recovery_settings(
            &opts.restore_command,
            &target,
            opts.action,
            &opts.timeline,
            if opts.standby {
                opts.primary_conninfo.as_deref()
            } else {
                None
            },
        )
        .map_err(|e| {
            EngineError::invalid(
                e.to_string(),
                "correct the recovery target option; nothing was written",
            )
        })?,
    );
    if let (true, Some(slot)) = (opts.standby, &opts.primary_slot_name) {
        conf.push_str(&format!(
            "primary_slot_name = {}\n",
            lifeboat_pg::recovery::quote_conf_value(slot)
        ));
    }
    Ok(conf)
}

/// Write a file restore makes itself: never through a link (one found at its name is removed;
/// the manifest's links are made only after this).
pub(super) fn write_file(path: &Path, text: &str) -> Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        remove_any(path)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("cannot write {}", path.display())))
}

pub(super) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot fsync {}", dir.display())))
}

/// A restored file's text, read without following a link; empty when missing or unreadable.
pub(super) fn read_restored(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// The last step: backup_label, tablespace_map, recovery settings (`settings`, rendered when the
/// restore was planned), the signal file.
pub(super) fn finish(
    manifest: &Manifest,
    target_dir: &Path,
    settings: &str,
    standby: bool,
    tablespaces: &BTreeMap<u32, PathBuf>,
) -> Result<()> {
    write_file(&target_dir.join("backup_label"), &manifest.backup_label)?;
    if let Some(map) = &manifest.tablespace_map {
        // PostgreSQL recreates the pg_tblspc links from this map: point it at where each
        // tablespace was restored.
        let mut text = String::new();
        for line in map.lines().filter(|l| !l.trim().is_empty()) {
            let (oid, _) = line.split_once(' ').unwrap_or((line, ""));
            match oid.parse::<u32>().ok().and_then(|o| tablespaces.get(&o)) {
                Some(dir) => text.push_str(&format!("{oid} {}\n", dir.display())),
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        write_file(&target_dir.join("tablespace_map"), &text)?;
    }
    // Stale WAL and spools from an earlier life of this directory must not mix with the archive.
    let wal = target_dir.join("pg_wal");
    if let Ok(listing) = fs::read_dir(&wal) {
        for item in listing.flatten() {
            let path = item.path();
            let real_dir = item.file_type().is_ok_and(|t| t.is_dir());
            if item.file_name() == "archive_status" && real_dir {
                if let Ok(inner) = fs::read_dir(&path) {
                    for status in inner.flatten() {
                        remove_any(&status.path())?;
                    }
                }
                continue;
            }
            remove_any(&path)?;
        }
    }
    let conf_path = target_dir.join("postgresql.auto.conf");
    let mut conf = strip_recovery_settings(&read_restored(&conf_path));
    if !conf.is_empty() && !conf.ends_with('\n') {
        conf.push('\n');
    }
    conf.push_str(settings);
    write_file(&conf_path, &conf)?;
    let (signal, other) = if standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    let _ = fs::remove_file(target_dir.join(other));
    write_file(&target_dir.join(signal), "")?;
    Ok(())
}

/// Drop settings an earlier restore (delta) wrote, so they are not repeated: our whole block
/// (from its marker on), and recovery settings anywhere (PostgreSQL's ALTER SYSTEM rewrites the
/// file without our marker). archive_mode is dropped only inside our block: outside it, it is
/// the cluster's own setting.
fn strip_recovery_settings(conf: &str) -> String {
    const MARKER: &str = "# Recovery settings added by lifeboat";
    const KEYS: [&str; 10] = [
        "restore_command",
        "primary_slot_name",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_lsn",
        "recovery_target_xid",
        "recovery_target_name",
        "recovery_target_action",
        "recovery_target_timeline",
        "primary_conninfo",
    ];
    conf.lines()
        .take_while(|line| !line.starts_with(MARKER))
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            !KEYS.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}
