//! `wal-push` (PostgreSQL's archive_command), `wal-fetch` (its restore_command) and
//! `wal-prefetch` (the detached process `wal-fetch` starts to download the next segments ahead).

use lifeboat_engine::LazyRepo;
use lifeboat_engine::archive::{self, FetchOptions, FetchOutcome, PushOptions};
use lifeboat_pg::walname::WalSegmentName;

use super::context::{open_store, repo_location};
use crate::cli::{Cli, WalFetchArgs, WalPrefetchArgs, WalPushArgs};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn wal_push(resolved: &Resolved, args: &WalPushArgs) -> Result<Exit, Failure> {
    let options = PushOptions {
        parallel: args
            .parallel
            .or(resolved.file.archive.push_parallel)
            .unwrap_or(archive::push::DEFAULT_PUSH_PARALLEL)
            .max(1),
        spool_dir: resolved.file.archive.spool_dir.clone(),
    };
    // Most calls find their file pushed ahead by an earlier one: answer those before building an
    // object store's client.
    if let Some(description) = repo_location(resolved)
        .ok()
        .and_then(lifeboat_storage::describe_cloud_location)
        && archive::already_pushed(&description, &args.path, &options)
    {
        tracing::info!("{} PushedAhead", args.path.display());
        return Ok(Exit::Success);
    }
    let store = open_store(resolved)?;
    let repo = LazyRepo::new(store, resolved.passphrase.clone());
    let report = archive::push(&repo, &args.path, &options).await?;
    tracing::info!(
        "{} {:?}; pushed ahead: {}",
        report.name,
        report.outcome,
        if report.pushed_ahead.is_empty() {
            "none".to_string()
        } else {
            report.pushed_ahead.join(", ")
        }
    );
    Ok(Exit::Success)
}

pub async fn wal_fetch(
    cli: &Cli,
    resolved: &Resolved,
    args: &WalFetchArgs,
) -> Result<Exit, Failure> {
    let store = open_store(resolved)?;
    let repo = LazyRepo::new(store, resolved.passphrase.clone());
    let options = FetchOptions {
        prefetch: args
            .prefetch
            .or(resolved.file.archive.prefetch)
            .unwrap_or(8),
        spool_dir: resolved.file.archive.spool_dir.clone(),
    };
    match archive::fetch(&repo, &args.name, &args.dest, &options).await? {
        FetchOutcome::NotFound => {
            tracing::info!("{} is not in the repository", args.name);
            Ok(Exit::NotFound)
        }
        FetchOutcome::Restored {
            from_spool,
            prefetch_after,
            ..
        } => {
            tracing::info!(
                "restored {} ({})",
                args.name,
                if from_spool {
                    "prefetched"
                } else {
                    "from the repository"
                }
            );
            if let Some(after) = prefetch_after {
                spawn_prefetcher(
                    cli,
                    resolved,
                    &after,
                    &archive::fetch::prefetch_dir(&args.dest, &options, repo.store().as_ref()),
                    options.prefetch,
                );
            }
            Ok(Exit::Success)
        }
    }
}

/// Start the prefetcher as a detached process: PostgreSQL waits for this call to exit, not for
/// the prefetcher, which keeps downloading while the segment just served is replayed.
fn spawn_prefetcher(
    cli: &Cli,
    resolved: &Resolved,
    after: &WalSegmentName,
    spool: &std::path::Path,
    count: usize,
) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(path) = &resolved.config_path {
        cmd.arg("--config").arg(path);
    }
    if let Some(repo) = &cli.repo {
        cmd.arg("--repo").arg(repo);
    }
    let parallel = resolved.file.archive.prefetch_parallel.unwrap_or(4);
    cmd.arg("wal-prefetch")
        .arg("--after")
        .arg(after.to_string())
        .arg("--spool")
        .arg(spool)
        .arg("--count")
        .arg(count.to_string())
        .arg("--parallel")
        .arg(parallel.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!("cannot start the WAL prefetcher (recovery continues without it): {e}");
    }
}

pub async fn wal_prefetch(resolved: &Resolved, args: &WalPrefetchArgs) -> Result<Exit, Failure> {
    let after: WalSegmentName = args.after.parse().map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("invalid --after {}: {e}", args.after),
            None,
        )
    })?;
    let store = open_store(resolved)?;
    let repo = LazyRepo::new(store, resolved.passphrase.clone());
    let report = archive::prefetch(&repo, &after, args.count, args.parallel, &args.spool).await?;
    tracing::info!("prefetched {} segments", report.fetched.len());
    Ok(Exit::Success)
}
