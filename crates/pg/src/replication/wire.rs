//! The wire under a replication connection: a byte stream (Unix socket or TCP), backend frames
//! cut from a read buffer, frontend messages queued in a write buffer, and simple queries.
//!
//! Reads and writes keep their progress in the buffers, so a future dropped half-way (a
//! `tokio::select!` branch losing) loses nothing: the next call continues where it stopped.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ReplicationError, Result, ServerError};

/// Anything we can speak the protocol over.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// Largest backend message we accept. WAL senders send at most 128 kB of WAL per message and
/// history files are small; anything near this is a broken stream.
const MAX_FRAME: usize = 64 << 20;

/// One backend message: its type byte and body (without type and length).
#[derive(Debug)]
pub(super) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A row of a result: each column's bytes, `None` for NULL.
pub(super) type Row = Vec<Option<Bytes>>;

pub(super) struct Wire {
    stream: Box<dyn Transport>,
    rbuf: BytesMut,
    /// Frontend messages not yet (completely) written.
    pub wbuf: BytesMut,
    /// Where we are connected (`host=... port=... user=... dbname=...`), for messages.
    pub target: String,
    /// `server_version` from ParameterStatus, as the server spells it.
    pub server_version: String,
    /// Notices the server sent, oldest first, until taken.
    pub notices: Vec<ServerError>,
}

impl Wire {
    pub fn new(stream: Box<dyn Transport>, target: String) -> Self {
        Wire {
            stream,
            rbuf: BytesMut::with_capacity(256 << 10),
            wbuf: BytesMut::new(),
            target,
            server_version: String::new(),
            notices: Vec::new(),
        }
    }

    pub fn io_error(&self, what: &str, source: io::Error) -> ReplicationError {
        ReplicationError::Io {
            what: what.to_owned(),
            target: self.target.clone(),
            source,
        }
    }

    pub fn protocol_error(&self, frame: &str, what: &str, detail: String) -> ReplicationError {
        ReplicationError::Protocol {
            frame: frame.to_owned(),
            what: what.to_owned(),
            target: self.target.clone(),
            detail,
        }
    }

    pub fn server_error(&self, what: &str, body: &[u8]) -> ReplicationError {
        match parse_error_fields(body) {
            Ok(server) => ReplicationError::Server {
                what: what.to_owned(),
                target: self.target.clone(),
                server: Box::new(server),
            },
            Err(detail) => self.protocol_error("ErrorResponse", what, detail),
        }
    }

    /// Writes out everything queued. Cancel-safe: what was written is removed from the queue.
    pub async fn flush(&mut self, what: &str) -> Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf).await {
                Ok(0) => {
                    return Err(self.io_error(what, io::Error::from(io::ErrorKind::WriteZero)));
                }
                Ok(n) => self.wbuf.advance(n),
                Err(e) => return Err(self.io_error(what, e)),
            }
        }
        self.stream
            .flush()
            .await
            .map_err(|e| self.io_error(what, e))
    }

    /// The next backend message. Cancel-safe: bytes read stay in the buffer.
    pub async fn read_frame(&mut self, what: &str) -> Result<Frame> {
        loop {
            if let Some(frame) = self.cut_frame(what)? {
                return Ok(frame);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    return Err(self.io_error(
                        what,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(self.io_error(what, e)),
            }
        }
    }

    fn cut_frame(&mut self, what: &str) -> Result<Option<Frame>> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.rbuf[0];
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        let len = len as usize;
        if !(4..=MAX_FRAME).contains(&len) {
            return Err(self.protocol_error(
                &format!("message of type {:?}", char::from(tag)),
                what,
                format!("length {len} is out of range"),
            ));
        }
        let total = len + 1;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        let mut frame = self.rbuf.split_to(total).freeze();
        frame.advance(5);
        Ok(Some(Frame { tag, body: frame }))
    }

    /// Handles the messages that may come at any time (notices, parameter changes); returns the
    /// frame back if it is something else.
    pub fn absorb(&mut self, frame: Frame) -> Result<Option<Frame>> {
        match frame.tag {
            b'N' => {
                if let Ok(notice) = parse_error_fields(&frame.body) {
                    self.notices.push(notice);
                }
                Ok(None)
            }
            b'S' => {
                let mut body = frame.body.clone();
                let name = cstr(&mut body).ok_or_else(|| {
                    self.protocol_error("ParameterStatus", "reading", "no name".into())
                })?;
                let value = cstr(&mut body).ok_or_else(|| {
                    self.protocol_error("ParameterStatus", "reading", "no value".into())
                })?;
                if name == "server_version" {
                    self.server_version = value;
                }
                Ok(None)
            }
            _ => Ok(Some(frame)),
        }
    }

    /// Runs one command with the simple query protocol; returns its rows. A server error is
    /// returned after ReadyForQuery, so the connection stays usable.
    pub async fn simple_query(&mut self, what: &str, sql: &str) -> Result<Vec<Row>> {
        self.send_query(what, sql)?;
        self.flush(what).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame(what).await?;
            let Some(frame) = self.absorb(frame)? else {
                continue;
            };
            match frame.tag {
                b'T' | b'C' | b'I' => {}
                b'D' => rows.push(self.parse_row(what, &frame.body)?),
                b'E' => {
                    error.get_or_insert(self.server_error(what, &frame.body));
                }
                b'Z' => break,
                tag => return Err(self.unexpected(what, tag)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    pub fn send_query(&mut self, what: &str, sql: &str) -> Result<()> {
        postgres_protocol::message::frontend::query(sql, &mut self.wbuf)
            .map_err(|e| ReplicationError::InvalidArgument(format!("could not send {what}: {e}")))
    }

    pub fn unexpected(&self, what: &str, tag: u8) -> ReplicationError {
        self.protocol_error(
            &format!("message of type {:?}", char::from(tag)),
            what,
            "not expected here".into(),
        )
    }

    pub fn parse_row(&self, what: &str, body: &Bytes) -> Result<Row> {
        let bad = |detail: &str| self.protocol_error("DataRow", what, detail.to_owned());
        let mut body = body.clone();
        if body.remaining() < 2 {
            return Err(bad("no column count"));
        }
        let count = body.get_u16();
        let mut row = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            if body.remaining() < 4 {
                return Err(bad("truncated column length"));
            }
            let len = body.get_i32();
            if len < 0 {
                row.push(None);
                continue;
            }
            let len = len as usize;
            if body.remaining() < len {
                return Err(bad("column longer than the message"));
            }
            row.push(Some(body.split_to(len)));
        }
        if body.has_remaining() {
            return Err(bad("bytes after the last column"));
        }
        Ok(row)
    }
}

/// A NUL-terminated string from the front of `buf`, or `None` if there is none.
pub(super) fn cstr(buf: &mut Bytes) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0)?;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Some(text)
}

/// The fields of an ErrorResponse or NoticeResponse body. Uses the non-localized severity (`V`)
/// when the server sends it (9.6+).
pub(super) fn parse_error_fields(body: &[u8]) -> Result<ServerError, String> {
    let mut buf = Bytes::copy_from_slice(body);
    let mut e = ServerError::default();
    let mut localized_severity = String::new();
    loop {
        if !buf.has_remaining() {
            return Err("no terminating zero byte".into());
        }
        let kind = buf.get_u8();
        if kind == 0 {
            break;
        }
        let value = cstr(&mut buf).ok_or("a field without its terminating zero byte")?;
        match kind {
            b'S' => localized_severity = value,
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    Ok(e)
}

/// A column as UTF-8 text (`None` for NULL).
pub(super) fn text_column(row: &Row, i: usize) -> Result<Option<&str>, String> {
    match row.get(i) {
        None => Err(format!("column {} is missing", i + 1)),
        Some(None) => Ok(None),
        Some(Some(bytes)) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("column {} is not UTF-8", i + 1)),
    }
}
