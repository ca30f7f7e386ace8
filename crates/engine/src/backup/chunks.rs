//! The copy pipeline of a backup: read → verify page checksums → hash → compress → encrypt →
//! upload (a loose chunk, or into a storage pack through [`PackWriter`]), with parallelism over
//! blocks (not only files) and memory bounded by `in_flight × block_size` (plus the storage packs
//! in memory, see [`PackWriter`]), never by the size of the database.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::page::{self, PageCheck};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::{BadPage, ChunkId, ChunkPut};

use super::packer::PackWriter;
use super::scan::PlannedFile;
use crate::{EngineError, Result, join_error};

/// One unit of work: a block of a large file, or several small files packed together.
#[derive(Debug, Clone)]
pub enum Item {
    Block { file: usize, index: u64 },
    Pack { files: Vec<usize> },
}

/// Split files into work items: a file of at least `block_size` bytes becomes one item per block;
/// smaller files are packed, in walk order, into items of at most `block_size` bytes.
pub fn plan_items(files: &[PlannedFile], block_size: u64) -> Vec<Item> {
    let mut items = Vec::new();
    let mut pack: Vec<usize> = Vec::new();
    let mut pack_bytes = 0u64;
    for (i, f) in files.iter().enumerate() {
        if f.size >= block_size {
            for index in 0..f.size.div_ceil(block_size) {
                items.push(Item::Block { file: i, index });
            }
            continue;
        }
        if pack_bytes + f.size > block_size && !pack.is_empty() {
            items.push(Item::Pack {
                files: std::mem::take(&mut pack),
            });
            pack_bytes = 0;
        }
        pack.push(i);
        pack_bytes += f.size;
    }
    if !pack.is_empty() {
        items.push(Item::Pack { files: pack });
    }
    items
}

/// What one item produced.
#[derive(Debug)]
pub enum Done {
    Block {
        file: usize,
        index: u64,
        chunk: ChunkId,
        /// Bytes actually read (short when the file shrank while we read it).
        len: u64,
    },
    Pack {
        chunk: ChunkId,
        /// (file, offset in the chunk, length, the file's own hash); files that vanished are absent.
        files: Vec<(usize, u64, u64, ChunkId)>,
    },
}

/// Shared state of a running copy.
pub struct Copier {
    pub repo: Repository,
    pub files: Arc<Vec<PlannedFile>>,
    pub block_size: u64,
    /// Judge page checksums (the cluster has them on).
    pub checksums: bool,
    pub start_lsn: Lsn,
    /// Chunks known to be stored (referenced by a complete backup): not encoded or uploaded again.
    pub known: Arc<HashSet<ChunkId>>,
    /// Chunks this backup has already encoded for upload. Identical blocks (runs of zero pages,
    /// say) are uploaded once: two create-only puts of one key at the same moment race at the
    /// store, and some S3 servers answer the loser before reading its body and drop the
    /// connection, which looks like a network failure.
    pub claimed: std::sync::Mutex<HashSet<ChunkId>>,
    pub bytes_read: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub bad_pages: std::sync::Mutex<Vec<BadPage>>,
    /// Permits for the CPU stage (read, hash, compress, encrypt): the configured parallelism.
    pub cpu: Arc<tokio::sync::Semaphore>,
    /// Permits for uploads: the store's request concurrency, independent of `cpu`.
    pub requests: Arc<tokio::sync::Semaphore>,
    /// Where new chunks go in a repository that writes packs; `None`: loose `data/` objects.
    pub storage_packs: Option<Arc<PackWriter>>,
}

impl Copier {
    /// Run every item with at most `in_flight` at a time; `on_done` sees each result as it lands.
    pub async fn run(
        self: &Arc<Self>,
        items: Vec<Item>,
        in_flight: usize,
        mut on_done: impl FnMut(Done, &Copier),
    ) -> Result<()> {
        let mut results = futures::stream::iter(items)
            .map(|item| {
                let me = self.clone();
                async move { me.process(item).await }
            })
            .buffer_unordered(in_flight.max(1));
        while let Some(done) = results.next().await {
            on_done(done?, self);
        }
        Ok(())
    }

    async fn process(self: Arc<Self>, item: Item) -> Result<Done> {
        let me = self.clone();
        // At most `parallel` threads read and compress; more items may wait on uploads.
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| EngineError::Internal(format!("worker pool closed: {e}")))?;
        let (done, encoded) = tokio::task::spawn_blocking(move || {
            let result = me.read_and_encode(item);
            drop(permit);
            result
        })
        .await
        .map_err(join_error)??;
        if let (Some(encoded), Some(chunk)) = (encoded, done_chunk(&done)) {
            if let Some(packs) = &self.storage_packs {
                packs.add(chunk, &encoded).await?;
                return Ok(done);
            }
            let _request = self
                .requests
                .acquire()
                .await
                .map_err(|e| EngineError::Internal(format!("upload pool closed: {e}")))?;
            if let ChunkPut::Stored(n) = self.repo.put_chunk(&chunk, encoded).await? {
                self.bytes_stored.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(done)
    }

    /// Whether this item uploads `chunk`: true for the first item of the backup that meets it.
    fn claim(&self, chunk: ChunkId) -> bool {
        self.claimed
            .lock()
            .map(|mut claimed| claimed.insert(chunk))
            // A poisoned set (a thread panicked while holding it) only costs a second upload.
            .unwrap_or(true)
    }

    /// Read, check, hash and (unless already stored) encode one item, in this thread's buffer.
    fn read_and_encode(&self, item: Item) -> Result<(Done, Option<Bytes>)> {
        // Blocks and packs use separate buffers so that neither shrinks the other's.
        match item {
            Item::Block { .. } => {
                READ_BUFFER.with_borrow_mut(|buf| self.read_and_encode_in(item, buf))
            }
            Item::Pack { .. } => {
                PACK_BUFFER.with_borrow_mut(|buf| self.read_and_encode_in(item, buf))
            }
        }
    }

    fn read_and_encode_in(&self, item: Item, buf: &mut Vec<u8>) -> Result<(Done, Option<Bytes>)> {
        let codec = self.repo.codec();
        let plain_len;
        let done = match item {
            Item::Block { file, index } => {
                let f = &self.files[file];
                let offset = index * self.block_size;
                let want = self.block_size.min(f.size.saturating_sub(offset)) as usize;
                // Grown once per thread and never shrunk: zeroing 1 MiB per block costs as
                // much as hashing it.
                if buf.len() < want {
                    buf.resize(want, 0);
                }
                let len = match File::open(&f.abs) {
                    Ok(handle) => {
                        let n = read_at_full(&handle, &mut buf[..want], offset).map_err(|e| {
                            EngineError::io(format!("cannot read {}", f.abs.display()), e)
                        })?;
                        if let Some(segno) = f.relation_segno {
                            self.check_pages(&handle, f, segno, offset, &mut buf[..n]);
                        }
                        n as u64
                    }
                    // Dropped while we copy: WAL replay removes it again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                    Err(e) => {
                        return Err(EngineError::io(
                            format!("cannot open {}", f.abs.display()),
                            e,
                        ));
                    }
                };
                plain_len = len as usize;
                let chunk = ChunkId(codec.hash(&buf[..plain_len]));
                Done::Block {
                    file,
                    index,
                    chunk,
                    len,
                }
            }
            Item::Pack { files } => {
                buf.clear();
                let mut placed = Vec::with_capacity(files.len());
                for i in files {
                    let f = &self.files[i];
                    let handle = match File::open(&f.abs) {
                        Ok(h) => h,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(EngineError::io(
                                format!("cannot open {}", f.abs.display()),
                                e,
                            ));
                        }
                    };
                    let start = buf.len();
                    // At most the size the walk saw: growth since then is replayed from WAL.
                    handle.take(f.size).read_to_end(buf).map_err(|e| {
                        EngineError::io(format!("cannot read {}", f.abs.display()), e)
                    })?;
                    if let Some(segno) = f.relation_segno {
                        let handle = File::open(&f.abs).map_err(|e| {
                            EngineError::io(format!("cannot open {}", f.abs.display()), e)
                        })?;
                        self.check_pages(&handle, f, segno, 0, &mut buf[start..]);
                    }
                    let len = (buf.len() - start) as u64;
                    let hash = ChunkId(codec.hash(&buf[start..]));
                    placed.push((i, start as u64, len, hash));
                }
                plain_len = buf.len();
                let chunk = ChunkId(codec.hash(buf));
                Done::Pack {
                    chunk,
                    files: placed,
                }
            }
        };
        let plain: &[u8] = &buf[..plain_len];
        self.bytes_read
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        let chunk = done_chunk(&done);
        let encoded = match chunk {
            Some(chunk) if !self.known.contains(&chunk) && self.claim(chunk) => Some(Bytes::from(
                codec.encode_with_hash(plain, chunk.0).map_err(|reason| {
                    EngineError::Internal(format!("cannot encode a chunk: {reason}"))
                })?,
            )),
            _ => None,
        };
        Ok((done, encoded))
    }

    /// Verify the page checksums of `buf` (read at `offset` of a relation segment). A page that
    /// fails is read again once (it may have been half-written while we read it); one that still
    /// fails is recorded, and its second reading is what gets stored.
    fn check_pages(&self, handle: &File, f: &PlannedFile, segno: u32, offset: u64, buf: &mut [u8]) {
        if !self.checksums {
            return;
        }
        let first_block = (offset / page::BLCKSZ as u64) as u32;
        for (i, page_bytes) in buf.chunks_exact_mut(page::BLCKSZ).enumerate() {
            let blkno = segno * page::RELSEG_BLOCKS + first_block + i as u32;
            if let PageCheck::Bad { .. } = page::check_page(page_bytes, blkno, self.start_lsn) {
                let page_offset = offset + (i * page::BLCKSZ) as u64;
                let mut again = vec![0u8; page::BLCKSZ];
                let verdict = match read_at_full(handle, &mut again, page_offset) {
                    Ok(n) if n == page::BLCKSZ => {
                        page_bytes.copy_from_slice(&again);
                        page::check_page(page_bytes, blkno, self.start_lsn)
                    }
                    // Truncated meanwhile: the truncation is in WAL.
                    _ => PageCheck::Valid,
                };
                if let PageCheck::Bad { stored, computed } = verdict {
                    tracing::warn!(
                        "page {blkno} of {} fails its checksum (stored {stored:#06x}, computed {computed:#06x})",
                        f.rel
                    );
                    if let Ok(mut bad) = self.bad_pages.lock() {
                        bad.push(BadPage {
                            path: f.rel.clone(),
                            block: blkno,
                            stored_checksum: stored,
                            computed_checksum: computed,
                        });
                    }
                }
            }
        }
    }
}

fn done_chunk(done: &Done) -> Option<ChunkId> {
    match done {
        Done::Block { chunk, .. } | Done::Pack { chunk, .. } => Some(*chunk),
    }
}

thread_local! {
    // One read buffer per worker thread, reused: a fresh 1 MiB buffer per block costs page faults
    // that show up as a third of the backup's CPU time.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static PACK_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(size: u64) -> PlannedFile {
        PlannedFile {
            rel: "x".into(),
            abs: PathBuf::from("/nonexistent"),
            root: Default::default(),
            size,
            mode: 0o600,
            mtime: 0,
            relation_segno: None,
        }
    }

    #[test]
    fn large_files_split_and_small_files_pack() {
        let files = vec![file(10), file(2500), file(20), file(990), file(5), file(0)];
        let items = plan_items(&files, 1000);
        let shape: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Block { file, index } => format!("b{file}.{index}"),
                Item::Pack { files } => format!("p{files:?}"),
            })
            .collect();
        assert_eq!(shape, ["b1.0", "b1.1", "b1.2", "p[0, 2]", "p[3, 4, 5]"]);
    }
}
