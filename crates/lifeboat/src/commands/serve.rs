//! `lifeboat serve`: resolve the daemon's settings, then hand over to `lifeboat_daemon::serve`.

use std::path::Path;
use std::sync::Arc;

use lifeboat_daemon::DaemonConfig;
use lifeboat_daemon::config::StreamWatch;
use lifeboat_daemon::runner::Launcher;
use lifeboat_daemon::serve::{ServeError, ServeOptions};
use lifeboat_engine::LazyRepo;

use crate::cli::{Cli, ServeArgs};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn serve(cli: &Cli, resolved: &Resolved, args: &ServeArgs) -> Result<Exit, Failure> {
    let file = &resolved.file;
    let config = DaemonConfig {
        serve: file.serve.clone(),
        schedule: file.schedule.clone(),
        health: file.health.clone(),
        alerts: file.alerts.clone(),
        // The receiver validates its settings itself; the daemon only needs the names.
        stream: file.stream.as_ref().map(|s| {
            let defaults = lifeboat_engine::stream::StreamOptions::default();
            StreamWatch {
                slot: s.slot.clone().unwrap_or(defaults.slot),
                application_name: s
                    .application_name
                    .clone()
                    .unwrap_or(defaults.application_name),
            }
        }),
    };
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| config.serve.listen.clone());
    let token = match &config.serve.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let store = super::context::open_store(resolved)?;
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::Internal,
            format!("cannot find my own executable to run jobs with: {e}"),
            None,
        )
    })?;
    let launcher = Launcher {
        exe,
        // Children read the same file, however the daemon found it (flag, environment, default).
        config: resolved.config_path.clone(),
        repo: cli.repo.clone(),
        host: lifeboat_repo::lock::this_host(),
    };
    let ha = match &file.ha {
        Some(raw) => Some(ha_options(resolved, raw, &launcher)?),
        None => None,
    };
    let options = ServeOptions {
        config,
        listen,
        token,
        repo: Arc::new(LazyRepo::new(store, resolved.passphrase.clone())),
        db: file.db.clone(),
        pgdata: file
            .pgdata
            .clone()
            .or_else(|| std::env::var_os("PGDATA").map(Into::into)),
        launcher: launcher.clone(),
        ha,
    };
    match lifeboat_daemon::serve::serve(options).await {
        Ok(()) => Ok(Exit::Success),
        Err(ServeError::Config(message)) => Err(Failure::config(
            message,
            "fix the config file (see the README's configuration reference) and start again",
        )),
        Err(ServeError::Listen(message)) => Err(Failure::new(
            Exit::LocalIo,
            message,
            Some("pick a free port in [serve] listen, or stop the other process".into()),
        )),
    }
}

fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::config(
            format!("cannot read [serve] token_file {}: {e}", path.display()),
            "create the file with a long random token on its first line (e.g. `openssl rand -hex 32`), mode 0600",
        )
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(Failure::config(
            format!(
                "the token in {} is shorter than 16 characters",
                path.display()
            ),
            "write a long random token on its first line, e.g. `openssl rand -hex 32`",
        ));
    }
    Ok(token)
}

/// `[ha]` checked and completed: the agent needs the local server (`db`, `pgdata`) and the
/// `restore_command` its standbys use.
fn ha_options(
    resolved: &Resolved,
    raw: &lifeboat_ha::config::RawHaConfig,
    launcher: &Launcher,
) -> Result<lifeboat_daemon::ha::HaOptions, Failure> {
    let config = raw.clone().into_config().map_err(|e| {
        Failure::config(
            e.to_string(),
            "fix [ha] in the configuration file; README, \"Automatic failover\", lists its keys",
        )
    })?;
    let file = &resolved.file;
    let local_conninfo = file.db.clone().ok_or_else(|| {
        Failure::config(
            "[ha] needs `db`, the local server's connection (its socket directory and port)",
            "add db = \"host=/run/postgresql port=5432 user=postgres\" at the top of the file",
        )
    })?;
    let pgdata = file
        .pgdata
        .clone()
        .or_else(|| std::env::var_os("PGDATA").map(Into::into))
        .ok_or_else(|| {
            Failure::config(
                "[ha] needs `pgdata`, the local server's data directory",
                "add pgdata = \"/var/lib/postgresql/data\" at the top of the file",
            )
        })?;
    Ok(lifeboat_daemon::ha::HaOptions {
        config,
        pgdata: super::context::absolute(&pgdata),
        local_conninfo,
        restore_command: super::context::restore_command(resolved)?,
        launcher: launcher.clone(),
    })
}
