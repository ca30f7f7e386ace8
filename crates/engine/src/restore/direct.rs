//! Writing restored file data around the page cache (`O_DIRECT`) where the filesystem allows it.
//!
//! A restore writes gigabytes that nothing reads again soon. Through the page cache every byte is
//! copied into freshly allocated pages, and on a VM whose host takes back free guest memory (free
//! page reporting) a fresh page costs far more than the copy: the same restore varied from 0.8 to
//! 2.8 s with kernel time the whole difference. With `O_DIRECT` each piece goes from one reused,
//! aligned buffer to the disk. Pieces that are not aligned (a file's last partial page, small
//! files packed into one chunk) and filesystems that refuse `O_DIRECT` take the page cache as
//! before; the first refusal switches direct writes off for the rest of the restore.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::OFlag;

/// Offset, length and memory alignment asked of a direct write: the largest logical block size
/// of common devices, so a multiple of it suits them all.
pub(super) const ALIGN: usize = 4096;

thread_local! {
    // A piece is copied here, at an aligned address, when the decode buffer is not aligned.
    static ALIGNED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How the pieces of one restore are written. Shared by the writer threads.
pub(super) struct PieceWriter {
    direct: AtomicBool,
}

impl PieceWriter {
    pub(super) fn new(try_direct: bool) -> Self {
        Self {
            direct: AtomicBool::new(try_direct),
        }
    }

    /// Write `data` at `offset` of the existing file `path` (never through a symbolic link); the file it was written through (to
    /// fsync) and whether the write went around the page cache.
    pub(super) fn write(&self, path: &Path, data: &[u8], offset: u64) -> io::Result<(File, bool)> {
        if self.direct.load(Ordering::Relaxed) && is_aligned(data.len(), offset) {
            match write_direct(path, data, offset) {
                Ok(file) => return Ok((file, true)),
                // EINVAL: this filesystem or device does not take O_DIRECT, or not with this
                // alignment. Nothing was lost: the page cache takes this piece and the rest.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    tracing::debug!("restore: direct writes refused ({e}); using the page cache");
                    self.direct.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        file.write_all_at(data, offset)?;
        start_writeback(&file, offset, data.len() as u64);
        Ok((file, false))
    }
}

fn is_aligned(len: usize, offset: u64) -> bool {
    len > 0 && len.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64)
}

fn write_direct(path: &Path, data: &[u8], offset: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags((OFlag::O_DIRECT | OFlag::O_NOFOLLOW).bits())
        .open(path)?;
    if data.as_ptr().align_offset(ALIGN) == 0 {
        file.write_all_at(data, offset)?;
    } else {
        ALIGNED.with_borrow_mut(|buf| {
            if buf.len() < data.len() + ALIGN {
                *buf = vec![0u8; data.len() + ALIGN];
            }
            let start = buf.as_ptr().align_offset(ALIGN);
            let aligned = buf
                .get_mut(start..start + data.len())
                .ok_or_else(|| io::Error::from_raw_os_error(nix::libc::EINVAL))?;
            aligned.copy_from_slice(data);
            file.write_all_at(aligned, offset)
        })?;
    }
    Ok(file)
}

/// Ask the kernel to start writing this range to disk now. Without it a large file's pages stay
/// dirty until its fsync at the end, and the disk idles while we decompress. (DONTNEED on dirty
/// pages starts asynchronous writeback; it never discards data.)
fn start_writeback(file: &File, offset: u64, len: u64) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // Only a hint: a failure changes timing, never the result.
    let _ = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn aligned_unaligned_and_tail_pieces_all_land_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let total = 3 * ALIGN * 4 + 100;
        File::create(&path).unwrap().set_len(total as u64).unwrap();
        let writer = PieceWriter::new(true);
        let whole = pattern(total, 7);
        // An aligned piece from an unaligned address (copied), an aligned one, the partial tail.
        let backing = [vec![0u8; 1], whole[..4 * ALIGN].to_vec()].concat();
        let (_, first_direct) = writer.write(&path, &backing[1..], 0).unwrap();
        writer
            .write(&path, &whole[4 * ALIGN..12 * ALIGN], 4 * ALIGN as u64)
            .unwrap();
        let (file, tail_direct) = writer
            .write(&path, &whole[12 * ALIGN..], 12 * ALIGN as u64)
            .unwrap();
        file.sync_all().unwrap();
        assert!(
            !tail_direct,
            "a piece that is not a whole number of pages is buffered"
        );
        // Whether the temp dir's filesystem takes O_DIRECT decides this, not the test.
        let _ = first_direct;
        assert_eq!(std::fs::read(&path).unwrap(), whole);
    }

    #[test]
    fn switched_off_it_writes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap().set_len(ALIGN as u64).unwrap();
        let data = pattern(ALIGN, 3);
        let (_, direct) = PieceWriter::new(false).write(&path, &data, 0).unwrap();
        assert!(!direct);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
