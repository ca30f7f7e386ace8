//! Reading back: one loop ([`read_back`]) reads a list of objects a bounded number at a time
//! (fewer when they are large, [`in_flight`]), tells the caller's progress sink about each, and
//! sorts them into intact, damaged (with why) and gone; [`read_chunk`] and [`read_wal`] read one
//! chunk or one WAL object and say which.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use lifeboat_pg::history::TimelineHistory;
use lifeboat_pg::walheader;
use lifeboat_pg::walname::WalFileName;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::{ClusterIdentity, RepoError, Repository};

use super::{EventSink, VerifyEvent};
use tokio::sync::Semaphore;

use crate::{EngineError, Result, join_error};

/// Memory for objects being read and decoded at once: each read holds the stored object and its
/// plaintext, so a 16 MiB WAL segment costs about 32 MiB. Fewer reads run at once when objects are
/// large, so a repository of 1 GiB segments or 16 MiB blocks stays within this on any machine.
/// 128 MiB: 32 reads of 1 MiB blocks (the object-store default concurrency) but 4 of 16 MiB
/// segments, as many as two cores read before reads had their own setting; a segment read is
/// long enough that a few at once keep the link busy.
const READ_MEMORY_BUDGET: u64 = 128 * 1024 * 1024;

/// Reads allowed at once: `concurrency`, fewer when objects are so large that many of them at once
/// would exceed [`READ_MEMORY_BUDGET`] (each read holds the stored object and its plaintext).
pub(super) fn in_flight(concurrency: usize, object_size: u64) -> usize {
    let by_memory = READ_MEMORY_BUDGET / (2 * object_size.max(1));
    concurrency
        .min(usize::try_from(by_memory).unwrap_or(usize::MAX))
        .max(1)
}

/// What [`read_back`] found.
pub(super) struct ReadBack<K> {
    /// Read intact, with the stored size.
    pub(super) intact: Vec<(K, u64)>,
    /// Read and found damaged, with why.
    pub(super) damaged: Vec<(K, String)>,
    /// Deleted since the listing.
    pub(super) gone: Vec<K>,
    /// Objects read (intact or damaged), and their stored bytes.
    pub(super) read: u64,
    pub(super) bytes: u64,
}

/// Read each of `objects` (with its listed stored size) with `read`, `in_flight` at a time,
/// telling `events` about each as it ends. An error reading one (a store that cannot be read)
/// ends the loop and is returned; a damaged or vanished object is a result.
pub(super) async fn read_back<K, F, Fut>(
    objects: Vec<(K, u64)>,
    in_flight: usize,
    events: &EventSink,
    read: F,
) -> Result<ReadBack<K>>
where
    K: Copy,
    F: Fn(K) -> Fut,
    Fut: Future<Output = Result<Outcome>>,
{
    let mut found = ReadBack {
        intact: Vec::new(),
        damaged: Vec::new(),
        gone: Vec::new(),
        read: 0,
        bytes: 0,
    };
    let mut reads = futures::stream::iter(objects)
        .map(|(key, size)| {
            let reading = read(key);
            async move { (key, size, reading.await) }
        })
        .buffer_unordered(in_flight);
    while let Some((key, size, result)) = reads.next().await {
        events(VerifyEvent::Read { bytes: size });
        match result? {
            Outcome::Intact => {
                found.read += 1;
                found.bytes += size;
                found.intact.push((key, size));
            }
            Outcome::Damaged(reason) => {
                found.read += 1;
                found.bytes += size;
                found.damaged.push((key, reason));
            }
            Outcome::Gone => found.gone.push(key),
        }
    }
    Ok(found)
}

thread_local! {
    /// Plaintext of the chunk being checked, reused from chunk to chunk by each thread.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Read one chunk back: decryption, length, content hash, hash equals name. The fetch waits on
/// the store; decoding takes one of `cpu`'s permits, so that many reads in flight decode on no
/// more threads than there are cores (each decoding thread keeps a 1 MiB buffer).
pub(super) async fn read_chunk(
    repo: &Repository,
    id: &ChunkId,
    cpu: Arc<Semaphore>,
) -> Result<Outcome> {
    let raw = match repo.store().get(&id.key()).await {
        Ok(raw) => raw,
        Err(e) if e.is_not_found() => return Ok(Outcome::Gone),
        Err(e) => return Err(RepoError::from(e).into()),
    };
    let permit = cpu
        .acquire_owned()
        .await
        .map_err(|e| EngineError::Internal(format!("verify worker pool closed: {e}")))?;
    let (repo, id) = (repo.clone(), *id);
    let decoded = tokio::task::spawn_blocking(move || {
        let result =
            PLAIN.with_borrow_mut(|buf| repo.decode_chunk_aligned(&id, &raw, buf, 1).map(drop));
        drop(permit);
        result
    })
    .await
    .map_err(join_error)?;
    match decoded {
        Ok(()) => Ok(Outcome::Intact),
        Err(RepoError::Corrupt { reason, .. }) => Ok(Outcome::Damaged(reason)),
        Err(e) => Err(e.into()),
    }
}

/// How reading one object back ended.
pub(super) enum Outcome {
    Intact,
    Damaged(String),
    /// Deleted since the listing.
    Gone,
}

/// Read one WAL object back: decode (hash, length, tag), then check that it is what its name
/// says, as `wal-fetch` would before handing it to PostgreSQL.
pub(super) async fn read_wal(
    repo: &Repository,
    name: &WalFileName,
    identity: Option<&ClusterIdentity>,
) -> Result<Outcome> {
    let plain = match repo.get_wal(name).await {
        Ok(Some(plain)) => plain,
        Ok(None) => return Ok(Outcome::Gone),
        Err(RepoError::Corrupt { reason, .. }) => return Ok(Outcome::Damaged(reason)),
        Err(e) => return Err(e.into()),
    };
    let header = match name {
        WalFileName::Segment(seg) => walheader::validate_segment(&plain, seg).map(Some),
        WalFileName::Partial(seg) => walheader::validate_partial(&plain, seg).map(Some),
        WalFileName::History(tli) => {
            return Ok(match std::str::from_utf8(&plain) {
                Ok(text) => match TimelineHistory::parse(*tli, text) {
                    Ok(_) => Outcome::Intact,
                    Err(e) => Outcome::Damaged(e.to_string()),
                },
                Err(e) => Outcome::Damaged(format!("not text: {e}")),
            });
        }
        WalFileName::Backup { .. } => {
            return Ok(if plain.is_empty() {
                Outcome::Damaged("empty".into())
            } else {
                Outcome::Intact
            });
        }
    };
    match header {
        Err(e) => Ok(Outcome::Damaged(format!(
            "decodes intact but is not the WAL its name says: {e}"
        ))),
        Ok(Some(h)) => match identity {
            Some(id) if id.system_identifier != h.system_identifier => {
                Ok(Outcome::Damaged(format!(
                    "written by cluster {}, the repository belongs to cluster {}",
                    h.system_identifier, id.system_identifier
                )))
            }
            _ => Ok(Outcome::Intact),
        },
        Ok(None) => Ok(Outcome::Intact),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_flight_respect_memory() {
        assert_eq!(in_flight(4, 1 << 20), 4);
        assert_eq!(in_flight(32, 1 << 20), 32);
        assert_eq!(in_flight(64, 16 << 20), 4);
        assert_eq!(in_flight(64, 1 << 30), 1);
    }
}
