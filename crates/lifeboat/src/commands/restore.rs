//! `lifeboat restore`: resolve the recovery target and options, call the engine's restore, draw
//! progress on a terminal, print the plan (`--dry-run`) or a summary line (or JSON).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use lifeboat_engine::restore::{EventSink, RestoreEvent, RestoreOptions};
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline};

use super::context::{absolute, bar, cores, human_bytes, open_repo, print_json, restore_command};
use crate::cli::RestoreArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

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

/// `--tablespace-map OID=DIR|NAME=DIR`, repeated.
pub(crate) fn tablespace_map(items: &[String]) -> Result<HashMap<String, PathBuf>, Failure> {
    let mut map = HashMap::new();
    for item in items {
        let (key, dir) = item.split_once('=').ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!("invalid --tablespace-map {item}: write OID=DIR or NAME=DIR"),
                None,
            )
        })?;
        map.insert(key.to_string(), absolute(Path::new(dir)));
    }
    Ok(map)
}

/// Threads of a restore: the flag, else `restore.parallel`, else one per core.
pub(crate) fn restore_parallel(resolved: &Resolved, flag: Option<usize>) -> usize {
    flag.or(resolved.file.restore.parallel)
        .unwrap_or_else(cores)
        .max(1)
}

/// Whether restores write with O_DIRECT: off only to compare with the page cache, or for a
/// filesystem that takes O_DIRECT but handles it badly (README, "Configuration").
pub(crate) fn direct_io() -> bool {
    std::env::var_os("LIFEBOAT_RESTORE_DIRECT_IO").is_none_or(|v| v != "off")
}

/// A progress bar on a terminal, and the restore's events drawn on it.
pub(crate) fn progress_events() -> (ProgressBar, EventSink) {
    let progress = bar(0);
    let events: EventSink = {
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
    (progress, events)
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
    let tablespace_map = tablespace_map(&args.tablespace_map)?;
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
        primary_slot_name: None,
        tablespace_map,
        dry_run: args.dry_run,
        parallel: restore_parallel(resolved, args.parallel),
        restore_command: restore_command(resolved)?,
        archive_off: args.archive_mode == "off",
        direct_io: direct_io(),
    };
    let (progress, events) = progress_events();
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
