//! What a backup reuses: the chunks the repository still holds (not encoded or uploaded again)
//! and the entries of files unchanged since the newest complete backup (not even read).

use std::collections::HashSet;

use lifeboat_repo::Repository;
use lifeboat_repo::backup::{ChunkId, Entry, FileEntry, Manifest, Root};
use lifeboat_repo::stored::ChunkScope;

use super::scan::PlannedFile;
use crate::Result;

/// The chunks a backup need not encode or upload again: those of the newest complete backup
/// (`newest`) that the repository still holds, and every chunk an index places in a stored pack
/// (an interrupted backup's, named by its checkpoint indexes, or an older backup's). Located
/// through the indexes first (only in packs a listing of `packs/` finds), so a repository of
/// packs costs no listing of `data/`; a chunk of an unreadable index, or lost, or removed after
/// verify found it damaged, is not known, so it is stored anew instead of referenced.
pub(crate) async fn known_chunks(
    repo: &Repository,
    newest: Option<&Manifest>,
) -> Result<HashSet<ChunkId>> {
    let wanted: HashSet<ChunkId> = newest.map(|m| m.chunks().collect()).unwrap_or_default();
    let stored = repo.stored_chunks(ChunkScope::Wanted(&wanted)).await?;
    let mut known: HashSet<ChunkId> = wanted.into_iter().filter(|c| stored.contains(c)).collect();
    known.extend(stored.packed.chunks());
    Ok(known)
}

/// Seconds by which a file must predate the previous backup's start to be trusted unchanged: a
/// write in the same second as that backup's read could leave size and mtime as they were.
const UNCHANGED_MARGIN_SECONDS: i64 = 2;

/// Split the walk into files to read and files whose entry in `previous` can be reused as it is:
/// same size and modification time, and modified well before `previous` started (so the copy it
/// holds was taken after the last change). Reused entries keep their chunk references.
pub(crate) fn split_unchanged(
    files: Vec<PlannedFile>,
    previous: Option<&Manifest>,
    block_size: u32,
    present: &HashSet<ChunkId>,
) -> (Vec<PlannedFile>, Vec<FileEntry>) {
    let Some(prev) = previous.filter(|p| p.block_size == block_size) else {
        return (files, Vec::new());
    };
    let trusted_before = prev.start_time.unix_timestamp() - UNCHANGED_MARGIN_SECONDS;
    let by_path: std::collections::HashMap<(bool, &str), &FileEntry> = prev
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File(f) => Some(((f.root == Root::Config, f.path.as_str()), f)),
            _ => None,
        })
        .collect();
    let mut read = Vec::with_capacity(files.len());
    let mut reused = Vec::new();
    for f in files {
        match by_path.get(&(f.root == Root::Config, f.rel.as_str())) {
            Some(old)
                if old.size == f.size
                    && old.mtime == f.mtime
                    && f.mtime < trusted_before
                    && (f.size == 0 || !old.blocks.is_empty() || old.packed.is_some())
                    && old.blocks.iter().all(|c| present.contains(c))
                    && old
                        .packed
                        .as_ref()
                        .is_none_or(|p| present.contains(&p.chunk)) =>
            {
                let mut entry = (*old).clone();
                entry.mode = f.mode;
                reused.push(entry);
            }
            _ => read.push(f),
        }
    }
    (read, reused)
}
