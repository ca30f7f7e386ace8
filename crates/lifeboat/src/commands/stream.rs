//! `wal-stream`: the WAL receiver in the foreground, until Ctrl-C or SIGTERM.

use std::time::Duration;

use lifeboat_engine::LazyRepo;
use lifeboat_engine::stream::{self, StreamOptions};
use tokio::signal::unix::{SignalKind, signal};

use super::context::{conn_spec_of, open_store};
use crate::cli::WalStreamArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn wal_stream(resolved: &Resolved, args: &WalStreamArgs) -> Result<Exit, Failure> {
    let options = options(resolved, args)?;
    let spec = conn_spec_of(resolved, args.db.as_deref())?;
    let store = open_store(resolved)?;
    let repo = LazyRepo::new(store, resolved.passphrase.clone());
    let failure = |e: std::io::Error| {
        Failure::new(
            Exit::Internal,
            format!("cannot install the signal handlers that stop the receiver cleanly: {e}"),
            None,
        )
    };
    let mut term = signal(SignalKind::terminate()).map_err(failure)?;
    let mut int = signal(SignalKind::interrupt()).map_err(failure)?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let report = stream::run(&repo, &spec, &options, shutdown).await?;
    tracing::info!(
        "stopped: {} segments completed, {} pieces stored ({} bytes), durable up to {}",
        report.segments_completed,
        report.pieces_stored,
        report.piece_bytes,
        report.durable_lsn.as_deref().unwrap_or("nothing")
    );
    Ok(Exit::Success)
}

fn options(resolved: &Resolved, args: &WalStreamArgs) -> Result<StreamOptions, Failure> {
    let none = Default::default();
    let config = resolved.file.stream.as_ref().unwrap_or(&none);
    let defaults = StreamOptions::default();
    let slot = args
        .slot
        .clone()
        .or_else(|| config.slot.clone())
        .unwrap_or(defaults.slot);
    if slot.is_empty()
        || slot.len() > 63
        || !slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Failure::config(
            format!("invalid replication slot name {slot:?}"),
            "PostgreSQL accepts 1 to 63 lower-case letters, digits and underscores: set --slot or stream.slot",
        ));
    }
    let application_name = config
        .application_name
        .clone()
        .unwrap_or(defaults.application_name);
    if application_name.is_empty()
        || application_name.len() > 63
        || !application_name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Failure::config(
            format!("invalid stream.application_name {application_name:?}"),
            "use 1 to 63 printable ASCII characters without spaces: the name synchronous_standby_names lists",
        ));
    }
    let flush_ms = args
        .flush_interval_ms
        .or(config.flush_interval_ms)
        .unwrap_or(1000);
    if !(10..=60_000).contains(&flush_ms) {
        return Err(Failure::config(
            format!("flush interval {flush_ms} ms is out of range"),
            "give --flush-interval-ms or stream.flush_interval_ms between 10 and 60000",
        ));
    }
    Ok(StreamOptions {
        slot,
        create_slot: !args.no_create_slot && config.create_slot.unwrap_or(true),
        application_name,
        flush_interval: Duration::from_millis(flush_ms),
        synchronous: args.synchronous || config.synchronous.unwrap_or(false),
        ..defaults
    })
}
