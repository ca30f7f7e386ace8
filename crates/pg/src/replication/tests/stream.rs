//! Streaming: a whole segment (also through cancelled reads), the slot following our flush
//! position, a busy slot, removed WAL, a lost connection.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::*;
use crate::cluster::StopMode;

/// Reads the stream until `want` bytes from `start` have arrived, checking that the pieces
/// follow each other; with `cancel`, every read runs under a 1 ms timeout that often fires
/// half-way through a message.
async fn collect(stream: &mut WalStream, start: Lsn, want: u64, cancel: bool) -> (Vec<u8>, u32) {
    let mut bytes = Vec::new();
    let mut cancelled = 0;
    let deadline = Instant::now() + TIMEOUT;
    while (bytes.len() as u64) < want {
        assert!(
            Instant::now() < deadline,
            "only {} bytes arrived",
            bytes.len()
        );
        let message = if cancel {
            match tokio::time::timeout(Duration::from_millis(1), stream.next()).await {
                Ok(message) => message.unwrap(),
                Err(_) => {
                    cancelled += 1;
                    continue;
                }
            }
        } else {
            stream.next().await.unwrap()
        };
        match message {
            StreamMessage::XLogData {
                start: at, data, ..
            } => {
                assert_eq!(at, Lsn(start.0 + bytes.len() as u64), "a gap or overlap");
                bytes.extend_from_slice(&data);
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::End { .. } => panic!("the stream ended after {} bytes", bytes.len()),
        }
    }
    (bytes, cancelled)
}

/// Streams the current segment on a slot while rows are written and WAL switched; the bytes
/// must equal the segment file. Then the slot follows our flush position.
async fn stream_one_segment(cancel: bool) {
    let scratch = Scratch::start("");
    let spec = scratch.spec();
    let mut conn = connect(&spec).await;
    let SlotCreated::Created { lsn } = conn.create_physical_slot("lifeboat").await.unwrap() else {
        panic!("the slot was not created")
    };
    let id = conn.identify_system().await.unwrap();
    let start = segment_start(lsn);
    let mut stream = conn
        .start_physical(Some("lifeboat"), start, id.timeline)
        .await
        .unwrap();

    // A second receiver on the same slot is refused.
    let other = connect(&spec).await;
    let err = other
        .start_physical(Some("lifeboat"), start, id.timeline)
        .await
        .unwrap_err();
    assert!(err.is_slot_in_use(), "{err}");
    assert!(err.to_string().contains("stop it or wait"), "{err}");

    // Several MB of WAL while we read, then the rest of the segment by a switch.
    let cluster = scratch.cluster.clone();
    let writer = tokio::task::spawn_blocking(move || {
        cluster
            .psql("create table t as select g, repeat('x', 200) as pad from generate_series(1, 20000) g")
            .unwrap();
        cluster.psql("select pg_switch_wal()").unwrap();
    });
    let (bytes, cancelled) = collect(&mut stream, start, SEG_SIZE, cancel).await;
    writer.await.unwrap();
    let file = fs::read(segment_file(&scratch.cluster, id.timeline, start)).unwrap();
    assert_eq!(bytes.len(), file.len());
    assert!(
        bytes[..SEG_SIZE as usize] == file[..],
        "streamed bytes differ from the file"
    );
    if cancel {
        eprintln!("{cancelled} reads were cancelled");
        assert!(
            cancelled > 0,
            "no read was ever cancelled: the test proves nothing"
        );
    }

    // The slot advances to what we report as flushed.
    let end = Lsn(start.0 + SEG_SIZE);
    stream.send_status(end, end, end, true).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let restart: Lsn = slot_restart_lsn(&scratch.cluster);
        if restart >= end {
            break;
        }
        assert!(Instant::now() < deadline, "restart_lsn stays at {restart}");
        // Keep reading so the server is never blocked on a full socket.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    }

    // Stopping the stream ourselves gives the connection back.
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(next, None);
    assert_eq!(
        conn.identify_system().await.unwrap().timeline,
        TimelineId::ONE
    );
}

#[tokio::test]
async fn streams_a_segment_and_advances_the_slot() {
    stream_one_segment(false).await;
}

#[tokio::test]
async fn cancelled_reads_lose_nothing() {
    stream_one_segment(true).await;
}

#[tokio::test]
async fn removed_wal_is_reported() {
    let scratch = Scratch::start("min_wal_size = 32MB\nmax_wal_size = 64MB\n");
    let spec = scratch.spec();
    let mut conn = connect(&spec).await;
    let first = conn.identify_system().await.unwrap();
    for _ in 0..4 {
        scratch
            .cluster
            .psql("create table if not exists t (x int); insert into t values (1); select pg_switch_wal()")
            .unwrap();
    }
    scratch.cluster.psql("checkpoint").unwrap();
    scratch.cluster.psql("checkpoint").unwrap();
    let old = segment_file(&scratch.cluster, TimelineId::ONE, first.xlogpos);
    assert!(!old.exists(), "{} is still there", old.display());
    // The server accepts the command and fails once in copy mode, on its first read.
    let mut stream = conn
        .start_physical(None, segment_start(first.xlogpos), TimelineId::ONE)
        .await
        .unwrap();
    let err = stream.next().await.unwrap_err();
    assert!(err.is_wal_removed(), "{err}");
    assert!(!err.is_slot_in_use() && !err.is_connection_lost(), "{err}");
    assert!(
        err.to_string().contains("restart from the archive"),
        "{err}"
    );
    // The connection survives an ERROR.
    assert_eq!(
        stream.next().await.unwrap(),
        StreamMessage::End {
            next_timeline: None
        }
    );
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(next, None);
    conn.identify_system().await.unwrap();
}

/// A terminated WAL sender is a lost connection; a server shutting down ends the stream once
/// we have confirmed all its WAL (a fast shutdown waits for that, up to wal_sender_timeout).
#[tokio::test]
async fn lost_connection_and_shutdown() {
    let scratch = Scratch::start("");
    let spec = scratch.spec();
    for shutdown in [false, true] {
        let mut conn = connect(&spec).await;
        let id = conn.identify_system().await.unwrap();
        let mut stream = conn
            .start_physical(None, segment_start(id.xlogpos), id.timeline)
            .await
            .unwrap();
        let stopper = if shutdown {
            let cluster = scratch.cluster.clone();
            Some(tokio::task::spawn_blocking(move || {
                cluster.stop(StopMode::Fast).unwrap();
            }))
        } else {
            scratch
                .cluster
                .psql("select pg_terminate_backend(pid) from pg_stat_replication")
                .unwrap();
            None
        };
        let deadline = Instant::now() + TIMEOUT;
        let mut received = Lsn::INVALID;
        let mut ended = false;
        let err = loop {
            assert!(Instant::now() < deadline, "the stream goes on");
            let message = match tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap() {
                Ok(message) => message,
                Err(e) => break e,
            };
            let reply = match message {
                StreamMessage::XLogData { start, data, .. } => {
                    received = Lsn(start.0 + data.len() as u64);
                    false
                }
                StreamMessage::Keepalive {
                    reply_requested, ..
                } => reply_requested,
                StreamMessage::End { next_timeline } => {
                    assert!(shutdown, "ended without a shutdown");
                    assert_eq!(next_timeline, None);
                    ended = true;
                    false
                }
            };
            if (reply || shutdown)
                && let Err(e) = stream
                    .send_status(received, received, received, false)
                    .await
            {
                break e;
            }
        };
        assert!(err.is_connection_lost(), "{err}");
        assert!(!err.is_wal_removed() && !err.is_slot_in_use(), "{err}");
        assert_eq!(ended, shutdown);
        assert!(stream.finish().await.unwrap_err().is_connection_lost());
        if let Some(stopper) = stopper {
            stopper.await.unwrap();
        }
    }
}
