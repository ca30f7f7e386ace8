//! Writing chunk data into the restored files, each fsynced once its last piece landed, and the
//! final fsync of whatever was not.

use super::*;

thread_local! {
    // One decode buffer per worker thread, reused from chunk to chunk.
    pub(super) static PLAIN_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which files still wait for pieces, and which are already fsynced.
pub(super) struct FileProgress {
    pub(super) pieces_left: Vec<AtomicUsize>,
    pub(super) synced: Vec<AtomicBool>,
}

pub(super) fn write_chunk(
    plain: &[u8],
    places: &[Placement],
    targets: &[Target],
    progress: &FileProgress,
    writer: &direct::PieceWriter,
) -> Result<u64> {
    let mut written = 0;
    for p in places {
        let t = &targets[p.file];
        let start = p.chunk_offset as usize;
        let end = start + p.len as usize;
        let data = plain.get(start..end).ok_or_else(|| {
            EngineError::Internal(format!(
                "chunk is {} bytes, {} needs bytes {start}..{end}",
                plain.len(),
                t.entry.path
            ))
        })?;
        let (file, _direct) = writer
            .write(&t.dest, data, p.file_offset)
            .map_err(io(format!("cannot write {}", t.dest.display())))?;
        written += p.len;
        if progress.pieces_left[p.file].fetch_sub(1, Ordering::AcqRel) == 1 {
            file.sync_all()
                .map_err(io(format!("cannot fsync {}", t.dest.display())))?;
            progress.synced[p.file].store(true, Ordering::Release);
        }
    }
    Ok(written)
}

/// fsync every file and directory written, so that the restore is durable before it reports.
pub(super) fn sync_all(
    targets: &[Target],
    progress: &FileProgress,
    manifest: &Manifest,
    target_dir: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    parallel: usize,
) -> Result<()> {
    let unsynced: Vec<&Target> = targets
        .iter()
        .zip(&progress.synced)
        .filter(|(_, done)| !done.load(Ordering::Acquire))
        .map(|(t, _)| t)
        .collect();
    parallel_map(&unsynced, parallel * 2, |t| {
        OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(&t.dest)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot fsync {}", t.dest.display())))
    })?;
    let mut dirs: Vec<PathBuf> = vec![target_dir.to_path_buf()];
    dirs.extend(tablespaces.values().cloned());
    for e in &manifest.entries {
        if let Entry::Dir { path, root, .. } = e {
            dirs.push(destination(*root, path, target_dir, tablespaces));
        }
    }
    parallel_map(&dirs, parallel * 2, |d| {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot fsync the directory {}", d.display())))
    })?;
    Ok(())
}
