//! One program's output into the repository: `pg_dump` (or `pg_dumpall`) runs with its stdout
//! read by a blocking thread that cuts it with content-defined chunking (FastCDC 2020,
//! [`fastcdc::v2020::StreamCDC`]), hashes each chunk and encodes the ones the repository does not
//! hold; the async side appends those to packs ([`PackWriter`]) or, in a version 1 repository,
//! stores them loose. No temporary file: memory is the chunker's buffer (`max_size`), two chunks
//! in the channel and the pack writer's packs, whatever the database's size.

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastcdc::v2020::StreamCDC;
use lifeboat_repo::backup::{ChunkId, ChunkPut};
use lifeboat_repo::dump::{Chunking, DumpChunk};
use lifeboat_repo::{Codec, Repository};
use tokio::sync::mpsc;

use super::programs::tail;
use crate::backup::packer::PackWriter;
use crate::{EngineError, Result, join_error};

/// Content-defined chunk sizes. The defaults were picked by measurement (docs/FORMAT.md,
/// "Dumps"): small enough that a change of a few rows re-stores a few hundred KiB, large enough
/// that the index holds few entries per GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkSizes {
    fn default() -> Self {
        Self {
            min: 64 * 1024,
            avg: 256 * 1024,
            max: 1024 * 1024,
        }
    }
}

impl ChunkSizes {
    pub fn describe(&self) -> Chunking {
        Chunking {
            algorithm: "fastcdc-v2020".into(),
            min_size: self.min,
            avg_size: self.avg,
            max_size: self.max,
        }
    }

    /// Within what the chunker accepts, and ordered.
    pub fn check(&self) -> Result<()> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MAX, MINIMUM_MIN};
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (self.avg..=MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg;
        if ok {
            Ok(())
        } else {
            Err(EngineError::invalid(
                format!(
                    "dump chunk sizes min {} avg {} max {} are out of range",
                    self.min, self.avg, self.max
                ),
                "use min ≤ avg ≤ max with min 64 B..1 MiB, avg 256 B..4 MiB, max up to 16 MiB",
            ))
        }
    }
}

/// Where new chunks go and what is already stored.
pub struct Sink {
    pub repo: Repository,
    /// `None`: a version 1 repository, chunks stored loose.
    pub packs: Option<Arc<PackWriter>>,
    /// Chunks the repository holds (located by an index in a listed pack) or this run has
    /// already encoded: not encoded again.
    pub known: Arc<Mutex<HashSet<ChunkId>>>,
    pub sizes: ChunkSizes,
}

/// What one stream came to.
#[derive(Debug, Default)]
pub struct Streamed {
    pub chunks: Vec<DumpChunk>,
    pub size: u64,
    /// Encoded bytes of the chunks it added.
    pub stored: u64,
    pub new_chunks: u64,
}

/// One chunk from the cutting thread; `encoded` when it is new.
struct Piece {
    id: ChunkId,
    len: u32,
    encoded: Option<Vec<u8>>,
}

/// Run `cmd` (its stdout is the stream) and store what it writes. A non-zero exit fails with its
/// stderr; so does a stream that could not be stored (the program is then killed).
pub async fn store(sink: &Sink, mut cmd: Command, what: &str) -> Result<Streamed> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (tx, mut rx) = mpsc::channel::<Piece>(2);
    let codec = sink.repo.codec().clone();
    let known = sink.known.clone();
    let sizes = sink.sizes;
    let name = what.to_string();
    let cutter = tokio::task::spawn_blocking(move || cut(cmd, &name, &codec, &known, sizes, &tx));
    let mut out = Streamed::default();
    let mut failure = None;
    while let Some(piece) = rx.recv().await {
        out.size += u64::from(piece.len);
        out.chunks.push(DumpChunk {
            id: piece.id,
            len: piece.len,
        });
        let Some(encoded) = piece.encoded else {
            continue;
        };
        out.new_chunks += 1;
        out.stored += encoded.len() as u64;
        let stored = match &sink.packs {
            Some(packs) => packs.add(piece.id, &encoded).await,
            None => sink
                .repo
                .put_chunk(&piece.id, Bytes::from(encoded))
                .await
                .map(|put| {
                    if put == ChunkPut::AlreadyStored {
                        tracing::debug!("chunk {} was already stored", piece.id);
                    }
                })
                .map_err(EngineError::from),
        };
        if let Err(e) = stored {
            // Dropping the receiver stops the cutting thread, which kills the program.
            failure = Some(e);
            break;
        }
    }
    drop(rx);
    let cut_result = cutter.await.map_err(join_error)?;
    if let Some(e) = failure {
        return Err(e);
    }
    cut_result?;
    Ok(out)
}

/// The blocking half: run the program, cut its stdout, hash and (when new) encode each chunk,
/// send it on. Returns once the program has exited successfully.
fn cut(
    mut cmd: Command,
    what: &str,
    codec: &Codec,
    known: &Mutex<HashSet<ChunkId>>,
    sizes: ChunkSizes,
    tx: &mpsc::Sender<Piece>,
) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| EngineError::io(format!("cannot run {program} for {what}"), e))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(EngineError::Internal(format!(
            "{program}: its output was not captured"
        )));
    };
    // stderr drained beside, keeping its end, so a chatty program never blocks on it.
    let errors = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 64 * 1024 {
                kept.drain(..kept.len() - 32 * 1024);
            }
        }
        kept
    });
    let outcome = cut_stream(stdout, what, codec, known, sizes, tx);
    if outcome.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| EngineError::io(format!("cannot wait for {program}"), e))?;
    let stderr = errors.join().unwrap_or_default();
    outcome?;
    if !status.success() {
        return Err(EngineError::Postgres {
            message: format!(
                "{program} failed for {what} ({status}): {}",
                tail(&stderr, 4000)
            ),
            hint: "nothing was recorded for this dump (its manifest is written only when every \
                   database was dumped); fix the cause pg_dump names and run `lifeboat dump` again"
                .into(),
        });
    }
    if !stderr.is_empty() {
        tracing::warn!("{program} for {what} said: {}", tail(&stderr, 2000));
    }
    Ok(())
}

fn cut_stream(
    stdout: impl Read,
    what: &str,
    codec: &Codec,
    known: &Mutex<HashSet<ChunkId>>,
    sizes: ChunkSizes,
    tx: &mpsc::Sender<Piece>,
) -> Result<()> {
    for chunk in StreamCDC::new(stdout, sizes.min, sizes.avg, sizes.max) {
        let chunk = chunk.map_err(|e| {
            EngineError::io(
                format!("cannot read the output of the dump of {what}"),
                e.into(),
            )
        })?;
        let id = ChunkId(codec.hash(&chunk.data));
        let new = known
            .lock()
            .map(|mut k| k.insert(id))
            .map_err(|_| EngineError::Internal("the set of known chunks is poisoned".into()))?;
        let encoded = if new {
            Some(
                codec
                    .encode_with_hash(&chunk.data, id.0)
                    .map_err(|reason| {
                        EngineError::Internal(format!("cannot encode a chunk: {reason}"))
                    })?,
            )
        } else {
            None
        };
        let len = u32::try_from(chunk.length)
            .map_err(|_| EngineError::Internal("a chunk longer than 4 GiB".into()))?;
        if tx.blocking_send(Piece { id, len, encoded }).is_err() {
            // The receiver gave up (a store failure it reports itself).
            return Err(EngineError::Internal(format!(
                "the dump of {what} stopped: its chunks could not be stored"
            )));
        }
    }
    Ok(())
}
