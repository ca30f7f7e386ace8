//! Streamed WAL: the pieces of a segment that `wal-stream` stores while the segment fills, and the
//! segment's streamed prefix read back from them (docs/FORMAT.md, "Streamed WAL").
//!
//! A piece holds bytes `start..end` of one segment under a key that names both offsets, written
//! create-only like every object: an upload never replaces anything, so a crash at any moment
//! leaves every earlier piece intact. The streamed prefix of a segment is the longest chain of
//! pieces from offset 0 whose every piece decodes; pieces a longer one covers are redundant and
//! deleted by their writer once the longer one is durable, or when the complete segment is in
//! the WAL archive.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::WalSegmentName;
use lifeboat_storage::{ErrorKind, PutMode};

use crate::{RepoError, Repository, Result, keys};

/// One stored piece of a streamed segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPiece {
    pub segment: WalSegmentName,
    /// Offset in the segment of the piece's first byte.
    pub start: u32,
    /// Offset in the segment just past the piece's last byte.
    pub end: u32,
    pub stored_size: u64,
}

impl StreamPiece {
    pub fn key(&self) -> String {
        keys::stream_piece(&self.segment, self.start, self.end)
    }
}

/// The streamed prefix of a segment: bytes `0..bytes.len()`, every piece verified.
#[derive(Debug, Clone)]
pub struct StreamedPrefix {
    pub segment: WalSegmentName,
    pub bytes: Vec<u8>,
    /// Pieces that could not be used (key, why): damaged, vanished, or of the wrong length. The
    /// prefix stops where the remaining pieces stop; callers must say so.
    pub unusable: Vec<(String, String)>,
}

/// The pieces, among `pieces` of one segment, that make the longest contiguous run from offset 0:
/// at each position the piece reaching furthest. Empty when no piece starts at 0.
pub fn streamed_chain(pieces: &[StreamPiece]) -> Vec<StreamPiece> {
    let mut chain = Vec::new();
    let mut at = 0u32;
    loop {
        let next = pieces
            .iter()
            .filter(|p| p.start <= at && p.end > at)
            .max_by_key(|p| (p.end, std::cmp::Reverse(p.start)));
        match next {
            Some(piece) => {
                at = piece.end;
                chain.push(piece.clone());
            }
            None => return chain,
        }
    }
}

impl Repository {
    /// Store `plain` as bytes `start..start + len` of `segment`. Storing the same piece again
    /// (a retry after a lost answer) succeeds; different bytes under its key are a conflict.
    pub async fn put_stream_piece(
        &self,
        segment: &WalSegmentName,
        start: u32,
        plain: Bytes,
    ) -> Result<StreamPiece> {
        let len = u32::try_from(plain.len())
            .ok()
            .filter(|len| *len > 0)
            .ok_or_else(|| {
                RepoError::Invalid(format!(
                    "a streamed piece of {segment} must hold 1 byte to 4 GiB, not {}",
                    plain.len()
                ))
            })?;
        let end = start.checked_add(len).ok_or_else(|| {
            RepoError::Invalid(format!("a streamed piece of {segment} ends past 4 GiB"))
        })?;
        let key = keys::stream_piece(segment, start, end);
        let codec = self.codec().clone();
        let (hash, object) = tokio::task::spawn_blocking(move || codec.encode(&plain))
            .await
            .map_err(|e| RepoError::Invalid(format!("encoding {key} failed: {e}")))?
            .map_err(|reason| RepoError::Invalid(format!("cannot encode {key}: {reason}")))?;
        let stored_size = object.len() as u64;
        match self
            .store()
            .put(&key, Bytes::from(object), PutMode::Create)
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                let header = self.object_header(&key).await?;
                if header.hash != hash {
                    return Err(RepoError::Invalid(format!(
                        "{key} already holds other bytes than the ones streamed now: the \
                         repository is shared with another receiver of another cluster or \
                         timeline; stop the other receiver and check `[stream]` in both configs"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(StreamPiece {
            segment: *segment,
            start,
            end,
            stored_size,
        })
    }

    /// Every streamed piece, of one timeline or of all; sorted by segment, then offsets.
    pub async fn list_stream_pieces(
        &self,
        timeline: Option<TimelineId>,
    ) -> Result<Vec<StreamPiece>> {
        let prefix = match timeline {
            Some(tli) => format!("{}{:08X}", keys::STREAM_PREFIX, tli.get()),
            None => keys::STREAM_PREFIX.to_string(),
        };
        self.list_pieces_under(&prefix).await
    }

    /// The streamed pieces of `segment`, sorted by offsets.
    pub async fn list_stream_pieces_of(
        &self,
        segment: &WalSegmentName,
    ) -> Result<Vec<StreamPiece>> {
        let mut pieces = self.list_pieces_under(&keys::stream_dir(segment)).await?;
        pieces.retain(|p| p.segment == *segment);
        Ok(pieces)
    }

    async fn list_pieces_under(&self, prefix: &str) -> Result<Vec<StreamPiece>> {
        let mut pieces: Vec<StreamPiece> = self
            .store()
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                keys::parse_stream_piece_key(&o.key).map(|(segment, start, end)| StreamPiece {
                    segment,
                    start,
                    end,
                    stored_size: o.size,
                })
            })
            .collect();
        pieces.sort_by_cached_key(|p| (p.segment.to_string(), p.start, p.end));
        Ok(pieces)
    }

    /// The streamed prefix of the segment `pieces` belong to (all of one segment). A piece that
    /// does not decode, has vanished or holds another length than its key says is left out and
    /// the chain is built again without it, so one bad upload costs only what no other piece
    /// covers. Errors only when the store cannot be read at all.
    pub async fn read_streamed_prefix(
        &self,
        segment: &WalSegmentName,
        pieces: &[StreamPiece],
    ) -> Result<StreamedPrefix> {
        let mut bad: HashSet<String> = HashSet::new();
        let mut unusable = Vec::new();
        let mut read: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        loop {
            let usable: Vec<StreamPiece> = pieces
                .iter()
                .filter(|p| p.segment == *segment && !bad.contains(&p.key()))
                .cloned()
                .collect();
            let chain = streamed_chain(&usable);
            let mut failed = false;
            for piece in &chain {
                let key = piece.key();
                if read.contains_key(&key) {
                    continue;
                }
                match self.read_piece(piece).await {
                    Ok(plain) => {
                        read.insert(key, plain);
                    }
                    Err(why) => {
                        unusable.push((key.clone(), why));
                        bad.insert(key);
                        failed = true;
                    }
                }
            }
            if failed {
                continue;
            }
            let mut bytes = Vec::new();
            for piece in &chain {
                let plain = read
                    .get(&piece.key())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                // The chain's pieces may overlap: take each one from where the prefix stands.
                let skip = (bytes.len() as u64).saturating_sub(u64::from(piece.start));
                let from = usize::try_from(skip).unwrap_or(usize::MAX).min(plain.len());
                bytes.extend_from_slice(&plain[from..]);
            }
            return Ok(StreamedPrefix {
                segment: *segment,
                bytes,
                unusable,
            });
        }
    }

    /// One piece, decoded and checked against the length its key names; `Err` says why it cannot
    /// be used (a store that cannot be read at all also lands here: the prefix then stops early,
    /// and the caller reports every unusable piece).
    async fn read_piece(&self, piece: &StreamPiece) -> std::result::Result<Vec<u8>, String> {
        let key = piece.key();
        let raw = match self.store().get(&key).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => return Err("deleted while being read".to_string()),
            Err(e) => return Err(format!("cannot be read: {e}")),
        };
        let repo = self.clone();
        let key_owned = key.clone();
        let decoded = tokio::task::spawn_blocking(move || repo.decode(&key_owned, &raw))
            .await
            .map_err(|e| format!("decoding failed: {e}"))?
            .map_err(|e| format!("damaged: {e}"))?;
        let plain = decoded.1;
        let expected = u64::from(piece.end - piece.start);
        if plain.len() as u64 != expected {
            return Err(format!(
                "holds {} bytes where its name says {expected}",
                plain.len()
            ));
        }
        Ok(plain)
    }

    /// Delete streamed pieces (superseded by a longer piece or by the complete segment). A piece
    /// already gone is fine.
    pub async fn delete_stream_pieces(&self, pieces: &[StreamPiece]) -> Result<()> {
        for piece in pieces {
            match self.store().delete(&piece.key()).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: u32, end: u32) -> StreamPiece {
        StreamPiece {
            segment: "000000010000000000000003"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid segment name")),
            start,
            end,
            stored_size: 1,
        }
    }

    #[test]
    fn the_chain_starts_at_zero_and_takes_the_furthest_piece() {
        assert!(streamed_chain(&[piece(10, 20)]).is_empty());
        let pieces = [
            piece(0, 10),
            piece(10, 20),
            piece(0, 15),
            piece(20, 30),
            piece(40, 50),
        ];
        let chain: Vec<(u32, u32)> = streamed_chain(&pieces)
            .iter()
            .map(|p| (p.start, p.end))
            .collect();
        assert_eq!(chain, vec![(0, 15), (10, 20), (20, 30)]);
        let consolidated = [piece(0, 10), piece(10, 20), piece(0, 20)];
        let chain: Vec<(u32, u32)> = streamed_chain(&consolidated)
            .iter()
            .map(|p| (p.start, p.end))
            .collect();
        assert_eq!(chain, vec![(0, 20)]);
    }
}
