//! One function per command: resolve what it needs, call the engine, render the result.

use std::sync::Arc;

use lifeboat_engine::LazyRepo;
use lifeboat_engine::archive::{self, FetchOptions, FetchOutcome, PushOptions};
use lifeboat_pg::walname::WalSegmentName;
use lifeboat_repo::{Compression, CompressionSettings, InitOptions, Repository};
use lifeboat_storage::Store;

use crate::cli::{
    Cli, Command, InfoArgs, InitArgs, PassphraseChangeArgs, PassphraseCommand, WalFetchArgs,
    WalPrefetchArgs, WalPushArgs,
};
use crate::config::{self, Resolved};
use crate::exit::{Exit, Failure};

pub async fn run(cli: Cli) -> Result<Exit, Failure> {
    if let Command::Demo(args) = &cli.command {
        let options = crate::demo::DemoOptions {
            keep: args.keep,
            seconds: args.seconds,
        };
        return tokio::task::block_in_place(|| crate::demo::run(&options));
    }
    let resolved = config::resolve(cli.config.as_deref(), cli.repo.as_deref())?;
    match &cli.command {
        Command::Init(args) => init(&resolved, args).await,
        Command::WalPush(args) => wal_push(&resolved, args).await,
        Command::WalFetch(args) => wal_fetch(&cli, &resolved, args).await,
        Command::Info(args) => info(&resolved, args).await,
        Command::WalPrefetch(args) => wal_prefetch(&resolved, args).await,
        Command::Backup(args) => crate::backup_cmds::backup(&resolved, args).await,
        Command::List(args) => crate::backup_cmds::list(&resolved, args).await,
        Command::Check(args) => crate::backup_cmds::check(&resolved, args).await,
        Command::Restore(args) => crate::backup_cmds::restore(&resolved, args).await,
        Command::Verify(args) => crate::verify_cmd::verify(&resolved, args).await,
        Command::Expire(args) => crate::expire_cmd::expire(&resolved, args).await,
        Command::Drill(args) => crate::drill_cmd::drill(&resolved, args).await,
        Command::Serve(args) => crate::daemon_cmds::serve(&cli, &resolved, args).await,
        Command::Alert(args) => crate::alert_cmd::alert(&resolved, args).await,
        Command::Passphrase(args) => match &args.command {
            PassphraseCommand::Change(change) => passphrase_change(&resolved, change).await,
        },
        Command::Demo(_) => Ok(Exit::Success),
    }
}

fn repo_location(resolved: &Resolved) -> Result<&str, Failure> {
    resolved.repo.as_deref().ok_or_else(|| {
        Failure::config(
            "no repository given",
            "pass --repo URL, set LIFEBOAT_REPO, or set `repo` in the config file (--config / LIFEBOAT_CONFIG / /etc/lifeboat/lifeboat.toml)",
        )
    })
}

pub(crate) fn open_store(resolved: &Resolved) -> Result<Arc<dyn Store>, Failure> {
    let location = repo_location(resolved)?;
    // A missing local directory is a configuration problem (wrong path, or init not run yet), not
    // a storage failure: say so, with the exit code for configuration.
    if let Ok(lifeboat_storage::Location::Local(path)) = lifeboat_storage::parse_location(location)
        && !path.exists()
    {
        return Err(Failure::config(
            format!(
                "no repository at {location}: the directory {} does not exist",
                path.display()
            ),
            "create it with `lifeboat init`, or check --repo / LIFEBOAT_REPO / `repo` in the config file",
        ));
    }
    lifeboat_storage::open(location, &resolved.storage).map_err(|e| storage_failure(location, e))
}

fn storage_failure(location: &str, e: lifeboat_storage::StorageError) -> Failure {
    use lifeboat_storage::ErrorKind;
    let hint = match (e.kind, e.hint) {
        (_, Some(hint)) => hint,
        (ErrorKind::NotFound, None) => {
            "create the repository with `lifeboat init`, or check the location".to_string()
        }
        _ => "check the repository location, credentials (AWS_* environment or the config file) and permissions".to_string(),
    };
    let exit = match e.kind {
        ErrorKind::NotFound | ErrorKind::Config => Exit::Config,
        _ => Exit::Storage,
    };
    Failure::new(
        exit,
        format!(
            "cannot open repository {}: {}",
            shown_location(location),
            e.message
        ),
        Some(hint),
    )
}

/// A location as it may be printed: one holding user-info (`key:secret@`), a query or a
/// fragment (an Azure SAS token) is not repeated, as the storage layer's own messages do not.
fn shown_location(location: &str) -> String {
    match location.split_once("://") {
        Some((scheme, rest)) if rest.contains(['@', '?', '#']) => format!("{scheme}://..."),
        _ => location.to_string(),
    }
}

pub(crate) async fn open_repo(resolved: &Resolved) -> Result<Repository, Failure> {
    let store = open_store(resolved)?;
    Ok(Repository::open(store, resolved.passphrase.as_ref()).await?)
}

async fn init(resolved: &Resolved, args: &InitArgs) -> Result<Exit, Failure> {
    let location = repo_location(resolved)?;
    let passphrase = match (&resolved.passphrase, args.unencrypted) {
        (Some(_), true) => {
            return Err(Failure::config(
                "--unencrypted was given but a passphrase is configured",
                "drop --unencrypted to create an encrypted repository, or unset LIFEBOAT_PASSPHRASE / LIFEBOAT_PASSPHRASE_FILE / passphrase_file",
            ));
        }
        (None, false) => {
            return Err(Failure::config(
                "no passphrase configured: refusing to create an unencrypted repository by accident",
                "set LIFEBOAT_PASSPHRASE_FILE to a file (mode 0600) holding a passphrase, or pass --unencrypted if the repository must not be encrypted",
            ));
        }
        (p, _) => p.clone(),
    };
    let algorithm: Compression = args
        .compression
        .parse()
        .map_err(|e: String| Failure::new(Exit::Usage, e, None))?;
    let store = lifeboat_storage::open_or_create(location, &resolved.storage)
        .map_err(|e| storage_failure(location, e))?;
    let encrypted = passphrase.is_some();
    let options = InitOptions {
        passphrase,
        compression: CompressionSettings {
            algorithm,
            level: args.compression_level,
        },
        ..InitOptions::default()
    };
    let repo = Repository::init(store, options).await?;
    outln!(
        "created {} repository at {} (id {}, compression {} level {})",
        if encrypted {
            "an encrypted"
        } else {
            "an UNENCRYPTED"
        },
        repo.location(),
        repo.config().repo_id,
        args.compression,
        args.compression_level
    );
    if encrypted {
        outln!("keep the passphrase safe: without it nothing in the repository can be restored");
    }
    Ok(Exit::Success)
}

/// `passphrase change`: re-wrap the data key under the repository lock (two changes at once could
/// leave the config's two copies with different passphrases).
async fn passphrase_change(
    resolved: &Resolved,
    args: &PassphraseChangeArgs,
) -> Result<Exit, Failure> {
    use lifeboat_repo::lock::{LockKind, RepoLock};
    use lifeboat_repo::rekey::RekeyStep;
    let new = config::new_passphrase(args.new_passphrase_file.as_deref())?;
    let store = open_store(resolved)?;
    let location = store.describe();
    let Some(current) = resolved.passphrase.as_ref() else {
        let repo = Repository::open(store, None).await?;
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "the repository at {} is not encrypted: it has no passphrase to change",
                repo.location()
            ),
            Some("an unencrypted repository cannot be encrypted in place: create an encrypted one (`lifeboat init` with a passphrase configured) and archive and back up into it".to_string()),
        ));
    };
    let repo = Repository::open(store, Some(current)).await?;
    let mut lock = RepoLock::acquire(&repo, LockKind::Passphrase)
        .await
        .map_err(|e| {
            let hint = e.hint();
            let exit = match &e {
                lifeboat_repo::lock::LockError::Repo(r) => crate::exit::repo_exit(r),
                _ => Exit::Refused,
            };
            Failure::new(exit, e.to_string(), hint)
        })?;
    // Test hook: stop as a crash would, after a step (see tests/adversarial/archive.rs).
    let stop_at = std::env::var("LIFEBOAT_TEST_PASSPHRASE_STOP").ok();
    let after = |step: RekeyStep| {
        let name = match step {
            RekeyStep::BothWrappings => "both",
            RekeyStep::Switched => "switched",
        };
        if stop_at.as_deref() == Some(name) {
            eprintln!("lifeboat: stopping after step {name:?} (LIFEBOAT_TEST_PASSPHRASE_STOP)");
            std::process::exit(99);
        }
        Ok(())
    };
    let result = repo.change_passphrase(current, &new, &after).await;
    lock.release().await;
    result.map_err(|e| match e {
        lifeboat_repo::RepoError::Invalid(message) => Failure::new(
            Exit::Refused,
            message,
            Some("nothing was written; the current passphrase comes from LIFEBOAT_PASSPHRASE_FILE, LIFEBOAT_PASSPHRASE or passphrase_file, the new one from --new-passphrase-file or LIFEBOAT_NEW_PASSPHRASE".to_string()),
        ),
        other => other.into(),
    })?;
    outln!(
        "changed the passphrase of the repository at {location}: the old passphrase no longer opens it"
    );
    outln!(
        "give every user of the repository the new passphrase now (passphrase_file or LIFEBOAT_PASSPHRASE_FILE): PostgreSQL's archive_command (until then wal-push fails and WAL piles up in pg_wal), restore_command, `lifeboat serve` and every other host"
    );
    outln!(
        "the data key did not change: a copy of the repository, or of its lifeboat.json, taken before now still opens with the old passphrase"
    );
    Ok(Exit::Success)
}

async fn wal_push(resolved: &Resolved, args: &WalPushArgs) -> Result<Exit, Failure> {
    let store = open_store(resolved)?;
    let repo = LazyRepo::new(store, resolved.passphrase.clone());
    let options = PushOptions {
        parallel: args
            .parallel
            .or(resolved.file.archive.push_parallel)
            .unwrap_or(archive::push::DEFAULT_PUSH_PARALLEL)
            .max(1),
        spool_dir: resolved.file.archive.spool_dir.clone(),
    };
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

async fn wal_fetch(cli: &Cli, resolved: &Resolved, args: &WalFetchArgs) -> Result<Exit, Failure> {
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

async fn wal_prefetch(resolved: &Resolved, args: &WalPrefetchArgs) -> Result<Exit, Failure> {
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

async fn info(resolved: &Resolved, args: &InfoArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let info = lifeboat_engine::info::info(&repo).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?;
        outln!("{text}");
        return Ok(Exit::Success);
    }
    outln!("repository   {} (id {})", info.location, info.repo_id);
    outln!(
        "format       version {}, created {}",
        info.format_version,
        info.created
    );
    outln!(
        "encryption   {}",
        if info.encrypted {
            "XChaCha20-Poly1305, key wrapped by an Argon2id passphrase key"
        } else {
            "none"
        }
    );
    outln!(
        "compression  {} (level {})",
        info.compression,
        info.compression_level
    );
    match &info.cluster {
        Some(c) => outln!(
            "cluster      system identifier {}, PostgreSQL {}, WAL segments of {} MiB",
            c.system_identifier,
            c.pg_major,
            c.wal_segment_size >> 20
        ),
        None => outln!("cluster      not bound yet (no WAL archived)"),
    }
    outln!(
        "WAL          {} files, {} stored",
        info.wal_files,
        human_bytes(info.wal_stored_bytes)
    );
    for tl in &info.timelines {
        outln!(
            "timeline {:<3} {} .. {} ({} segments, {})",
            tl.timeline,
            tl.first_segment,
            tl.last_segment,
            tl.segments,
            if tl.gaps.is_empty() {
                "no gaps".to_string()
            } else {
                format!("{} GAPS", tl.gaps.len())
            }
        );
        for gap in &tl.gaps {
            outln!(
                "  gap        {} .. {} ({} segments missing)",
                gap.first_missing,
                gap.last_missing,
                gap.count
            );
        }
        for p in &tl.partial_files {
            outln!("  partial    {p}");
        }
    }
    for h in &info.history_files {
        outln!("history      {h}");
    }
    Ok(Exit::Success)
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
