//! What the commands share: the repository's location, opening its store and the repository
//! (with the exit codes and hints for each failure) and taking its lock, the cluster settings (`--db`, `--pgdata`),
//! the restore_command a restored cluster gets, and rendering (progress bar, JSON, `human_bytes`).
//!
//! Commands depend on this module, never the other way round, and not on each other.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_pg::session::ConnSpec;
use lifeboat_repo::Repository;
use lifeboat_storage::Store;

use crate::cli::ClusterArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

// --- The repository -----------------------------------------------------------------------

pub(crate) fn repo_location(resolved: &Resolved) -> Result<&str, Failure> {
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

pub(crate) fn storage_failure(location: &str, e: lifeboat_storage::StorageError) -> Failure {
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

/// Take the lock of `kind` for a command that changes the config, or the failure to report.
pub(crate) async fn acquire_lock(
    repo: &Repository,
    kind: lifeboat_repo::lock::LockKind,
) -> Result<lifeboat_repo::lock::RepoLock, Failure> {
    lifeboat_repo::lock::RepoLock::acquire(repo, kind)
        .await
        .map_err(|e| {
            let hint = e.hint();
            let exit = match &e {
                lifeboat_repo::lock::LockError::Repo(r) => crate::exit::repo_exit(r),
                _ => Exit::Refused,
            };
            Failure::new(exit, e.to_string(), hint)
        })
}

// --- The cluster ----------------------------------------------------------------------------

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

pub(crate) fn conn_spec(resolved: &Resolved, args: &ClusterArgs) -> Result<ConnSpec, Failure> {
    conn_spec_of(resolved, args.db.as_deref())
}

/// The connection to the server: `db` given on the command line, else the config's.
pub(crate) fn conn_spec_of(resolved: &Resolved, db: Option<&str>) -> Result<ConnSpec, Failure> {
    let conninfo = db.map(str::to_owned).or_else(|| resolved.file.db.clone());
    ConnSpec::new(conninfo.as_deref()).map_err(|e| {
        Failure::config(
            format!("invalid connection settings: {e}"),
            "give --db a libpq connection string such as 'host=/var/run/postgresql port=5432 user=postgres', or set `db` in the config file",
        )
    })
}

pub(crate) fn pgdata(resolved: &Resolved, args: &ClusterArgs) -> Option<PathBuf> {
    args.pgdata
        .clone()
        .or_else(|| resolved.file.pgdata.clone())
        .or_else(|| {
            std::env::var_os("PGDATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
}

// --- Rendering ------------------------------------------------------------------------------

pub(crate) fn bar(total: u64) -> ProgressBar {
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

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?;
    outln!("{text}");
    Ok(())
}

pub(crate) use lifeboat_daemon::dashboard::human_bytes;

// --- The restored cluster's restore_command ---------------------------------------------------

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

pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
    }
}
