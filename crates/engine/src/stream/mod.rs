//! `wal-stream`: receive WAL over a physical replication slot and store it in the repository as it
//! arrives, so that what a restore can reach trails the primary by about a flush interval instead
//! of up to a whole segment (docs/FORMAT.md, "Streamed WAL").
//!
//! This module owns the receiver's loop: where to start (after the newest complete segment in the
//! repository, else the slot's position, else the server's), the replication session, flushing
//! what arrived as a piece of the current segment every `flush_interval` (at once in synchronous
//! mode), reporting the durable position to the server as its flush position (so that a
//! synchronous primary acknowledges a commit only once the repository holds it), following
//! timeline switches, and reconnecting with backoff. The segment buffer is in `segment`.

mod segment;

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::replication::{
    ReplicationConnection, ReplicationError, SlotCreated, StreamMessage, WalStream,
};
use lifeboat_pg::session::ConnSpec;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::Repository;

pub use segment::SegmentBuffer;

use crate::{EngineError, LazyRepo, Result};

/// How `wal-stream` runs.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The physical replication slot (created if missing and `create_slot`).
    pub slot: String,
    pub create_slot: bool,
    /// Sent as `application_name`: the name `synchronous_standby_names` lists.
    pub application_name: String,
    /// How often what arrived is stored as a piece of the current segment.
    pub flush_interval: Duration,
    /// Store and report every write as soon as it arrives (the server waits for it).
    pub synchronous: bool,
    /// How often a status is sent even when nothing changed (the server's
    /// `wal_sender_timeout` must be longer).
    pub status_interval: Duration,
    pub connect_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            slot: "lifeboat".into(),
            create_slot: true,
            application_name: "lifeboat".into(),
            flush_interval: Duration::from_secs(1),
            synchronous: false,
            status_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What one run of the receiver did, for its log line and JSON.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StreamReport {
    pub segments_completed: u64,
    pub pieces_stored: u64,
    pub piece_bytes: u64,
    /// The newest position durable in the repository.
    pub durable_lsn: Option<String>,
    pub timeline: Option<u32>,
    pub reconnects: u64,
    /// Where the server had already removed WAL the receiver needed (it started over later).
    pub wal_removed_at: Option<String>,
}

/// Run the receiver until `shutdown` resolves; what arrived is flushed before returning. Errors
/// before the first stream starts (a refused connection, another cluster's server, a missing
/// slot that may not be created) end the run: they need the operator. Later ones reconnect with
/// backoff (1 s doubling to 30 s).
pub async fn run(
    repo: &LazyRepo,
    spec: &ConnSpec,
    options: &StreamOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<StreamReport> {
    let repo = repo.get().await?;
    let mut report = StreamReport::default();
    let mut resume: Option<(TimelineId, Lsn)> = None;
    // The server no longer has the WAL after what the repository holds: start over at its
    // current position (a gap, unless archive_command stored that WAL).
    let mut jump = false;
    let mut started_once = false;
    let mut backoff = Duration::from_secs(1);
    let shutdown = shutdown.boxed().shared();
    loop {
        let session = stream_session(
            repo,
            spec,
            options,
            Start { resume, jump },
            &mut report,
            shutdown.clone(),
        );
        let outcome = session.await;
        jump = false;
        match outcome {
            Ok(SessionEnd::Shutdown) => return Ok(report),
            Ok(SessionEnd::WalRemoved { from }) => {
                started_once = true;
                resume = None;
                jump = true;
                report
                    .wal_removed_at
                    .get_or_insert_with(|| from.to_string());
                tracing::error!(
                    "the server removed WAL from {from} on before it was streamed (its slot was \
                     invalidated by max_slot_wal_keep_size, or no slot was used): streaming \
                     starts again at the server's current position, and the repository misses \
                     that WAL unless archive_command stored it; `lifeboat info` shows any gap, \
                     and a new backup (`lifeboat backup`) makes the time after it restorable"
                );
            }
            Ok(SessionEnd::Disconnected { next }) => {
                started_once = true;
                resume = next.or(resume);
                tracing::warn!("the replication stream ended; reconnecting");
                backoff = Duration::from_secs(1);
            }
            Err(SessionError { error, streamed }) => {
                if !(started_once || streamed) {
                    return Err(error);
                }
                started_once = true;
                // What the lost session had not made durable is streamed again from the newest
                // complete segment in the repository.
                resume = None;
                if streamed {
                    // It had worked: a fault days later waits 1 s, not what earlier ones grew to
                    // (a synchronous primary's commits wait meanwhile).
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(
                    "streaming stopped: {error}; reconnecting in {} s",
                    backoff.as_secs()
                );
            }
        }
        report.reconnects += 1;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.clone() => return Ok(report),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

type Shutdown = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// Where a session starts: where the last one stopped, or (`jump`) at the server's position.
#[derive(Clone, Copy)]
struct Start {
    resume: Option<(TimelineId, Lsn)>,
    jump: bool,
}

enum SessionEnd {
    Shutdown,
    /// The server no longer has the WAL from `from` on.
    WalRemoved {
        from: Lsn,
    },
    /// The server closed the stream (shutting down); where to resume, if known.
    Disconnected {
        next: Option<(TimelineId, Lsn)>,
    },
}

struct SessionError {
    error: EngineError,
    /// Whether the stream had started (so the configuration is known to work).
    streamed: bool,
}

impl From<EngineError> for SessionError {
    fn from(error: EngineError) -> Self {
        Self {
            error,
            streamed: false,
        }
    }
}

fn pg_error(what: &str, e: ReplicationError) -> EngineError {
    let hint = if e.is_slot_in_use() {
        "another receiver streams over this slot: stop it (its pid is in pg_stat_replication), or \
         give this one its own slot (--slot or stream.slot)"
    } else if e.server_error().is_some() {
        "the server's message above says what to change; then start the receiver again"
    } else {
        "check that the server is up and that `db` in the config reaches it with a role that \
         has the REPLICATION attribute"
    };
    EngineError::Postgres {
        message: format!("{what}: {e}"),
        hint: hint.into(),
    }
}

/// One connection: identify, choose the start, stream until the server ends it or `shutdown`.
async fn stream_session(
    repo: &Repository,
    spec: &ConnSpec,
    options: &StreamOptions,
    start: Start,
    report: &mut StreamReport,
    shutdown: Shutdown,
) -> std::result::Result<SessionEnd, SessionError> {
    let mut conn =
        ReplicationConnection::connect(spec, &options.application_name, options.connect_timeout)
            .await
            .map_err(|e| pg_error("cannot open a replication connection", e))?;
    let system = conn
        .identify_system()
        .await
        .map_err(|e| pg_error("IDENTIFY_SYSTEM failed", e))?;
    let bound = repo.identity().await.map_err(EngineError::from)?;
    let seg_size = match &bound {
        Some(identity) if identity.system_identifier != system.system_identifier => {
            return Err(EngineError::invalid(
                format!(
                    "the server belongs to cluster {} but the repository to cluster {}",
                    system.system_identifier, identity.system_identifier
                ),
                "stream into this cluster's own repository: check `repo` and `db` in the config",
            )
            .into());
        }
        Some(identity) => identity.wal_segment_size,
        // Nothing bound yet: the server says (the first segment's header is checked against it).
        None => conn
            .wal_segment_size()
            .await
            .map_err(|e| pg_error("cannot read the server's WAL segment size", e))?,
    };
    prepare_slot(&mut conn, options, start.jump).await?;
    let (timeline, from) = match (start.resume, start.jump) {
        (_, true) => (system.timeline, system.xlogpos),
        (Some(position), false) => position,
        (None, false) => {
            start_position(
                repo,
                &mut conn,
                options,
                system.timeline,
                system.xlogpos,
                seg_size,
            )
            .await?
        }
    };
    let start = Lsn(from.0 - from.segment_offset(seg_size));
    let mut stream = match conn
        .start_physical(Some(&options.slot), start, timeline)
        .await
    {
        Ok(stream) => stream,
        Err(e) if e.is_wal_removed() => return Ok(SessionEnd::WalRemoved { from: start }),
        Err(e) => return Err(pg_error("START_REPLICATION failed", e).into()),
    };
    tracing::info!(
        "streaming from {start} on timeline {} (slot {})",
        timeline.get(),
        options.slot
    );
    let mut buffer = SegmentBuffer::new(timeline, start, seg_size)?;
    report.timeline = Some(timeline.get());
    let streamed = |error: EngineError| SessionError {
        error,
        streamed: true,
    };
    let end = receive(repo, &mut stream, &mut buffer, options, report, shutdown)
        .await
        .map_err(streamed)?;
    match end {
        Received::Shutdown => Ok(SessionEnd::Shutdown),
        Received::WalRemoved => Ok(SessionEnd::WalRemoved {
            from: buffer.received(),
        }),
        Received::End(None) => Ok(SessionEnd::Disconnected {
            next: Some((
                buffer.timeline(),
                buffer
                    .segment()
                    .start_lsn(seg_size)
                    .map_err(|e| streamed(EngineError::Internal(e.to_string())))?,
            )),
        }),
        Received::End(Some((next_tli, next_lsn))) => {
            let (mut conn, _) = stream
                .finish()
                .await
                .map_err(|e| streamed(pg_error("ending the stream failed", e)))?;
            let (_, history) = conn
                .timeline_history(next_tli)
                .await
                .map_err(|e| streamed(pg_error("TIMELINE_HISTORY failed", e)))?;
            repo.put_wal(&WalFileName::History(next_tli), history.into())
                .await
                .map_err(|e| streamed(e.into()))?;
            tracing::info!(
                "timeline {} ended; following timeline {} from {next_lsn}",
                timeline.get(),
                next_tli.get()
            );
            Ok(SessionEnd::Disconnected {
                next: Some((next_tli, next_lsn)),
            })
        }
    }
}

/// Make sure the slot exists and holds WAL: created when missing (asked first where the server
/// can say, so its log shows no "already exists" error on every start), made anew when the
/// server invalidated it or `renew` (its WAL is gone). Without `create_slot`, a missing slot is
/// an error that says so.
async fn prepare_slot(
    conn: &mut ReplicationConnection,
    options: &StreamOptions,
    renew: bool,
) -> std::result::Result<(), SessionError> {
    let slot = &options.slot;
    let (exists, invalidated) = match conn.read_replication_slot(slot).await {
        // A slot that reserved WAL and shows no position any more was invalidated
        // (max_slot_wal_keep_size): it holds nothing, so it protects nothing.
        Ok(Some(position)) => (Some(true), position.restart_lsn.is_none()),
        Ok(None) => (Some(false), false),
        // PostgreSQL 13 and 14 cannot say: create, and take "already exists" as the answer.
        Err(_) => (None, false),
    };
    if invalidated {
        tracing::warn!(
            "the replication slot {slot} was invalidated while the receiver was away (the server \
             passed max_slot_wal_keep_size and dropped its WAL); it is made anew so that it \
             holds WAL again. Anything archive_command did not store in the meantime is a gap \
             that `lifeboat info` shows"
        );
    }
    if !options.create_slot {
        if exists == Some(false) {
            return Err(EngineError::invalid(
                format!("the replication slot {slot} does not exist on the server"),
                format!("create it (SELECT pg_create_physical_replication_slot('{slot}', true)), or let the receiver create it (stream.create_slot = true)"),
            )
            .into());
        }
        return Ok(());
    }
    if (renew || invalidated) && exists != Some(false) {
        // An invalidated slot cannot be used again (PostgreSQL 16 and later refuse it).
        conn.drop_slot(slot)
            .await
            .map_err(|e| pg_error("cannot drop the invalidated replication slot", e))?;
    } else if exists == Some(true) {
        return Ok(());
    }
    match conn.create_physical_slot(slot).await {
        Ok(SlotCreated::Created { .. }) => {
            tracing::info!("created the replication slot {slot}");
            Ok(())
        }
        Ok(SlotCreated::AlreadyExists) => Ok(()),
        Err(e) => Err(pg_error("cannot create the replication slot", e).into()),
    }
}

/// Where a fresh receiver starts, as pg_receivewal chooses: after the newest complete segment in
/// the repository (on its timeline), else the slot's position, else the server's flush position.
async fn start_position(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    options: &StreamOptions,
    server_timeline: TimelineId,
    server_flush: Lsn,
    seg_size: u64,
) -> std::result::Result<(TimelineId, Lsn), SessionError> {
    let stored = repo.list_wal().await.map_err(EngineError::from)?;
    let newest = stored
        .iter()
        .filter_map(|w| match w.name {
            WalFileName::Segment(seg) => seg.segno(seg_size).ok().map(|n| (n, seg)),
            _ => None,
        })
        .max_by_key(|(segno, seg)| (*segno, seg.timeline.get()));
    if let Some((segno, seg)) = newest {
        let next = WalSegmentName::from_segno(seg.timeline, segno + 1, seg_size);
        let lsn = next
            .start_lsn(seg_size)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        // Never ahead of the server: a repository fed by an earlier life of this cluster could
        // hold more than the server has.
        if lsn <= server_flush {
            return Ok((seg.timeline, lsn));
        }
    }
    match conn.read_replication_slot(&options.slot).await {
        Ok(Some(slot)) => {
            if let (Some(lsn), Some(tli)) = (slot.restart_lsn, slot.restart_tli) {
                return Ok((tli, lsn));
            }
        }
        Ok(None) => {}
        // PostgreSQL 13 and 14 have no READ_REPLICATION_SLOT: the server's position it is.
        Err(e) => tracing::debug!("READ_REPLICATION_SLOT: {e}"),
    }
    Ok((server_timeline, server_flush))
}

enum Received {
    Shutdown,
    /// The server answered that the WAL asked for is gone.
    WalRemoved,
    End(Option<(TimelineId, Lsn)>),
}

/// The receive loop of one stream.
async fn receive(
    repo: &Repository,
    stream: &mut WalStream,
    buffer: &mut SegmentBuffer,
    options: &StreamOptions,
    report: &mut StreamReport,
    shutdown: Shutdown,
) -> Result<Received> {
    let mut flush_tick =
        tokio::time::interval(options.flush_interval.max(Duration::from_millis(10)));
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(options.status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            m = stream.next() => match m {
                Ok(message) => message,
                Err(e) if e.is_wal_removed() => return Ok(Received::WalRemoved),
                Err(e) => return Err(stream_failed(repo, buffer, report, e).await),
            },
            _ = flush_tick.tick() => {
                flush(repo, stream, buffer, report, false).await?;
                continue;
            }
            _ = status_tick.tick() => {
                send_status(stream, buffer, false).await?;
                continue;
            }
            () = shutdown.clone() => {
                flush(repo, stream, buffer, report, true).await?;
                return Ok(Received::Shutdown);
            }
        };
        let mut next = Some(message);
        // Take everything already arrived before flushing: one piece per burst, not per message.
        while let Some(message) = next.take() {
            match message {
                StreamMessage::XLogData { start, data, .. } => {
                    let stored = buffer.receive(repo, start, &data).await?;
                    if !stored.segments.is_empty() {
                        report.segments_completed += stored.segments.len() as u64;
                        send_status(stream, buffer, false).await?;
                    }
                }
                StreamMessage::Keepalive {
                    reply_requested, ..
                } => {
                    if reply_requested {
                        send_status(stream, buffer, true).await?;
                    }
                }
                StreamMessage::End { next_timeline } => {
                    flush(repo, stream, buffer, report, true).await?;
                    return Ok(Received::End(next_timeline));
                }
            }
            match stream.next().now_or_never() {
                None => {}
                Some(Ok(more)) => next = Some(more),
                Some(Err(e)) if e.is_wal_removed() => return Ok(Received::WalRemoved),
                Some(Err(e)) => return Err(stream_failed(repo, buffer, report, e).await),
            }
        }
        if options.synchronous {
            flush(repo, stream, buffer, report, false).await?;
        }
    }
}

/// The stream broke (the server crashed, the network failed). What arrived before is WAL the
/// server had already flushed: store it before reconnecting, as a clean end of the stream does,
/// or a primary that crashes takes with it up to a flush interval of WAL the receiver held.
async fn stream_failed(
    repo: &Repository,
    buffer: &mut SegmentBuffer,
    report: &mut StreamReport,
    error: ReplicationError,
) -> EngineError {
    match buffer.flush(repo).await {
        Ok(stored) => {
            report.pieces_stored += stored.pieces as u64;
            report.piece_bytes += stored.piece_bytes;
            report.durable_lsn = Some(buffer.durable().to_string());
        }
        Err(e) => tracing::warn!("cannot store the WAL received before the stream failed: {e}"),
    }
    pg_error("the replication stream failed", error)
}

/// Store what arrived as a piece and tell the server it is durable.
async fn flush(
    repo: &Repository,
    stream: &mut WalStream,
    buffer: &mut SegmentBuffer,
    report: &mut StreamReport,
    final_flush: bool,
) -> Result<()> {
    let stored = buffer.flush(repo).await?;
    report.pieces_stored += stored.pieces as u64;
    report.piece_bytes += stored.piece_bytes;
    report.durable_lsn = Some(buffer.durable().to_string());
    if stored.pieces > 0 || final_flush {
        // The stream may already be closed by the server when this is the final flush.
        let sent = send_status(stream, buffer, false).await;
        if !final_flush {
            sent?;
        }
    }
    Ok(())
}

/// A standby status update: written = received, flushed = durable in the repository, applied =
/// none (a receiver never applies; `remote_apply` must not wait for it).
async fn send_status(
    stream: &mut WalStream,
    buffer: &SegmentBuffer,
    reply_requested: bool,
) -> Result<()> {
    stream
        .send_status(
            buffer.received(),
            buffer.durable(),
            Lsn::INVALID,
            reply_requested,
        )
        .await
        .map_err(|e| pg_error("cannot send the standby status", e))?;
    Ok(())
}
