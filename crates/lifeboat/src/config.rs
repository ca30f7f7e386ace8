//! Configuration: command line, environment and the TOML file, merged into typed settings.
//!
//! Precedence: command-line flag, then environment, then the config file, then defaults.
//! Secrets (passphrase, S3 keys) come only from the environment or files, never from argv, and
//! are never logged: `Debug` of everything here redacts them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_repo::Passphrase;
use lifeboat_storage::{AzureSettings, GcsSettings, RetryPolicy, S3Settings, StorageSettings};
use serde::Deserialize;

use crate::exit::Failure;
use crate::limits;

/// Read when neither --config nor LIFEBOAT_CONFIG is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/lifeboat/lifeboat.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Repository location: a path, file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix.
    pub repo: Option<String>,
    /// File holding the repository passphrase (first line). Keep it mode 0600.
    pub passphrase_file: Option<PathBuf>,
    /// Data directory of the cluster (backup, check). Default: $PGDATA, then the server's.
    pub pgdata: Option<PathBuf>,
    /// libpq connection string of the cluster (backup, check). Default: the PG* environment.
    pub db: Option<String>,
    pub archive: ArchiveConfig,
    /// Present: `serve` runs and watches a WAL receiver (`wal-stream`) with these settings.
    pub stream: Option<StreamConfig>,
    /// Present: `serve` runs the failover agent (automatic failover on etcd).
    pub ha: Option<lifeboat_ha::config::RawHaConfig>,
    pub backup: BackupConfig,
    pub restore: RestoreConfig,
    pub retention: RetentionConfig,
    pub verify: VerifyConfig,
    /// `lifeboat copy`: where the copy of the repository lives.
    pub copy: CopyConfig,
    /// `lifeboat dump`: which databases, and what `dump expire` keeps.
    pub dump: DumpConfig,
    pub storage: StorageConfig,
    /// `lifeboat drill` and the daemon's drills.
    pub drill: lifeboat_engine::drill::DrillConfig,
    /// The daemon (`lifeboat serve`).
    pub serve: lifeboat_daemon::config::ServeConfig,
    pub schedule: lifeboat_daemon::config::ScheduleConfig,
    pub health: lifeboat_daemon::config::HealthConfig,
    pub alerts: lifeboat_daemon::config::AlertsConfig,
    pub s3: S3Settings,
    pub gcs: GcsSettings,
    pub azure: AzureSettings,
}

/// `wal-stream`, and the receiver `serve` runs when the section is present.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Physical replication slot. Default `lifeboat`.
    pub slot: Option<String>,
    /// Create the slot when it is missing. Default true.
    pub create_slot: Option<bool>,
    /// `application_name` of the replication connection (what synchronous_standby_names lists).
    /// Default `lifeboat`.
    pub application_name: Option<String>,
    /// Store received WAL every this many milliseconds. Default 1000.
    pub flush_interval_ms: Option<u64>,
    /// Store and acknowledge every write at once. Default false.
    pub synchronous: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// WAL files stored at once by wal-push's background pusher (which keeps that many .ready
    /// files uploading until none is left), or by one wal-push run by hand. 1: no pusher, each
    /// call stores its own file. Default 8.
    #[serde(deserialize_with = "limits::key::push_parallel")]
    pub push_parallel: Option<usize>,
    /// Segments wal-fetch fetches ahead during recovery. Default 8; 0 disables.
    #[serde(deserialize_with = "limits::key::prefetch")]
    pub prefetch: Option<usize>,
    /// Concurrent downloads of the prefetcher. Default 4.
    #[serde(deserialize_with = "limits::key::prefetch_parallel")]
    pub prefetch_parallel: Option<usize>,
    /// Spool directory; default `pg_wal/lifeboat` (beside the WAL, same file system).
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Threads reading, hashing, compressing and encrypting. Default: the number of cores.
    #[serde(deserialize_with = "limits::key::backup_parallel")]
    pub parallel: Option<usize>,
    /// Size of the blocks large files are cut into, in KiB (a power of two, 64 to 16384). Default 1024.
    #[serde(deserialize_with = "limits::key::block_size_kib")]
    pub block_size_kib: Option<u32>,
    /// Seconds to wait for the backup's WAL to reach the repository. Default 300.
    #[serde(deserialize_with = "limits::key::archive_timeout_seconds")]
    pub archive_timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreConfig {
    /// Threads planning and (four per thread) decoding and writing; downloads in flight are
    /// `storage.concurrency`. Default: the number of cores.
    #[serde(deserialize_with = "limits::key::restore_parallel")]
    pub parallel: Option<usize>,
}

/// What `expire` keeps when no flag says otherwise; a backup either rule keeps is kept.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N backups.
    #[serde(deserialize_with = "limits::key::keep_last")]
    pub keep_last: Option<u32>,
    /// Keep what restores to any moment of the last D days.
    #[serde(deserialize_with = "limits::key::keep_days")]
    pub keep_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Share (0-100 %) of the objects verified by earlier runs that each `verify` reads again, in
    /// a rotation that reads every one again within ceil(100 / reread_percent) runs. Default 5.
    pub reread_percent: Option<u32>,
}

/// `[copy]`: the second repository `lifeboat copy` brings up to date (the daemon's schedule
/// will use it too).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CopyConfig {
    /// The copy's location (a path or URL, same storage settings as `repo`).
    pub to: Option<String>,
}

/// `lifeboat dump` and `dump expire` when no flag says otherwise (the daemon's `dump` and
/// `dump_expire` jobs run without flags).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DumpConfig {
    /// Databases to dump. Default: every connectable database but the templates.
    pub databases: Vec<String>,
    /// `dump expire`: keep the newest N dumps.
    #[serde(deserialize_with = "limits::key::keep_last")]
    pub keep_last: Option<u32>,
    /// `dump expire`: keep the dumps of the last D days (and the newest before them).
    #[serde(deserialize_with = "limits::key::keep_days")]
    pub keep_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Deadline of one attempt of one storage call. Default 60.
    #[serde(deserialize_with = "limits::key::storage_timeout_seconds")]
    pub timeout_seconds: Option<u64>,
    /// Attempts per storage call, retrying transient errors with backoff. Default 5.
    #[serde(deserialize_with = "limits::key::storage_max_attempts")]
    pub max_attempts: Option<u32>,
    /// Storage requests in flight at once, independent of the `parallel` CPU threads. Default 32
    /// for S3, GCS and Azure, 8 for a local path.
    #[serde(deserialize_with = "limits::key::storage_concurrency")]
    pub concurrency: Option<usize>,
}

/// Everything a command needs to reach the repository.
#[derive(Debug)]
pub struct Resolved {
    pub config_path: Option<PathBuf>,
    pub repo: Option<String>,
    pub passphrase: Option<Passphrase>,
    pub storage: StorageSettings,
    pub file: FileConfig,
}

/// `concurrency_flag` is `--concurrency`: it overrides `storage.concurrency`.
pub fn resolve(
    config_flag: Option<&Path>,
    repo_flag: Option<&str>,
    concurrency_flag: Option<usize>,
) -> Result<Resolved, Failure> {
    let env_config = std::env::var_os("LIFEBOAT_CONFIG").map(PathBuf::from);
    let config_path = match (config_flag, env_config) {
        (Some(p), _) => Some(p.to_path_buf()),
        (None, Some(p)) => Some(p),
        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let file = match &config_path {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let repo = repo_flag
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("LIFEBOAT_REPO")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or_else(|| file.repo.clone());
    let passphrase = passphrase(&file)?;
    let mut retry = RetryPolicy::default();
    if let Some(s) = file.storage.timeout_seconds {
        retry.attempt_timeout = Duration::from_secs(s);
    }
    if let Some(n) = file.storage.max_attempts {
        retry.max_attempts = n;
    }
    let storage = StorageSettings {
        retry,
        concurrency: concurrency_flag.or(file.storage.concurrency),
        s3: file.s3.clone(),
        gcs: file.gcs.clone(),
        azure: file.azure.clone(),
    };
    Ok(Resolved {
        config_path,
        repo,
        passphrase,
        storage,
        file,
    })
}

fn load_file(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::config(
            format!("cannot read config file {}: {e}", path.display()),
            "check the path given by --config or LIFEBOAT_CONFIG, and that this user may read it",
        )
    })?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        Failure::config(
            format!("config file {} is invalid: {}", path.display(), e.message()),
            "see the configuration reference in the README; every key is listed there",
        )
    })?;
    // The [drill] section is the engine's: its duration is checked here, with the other ranges.
    let timeout = file.drill.timeout.as_secs();
    if !file.drill.timeout.is_zero() {
        limits::DRILL_TIMEOUT_SECONDS
            .check::<u64>("drill.timeout (in seconds)", i128::from(timeout))
            .map_err(|why| {
                Failure::config(
                    format!("config file {} is invalid: {why}", path.display()),
                    "write drill.timeout as e.g. \"1h\"",
                )
            })?;
    }
    Ok(file)
}

fn passphrase(file: &FileConfig) -> Result<Option<Passphrase>, Failure> {
    if let Ok(p) = std::env::var("LIFEBOAT_PASSPHRASE")
        && !p.is_empty()
    {
        return Ok(Some(Passphrase::new(p)));
    }
    let path = std::env::var_os("LIFEBOAT_PASSPHRASE_FILE")
        .map(PathBuf::from)
        .or_else(|| file.passphrase_file.clone());
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::config(
            format!("cannot read passphrase file {}: {e}", path.display()),
            "check LIFEBOAT_PASSPHRASE_FILE / passphrase_file and that this user (e.g. postgres) may read the file",
        )
    })?;
    warn_if_readable_by_others(&path);
    let first_line = text.lines().next().unwrap_or("").to_string();
    if first_line.is_empty() {
        return Err(Failure::config(
            format!("passphrase file {} is empty", path.display()),
            "write the passphrase on the first line of the file",
        ));
    }
    Ok(Some(Passphrase::new(first_line)))
}

/// The new passphrase of `passphrase change`: from `--new-passphrase-file` (first line), else
/// LIFEBOAT_NEW_PASSPHRASE; never from the command line itself.
pub fn new_passphrase(file_flag: Option<&Path>) -> Result<Passphrase, Failure> {
    if let Some(path) = file_flag {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::config(
                format!(
                    "cannot read the new passphrase file {}: {e}",
                    path.display()
                ),
                "check --new-passphrase-file and that this user may read the file",
            )
        })?;
        warn_if_readable_by_others(path);
        let first_line = text.lines().next().unwrap_or("").to_string();
        if first_line.is_empty() {
            return Err(Failure::config(
                format!("the new passphrase file {} is empty", path.display()),
                "write the new passphrase on the first line of the file",
            ));
        }
        return Ok(Passphrase::new(first_line));
    }
    match std::env::var("LIFEBOAT_NEW_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(Passphrase::new(p)),
        _ => Err(Failure::config(
            "no new passphrase given",
            "pass --new-passphrase-file FILE (a file readable only by you, the passphrase on its first line) or set LIFEBOAT_NEW_PASSPHRASE; the current passphrase comes from the usual settings (LIFEBOAT_PASSPHRASE_FILE, LIFEBOAT_PASSPHRASE, passphrase_file)",
        )),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "passphrase file {} can be read by other users: chmod 600 it",
            path.display()
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn storage_concurrency_is_read_and_checked() {
        let file: FileConfig = toml::from_str("[storage]\nconcurrency = 16").unwrap();
        assert_eq!(file.storage.concurrency, Some(16));
        for bad in ["0", "1025", "-3"] {
            let text = format!("[storage]\nconcurrency = {bad}");
            let e = toml::from_str::<FileConfig>(&text).unwrap_err();
            assert!(
                e.message().contains("storage.concurrency")
                    && e.message().contains("1 to 1024 requests"),
                "{bad}: {}",
                e.message()
            );
        }
    }
}
