//! Local-disk backend: objects are files under a root directory, written crash-safely.
//!
//! A put writes a private temp file (`.tmp.<random>`, mode 0600) next to its destination, fsyncs it,
//! links or renames it into place and fsyncs the directory, so a crash leaves either the whole object
//! or nothing under its key (plus, at worst, a temp file that `list` ignores). Directories are
//! created with mode 0700 and their parents fsynced. All filesystem work runs on tokio's blocking
//! pool because std::fs calls (fsync above all) can block for a long time.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    Capabilities, ErrorKind, ObjectMeta, PutMode, Result, StorageError, Store, split_list_prefix,
    validate_key,
};

/// Name prefix of in-flight temp files. Keys may not use it, so a temp file can never be mistaken
/// for an object.
pub const TEMP_PREFIX: &str = ".tmp.";
/// Requests in flight by default ([`Capabilities::concurrency`]): a few, since every put ends in
/// fsyncs on one disk and more only queue there.
pub const DEFAULT_CONCURRENCY: usize = 8;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// A store rooted at a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
    /// Directories known to exist, so that a put into one (a backup makes thousands, into 256
    /// directories) does not try to create it and its parents again.
    known_dirs: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalStore {
    /// Open an existing repository directory. Fails if `root` is missing or not a directory.
    pub fn open(root: PathBuf) -> Result<Self> {
        let root = absolute(&root)?;
        match fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => Ok(Self {
                root: Arc::new(root),
                known_dirs: Arc::default(),
            }),
            Ok(_) => Err(StorageError::new(
                ErrorKind::Permanent,
                format!(
                    "local repository root {} is not a directory",
                    root.display()
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::new(
                ErrorKind::Permanent,
                format!(
                    "local repository root {} does not exist (it is created by `lifeboat init`)",
                    root.display()
                ),
            )),
            Err(e) => Err(map_io(e, "opening repository root", &root)),
        }
    }

    /// Create the repository directory (mode 0700) and any missing parents (default mode, like
    /// `mkdir -p`), then open it. An existing directory is accepted as is.
    pub fn create_root(root: PathBuf) -> Result<Self> {
        let root = absolute(&root)?;
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent).map_err(|e| map_io(e, "creating directory", parent))?;
        }
        match DirBuilder::new().mode(DIR_MODE).create(&root) {
            Ok(()) => {
                // The mode passed to mkdir is filtered by the umask; set it exactly.
                fs::set_permissions(&root, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| map_io(e, "setting permissions of", &root))?;
                if let Some(parent) = root.parent() {
                    fsync_dir(parent)?;
                }
            }
            // An existing empty directory becomes the repository: it gets the mode a repository
            // directory has. One that holds anything is left as it is (init refuses it).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let empty = fs::read_dir(&root)
                    .map_err(|e| map_io(e, "reading directory", &root))?
                    .next()
                    .is_none();
                if empty {
                    fs::set_permissions(&root, fs::Permissions::from_mode(DIR_MODE))
                        .map_err(|e| map_io(e, "setting permissions of", &root))?;
                }
            }
            Err(e) => return Err(map_io(e, "creating directory", &root)),
        }
        Self::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let path = self.path_of(key)?;
        let root = Arc::clone(&self.root);
        let known_dirs = Arc::clone(&self.known_dirs);
        let key = key.to_owned();
        blocking(move || {
            put_blocking(&root, &known_dirs, &key, &path, &data, mode).map_err(|e| match e.kind {
                // Something under the root vanished mid-put; the key itself is not "not found".
                ErrorKind::NotFound => StorageError::new(ErrorKind::Permanent, e.message),
                _ => e,
            })
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(move || match fs::read(&path) {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) => Err(map_read_io(e, &key, &path)),
        })
        .await
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(move || {
            let file = File::open(&path).map_err(|e| map_read_io(e, &key, &path))?;
            let meta = file.metadata().map_err(|e| map_read_io(e, &key, &path))?;
            if !meta.is_file() {
                return Err(StorageError::not_found(&key));
            }
            let end = end.min(meta.len());
            if start >= end {
                return Ok(Bytes::new());
            }
            let len = usize::try_from(end - start).map_err(|_| {
                StorageError::new(
                    ErrorKind::Permanent,
                    format!(
                        "range {start}..{end} of {} does not fit in memory",
                        path.display()
                    ),
                )
            })?;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, start)
                .map_err(|e| map_read_io(e, &key, &path))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(move || {
            let meta = fs::metadata(&path).map_err(|e| map_read_io(e, &key, &path))?;
            if !meta.is_file() {
                return Err(StorageError::not_found(&key));
            }
            Ok(ObjectMeta {
                key,
                size: meta.len(),
            })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (dir, _) = split_list_prefix(prefix)?;
        let root = Arc::clone(&self.root);
        let dir = dir.to_owned();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            let start = if dir.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&dir)
            };
            walk(&start, &dir, &prefix, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        blocking(move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Missing (or a directory, which is not an object): nothing to delete.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound
                            | io::ErrorKind::IsADirectory
                            | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(map_io(e, "deleting", &path)),
            }
            // Empty parent directories are left in place: removing them would race with a
            // concurrent put into the same directory.
            match path.parent() {
                Some(parent) => fsync_dir(parent),
                None => Ok(()),
            }
        })
        .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: true,
            durable_put: true,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

fn put_blocking(
    root: &Path,
    known_dirs: &Mutex<HashSet<PathBuf>>,
    key: &str,
    path: &Path,
    data: &[u8],
    mode: PutMode,
) -> Result<()> {
    let dir = path.parent().ok_or_else(|| {
        StorageError::new(
            ErrorKind::Permanent,
            format!("key {key} has no parent directory"),
        )
    })?;
    let mut known = known_dirs.lock().is_ok_and(|dirs| dirs.contains(dir));
    if !known {
        create_dirs(root, dir)?;
    }

    let tmp = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
    let mut written = write_temp(&tmp, data);
    if known
        && written
            .as_ref()
            .is_err_and(|e| e.kind == ErrorKind::NotFound)
    {
        // The directory was removed since we last saw it (by hand, or a test): create it again.
        if let Ok(mut dirs) = known_dirs.lock() {
            dirs.remove(dir);
        }
        create_dirs(root, dir)?;
        known = false; // made again: remembered again below once the write succeeds
        written = write_temp(&tmp, data);
    }
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if !known && let Ok(mut dirs) = known_dirs.lock() {
        dirs.insert(dir.to_path_buf());
    }

    let placed = match mode {
        // link(2) fails with EEXIST if the key is taken, making create-only atomic.
        PutMode::Create => {
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StorageError::new(
                    ErrorKind::AlreadyExists,
                    format!("object {key} already exists at {}", path.display()),
                )),
                Err(e) => Err(map_io(e, "linking temp file to", path)),
            }
        }
        PutMode::Overwrite => fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            map_io(e, "renaming temp file to", path)
        }),
    };
    // Even a failed create removed the temp file; fsync so that removal is not left half-done.
    let synced = fsync_dir(dir);
    placed?;
    synced
}

fn write_temp(tmp: &Path, data: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)
        .map_err(|e| map_io(e, "creating", tmp))?;
    // The open mode is filtered by the umask; make it exact.
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| map_io(e, "setting permissions of", tmp))?;
    file.write_all(data)
        .map_err(|e| map_io(e, "writing", tmp))?;
    file.sync_all().map_err(|e| map_io(e, "syncing", tmp))
}

/// Create `dir` and any missing ancestors below `root` (mode 0700), fsyncing the parent of each
/// directory created so the new entry survives a crash.
fn create_dirs(root: &Path, dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(root).map_err(|_| {
        StorageError::new(
            ErrorKind::Permanent,
            format!(
                "{} is outside the repository root {}",
                dir.display(),
                root.display()
            ),
        )
    })?;
    let mut current = root.to_path_buf();
    for component in rel.components() {
        let parent = current.clone();
        current.push(component);
        match DirBuilder::new().mode(DIR_MODE).create(&current) {
            Ok(()) => {
                fs::set_permissions(&current, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| map_io(e, "setting permissions of", &current))?;
                fsync_dir(&parent)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !current.is_dir() {
                    return Err(StorageError::new(
                        ErrorKind::Permanent,
                        format!("{} exists and is not a directory", current.display()),
                    ));
                }
            }
            Err(e) => return Err(map_io(e, "creating directory", &current)),
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| map_io(e, "syncing directory", dir))
}

/// Collect regular files under `dir` (whose key prefix is `rel`) whose key starts with `prefix`.
fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // A prefix nobody wrote under yet is an empty listing, not an error.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(map_io(e, "listing", dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| map_io(e, "listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let file_type = entry
            .file_type()
            .map_err(|e| map_io(e, "listing", &entry.path()))?;
        if file_type.is_dir() {
            // Only descend where keys below can still match the prefix.
            if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                walk(&entry.path(), &key, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            match entry.metadata() {
                Ok(meta) => out.push(ObjectMeta {
                    key,
                    size: meta.len(),
                }),
                // Deleted while we were listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(map_io(e, "listing", &entry.path())),
            }
        }
    }
    Ok(())
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::new(
            ErrorKind::Transient,
            format!("local storage task failed: {e}"),
        )
    })?
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| {
        StorageError::new(
            ErrorKind::Permanent,
            format!("cannot resolve local path {}: {e}", path.display()),
        )
    })
}

/// Errors of reads of `key`: a missing file (or a directory where an object was expected) is
/// NotFound, the rest as [`map_io`].
fn map_read_io(e: io::Error, key: &str, path: &Path) -> StorageError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => {
            StorageError::not_found(key)
        }
        _ => map_io(e, "reading", path),
    }
}

/// Classify an io error on `path` while `doing` something.
fn map_io(e: io::Error, doing: &str, path: &Path) -> StorageError {
    const ENOSPC: i32 = 28;
    let p = path.display();
    let (kind, message) = match e.kind() {
        io::ErrorKind::NotFound => (ErrorKind::NotFound, format!("{doing} {p}: not found")),
        io::ErrorKind::PermissionDenied => (
            ErrorKind::Permanent,
            format!(
                "{doing} {p}: permission denied; the user running lifeboat needs read and write \
                 access to the repository directory"
            ),
        ),
        io::ErrorKind::StorageFull => (
            ErrorKind::Permanent,
            format!("{doing} {p}: disk full (no space left on device)"),
        ),
        _ if e.raw_os_error() == Some(ENOSPC) => (
            ErrorKind::Permanent,
            format!("{doing} {p}: disk full (no space left on device)"),
        ),
        io::ErrorKind::QuotaExceeded => (
            ErrorKind::Permanent,
            format!("{doing} {p}: disk quota exceeded"),
        ),
        io::ErrorKind::ReadOnlyFilesystem => (
            ErrorKind::Permanent,
            format!("{doing} {p}: read-only file system"),
        ),
        io::ErrorKind::NotADirectory => (
            ErrorKind::Permanent,
            format!("{doing} {p}: a component of the path is a file, not a directory"),
        ),
        _ => (ErrorKind::Transient, format!("{doing} {p}: {e}")),
    };
    StorageError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_permanent_disk_full() {
        let e = map_io(
            io::Error::from_raw_os_error(28),
            "writing",
            Path::new("/r/k"),
        );
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("disk full"), "{}", e.message);
        assert!(e.message.contains("/r/k"), "{}", e.message);
    }

    #[test]
    fn permission_denied_names_path_and_user() {
        let e = map_io(
            io::Error::from_raw_os_error(13),
            "creating",
            Path::new("/r/x"),
        );
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("/r/x") && e.message.contains("user running lifeboat"));
    }

    #[test]
    fn other_io_errors_are_transient() {
        let e = map_io(
            io::Error::from_raw_os_error(5),
            "writing",
            Path::new("/r/k"),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
    }

    #[tokio::test]
    async fn a_put_recreates_a_directory_removed_after_an_earlier_put() {
        let root = tempfile::tempdir().expect("temp dir");
        let store = LocalStore::open(root.path().to_path_buf()).expect("open");
        store
            .put("data/ab/one", Bytes::from_static(b"1"), PutMode::Create)
            .await
            .expect("first put");
        fs::remove_dir_all(root.path().join("data")).expect("remove data/");
        store
            .put("data/ab/two", Bytes::from_static(b"2"), PutMode::Create)
            .await
            .expect("a put after the directory went");
        assert_eq!(store.get("data/ab/two").await.expect("get").as_ref(), b"2");
        let mode = fs::metadata(root.path().join("data/ab"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, DIR_MODE);
    }
}
