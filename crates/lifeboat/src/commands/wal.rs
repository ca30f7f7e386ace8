//! `wal-push` (PostgreSQL's archive_command), `wal-fetch` (its restore_command), and the detached
//! processes they start: `wal-push-ahead` (uploads the files PostgreSQL marked ready) and
//! `wal-prefetch` (downloads the next segments ahead).

use lifeboat_engine::LazyRepo;
use lifeboat_engine::archive::push::{PushFailure, Waited};
use lifeboat_engine::archive::{self, FetchOptions, FetchOutcome, PushOptions};
use lifeboat_pg::walname::WalSegmentName;

use super::context::{open_store, repo_location};
use crate::cli::{Cli, WalFetchArgs, WalPrefetchArgs, WalPushAheadArgs, WalPushArgs};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

/// How long a `wal-push` waits for the background pusher to store its file before it fails
/// (PostgreSQL calls again; the pusher keeps working meanwhile).
const PUSHER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

pub async fn wal_push(cli: &Cli, resolved: &Resolved, args: &WalPushArgs) -> Result<Exit, Failure> {
    let mut options = PushOptions {
        parallel: args
            .parallel
            .or(resolved.file.archive.push_parallel)
            .unwrap_or(archive::push::DEFAULT_PUSH_PARALLEL)
            .max(1),
        spool_dir: resolved.file.archive.spool_dir.clone(),
    };
    let cloud = repo_location(resolved)
        .ok()
        .and_then(lifeboat_storage::describe_cloud_location);
    // Most calls find their file pushed ahead by an earlier one: answer those before building an
    // object store's client.
    if let Some(description) = &cloud
        && archive::already_pushed(description, &args.path, &options)
    {
        tracing::info!("{} PushedAhead", args.path.display());
        return Ok(Exit::Success);
    }
    let mut store = None;
    // PostgreSQL's own calls (the file has its .ready) leave the pushing to the background pusher.
    if options.parallel > 1 && archive::push::is_ready(&args.path) {
        let description = match cloud {
            Some(description) => description,
            None => store.insert(open_store(resolved)?).describe(),
        };
        let waited = archive::push::wait_for_pusher(
            &args.path,
            &options,
            &description,
            |fd| spawn_pusher(cli, resolved, &args.path, options.parallel, fd),
            PUSHER_DEADLINE,
        )
        .await?;
        match waited {
            Waited::Stored => {
                tracing::info!("{} stored by the background pusher", args.path.display());
                return Ok(Exit::Success);
            }
            Waited::Failed(failure) => {
                return Err(Failure::new(
                    exit_of_code(failure.code),
                    format!(
                        "{} was not archived: {} (the background pusher's error; PostgreSQL will retry)",
                        args.path.display(),
                        failure.message
                    ),
                    failure.hint,
                ));
            }
            Waited::TimedOut(after) => {
                return Err(Failure::new(
                    Exit::Storage,
                    format!(
                        "{} was not archived within {} s: the background pusher has not stored it yet",
                        args.path.display(),
                        after.as_secs()
                    ),
                    Some(format!(
                        "PostgreSQL will retry; if this repeats, check the repository's reachability and {}",
                        "the pusher's log (pusher.log in the spool's pusher/ directory)"
                    )),
                ));
            }
            Waited::PushYourself(why) => {
                tracing::warn!("{}: {why}; pushing it in this call", args.path.display());
                // Only this file: the pusher may still be at the others.
                options.parallel = 1;
            }
        }
    }
    let store = match store {
        Some(store) => store,
        None => open_store(resolved)?,
    };
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

/// The exit code a pusher's error file names (the one a synchronous push would have given).
fn exit_of_code(code: u8) -> Exit {
    [
        Exit::Config,
        Exit::Refused,
        Exit::Storage,
        Exit::Corrupt,
        Exit::LocalIo,
        Exit::Internal,
    ]
    .into_iter()
    .find(|e| e.code() == code)
    .unwrap_or(Exit::Storage)
}

/// Start the background pusher as a detached process holding the lock `lock_fd` (inherited: the
/// lock stays held across the hand-over). Credentials pass through the environment, never the
/// command line.
fn spawn_pusher(
    cli: &Cli,
    resolved: &Resolved,
    path: &std::path::Path,
    parallel: usize,
    lock_fd: i32,
) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let wal_dir = std::path::absolute(path)?
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| std::io::Error::other(format!("{} has no directory", path.display())))?;
    let mut cmd = detached(exe, cli, resolved);
    cmd.arg("wal-push-ahead")
        .arg("--wal-dir")
        .arg(wal_dir)
        .arg("--parallel")
        .arg(parallel.to_string())
        .arg("--lock-fd")
        .arg(lock_fd.to_string());
    cmd.spawn().map(drop)
}

/// `exe` with the caller's `--config`/`--repo`, standard streams closed, in a process group of its
/// own (PostgreSQL waits for the call that starts it, not for it).
fn detached(exe: std::path::PathBuf, cli: &Cli, resolved: &Resolved) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    if let Some(path) = &resolved.config_path {
        cmd.arg("--config").arg(path);
    }
    if let Some(repo) = &cli.repo {
        cmd.arg("--repo").arg(repo);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    cmd
}

pub async fn wal_push_ahead(resolved: &Resolved, args: &WalPushAheadArgs) -> Result<Exit, Failure> {
    let options = PushOptions {
        parallel: args.parallel,
        spool_dir: resolved.file.archive.spool_dir.clone(),
    };
    let store = open_store(resolved)?;
    let repo = LazyRepo::new(store, resolved.passphrase.clone());
    let classify = |e: lifeboat_engine::EngineError| {
        let failure = Failure::from(e);
        PushFailure {
            code: failure.exit.code(),
            message: failure.message,
            hint: failure.hint,
        }
    };
    let report =
        archive::push::run_pusher(&repo, &args.wal_dir, &options, args.lock_fd, &classify).await?;
    if let Some(report) = report {
        tracing::info!("pushed {} files, {} failed", report.stored, report.failed);
    }
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
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let parallel = resolved.file.archive.prefetch_parallel.unwrap_or(4);
    let mut cmd = detached(exe, cli, resolved);
    cmd.arg("wal-prefetch")
        .arg("--after")
        .arg(after.to_string())
        .arg("--spool")
        .arg(spool)
        .arg("--count")
        .arg(count.to_string())
        .arg("--parallel")
        .arg(parallel.to_string());
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
