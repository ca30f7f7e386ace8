//! The files of a restore: the read-only plan (what delta keeps, fixes, creates and removes,
//! and which chunks that takes) and its execution (removals, real directories, files created or
//! resized, the backup's own links last). Nothing is opened through a symbolic link.

use super::*;

/// What the planning pass decided for one file of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileAction {
    /// (Delta) the file is there with the right size and mode; only differing blocks are written.
    Keep,
    /// (Delta) a regular file is there, with the wrong size or mode: fixed, then its differing
    /// blocks written.
    Fix,
    /// Created (whatever is at its path removed first), every block written.
    Create,
}

/// The read-only plan of a restore's files: what each file needs, what goes, which chunks.
pub(super) struct FilePlan {
    pub(super) actions: Vec<FileAction>,
    /// Top-most paths to remove (delta: what the backup does not hold).
    pub(super) remove: Vec<PathBuf>,
    pub(super) placements: HashMap<ChunkId, Vec<Placement>>,
    /// Files left exactly as they were (delta).
    pub(super) kept: u64,
}

/// Every path the restore makes or keeps: the roots, directories, files and their parents, links.
fn expected_paths(manifest: &Manifest, layout: &Layout, targets: &[Target]) -> HashSet<PathBuf> {
    let mut expected: HashSet<PathBuf> = HashSet::new();
    expected.insert(layout.target_dir.clone());
    expected.insert(layout.target_dir.join(plan::RESTORE_MARKER));
    for (oid, dir) in &layout.tablespaces {
        expected.insert(dir.clone());
        expected.insert(layout.target_dir.join("pg_tblspc"));
        expected.insert(layout.target_dir.join("pg_tblspc").join(oid.to_string()));
    }
    for entry in &manifest.entries {
        match entry {
            Entry::Dir { path, root, .. } => {
                expected.insert(destination(
                    *root,
                    path,
                    &layout.target_dir,
                    &layout.tablespaces,
                ));
            }
            Entry::Link { path, .. } => {
                expected.insert(layout.target_dir.join(path));
            }
            Entry::File(_) => {}
        }
    }
    for t in targets {
        let mut dir = t.dest.parent();
        while let Some(d) = dir {
            if !expected.insert(d.to_path_buf()) {
                break;
            }
            dir = d.parent();
        }
        expected.insert(t.dest.clone());
    }
    expected
}

/// Whether every directory from a root down to `dir` is a real directory (no link): only then
/// is a file found under it the one the restore would write.
fn real_dir_chain(dir: &Path, roots: &[PathBuf], memo: &mut HashMap<PathBuf, bool>) -> bool {
    if let Some(known) = memo.get(dir) {
        return *known;
    }
    let ok = if roots.iter().any(|r| r == dir) {
        // A root is the user's choice (or the tablespace location shown in the plan).
        fs::metadata(dir).is_ok_and(|m| m.is_dir())
    } else {
        fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
            && dir
                .parent()
                .is_some_and(|parent| real_dir_chain(parent, roots, memo))
    };
    memo.insert(dir.to_path_buf(), ok);
    ok
}

/// The planning pass: reads, never writes. With delta, compares what is there with the backup.
pub(super) fn plan_files(
    manifest: &Manifest,
    layout: &Layout,
    targets: &[Target],
    block_size: u64,
    delta: bool,
    codec: &lifeboat_repo::Codec,
    parallel: usize,
) -> Result<FilePlan> {
    let mut remove = Vec::new();
    let mut readable = vec![false; targets.len()];
    if delta {
        let expected = expected_paths(manifest, layout, targets);
        find_unexpected(&layout.target_dir, &expected, true, &mut remove)?;
        for dir in layout.tablespaces.values() {
            // A tablespace directory may hold other majors' subdirectories: only what lies
            // under the backup's own is removed.
            find_unexpected(dir, &expected, false, &mut remove)?;
        }
        let mut roots = vec![layout.target_dir.clone()];
        roots.extend(layout.tablespaces.values().cloned());
        let mut memo = HashMap::new();
        for (t, ok) in targets.iter().zip(readable.iter_mut()) {
            *ok = t
                .dest
                .parent()
                .is_some_and(|p| real_dir_chain(p, &roots, &mut memo));
        }
    }
    let indexed: Vec<(&Target, bool)> = targets.iter().zip(readable).collect();
    let decided: Vec<(FileAction, Vec<bool>)> =
        parallel_map(&indexed, parallel, |(t, readable)| {
            file_needs(t, block_size, delta && *readable, codec)
        })?;
    let mut kept = 0;
    let mut actions = Vec::with_capacity(targets.len());
    let mut placements: HashMap<ChunkId, Vec<Placement>> = HashMap::new();
    for (i, (t, (action, need))) in targets.iter().zip(decided).enumerate() {
        if !need.iter().any(|n| *n) {
            kept += u64::from(action == FileAction::Keep);
            actions.push(action);
            continue;
        }
        // A file kept whose blocks differ is rewritten in part.
        actions.push(match action {
            FileAction::Keep => FileAction::Fix,
            other => other,
        });
        let f = &t.entry;
        if let Some(p) = &f.packed {
            placements.entry(p.chunk).or_default().push(Placement {
                file: i,
                file_offset: 0,
                chunk_offset: p.offset,
                len: f.size,
            });
        }
        for (index, chunk) in f.blocks.iter().enumerate() {
            if need.get(index).copied().unwrap_or(true) {
                let offset = index as u64 * block_size;
                placements.entry(*chunk).or_default().push(Placement {
                    file: i,
                    file_offset: offset,
                    chunk_offset: 0,
                    len: block_size.min(f.size.saturating_sub(offset)),
                });
            }
        }
    }
    Ok(FilePlan {
        actions,
        remove,
        placements,
        kept,
    })
}

/// Delta: collect the top-most paths under `root` the backup does not hold (`removable_here`:
/// also those directly in `root`). Never follows links.
fn find_unexpected(
    root: &Path,
    expected: &HashSet<PathBuf>,
    removable_here: bool,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let listing = match fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(EngineError::io(
                format!("cannot list {}", root.display()),
                e,
            ));
        }
    };
    for item in listing {
        let item = item.map_err(io(format!("cannot list {}", root.display())))?;
        let path = item.path();
        let is_real_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !expected.contains(&path) {
            if removable_here {
                out.push(path);
            }
        } else if is_real_dir {
            find_unexpected(&path, expected, true, out)?;
        }
    }
    out.sort();
    Ok(())
}

/// Make `dir` a real directory (not a link), and every directory between it and a root, creating
/// what is missing and replacing what is not a directory. `done` remembers what was verified.
fn real_dir(dir: &Path, roots: &[PathBuf], done: &mut HashSet<PathBuf>) -> Result<()> {
    if done.contains(dir) || roots.iter().any(|r| r == dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        real_dir(parent, roots, done)?;
    }
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove_any(dir)?;
            fs::create_dir(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        Err(_) => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io(format!("cannot create {}", dir.display())))?;
        }
    }
    done.insert(dir.to_path_buf());
    Ok(())
}

/// A root (the target or a tablespace directory): created if missing, with its mode.
fn create_root(path: &Path) -> Result<()> {
    if fs::metadata(path).is_err() {
        fs::create_dir_all(path).map_err(io(format!("cannot create {}", path.display())))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("cannot set the mode of {}", path.display())))
}

/// Set the mode of a directory verified to be a real one (never through a link).
fn set_dir_mode(path: &Path, mode: u32) -> Result<()> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(path)
        .map_err(io(format!("cannot open the directory {}", path.display())))?;
    dir.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io(format!("cannot set the mode of {}", path.display())))
}

/// The execution pass: directories, tablespace links, removals, files (created or resized).
pub(super) fn apply(
    manifest: &Manifest,
    layout: &Layout,
    targets: &[Target],
    actions: &[FileAction],
    remove: &[PathBuf],
    marker: &str,
    parallel: usize,
) -> Result<()> {
    for path in remove {
        match fs::symlink_metadata(path) {
            Ok(_) => remove_any(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EngineError::io(
                    format!("cannot stat {}", path.display()),
                    e,
                ));
            }
        }
    }
    create_root(&layout.target_dir)?;
    // Before anything else is written: a restore killed from here on leaves a directory that
    // `--delta` recognises as this cluster's and finishes.
    write_file(&layout.target_dir.join(plan::RESTORE_MARKER), marker)?;
    fsync_dir(&layout.target_dir)?;
    let mut roots = vec![layout.target_dir.clone()];
    for dir in layout.tablespaces.values() {
        create_root(dir)?;
        roots.push(dir.clone());
    }
    let mut done: HashSet<PathBuf> = HashSet::new();
    for (oid, dir) in &layout.tablespaces {
        // pg_tblspc/<oid> is a link to the tablespace's directory; files of the tablespace are
        // written through the directory itself, never through this link.
        let pg_tblspc = layout.target_dir.join("pg_tblspc");
        real_dir(&pg_tblspc, &roots, &mut done)?;
        let link = pg_tblspc.join(oid.to_string());
        match fs::symlink_metadata(&link) {
            Ok(m)
                if m.file_type().is_symlink()
                    && fs::read_link(&link).ok().as_deref() == Some(dir.as_path()) => {}
            Ok(_) => {
                remove_any(&link)?;
                std::os::unix::fs::symlink(dir, &link).map_err(io(format!(
                    "cannot create the tablespace link {}",
                    link.display()
                )))?;
            }
            Err(_) => std::os::unix::fs::symlink(dir, &link).map_err(io(format!(
                "cannot create the tablespace link {}",
                link.display()
            )))?,
        }
    }
    for entry in &manifest.entries {
        match entry {
            Entry::Dir { path, mode, root } => {
                let dest = destination(*root, path, &layout.target_dir, &layout.tablespaces);
                if roots.contains(&dest) {
                    // A tablespace's own directory: the user's (or the plan's) path.
                    fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(io(format!("cannot set the mode of {}", dest.display())))?;
                } else {
                    real_dir(&dest, &roots, &mut done)?;
                    set_dir_mode(&dest, *mode)?;
                }
            }
            // pg_wal comes back as a directory: a link would point at the source's WAL.
            Entry::Link { path, .. } if path == "pg_wal" => {
                let dest = layout.target_dir.join(path);
                real_dir(&dest, &roots, &mut done)?;
                set_dir_mode(&dest, 0o700)?;
            }
            Entry::Link { .. } | Entry::File(_) => {}
        }
    }
    for t in targets {
        if let Some(parent) = t.dest.parent() {
            real_dir(parent, &roots, &mut done)?;
        }
    }
    let work: Vec<(&Target, FileAction)> = targets.iter().zip(actions.iter().copied()).collect();
    parallel_map(&work, parallel, |(t, action)| make_file(t, *action))?;
    Ok(())
}

/// Create or resize one file as planned; its parent is a verified real directory.
fn make_file(t: &Target, action: FileAction) -> Result<()> {
    let f = &t.entry;
    let file = match action {
        FileAction::Keep => return Ok(()),
        FileAction::Fix => OpenOptions::new()
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(&t.dest)
            .map_err(io(format!("cannot open {}", t.dest.display())))?,
        FileAction::Create => {
            if fs::symlink_metadata(&t.dest).is_ok() {
                remove_any(&t.dest)?;
            }
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(NOFOLLOW)
                .mode(f.mode & 0o7777)
                .open(&t.dest)
                .map_err(io(format!("cannot create {}", t.dest.display())))?
        }
    };
    size_file(&file, f.size, action == FileAction::Create)
        .map_err(io(format!("cannot size {}", t.dest.display())))?;
    file.set_permissions(fs::Permissions::from_mode(f.mode & 0o7777))
        .map_err(io(format!("cannot set the mode of {}", t.dest.display())))
}

/// Files at least this large are allocated before they are written.
const ALLOCATE_FROM: u64 = 1 << 20;

/// Give the file its size. A large new file is allocated at once (`fallocate`: unwritten
/// extents) rather than left sparse: ext4 takes a direct write into a hole under the inode's
/// exclusive lock until the write completes, so the writer threads filling one relation segment
/// would wait on each other; into allocated blocks they write side by side. Filesystems without
/// `fallocate` get a sparse file as before.
fn size_file(file: &File, size: u64, new: bool) -> std::io::Result<()> {
    if new && size >= ALLOCATE_FROM {
        let len = i64::try_from(size).map_err(std::io::Error::other)?;
        match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    file.set_len(size)
}

/// The backup's links (other than `pg_wal`), made after every file is written.
pub(super) fn make_links(manifest: &Manifest, target_dir: &Path) -> Result<()> {
    for entry in &manifest.entries {
        if let Entry::Link { path, target } = entry
            && path != "pg_wal"
        {
            let dest = target_dir.join(path);
            match fs::symlink_metadata(&dest) {
                Ok(m)
                    if m.file_type().is_symlink()
                        && fs::read_link(&dest).ok().as_deref() == Some(Path::new(target)) =>
                {
                    continue;
                }
                Ok(_) => remove_any(&dest)?,
                Err(_) => {}
            }
            std::os::unix::fs::symlink(target, &dest)
                .map_err(io(format!("cannot create the link {}", dest.display())))?;
        }
    }
    Ok(())
}

/// Run `f` over `items` on up to `parallel` threads, keeping the order.
pub(super) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let chunk = items.len().div_ceil(parallel.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| EngineError::Internal("a worker thread panicked".into()))??,
            );
        }
        Ok(out)
    })
}

/// Per block (or one flag for a packed file): must it be written, and what becomes of the file.
/// Reads only; `compare` (delta, under real directories) reads what is there.
fn file_needs(
    t: &Target,
    block_size: u64,
    compare: bool,
    codec: &lifeboat_repo::Codec,
) -> Result<(FileAction, Vec<bool>)> {
    let f = &t.entry;
    let blocks = if f.packed.is_some() {
        1
    } else {
        f.blocks.len()
    };
    let create = if f.size == 0 {
        vec![false]
    } else {
        vec![true; blocks]
    };
    let existing = if compare {
        fs::symlink_metadata(&t.dest).ok()
    } else {
        None
    };
    let Some(m) = existing.filter(|m| m.is_file()) else {
        return Ok((FileAction::Create, create));
    };
    let action = if m.len() == f.size && (m.permissions().mode() & 0o7777) == f.mode {
        FileAction::Keep
    } else {
        FileAction::Fix
    };
    if f.size == 0 {
        return Ok((action, vec![false]));
    }
    let mut need = vec![true; blocks];
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(&t.dest)
        .map_err(io(format!("cannot open {}", t.dest.display())))?;
    if let Some(p) = &f.packed {
        if m.len() == f.size {
            let mut buf = Vec::with_capacity(f.size as usize);
            (&handle)
                .read_to_end(&mut buf)
                .map_err(io(format!("cannot read {}", t.dest.display())))?;
            need[0] = codec.hash(&buf).0 != p.hash.0.0;
        }
    } else {
        let mut buf = vec![0u8; block_size as usize];
        for (index, chunk) in f.blocks.iter().enumerate() {
            let offset = index as u64 * block_size;
            let len = block_size.min(f.size - offset) as usize;
            if offset + len as u64 > m.len() {
                break;
            }
            let n = read_at_full(&handle, &mut buf[..len], offset)
                .map_err(io(format!("cannot read {}", t.dest.display())))?;
            need[index] = n != len || codec.hash(&buf[..len]) != chunk.0;
        }
    }
    Ok((action, need))
}

pub(super) fn remove_any(path: &Path) -> Result<()> {
    let m = fs::symlink_metadata(path).map_err(io(format!("cannot stat {}", path.display())))?;
    if m.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .map_err(io(format!("cannot remove {}", path.display())))
}
