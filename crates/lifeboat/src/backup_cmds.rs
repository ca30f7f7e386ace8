//! `backup`, `list`, `check` and `restore`: resolve options, call the engine, draw progress on a
//! terminal, print a summary line (or JSON).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_engine::backup::{BackupEvent, BackupOptions};
use lifeboat_engine::restore::{RestoreEvent, RestoreOptions};
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline};
use lifeboat_pg::session::ConnSpec;

use crate::cli::{BackupArgs, CheckArgs, ClusterArgs, ListArgs, RestoreArgs};
use crate::commands::{human_bytes, open_repo};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn conn_spec(resolved: &Resolved, args: &ClusterArgs) -> Result<ConnSpec, Failure> {
    let conninfo = args.db.clone().or_else(|| resolved.file.db.clone());
    ConnSpec::new(conninfo.as_deref()).map_err(|e| {
        Failure::config(
            format!("invalid connection settings: {e}"),
            "give --db a libpq connection string such as 'host=/var/run/postgresql port=5432 user=postgres', or set `db` in the config file",
        )
    })
}

fn pgdata(resolved: &Resolved, args: &ClusterArgs) -> Option<PathBuf> {
    args.pgdata
        .clone()
        .or_else(|| resolved.file.pgdata.clone())
        .or_else(|| {
            std::env::var_os("PGDATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
}

fn bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?;
    outln!("{text}");
    Ok(())
}

pub async fn backup(resolved: &Resolved, args: &BackupArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let mut opts = BackupOptions::new(conn_spec(resolved, &args.cluster)?);
    opts.pgdata = pgdata(resolved, &args.cluster);
    opts.parallel = args
        .parallel
        .or(resolved.file.backup.parallel)
        .unwrap_or_else(cores)
        .max(1);
    opts.fast_checkpoint = !args.spread_checkpoint;
    opts.full_scan = args.full_scan;
    if let Some(kib) = resolved.file.backup.block_size_kib {
        if !(64..=16384).contains(&kib) || !kib.is_power_of_two() {
            return Err(Failure::config(
                format!("backup.block_size_kib = {kib} is not a power of two from 64 to 16384"),
                "use e.g. 1024 (the default) in the [backup] section of the config file",
            ));
        }
        opts.block_size = kib * 1024;
    }
    if let Some(s) = resolved.file.backup.archive_timeout_seconds {
        opts.archive_timeout = Duration::from_secs(s.max(1));
    }
    let progress = bar(0);
    let events = {
        let progress = progress.clone();
        Arc::new(move |event: BackupEvent| match event {
            BackupEvent::Started { label, start_lsn } => {
                progress.set_message("copying");
                tracing::info!("backup {label} started at {start_lsn}");
            }
            BackupEvent::Planned { bytes, .. } => progress.set_length(bytes),
            BackupEvent::Copied { bytes } => progress.inc(bytes),
            BackupEvent::Stopping => progress.set_message("stopping"),
            BackupEvent::WaitingForWal { from, to } => {
                progress.set_message("WAL");
                tracing::info!("waiting for WAL {from} .. {to} to reach the repository");
            }
        })
    };
    let result = lifeboat_engine::backup::backup(&repo, &opts, events).await;
    progress.finish_and_clear();
    let report = result?;
    if args.json {
        print_json(&report)?;
    }
    let rate = report.size as f64 / report.duration_seconds.max(0.001) / (1024.0 * 1024.0);
    eprintln!(
        "backup {} complete: {} in {} files ({} unchanged, not read), {} stored, {:.1} s ({rate:.0} MiB/s), WAL {} .. {}",
        report.label,
        human_bytes(report.size),
        report.files,
        report.files_reused,
        human_bytes(report.stored_size),
        report.duration_seconds,
        report.start_wal,
        report.stop_wal
    );
    if !report.bad_pages.is_empty() {
        eprintln!(
            "WARNING: {} pages failed their checksum and are recorded in the manifest:",
            report.bad_pages.len()
        );
        for p in report.bad_pages.iter().take(20) {
            eprintln!("  {} block {}", p.path, p.block);
        }
        eprintln!(
            "HINT: check the storage under the data directory; run pg_amcheck on the relations named"
        );
    }
    Ok(Exit::Success)
}

pub async fn list(resolved: &Resolved, args: &ListArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let listing = lifeboat_engine::list::list(&repo).await?;
    if args.json {
        print_json(&listing)?;
        return Ok(Exit::Success);
    }
    if listing.backups.is_empty() {
        outln!("no backups yet: take one with `lifeboat backup`");
        return Ok(Exit::Success);
    }
    outln!(
        "{:<17} {:<27} {:<27} {:>3} {:>14} {:>10} {:>10} {:>8}",
        "label",
        "start",
        "stop",
        "tl",
        "stop lsn",
        "size",
        "stored",
        "seconds"
    );
    for b in &listing.backups {
        outln!(
            "{:<17} {:<27} {:<27} {:>3} {:>14} {:>10} {:>10} {:>8.1}",
            b.label,
            b.start_time,
            b.stop_time,
            b.timeline,
            b.stop_lsn.to_string(),
            human_bytes(b.size),
            human_bytes(b.stored_size),
            b.duration_seconds
        );
    }
    let w = &listing.window;
    outln!(
        "restore window: from {} to the end of WAL segment {} (newest backup ended {})",
        w.earliest.as_deref().unwrap_or("-"),
        w.latest_wal.as_deref().unwrap_or("-"),
        w.latest_backup.as_deref().unwrap_or("-")
    );
    Ok(Exit::Success)
}

pub async fn check(resolved: &Resolved, args: &CheckArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let conn = conn_spec(resolved, &args.cluster)?;
    let report =
        lifeboat_engine::check::check(&repo, &conn, Duration::from_secs(args.timeout.max(1)))
            .await?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "cluster {} (PostgreSQL {}), repository {}",
            report.system_identifier,
            report.server_version,
            repo.location()
        );
        for p in &report.problems {
            outln!("PROBLEM: {}\n  FIX: {}", p.what, p.fix);
        }
        if let (Some(seg), Some(s)) = (&report.switched_segment, report.archive_seconds) {
            outln!("ok: segment {seg} reached the repository {s:.1} s after the switch");
        }
    }
    if report.problems.is_empty() {
        Ok(Exit::Success)
    } else {
        Err(Failure::new(
            Exit::Refused,
            format!("{} problem(s) found", report.problems.len()),
            Some("apply each FIX above, then run lifeboat check again".into()),
        ))
    }
}

fn recovery_target(args: &RestoreArgs) -> Result<RecoveryTarget, Failure> {
    let usage = |m: String| Failure::new(Exit::Usage, m, None);
    Ok(if let Some(t) = &args.target_time {
        RecoveryTarget::Time(t.clone())
    } else if let Some(l) = &args.target_lsn {
        RecoveryTarget::Lsn(
            l.parse::<Lsn>()
                .map_err(|e| usage(format!("invalid --target-lsn {l}: {e}")))?,
        )
    } else if let Some(x) = &args.target_xid {
        RecoveryTarget::Xid(x.clone())
    } else if let Some(n) = &args.target_name {
        RecoveryTarget::Name(n.clone())
    } else if args.target.is_some() {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    })
}

/// Quote for `sh -c` (PostgreSQL runs archive_command and restore_command through the shell).
pub(crate) fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:+,".contains(&b))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The restore_command for the restored cluster: this binary, with what it needs to find the
/// repository and its passphrase. Secrets themselves are never written; a passphrase given only
/// through LIFEBOAT_PASSPHRASE cannot be passed on, and the user is told so.
///
/// Every path in it is absolute: PostgreSQL runs the command in the data directory, where a
/// path relative to this command's working directory would name something else (or nothing).
pub(crate) fn restore_command(resolved: &Resolved) -> Result<String, Failure> {
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::Internal,
            format!("cannot find the lifeboat binary's path: {e}"),
            None,
        )
    })?;
    let mut parts = Vec::new();
    // A relative passphrase_file in the config file would be read relative to the data
    // directory: pass its absolute form the way the environment would.
    let passphrase_file = std::env::var_os("LIFEBOAT_PASSPHRASE_FILE")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            (std::env::var_os("LIFEBOAT_PASSPHRASE").is_none_or(|p| p.is_empty()))
                .then(|| resolved.file.passphrase_file.clone())
                .flatten()
                .filter(|f| f.is_relative())
        });
    if let Some(file) = passphrase_file {
        parts.push(format!(
            "LIFEBOAT_PASSPHRASE_FILE={}",
            shell_quote(&absolute(&file).to_string_lossy())
        ));
    } else if std::env::var_os("LIFEBOAT_PASSPHRASE").is_some()
        && resolved.file.passphrase_file.is_none()
    {
        tracing::warn!(
            "the passphrase came from LIFEBOAT_PASSPHRASE, which restore_command cannot carry: give the restored server's environment LIFEBOAT_PASSPHRASE_FILE, or put passphrase_file in the config file"
        );
    }
    parts.push(shell_quote(&exe.to_string_lossy()));
    if let Some(config) = &resolved.config_path {
        parts.push("--config".into());
        parts.push(shell_quote(&absolute(config).to_string_lossy()));
    }
    // Always the location this restore used: the restored server's environment may name
    // another repository (LIFEBOAT_REPO), and a config file alone would let it.
    if let Some(repo) = &resolved.repo {
        parts.push("--repo".into());
        parts.push(shell_quote(&absolute_location(repo)));
    }
    parts.push("wal-fetch %f %p".into());
    Ok(parts.join(" "))
}

/// A repository location as the restored server must see it: a local path made absolute (a
/// `file://` URL already is), any other location unchanged.
fn absolute_location(location: &str) -> String {
    match lifeboat_storage::parse_location(location) {
        Ok(lifeboat_storage::Location::Local(path)) if path.is_relative() => {
            absolute(&path).to_string_lossy().into_owned()
        }
        _ => location.to_string(),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
    }
}

pub async fn restore(resolved: &Resolved, args: &RestoreArgs) -> Result<Exit, Failure> {
    let usage = |m: String| Failure::new(Exit::Usage, m, None);
    let target = recovery_target(args)?;
    let action: TargetAction = args
        .target_action
        .parse()
        .map_err(|e| usage(format!("invalid --target-action: {e}")))?;
    let timeline: TargetTimeline = args
        .target_timeline
        .parse()
        .map_err(|e| usage(format!("invalid --target-timeline: {e}")))?;
    let mut tablespace_map = HashMap::new();
    for item in &args.tablespace_map {
        let (key, dir) = item.split_once('=').ok_or_else(|| {
            usage(format!(
                "invalid --tablespace-map {item}: write OID=DIR or NAME=DIR"
            ))
        })?;
        tablespace_map.insert(key.to_string(), absolute(Path::new(dir)));
    }
    let repo = open_repo(resolved).await?;
    let opts = RestoreOptions {
        target_dir: absolute(&args.target_dir),
        backup: args.backup.clone(),
        target,
        action,
        timeline,
        delta: args.delta,
        standby: args.standby,
        primary_conninfo: args.primary_conninfo.clone(),
        tablespace_map,
        dry_run: args.dry_run,
        parallel: args
            .parallel
            .or(resolved.file.restore.parallel)
            .unwrap_or_else(cores)
            .max(1),
        restore_command: restore_command(resolved)?,
        archive_off: args.archive_mode == "off",
        // Off only to compare with the page cache, or for a filesystem that takes O_DIRECT but
        // handles it badly (README, "Configuration").
        direct_io: std::env::var_os("LIFEBOAT_RESTORE_DIRECT_IO").is_none_or(|v| v != "off"),
    };
    let progress = bar(0);
    let events = {
        let progress = progress.clone();
        Arc::new(move |event: RestoreEvent| match event {
            RestoreEvent::Planned { bytes, .. } => {
                progress.set_length(bytes);
                progress.set_message("restoring");
            }
            RestoreEvent::Written { bytes } => progress.inc(bytes),
            RestoreEvent::Syncing => progress.set_message("syncing"),
            RestoreEvent::Tablespace { oid, name, dir } => progress.suspend(|| {
                eprintln!(
                    "tablespace {oid} ({name}) is restored into {}",
                    dir.display()
                );
            }),
        })
    };
    let result = lifeboat_engine::restore::restore(&repo, &opts, events).await;
    progress.finish_and_clear();
    let report = result?;
    if args.json {
        print_json(&report)?;
    }
    if let Some(plan) = &report.plan {
        for w in &plan.warnings {
            eprintln!("WARNING: {w}");
        }
        if report.dry_run {
            if !args.json {
                outln!(
                    "would restore backup {} (ended {}, LSN {}, timeline {}) into {}: {} files, {}",
                    plan.backup,
                    plan.backup_stop_time,
                    plan.backup_stop_lsn,
                    plan.timeline,
                    plan.target_dir.display(),
                    plan.files,
                    human_bytes(plan.bytes)
                );
                outln!(
                    "WAL needed from {} to {}; all present",
                    plan.wal_from,
                    plan.wal_to.as_deref().unwrap_or("the target")
                );
                for (oid, dir) in &plan.tablespaces {
                    outln!("tablespace {oid} -> {}", dir.display());
                }
                outln!(
                    "{} to remove, {} to write, {} unchanged",
                    plan.files_to_remove,
                    plan.files_to_rewrite,
                    plan.files.saturating_sub(plan.files_to_rewrite)
                );
                if args.verbose {
                    for path in plan.remove.iter().flatten() {
                        outln!("remove {}", path.display());
                    }
                    for path in plan.rewrite.iter().flatten() {
                        outln!("write {}", path.display());
                    }
                }
            }
            return Ok(Exit::Success);
        }
        let rate =
            report.bytes_written as f64 / report.duration_seconds.max(0.001) / (1024.0 * 1024.0);
        eprintln!(
            "restored backup {} into {}: {} written to {} files ({} kept, {} removed) in {:.1} s ({rate:.0} MiB/s); start the server to recover",
            report.backup,
            plan.target_dir.display(),
            human_bytes(report.bytes_written),
            report.files_written,
            report.files_kept,
            report.files_removed,
            report.duration_seconds
        );
    }
    Ok(Exit::Success)
}
