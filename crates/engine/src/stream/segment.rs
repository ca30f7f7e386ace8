//! The segment being received: its bytes so far, what of them is durable in the repository, and
//! the two ways they get there (a piece of the segment, or the complete segment as an ordinary
//! WAL object, as `wal-push` would store it).

use bytes::Bytes;
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_repo::wal::{PutOutcome, StreamPiece};
use lifeboat_repo::{ClusterIdentity, Repository};

use crate::error::join_error;
use crate::{EngineError, Result};

/// Consecutive pieces of one rank merged into one piece of the next rank. Pieces stay few (at most
/// this many per rank: a segment's read at restore stays short) and each byte is rewritten once
/// per rank, a few times in all, where rewriting the whole prefix every so often would write
/// gigabytes per segment under many small synchronous commits.
const MERGE_FAN_IN: usize = 8;

/// Bytes of a segment's long page header (XLogLongPageHeaderData).
const LONG_HEADER_LEN: usize = 40;

/// What happened to the repository while handling received WAL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    pub segments: Vec<WalSegmentName>,
    pub pieces: usize,
    pub piece_bytes: u64,
}

/// The segment being received, from its first byte.
pub struct SegmentBuffer {
    timeline: TimelineId,
    seg_size: u64,
    segment: WalSegmentName,
    start: Lsn,
    bytes: Vec<u8>,
    /// Bytes `0..durable` are in the repository (as pieces).
    durable: usize,
    /// Pieces of this segment this receiver stored, in order, with their rank (older runs' pieces
    /// are found by listing).
    pieces: Vec<(StreamPiece, u8)>,
    /// The identity of the cluster, checked against the repository once per run.
    identity_bound: bool,
}

impl SegmentBuffer {
    /// A buffer for the segment starting at `start` (a segment boundary) on `timeline`.
    pub fn new(timeline: TimelineId, start: Lsn, seg_size: u64) -> Result<Self> {
        if start.segment_offset(seg_size) != 0 {
            return Err(EngineError::Internal(format!(
                "streaming must start at a segment boundary, not {start}"
            )));
        }
        Ok(Self {
            timeline,
            seg_size,
            segment: WalSegmentName::from_lsn(timeline, start, seg_size),
            start,
            bytes: Vec::with_capacity(usize::try_from(seg_size).unwrap_or(0)),
            durable: 0,
            pieces: Vec::new(),
            identity_bound: false,
        })
    }

    /// The position just past the last byte received.
    pub fn received(&self) -> Lsn {
        Lsn(self.start.0 + self.bytes.len() as u64)
    }

    /// The position up to which everything received is durable in the repository.
    pub fn durable(&self) -> Lsn {
        Lsn(self.start.0 + self.durable as u64)
    }

    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    pub fn segment(&self) -> WalSegmentName {
        self.segment
    }

    pub fn has_undurable(&self) -> bool {
        self.bytes.len() > self.durable
    }

    /// Take `data`, received from the server for position `at`; each segment it completes is
    /// stored whole (and its pieces deleted) before this returns.
    pub async fn receive(&mut self, repo: &Repository, at: Lsn, data: &[u8]) -> Result<Stored> {
        if at != self.received() {
            return Err(EngineError::Postgres {
                message: format!(
                    "the server sent WAL for {at} where {} was expected next",
                    self.received()
                ),
                hint: "the replication stream skipped or repeated WAL; lifeboat reconnects and \
                       starts again from the last complete segment"
                    .into(),
            });
        }
        let mut stored = Stored::default();
        let mut rest = data;
        while !rest.is_empty() {
            let room = usize::try_from(self.seg_size).unwrap_or(usize::MAX) - self.bytes.len();
            let take = room.min(rest.len());
            self.bytes.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.bytes.len() as u64 == self.seg_size {
                self.complete(repo).await?;
                stored.segments.push(self.segment);
                self.next_segment();
            }
        }
        Ok(stored)
    }

    /// Store what is not yet durable as a piece, then merge the newest pieces while
    /// [`MERGE_FAN_IN`] of one rank are in a row (the merged piece is stored before the pieces it
    /// covers are deleted). Returns the pieces stored and their bytes.
    pub async fn flush(&mut self, repo: &Repository) -> Result<Stored> {
        // The segment's long page header comes first and names the cluster: nothing is stored
        // before it has arrived and been checked.
        if !self.has_undurable() || (!self.identity_bound && self.bytes.len() < LONG_HEADER_LEN) {
            return Ok(Stored::default());
        }
        self.bind_identity(repo).await?;
        let mut stored = Stored::default();
        let piece = self.store_range(repo, self.durable, &mut stored).await?;
        self.durable = self.bytes.len();
        self.pieces.push((piece, 0));
        loop {
            let n = self.pieces.len();
            if n < MERGE_FAN_IN {
                break;
            }
            let rank = self.pieces[n - 1].1;
            if self.pieces[n - MERGE_FAN_IN..]
                .iter()
                .any(|(_, r)| *r != rank)
            {
                break;
            }
            let from = self.pieces[n - MERGE_FAN_IN].0.start as usize;
            let merged = self.store_range(repo, from, &mut stored).await?;
            let covered: Vec<StreamPiece> = self
                .pieces
                .drain(n - MERGE_FAN_IN..)
                .map(|(piece, _)| piece)
                .collect();
            repo.delete_stream_pieces(&covered).await?;
            self.pieces.push((merged, rank.saturating_add(1)));
        }
        Ok(stored)
    }

    /// Store bytes `from..` of what was received as one piece.
    async fn store_range(
        &self,
        repo: &Repository,
        from: usize,
        stored: &mut Stored,
    ) -> Result<StreamPiece> {
        let plain = Bytes::copy_from_slice(&self.bytes[from..]);
        let offset = u32::try_from(from).map_err(|_| {
            EngineError::Internal(format!("segment offset {from} does not fit 32 bits"))
        })?;
        stored.pieces += 1;
        stored.piece_bytes += plain.len() as u64;
        Ok(repo.put_stream_piece(&self.segment, offset, plain).await?)
    }

    /// Check (once) that the segment's header names the repository's cluster, binding the
    /// repository if nothing is bound yet: WAL of another cluster is never stored.
    async fn bind_identity(&mut self, repo: &Repository) -> Result<()> {
        if self.identity_bound {
            return Ok(());
        }
        // A buffer that started mid-stream always begins at a segment boundary, so the long page
        // header is its first bytes.
        let header = lifeboat_pg::walheader::validate_segment_header(
            &self.bytes,
            self.seg_size,
            &self.segment,
        )
        .map_err(|e| EngineError::Postgres {
            message: format!("the WAL streamed for {} is not valid: {e}", self.segment),
            hint: "the server sent WAL lifeboat cannot read; check the server's log".into(),
        })?;
        repo.bind_identity(&ClusterIdentity {
            system_identifier: header.system_identifier,
            pg_major: header.pg_major,
            wal_segment_size: u64::from(header.segment_size),
        })
        .await?;
        self.identity_bound = true;
        Ok(())
    }

    /// Store the complete segment as `wal-push` would (same name, same content: either may store
    /// it first), then delete every piece of it, this run's and earlier runs'.
    async fn complete(&mut self, repo: &Repository) -> Result<()> {
        self.bind_identity(repo).await?;
        let name = WalFileName::Segment(self.segment);
        let bytes = std::mem::take(&mut self.bytes);
        let codec = repo.codec().clone();
        let (hash, object) = tokio::task::spawn_blocking(move || encode_segment(&codec, &bytes))
            .await
            .map_err(join_error)??;
        match repo.put_wal_encoded(&name, hash, object).await? {
            PutOutcome::Stored | PutOutcome::AlreadyStored => {}
        }
        let mut superseded = repo.list_stream_pieces_of(&self.segment).await?;
        superseded.extend(self.pieces.drain(..).map(|(piece, _)| piece));
        repo.delete_stream_pieces(&superseded).await?;
        Ok(())
    }

    fn next_segment(&mut self) {
        self.start = Lsn(self.start.0 + self.seg_size);
        self.segment = WalSegmentName::from_lsn(self.timeline, self.start, self.seg_size);
        self.bytes = Vec::with_capacity(usize::try_from(self.seg_size).unwrap_or(0));
        self.durable = 0;
        self.pieces.clear();
    }
}

/// Encode a whole segment in 512 KiB frames, as `wal-push` does (cheaper than one frame).
fn encode_segment(
    codec: &lifeboat_repo::Codec,
    bytes: &[u8],
) -> Result<(lifeboat_repo::ContentHash, Vec<u8>)> {
    const PIECE: usize = 512 << 10;
    let fail = |reason: String| EngineError::Internal(format!("cannot encode a segment: {reason}"));
    if let Some(mut encoder) = codec.stream_encoder(bytes.len() as u64).map_err(fail)? {
        for piece in bytes.chunks(PIECE) {
            encoder.update(piece).map_err(fail)?;
        }
        if let Some(done) = encoder.finish().map_err(fail)? {
            return Ok(done);
        }
    }
    codec.encode(bytes).map_err(fail)
}
