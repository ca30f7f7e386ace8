//! `lifeboat backup`: resolve the options, call the engine's backup, draw progress on a terminal,
//! print a summary line (or JSON) and warn about pages that failed their checksum.

use std::sync::Arc;
use std::time::Duration;

use lifeboat_engine::backup::{BackupEvent, BackupOptions};

use super::context::{bar, conn_spec, cores, human_bytes, open_repo, pgdata, print_json};
use crate::cli::BackupArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

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
