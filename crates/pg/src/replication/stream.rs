//! A running `START_REPLICATION ... PHYSICAL`: [`WalStream`] reads WAL data and keepalives,
//! sends standby status updates, and follows the end of the stream (a timeline the server has
//! left, or a shutdown) back to an idle connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};

use super::ReplicationConnection;
use super::error::{ReplicationError, Result};
use super::wire::{Row, text_column};
use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// One thing the server said while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL bytes starting at `start`; `server_end` is how far the server has WAL.
    XLogData {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    /// The server is alive and has WAL up to `server_end`; with `reply_requested`, send a status
    /// update now or be disconnected after `wal_sender_timeout`.
    Keepalive {
        server_end: Lsn,
        reply_requested: bool,
    },
    /// The server ended the stream: the timeline ended (next timeline and where it starts) or,
    /// with `None`, the server is shutting down (or the stream was stopped by
    /// [`WalStream::finish`]).
    End {
        next_timeline: Option<(TimelineId, Lsn)>,
    },
}

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In CopyBoth mode.
    Streaming,
    /// Copy mode is over or ending (our CopyDone is queued or sent); reading the result set
    /// (the next timeline) up to ReadyForQuery. WAL still arriving is dropped.
    Closing { next: Option<(TimelineId, Lsn)> },
    /// ReadyForQuery received: the connection takes commands again.
    Ended { next: Option<(TimelineId, Lsn)> },
    /// The server ended the connection (shutdown): nothing more will come.
    Gone,
}

/// WAL streaming on a replication connection (CopyBoth mode). Cancel-safe: partial messages
/// stay buffered in here, so [`WalStream::next`] can lose a `tokio::select!` race at any point.
pub struct WalStream {
    conn: ReplicationConnection,
    state: State,
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: u64 = 946_684_800 * 1_000_000;

impl WalStream {
    /// Sends `sql` (a START_REPLICATION command) and waits until the server starts streaming,
    /// or answers at once that the timeline ends there.
    pub(super) async fn start(mut conn: ReplicationConnection, sql: &str) -> Result<WalStream> {
        let what = "starting replication";
        let wire = &mut conn.wire;
        wire.send_query(what, sql)?;
        wire.flush(what).await?;
        loop {
            let frame = wire.read_frame(what).await?;
            let Some(frame) = wire.absorb(frame)? else {
                continue;
            };
            match frame.tag {
                // CopyBothResponse.
                b'W' => {
                    return Ok(WalStream {
                        conn,
                        state: State::Streaming,
                    });
                }
                // Starting exactly at the end of an old timeline: no copy mode, just the result
                // set naming the next timeline.
                b'T' | b'C' => {}
                b'D' => {
                    let row = wire.parse_row(what, &frame.body)?;
                    let next = next_timeline(&conn, what, &row)?;
                    return WalStream::after_result(conn, next).await;
                }
                b'Z' => {
                    return Ok(WalStream {
                        conn,
                        state: State::Ended { next: None },
                    });
                }
                b'E' => return Err(wire.server_error(what, &frame.body)),
                tag => return Err(wire.unexpected(what, tag)),
            }
        }
    }

    /// Reads up to ReadyForQuery after the result set of a stream that never started.
    async fn after_result(
        conn: ReplicationConnection,
        next: (TimelineId, Lsn),
    ) -> Result<WalStream> {
        let mut stream = WalStream {
            conn,
            state: State::Closing { next: Some(next) },
        };
        stream.next().await?;
        Ok(stream)
    }

    /// The server's version as `server_version_num` spells it.
    #[must_use]
    pub fn server_version_num(&self) -> u32 {
        self.conn.version_num
    }

    /// The notices and warnings the server sent since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<super::ServerError> {
        self.conn.take_notices()
    }

    /// The next message. After [`StreamMessage::End`] it keeps answering `End`. After an error
    /// of severity ERROR (removed WAL, say) the server has left copy mode: the next call
    /// answers `End { next_timeline: None }` and [`WalStream::finish`] gives the connection
    /// back. Cancel-safe: partial frames stay buffered in `self`.
    pub async fn next(&mut self) -> Result<StreamMessage> {
        let what = "reading the WAL stream";
        loop {
            match self.state {
                State::Ended { next } => {
                    return Ok(StreamMessage::End {
                        next_timeline: next,
                    });
                }
                State::Gone => return Err(gone(&self.conn)),
                State::Streaming | State::Closing { .. } => {}
            }
            let wire = &mut self.conn.wire;
            if !wire.wbuf.is_empty() {
                wire.flush(what).await?;
            }
            let frame = wire.read_frame(what).await?;
            let Some(frame) = wire.absorb(frame)? else {
                continue;
            };
            match (self.state, frame.tag) {
                (State::Streaming, b'd') => return self.copy_data(frame.body),
                // The server left copy mode: the timeline ended. Leave it too; the result set
                // naming the next timeline follows.
                (State::Streaming, b'c') => {
                    wire.wbuf.put_u8(b'c');
                    wire.wbuf.put_i32(4);
                    self.state = State::Closing { next: None };
                }
                // CommandComplete in copy mode: the server is shutting down and closes now.
                (State::Streaming, b'C') => {
                    self.state = State::Gone;
                    return Ok(StreamMessage::End {
                        next_timeline: None,
                    });
                }
                (State::Closing { .. }, b'd' | b'c' | b'T' | b'C') => {}
                (State::Closing { .. }, b'D') => {
                    let row = wire.parse_row(what, &frame.body)?;
                    let next = next_timeline(&self.conn, what, &row)?;
                    self.state = State::Closing { next: Some(next) };
                }
                (State::Closing { next }, b'Z') => {
                    self.state = State::Ended { next };
                    return Ok(StreamMessage::End {
                        next_timeline: next,
                    });
                }
                // An ERROR (removed WAL, say) ends copy mode and the command: ReadyForQuery
                // follows and the connection takes commands again ([`WalStream::finish`]).
                // Anything worse ends the connection.
                (_, b'E') => {
                    let e = wire.server_error(what, &frame.body);
                    self.state = if e.server_error().is_some_and(|s| s.severity == "ERROR") {
                        State::Closing { next: None }
                    } else {
                        State::Gone
                    };
                    return Err(e);
                }
                (_, tag) => return Err(wire.unexpected(what, tag)),
            }
        }
    }

    fn copy_data(&self, mut body: Bytes) -> Result<StreamMessage> {
        let what = "reading the WAL stream";
        let wire = &self.conn.wire;
        if !body.has_remaining() {
            return Err(wire.protocol_error("CopyData", what, "empty".into()));
        }
        match body.get_u8() {
            b'w' => {
                if body.remaining() < 24 {
                    return Err(wire.protocol_error(
                        "XLogData",
                        what,
                        format!("{} bytes, less than its 24-byte header", body.remaining()),
                    ));
                }
                let start = Lsn(body.get_u64());
                let server_end = Lsn(body.get_u64());
                let _send_time = body.get_i64();
                Ok(StreamMessage::XLogData {
                    start,
                    server_end,
                    data: body,
                })
            }
            b'k' => {
                if body.remaining() != 17 {
                    return Err(wire.protocol_error(
                        "primary keepalive message",
                        what,
                        format!("{} bytes instead of 17", body.remaining()),
                    ));
                }
                let server_end = Lsn(body.get_u64());
                let _send_time = body.get_i64();
                Ok(StreamMessage::Keepalive {
                    server_end,
                    reply_requested: body.get_u8() != 0,
                })
            }
            kind => Err(wire.protocol_error(
                &format!("CopyData of kind {:?}", char::from(kind)),
                what,
                "unknown kind (expected 'w' or 'k')".into(),
            )),
        }
    }

    /// Standby status update (`'r'`): written, flushed (durable) and applied positions, the time
    /// now, and whether the server should answer with a keepalive at once. The server frees WAL
    /// (and a slot advances) up to `flush`; a synchronous primary releases commits up to it.
    /// After the stream ended there is nothing to report to, and this does nothing.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        if self.state != State::Streaming {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let micros = u64::try_from(now.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_sub(PG_EPOCH_OFFSET_MICROS);
        let wbuf = &mut self.conn.wire.wbuf;
        wbuf.put_u8(b'd');
        wbuf.put_i32(4 + 1 + 8 * 4 + 1);
        wbuf.put_u8(b'r');
        wbuf.put_u64(write.0);
        wbuf.put_u64(flush.0);
        wbuf.put_u64(apply.0);
        wbuf.put_u64(micros);
        wbuf.put_u8(u8::from(reply_requested));
        self.conn
            .wire
            .flush("sending a standby status update")
            .await
    }

    /// Ends streaming and gives the connection back for commands, with the next timeline when
    /// the server ended the stream at a timeline switch. Called before the end, it stops the
    /// stream (CopyDone) and drops the WAL still in flight. After the server shut down, an
    /// error for which [`ReplicationError::is_connection_lost`] holds.
    pub async fn finish(mut self) -> Result<(ReplicationConnection, Option<(TimelineId, Lsn)>)> {
        if self.state == State::Streaming {
            let wbuf = &mut self.conn.wire.wbuf;
            wbuf.put_u8(b'c');
            wbuf.put_i32(4);
            self.state = State::Closing { next: None };
        }
        loop {
            match self.state {
                State::Ended { next } => return Ok((self.conn, next)),
                State::Gone => return Err(gone(&self.conn)),
                State::Streaming | State::Closing { .. } => {
                    self.next().await?;
                }
            }
        }
    }
}

fn gone(conn: &ReplicationConnection) -> ReplicationError {
    conn.wire.io_error(
        "reading the WAL stream",
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the server ended the connection (it is shutting down, or sent a fatal error)",
        ),
    )
}

/// The result set at the end of a timeline: `next_tli` (int8) and `next_tli_startpos`.
fn next_timeline(conn: &ReplicationConnection, what: &str, row: &Row) -> Result<(TimelineId, Lsn)> {
    let bad = |detail: String| {
        conn.wire
            .protocol_error("end-of-timeline result", what, detail)
    };
    let tli = text_column(row, 0)
        .map_err(&bad)?
        .ok_or_else(|| bad("next timeline is NULL".into()))?;
    let tli = TimelineId::parse_decimal(tli).map_err(|e| bad(e.to_string()))?;
    let pos = text_column(row, 1)
        .map_err(&bad)?
        .ok_or_else(|| bad("next timeline start is NULL".into()))?;
    let pos: Lsn = pos
        .parse()
        .map_err(|e: crate::lsn::LsnParseError| bad(e.to_string()))?;
    Ok((tli, pos))
}

impl std::fmt::Debug for WalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStream")
            .field("target", &self.conn.wire.target)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::wire::Wire;
    use super::*;

    fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
        out.put_u8(tag);
        out.put_i32(i32::try_from(body.len()).unwrap() + 4);
        out.put_slice(body);
    }

    fn xlogdata(out: &mut BytesMut, start: u64, data: &[u8]) {
        let mut body = BytesMut::new();
        body.put_u8(b'w');
        body.put_u64(start);
        body.put_u64(start + data.len() as u64);
        body.put_i64(0);
        body.put_slice(data);
        frame(out, b'd', &body);
    }

    /// A server that dribbles its messages 7 bytes at a time into a 64-byte pipe, and a reader
    /// whose every read is cancelled as soon as it would wait: nothing is lost or reordered,
    /// and the end of a timeline comes out with the connection usable.
    #[tokio::test]
    async fn reads_cancelled_anywhere_lose_nothing() {
        let (client, server) = tokio::io::duplex(64);
        let (mut from_client, mut to_client) = tokio::io::split(server);
        let mut out = BytesMut::new();
        let pieces: Vec<Vec<u8>> = [1usize, 100, 1000, 5000]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut at = 0x100_0000_u64;
        for (i, piece) in pieces.iter().enumerate() {
            xlogdata(&mut out, at, piece);
            at += piece.len() as u64;
            if i == 1 {
                frame(&mut out, b'N', b"SWARNING\0VWARNING\0C01000\0Mcareful\0\0");
                frame(&mut out, b'S', b"server_version\x0015.9\0");
                let mut k = BytesMut::new();
                k.put_u8(b'k');
                k.put_u64(at);
                k.put_i64(0);
                k.put_u8(1);
                frame(&mut out, b'd', &k);
            }
        }
        frame(&mut out, b'c', b"");
        frame(&mut out, b'T', b"\0\0");
        let mut row = BytesMut::new();
        row.put_u16(2);
        for col in [&b"2"[..], b"0/5000000"] {
            row.put_i32(i32::try_from(col.len()).unwrap());
            row.put_slice(col);
        }
        frame(&mut out, b'D', &row);
        frame(&mut out, b'C', b"START_STREAMING\0");
        frame(&mut out, b'Z', b"I");
        let writer = tokio::spawn(async move {
            for chunk in out.chunks(7) {
                to_client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            to_client
        });

        let conn = ReplicationConnection {
            wire: Wire::new(Box::new(client), "test".into()),
            version_num: 150_000,
        };
        let mut stream = WalStream {
            conn,
            state: State::Streaming,
        };
        let mut got = Vec::new();
        let mut cancelled = 0;
        loop {
            let message = tokio::select! {
                biased;
                message = stream.next() => message.unwrap(),
                () = tokio::task::yield_now() => {
                    cancelled += 1;
                    continue;
                }
            };
            let end = matches!(message, StreamMessage::End { .. });
            got.push(message);
            if end {
                break;
            }
        }
        assert!(cancelled > 100, "{cancelled}");
        let two = TimelineId::new(2).unwrap();
        let mut want: Vec<StreamMessage> = Vec::new();
        let mut at = 0x100_0000_u64;
        for (i, piece) in pieces.iter().enumerate() {
            want.push(StreamMessage::XLogData {
                start: Lsn(at),
                server_end: Lsn(at + piece.len() as u64),
                data: Bytes::from(piece.clone()),
            });
            at += piece.len() as u64;
            if i == 1 {
                want.push(StreamMessage::Keepalive {
                    server_end: Lsn(at),
                    reply_requested: true,
                });
            }
        }
        want.push(StreamMessage::End {
            next_timeline: Some((two, Lsn(0x500_0000))),
        });
        assert_eq!(got, want);

        let (mut conn, next) = stream.finish().await.unwrap();
        assert_eq!(next, Some((two, Lsn(0x500_0000))));
        let notices = conn.take_notices();
        assert_eq!(notices.len(), 1);
        assert_eq!(
            (notices[0].code.as_str(), notices[0].message.as_str()),
            ("01000", "careful")
        );
        assert_eq!(conn.wire.server_version, "15.9");
        // Our CopyDone answered the server's.
        writer.await.unwrap();
        drop(conn);
        let mut sent = Vec::new();
        from_client.read_to_end(&mut sent).await.unwrap();
        assert_eq!(sent, b"c\0\0\0\x04");
    }

    /// A malformed message is an error that names it, never a panic.
    #[tokio::test]
    async fn malformed_frames_are_named() {
        let cases: [(&[u8], &str); 5] = [
            (b"d\0\0\0\x0cw\0\0\0\0\0\0\0", "XLogData"),
            (b"d\0\0\0\x07k\0\0", "primary keepalive message"),
            (b"d\0\0\0\x05x", "CopyData of kind 'x'"),
            (b"d\0\0\0\x04", "CopyData"),
            (b"d\0\0\0\x02", "length 2 is out of range"),
        ];
        for (bytes, needle) in cases {
            let (client, mut server) = tokio::io::duplex(1024);
            server.write_all(bytes).await.unwrap();
            let mut stream = WalStream {
                conn: ReplicationConnection {
                    wire: Wire::new(Box::new(client), "test".into()),
                    version_num: 150_000,
                },
                state: State::Streaming,
            };
            let err = stream.next().await.unwrap_err();
            assert!(matches!(err, ReplicationError::Protocol { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}
