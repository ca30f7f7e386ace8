//! Backups in the repository: content-addressed chunks and the manifest that makes a backup exist.
//!
//! A file of a backup is stored as chunks: a large file as one chunk per block (`block_size`
//! bytes), small files packed together into one chunk. A chunk's key is its content hash, so an
//! identical block in any file of any backup is stored once. The manifest lists every entry of
//! the data directory with its chunk references; it is stored last, create-only, and a backup
//! exists exactly when its manifest does (docs/FORMAT.md, "Backups").

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::WalSegmentName;
use lifeboat_storage::{ErrorKind, PutMode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::ContentHash;
use crate::{RepoError, Repository, Result, keys};

pub const MANIFEST_FORMAT: &str = "lifeboat-backup-manifest";
pub const MANIFEST_VERSION: u32 = 1;

/// A backup's complete description; see docs/FORMAT.md for every field.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub label: String,
    pub system_identifier: u64,
    pub pg_version_num: u32,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// WAL segment holding `start_lsn` and the one holding `stop_lsn`: recovery needs both and
    /// everything between.
    pub start_wal: WalSegmentName,
    pub stop_wal: WalSegmentName,
    /// RFC 3339, UTC, to the microsecond (see [`crate::timestamp`]).
    #[serde(with = "crate::timestamp")]
    pub start_time: OffsetDateTime,
    #[serde(with = "crate::timestamp")]
    pub stop_time: OffsetDateTime,
    pub duration_seconds: f64,
    /// From `pg_backup_stop`; written into the restored data directory.
    pub backup_label: String,
    #[serde(default)]
    pub tablespace_map: Option<String>,
    pub block_size: u32,
    pub data_checksums: bool,
    /// Bytes of all files in the backup.
    pub size: u64,
    /// Encoded bytes of the chunks this backup added to the repository (chunks it shares with
    /// earlier backups are not counted again).
    pub stored_size: u64,
    #[serde(default)]
    pub tablespaces: Vec<Tablespace>,
    pub entries: Vec<Entry>,
    /// Pages whose checksum did not match when read (and again when re-read).
    #[serde(default)]
    pub bad_pages: Vec<BadPage>,
    /// Bytes read from the data directory; the rest came unchanged from the previous backup.
    #[serde(default)]
    pub bytes_read: u64,
    /// Files whose entries were reused from the previous backup without being read.
    #[serde(default)]
    pub files_reused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    /// Where the tablespace lived on the source machine.
    pub location: String,
}

/// Which tree an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Root {
    /// The data directory; tablespace contents appear under `pg_tblspc/<oid>/`.
    #[default]
    Pgdata,
    /// A configuration file kept outside the data directory (Debian's /etc/postgresql/...);
    /// `path` is its absolute source path without the leading `/`.
    Config,
}

impl Root {
    fn is_pgdata(&self) -> bool {
        *self == Root::Pgdata
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
        #[serde(default, skip_serializing_if = "Root::is_pgdata")]
        root: Root,
    },
    /// A symbolic link kept as such (e.g. `pg_wal` pointing elsewhere). Tablespace links under
    /// `pg_tblspc` are not entries: restore makes them from [`Manifest::tablespaces`].
    Link {
        path: String,
        target: String,
    },
    File(FileEntry),
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::Link { path, .. } => path,
            Entry::File(f) => &f.path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    #[serde(default, skip_serializing_if = "Root::is_pgdata")]
    pub root: Root,
    pub mode: u32,
    pub size: u64,
    /// Modification time when read, seconds since the epoch.
    pub mtime: i64,
    /// For a file stored in blocks: the chunk of each `block_size` piece, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<ChunkId>,
    /// For a small file: where it lies in a packed chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<Packed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    pub chunk: ChunkId,
    pub offset: u64,
    /// The file's own content hash (same keying as chunk hashes), for delta restore.
    pub hash: ChunkId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPage {
    pub path: String,
    pub block: u32,
    pub stored_checksum: u16,
    pub computed_checksum: u16,
}

/// A chunk's name: the hex content hash of its plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub ContentHash);

impl ChunkId {
    pub fn key(&self) -> String {
        keys::chunk(&self.0.to_hex())
    }

    /// The chunk a key names, if it is a chunk key ([`keys::parse_chunk_key`]).
    pub fn from_key(key: &str) -> Option<ChunkId> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(keys::parse_chunk_key(key)?, &mut bytes).ok()?;
        Some(ChunkId(ContentHash(bytes)))
    }
}

/// Chunks a repository may hold before [`Repository::list_chunks`] lists the 256 chunk
/// directories at once instead of `data/` in one listing: ten pages of an object store's listing.
pub const ONE_LISTING_UP_TO: usize = 10_000;

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|e| serde::de::Error::custom(format!("bad chunk id {text:?}: {e}")))?;
        Ok(ChunkId(ContentHash(bytes)))
    }
}

/// Whether a manifest path stays inside the directory it is restored into: relative, no `..`,
/// no empty or `.` components. A restore refuses anything else.
pub fn is_safe_relative_path(path: &str) -> bool {
    // Checked on the text, not through `Path::components`, which quietly drops `.` and `//`.
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Files a restore writes into the data directory itself, after the backup's files: a manifest
/// may not hold a link at any of these names (restore would write through it).
pub const RESTORE_WRITES: [&str; 5] = [
    "backup_label",
    "tablespace_map",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// Where a restore puts the configuration files kept outside PGDATA ([`Root::Config`]), inside
/// the target directory.
pub const CONFIG_RESTORE_DIR: &str = "restored_config";

impl Manifest {
    /// The manifest's JSON, exactly as stored (before encoding).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| RepoError::Invalid(format!("cannot serialise the manifest: {e}")))
    }

    /// A manifest from its stored JSON (decoded); the error says what is wrong with it.
    pub fn from_json(json: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(json).map_err(|e| format!("unreadable manifest: {e}"))
    }

    /// Every chunk the manifest references: each file's blocks and the pack it is stored in
    /// (a chunk referenced twice is named twice).
    pub fn chunks(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.entries.iter().flat_map(|e| match e {
            Entry::File(f) => f
                .blocks
                .iter()
                .copied()
                .chain(f.packed.as_ref().map(|p| p.chunk))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }

    /// Where an entry lands, relative to the restore's target directory (tablespace contents
    /// stay under `pg_tblspc/<oid>/`).
    fn restored_path(root: Root, path: &str) -> String {
        match root {
            Root::Pgdata => path.to_string(),
            Root::Config => format!("{CONFIG_RESTORE_DIR}/{path}"),
        }
    }

    /// The rules a manifest must keep so that restoring it writes only inside its target: every
    /// path relative without `..`; no path twice; nothing under a link (except `pg_wal`, which
    /// is restored as a directory); no link at a name restore writes itself ([`RESTORE_WRITES`]),
    /// at `pg_tblspc` or under it, or at [`CONFIG_RESTORE_DIR`]; a file under `pg_tblspc/<oid>/`
    /// names a tablespace of the backup. Returns the
    /// problems found (empty: the manifest keeps them). Restore refuses a manifest that breaks
    /// one; verify reports it. Unencrypted repositories do not authenticate manifests, so these
    /// rules are all that stands between a rewritten manifest and files outside the target.
    pub fn check_rules(&self) -> Vec<String> {
        use std::collections::HashSet;
        let mut problems = Vec::new();
        let links: Vec<&str> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Link { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        let mut seen: HashSet<String> = HashSet::new();
        for entry in &self.entries {
            let path = entry.path();
            if !is_safe_relative_path(path) {
                problems.push(format!(
                    "the path {path:?} would be written outside the target directory"
                ));
                continue;
            }
            let root = match entry {
                Entry::Dir { root, .. } => *root,
                Entry::File(f) => f.root,
                Entry::Link { .. } => Root::Pgdata,
            };
            let restored = Self::restored_path(root, path);
            if !seen.insert(restored.clone()) {
                problems.push(format!("the path {path:?} appears twice"));
            }
            if let Some(link) = links.iter().find(|l| {
                **l != "pg_wal" && restored != **l && restored.starts_with(&format!("{l}/"))
            }) {
                problems.push(format!(
                    "the path {path:?} lies under the link {link:?}: it would be written through the link"
                ));
            }
            if let Entry::Link { target, .. } = entry {
                let top = path.split('/').next().unwrap_or(path);
                if RESTORE_WRITES.contains(&path) {
                    problems.push(format!(
                        "{path:?} is a link (to {target:?}): restore writes this file itself, it cannot be a link"
                    ));
                } else if top == "pg_tblspc" || top == CONFIG_RESTORE_DIR {
                    problems.push(format!(
                        "{path:?} is a link (to {target:?}): restore makes {top} itself"
                    ));
                }
            }
            if let Entry::File(f) = entry
                && f.root == Root::Pgdata
                && path.starts_with("pg_tblspc/")
            {
                let oid = path.split('/').nth(1).and_then(|s| s.parse::<u32>().ok());
                if !oid.is_some_and(|o| self.tablespaces.iter().any(|t| t.oid == o)) {
                    problems.push(format!("{path:?} lies under an unknown tablespace"));
                }
            }
        }
        let mut oids = HashSet::new();
        for ts in &self.tablespaces {
            if !oids.insert(ts.oid) {
                problems.push(format!("tablespace {} appears twice", ts.oid));
            }
            if ts.location.contains('\0') {
                problems.push(format!(
                    "tablespace {} ({}) has a location with a NUL byte",
                    ts.oid, ts.name
                ));
            }
        }
        problems
    }
}

/// Outcome of storing one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPut {
    /// Newly stored; the encoded size.
    Stored(u64),
    /// Already in the repository (the same content, by its hash).
    AlreadyStored,
}

impl Repository {
    /// Store an encoded chunk under its id, create-only: a chunk that exists has the same content.
    pub async fn put_chunk(&self, id: &ChunkId, encoded: Bytes) -> Result<ChunkPut> {
        let len = encoded.len() as u64;
        match self.store().put(&id.key(), encoded, PutMode::Create).await {
            Ok(()) => Ok(ChunkPut::Stored(len)),
            Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(ChunkPut::AlreadyStored),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a chunk is stored (a HEAD; used to skip encoding what is already there).
    pub async fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        match self.store().head(&id.key()).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Fetch a chunk and verify it: decryption, length, content hash, and that the hash is the
    /// one its key names (an object moved under another key is corrupt, not data).
    pub async fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let key = id.key();
        let raw = self.store().get(&key).await?;
        let codec = self.codec().clone();
        let id = *id;
        tokio::task::spawn_blocking(move || {
            let (header, plain) = codec.decode(&raw).map_err(|reason| RepoError::Corrupt {
                key: key.clone(),
                reason,
            })?;
            if header.hash != id.0 {
                return Err(RepoError::Corrupt {
                    key,
                    reason: format!("holds content {} under another name", header.hash),
                });
            }
            Ok(plain)
        })
        .await
        .map_err(|e| RepoError::Invalid(format!("decoding a chunk failed: {e}")))?
    }

    /// Verify and decode a chunk fetched with `store().get(id.key())` (see
    /// [`get_chunk`](Self::get_chunk)) into `buf`, reused from chunk to chunk, at an address
    /// aligned to `align` (see [`Codec::decode_aligned`](crate::Codec::decode_aligned)); the
    /// content.
    pub fn decode_chunk_aligned<'b>(
        &self,
        id: &ChunkId,
        raw: &[u8],
        buf: &'b mut Vec<u8>,
        align: usize,
    ) -> Result<&'b [u8]> {
        let corrupt = |reason: String| RepoError::Corrupt {
            key: id.key(),
            reason,
        };
        let (header, range) = self
            .codec()
            .decode_aligned(raw, buf, align)
            .map_err(corrupt)?;
        if header.hash != id.0 {
            return Err(corrupt(format!(
                "holds content {} under another name",
                header.hash
            )));
        }
        Ok(&buf[range])
    }

    /// Store a finished backup's manifest: the moment the backup starts to exist.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<u64> {
        let json = manifest.to_json()?;
        self.put_manifest_object(&keys::manifest(&manifest.label), &json, || {
            format!("a backup labelled {} already exists", manifest.label)
        })
        .await
    }

    /// Create-put a manifest (a backup's or a dump's) and return its encoded size. Our own put
    /// may have landed before an attempt failed in transit: the same content is success;
    /// anything else under the key is another run's manifest, which stays (`taken` says so).
    pub(crate) async fn put_manifest_object(
        &self,
        key: &str,
        json: &[u8],
        taken: impl FnOnce() -> String,
    ) -> Result<u64> {
        let (hash, object) = self.encode(key, json)?;
        let len = object.len() as u64;
        match self
            .store()
            .put(key, Bytes::from(object), PutMode::Create)
            .await
        {
            Ok(()) => Ok(len),
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                if self.object_header(key).await?.hash == hash {
                    Ok(len)
                } else {
                    Err(RepoError::Invalid(taken()))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Read and check one backup's manifest.
    pub async fn manifest(&self, label: &str) -> Result<Manifest> {
        let key = keys::manifest(label);
        let (_, plain) = self.get_object(&key).await?;
        let manifest = Manifest::from_json(&plain).map_err(|reason| RepoError::Corrupt {
            key: key.clone(),
            reason,
        })?;
        if manifest.format != MANIFEST_FORMAT || manifest.version != MANIFEST_VERSION {
            return Err(RepoError::Corrupt {
                key,
                reason: format!(
                    "manifest format {} version {} is not supported (this lifeboat reads {MANIFEST_FORMAT} {MANIFEST_VERSION})",
                    manifest.format, manifest.version
                ),
            });
        }
        if manifest.label != label {
            return Err(RepoError::Corrupt {
                key,
                reason: format!("names backup {} instead", manifest.label),
            });
        }
        Ok(manifest)
    }

    /// Labels of the complete backups (those with a manifest), in label order. Callers order
    /// backups by their LSNs and times, never by label.
    ///
    /// A key of the form `backups/<label>/manifest` that no store accepts as a key (a name
    /// lifeboat never writes, e.g. with a space) is not a backup: it is skipped with a warning
    /// naming it, so that one stray key does not stop `list`, `verify`, `expire` or `restore`, and
    /// nothing ever deletes it.
    pub async fn backup_labels(&self) -> Result<Vec<String>> {
        let (labels, stray) = self.backup_listing().await?;
        for key in stray {
            tracing::warn!(
                "{key:?} in the repository is not a backup lifeboat wrote (lifeboat never writes such a name): skipped and left in place; move it out of the repository"
            );
        }
        Ok(labels)
    }

    /// The labels of the complete backups, and the stray keys that look like manifests but
    /// cannot be (see [`backup_labels`](Self::backup_labels)), both sorted.
    pub async fn backup_listing(&self) -> Result<(Vec<String>, Vec<String>)> {
        let mut labels = Vec::new();
        let mut stray = Vec::new();
        for o in self.store().list(keys::BACKUP_PREFIX).await? {
            if let Some(label) = keys::parse_manifest_key(&o.key) {
                if lifeboat_storage::validate_key(&o.key).is_ok() {
                    labels.push(label);
                } else {
                    stray.push(o.key);
                }
            }
        }
        labels.sort();
        stray.sort();
        Ok((labels, stray))
    }

    /// The ids of every chunk in the repository; `expected` as in [`list_chunks`](Self::list_chunks).
    pub async fn chunk_ids(&self, expected: usize) -> Result<std::collections::HashSet<ChunkId>> {
        Ok(self
            .list_chunks(expected)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Every chunk in the repository with its stored size. `expected` is the caller's estimate
    /// of their number (the largest backup's chunk count): up to [`ONE_LISTING_UP_TO`] chunks,
    /// one listing of `data/`; above, the 256 chunk directories at the same time, so that a large
    /// repository on an object store does not wait for one page of 1,000 keys after another,
    /// while a small one does not pay 256 requests for a page or two.
    pub async fn list_chunks(&self, expected: usize) -> Result<Vec<(ChunkId, u64)>> {
        let dirs: Vec<String> = if expected <= ONE_LISTING_UP_TO {
            vec![keys::CHUNK_PREFIX.to_string()]
        } else {
            keys::chunk_dirs().collect()
        };
        let mut listings = futures::stream::iter(dirs)
            .map(|dir| async move { self.store().list(&dir).await })
            .buffer_unordered(self.store().capabilities().concurrency.max(1));
        let mut chunks = Vec::new();
        while let Some(listing) = listings.next().await {
            chunks.extend(
                listing?
                    .into_iter()
                    .filter_map(|o| ChunkId::from_key(&o.key).map(|id| (id, o.size))),
            );
        }
        Ok(chunks)
    }

    /// The manifests of `labels`, in that order, each with its own outcome; read as many at a
    /// time as the store's request concurrency.
    async fn read_manifests(&self, labels: Vec<String>) -> Vec<(String, Result<Manifest>)> {
        futures::stream::iter(labels)
            .map(|label| async move {
                let manifest = self.manifest(&label).await;
                (label, manifest)
            })
            .buffered(self.store().capabilities().concurrency.max(1))
            .collect()
            .await
    }

    /// Like [`manifests`](Self::manifests), but a manifest that is damaged (not one the store
    /// failed to deliver) is set aside with its problem instead of failing the whole listing, so
    /// one bad backup does not stop `list`, `backup` or `restore` of the others. Expire uses the
    /// strict form: it must never guess what an unreadable manifest references.
    pub async fn readable_manifests(&self) -> Result<(Vec<Manifest>, Vec<(String, String)>)> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for (label, manifest) in self.read_manifests(self.backup_labels().await?).await {
            match manifest {
                Ok(m) => out.push(m),
                Err(RepoError::Corrupt { reason, .. }) => unreadable.push((label, reason)),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            (a.stop_lsn, &a.stop_time, &a.label).cmp(&(b.stop_lsn, &b.stop_time, &b.label))
        });
        Ok((out, unreadable))
    }

    /// Every complete backup's manifest, oldest stop LSN first.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for (_, manifest) in self.read_manifests(self.backup_labels().await?).await {
            out.push(manifest?);
        }
        out.sort_by(|a, b| {
            (a.stop_lsn, &a.stop_time, &a.label).cmp(&(b.stop_lsn, &b.stop_time, &b.label))
        });
        Ok(out)
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
