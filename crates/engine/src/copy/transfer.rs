//! One object from the source to the target, as stored: fetched whole, verified with the
//! source's codec (hash and tag; for a chunk also its name; for a pack its trailer and every
//! chunk in it; for a backup or dump manifest that it parses and names its label), then create-put unchanged.
//! An object that fails is not written: the caller records it as damaged, or as vanished when
//! the source no longer holds it (a source `expire` or `wal-stream` deleted it meanwhile).

use bytes::Bytes;
use lifeboat_repo::backup::{ChunkId, Manifest};
use lifeboat_repo::dump::DumpManifest;
use lifeboat_repo::pack::{IndexEntry, PackId};
use lifeboat_repo::{RepoError, Repository};
use lifeboat_storage::{ErrorKind, PutMode};

use crate::{EngineError, Result, join_error};

/// How an object is checked before it travels.
#[derive(Debug, Clone)]
pub enum Check {
    /// Any encoded object: decodes (length, hash, tag).
    Object,
    /// A loose chunk: decodes, and its hash is its name.
    Chunk(ChunkId),
    /// A pack: its trailer decodes, every chunk it lists decodes and is the chunk named.
    Pack(PackId),
    /// A backup manifest: decodes, parses, names this label.
    Manifest(String),
    /// A dump manifest: decodes, parses, names this label, its streams' sizes add up.
    DumpManifest(String),
}

/// What fetching and checking one object gave.
#[derive(Debug)]
pub enum Fetched {
    /// Sound: its stored bytes, and for a pack its entries.
    Sound(Bytes, Vec<IndexEntry>),
    /// Failed verification: why.
    Damaged(String),
    /// No longer in the source.
    Vanished,
}

/// Fetch `key` from the source and check it. Storage failures other than "not found" are
/// errors (the run stops: it cannot tell damage from an unreachable store).
pub async fn fetch(source: &Repository, key: &str, check: Check) -> Result<Fetched> {
    let raw = match source.store().get(key).await {
        Ok(raw) => raw,
        Err(e) if e.is_not_found() => return Ok(Fetched::Vanished),
        Err(e) => return Err(RepoError::from(e).into()),
    };
    let repo = source.clone();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || match verify(&repo, &key, &raw, &check) {
        Ok(entries) => Fetched::Sound(raw, entries),
        Err(reason) => Fetched::Damaged(reason),
    })
    .await
    .map_err(join_error)
}

fn verify(
    repo: &Repository,
    key: &str,
    raw: &[u8],
    check: &Check,
) -> std::result::Result<Vec<IndexEntry>, String> {
    let reason = |e: RepoError| match e {
        RepoError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    match check {
        Check::Object => repo.decode(key, raw).map(|_| Vec::new()).map_err(reason),
        Check::Chunk(id) => {
            let mut buf = Vec::new();
            repo.decode_chunk_aligned(id, raw, &mut buf, 1)
                .map(|_| Vec::new())
                .map_err(reason)
        }
        Check::Manifest(label) => {
            let (_, plain) = repo.decode(key, raw).map_err(reason)?;
            let manifest = Manifest::from_json(&plain)?;
            if &manifest.label != label {
                return Err(format!("names backup {} instead", manifest.label));
            }
            Ok(Vec::new())
        }
        Check::DumpManifest(label) => {
            let (_, plain) = repo.decode(key, raw).map_err(reason)?;
            let manifest: DumpManifest =
                serde_json::from_slice(&plain).map_err(|e| format!("not a dump manifest: {e}"))?;
            manifest.check(label)?;
            Ok(Vec::new())
        }
        Check::Pack(pack) => {
            let entries = repo.pack_entries(*pack, raw).map_err(reason)?;
            let mut buf = Vec::new();
            for e in &entries {
                let start = usize::try_from(e.location.offset).map_err(|e| e.to_string())?;
                let bytes = start
                    .checked_add(e.location.length as usize)
                    .and_then(|end| raw.get(start..end))
                    .ok_or_else(|| format!("its trailer places chunk {} past its end", e.chunk))?;
                repo.decode_chunk_aligned(&e.chunk, bytes, &mut buf, 1)
                    .map_err(|err| format!("chunk {} in it: {}", e.chunk, reason(err)))?;
            }
            Ok(entries)
        }
    }
}

/// Create-put `bytes` under `key` in the target; a key already there holds the same object
/// (WAL names mean one content, chunk names are their content, pack and index names are
/// random, a manifest's label is unique).
pub async fn put(target: &Repository, key: &str, bytes: Bytes) -> Result<()> {
    match target.store().put(key, bytes, PutMode::Create).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(EngineError::Repo(e.into())),
    }
}
