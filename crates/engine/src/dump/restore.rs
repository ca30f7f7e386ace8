//! `dump restore`: one database of a dump, its chunks fetched in order (a few ahead), each
//! verified by the codec (authentication, length, content hash equal to its name) before a byte
//! of it is written to `pg_restore`'s stdin. A chunk that is missing is found before
//! `pg_restore` starts; one that fails verification stops the restore there: `pg_restore` is
//! killed without having read a damaged byte. The target's connection (password included) goes
//! to `pg_restore` through libpq's environment, never its command line.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat_pg::cluster::major_of_version_num;
use lifeboat_pg::session::{ConnSpec, Session};
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::dump::{DumpChunk, DumpManifest};
use lifeboat_repo::pack::RangeRead;
use lifeboat_repo::stored::{ChunkPlace, ChunkScope, StoredChunks};
use lifeboat_repo::{RepoError, Repository};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::programs::{self, tail};
use crate::{EngineError, Result, join_error};

/// Chunks fetched ahead of the one being written: memory is this many chunks (at most the
/// dump's `max_size` each, plus their encoded copies).
const AHEAD: usize = 4;

#[derive(Debug, Clone)]
pub struct DumpRestoreOptions {
    pub database: String,
    /// The dump; `None`: the newest that holds the database.
    pub label: Option<String>,
    /// Only these tables (`pg_restore -t`).
    pub tables: Vec<String>,
    /// Drop the objects before creating them (`--clean --if-exists`).
    pub clean: bool,
    /// Create the database first (`--create`; the target's dbname is where pg_restore connects
    /// to issue CREATE DATABASE).
    pub create: bool,
    /// Leave out ownership commands (`--no-owner`): the restoring user owns everything.
    pub no_owner: bool,
    /// Leave out grants and revokes (`--no-privileges`): for a target without the dump's roles.
    pub no_privileges: bool,
    pub target: ConnSpec,
}

#[derive(Debug, Clone, Serialize)]
pub struct DumpRestoreReport {
    pub label: String,
    pub database: String,
    pub target: String,
    pub target_major: u32,
    pub pg_restore: String,
    pub bytes: u64,
    pub chunks: u64,
    pub duration_seconds: f64,
}

pub async fn restore(repo: &Repository, opts: &DumpRestoreOptions) -> Result<DumpRestoreReport> {
    let started = Instant::now();
    let manifest = choose(repo, opts).await?;
    let Some(stream) = manifest.database(&opts.database) else {
        return Err(EngineError::invalid(
            format!(
                "dump {} holds no database {:?} (it holds: {})",
                manifest.label,
                opts.database,
                manifest
                    .databases
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "`lifeboat dump list` shows each dump's databases",
        ));
    };
    let session = Session::connect(&opts.target, Duration::from_secs(30))
        .await
        .map_err(super::postgres)?;
    let target_major = major_of_version_num(session.server_version_num());
    drop(session);
    if target_major < stream.server_major {
        return Err(EngineError::invalid(
            format!(
                "the target {} runs PostgreSQL {target_major}, older than the dumped server's {}",
                opts.target.target(),
                stream.server_major
            ),
            "restore into a server of the same or a newer major version",
        ));
    }
    let dump_major = lifeboat_pg::cluster::parse_major(
        stream
            .program_version
            .split_once("(PostgreSQL)")
            .map_or("", |(_, v)| v),
    )
    .unwrap_or(stream.server_major);
    let pg_restore = programs::find("pg_restore", target_major, dump_major)?;

    // Every chunk located before pg_restore starts: a missing one fails now, not half-way.
    let wanted: HashSet<ChunkId> = stream.chunks.iter().map(|c| c.id).collect();
    let stored = repo.stored_chunks(ChunkScope::Wanted(&wanted)).await?;
    let missing: Vec<&ChunkId> = wanted.iter().filter(|c| !stored.contains(c)).collect();
    if let Some(first) = missing.first() {
        return Err(EngineError::Corrupt {
            message: format!(
                "dump {} of database {:?} cannot be restored: {} of its chunks are missing from the repository (the first: {})",
                manifest.label,
                opts.database,
                missing.len(),
                first.key()
            ),
            hint: "run `lifeboat verify` to see what else is affected; restore an older dump \
                   (`lifeboat dump list`) or take a new one"
                .into(),
        });
    }

    let mut cmd = programs::command(&pg_restore, &opts.target);
    cmd.arg("--exit-on-error").arg("--no-password");
    if opts.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if opts.create {
        cmd.arg("--create");
    }
    if opts.no_owner {
        cmd.arg("--no-owner");
    }
    if opts.no_privileges {
        cmd.arg("--no-privileges");
    }
    for t in &opts.tables {
        cmd.arg("-t").arg(t);
    }
    // A database name only (the rest of the connection is in the environment).
    cmd.arg("-d").arg(opts.target.dbname());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| EngineError::io(format!("cannot run {}", pg_restore.path.display()), e))?;
    let (Some(mut stdin), Some(mut stderr)) = (child.stdin.take(), child.stderr.take()) else {
        return Err(EngineError::Internal(
            "pg_restore's pipes were not set up".into(),
        ));
    };
    let errors = tokio::spawn(async move {
        let mut kept = Vec::new();
        let _ = (&mut stderr).take(1 << 20).read_to_end(&mut kept).await;
        // Drain the rest so pg_restore never blocks on a full pipe.
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        kept
    });

    let mut fetches = futures::stream::iter(stream.chunks.iter().copied())
        .map(|chunk| fetch_verified(repo, &stored, chunk))
        .buffered(AHEAD);
    let mut bytes = 0u64;
    let mut fed: Result<()> = Ok(());
    while let Some(next) = fetches.next().await {
        let plain = match next {
            Ok(plain) => plain,
            Err(e) => {
                // Never a damaged byte: stop pg_restore before it reads anything more.
                let _ = child.kill().await;
                let _ = errors.await;
                return Err(damaged(&manifest, &opts.database, e));
            }
        };
        if let Err(e) = stdin.write_all(&plain).await {
            fed = Err(EngineError::io("cannot write to pg_restore", e));
            break;
        }
        bytes += plain.len() as u64;
    }
    drop(fetches);
    if fed.is_ok()
        && let Err(e) = stdin.shutdown().await
    {
        fed = Err(EngineError::io("cannot close pg_restore's input", e));
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(|e| EngineError::io("cannot wait for pg_restore", e))?;
    let stderr = errors.await.map_err(join_error)?;
    if !status.success() {
        return Err(EngineError::Postgres {
            message: format!(
                "pg_restore of database {:?} from dump {} into {} failed ({status}): {}",
                opts.database,
                manifest.label,
                opts.target.target(),
                tail(&stderr, 4000)
            ),
            hint: "fix what pg_restore names (an existing object: --clean; a missing database: \
                   --create; missing roles: --no-owner) and run the restore again"
                .into(),
        });
    }
    fed?;
    if !stderr.is_empty() {
        tracing::warn!("pg_restore said: {}", tail(&stderr, 2000));
    }
    Ok(DumpRestoreReport {
        label: manifest.label.clone(),
        database: opts.database.clone(),
        target: opts.target.target(),
        target_major,
        pg_restore: pg_restore.version,
        bytes,
        chunks: stream.chunks.len() as u64,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The dump named, or the newest holding the database.
async fn choose(repo: &Repository, opts: &DumpRestoreOptions) -> Result<DumpManifest> {
    if let Some(label) = &opts.label {
        return repo.dump_manifest(label).await.map_err(|e| match e {
            e if e.is_not_found() => EngineError::invalid(
                format!("no dump labelled {label} in {}", repo.location()),
                "`lifeboat dump list` shows the dumps",
            ),
            e => e.into(),
        });
    }
    let labels = repo.dump_labels().await?;
    for (label, _) in labels.iter().rev() {
        match repo.dump_manifest(label).await {
            Ok(m) if m.database(&opts.database).is_some() => return Ok(m),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!("dump {label} is unreadable and skipped: {e}");
            }
        }
    }
    Err(EngineError::invalid(
        format!(
            "no dump in {} holds database {:?}",
            repo.location(),
            opts.database
        ),
        "take one with `lifeboat dump`; `lifeboat dump list` shows the dumps",
    ))
}

fn damaged(manifest: &DumpManifest, db: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Repo(RepoError::Corrupt { key, reason }) => EngineError::Corrupt {
            message: format!(
                "dump {} of database {db:?}: {key} failed verification ({reason}); pg_restore was \
                 stopped before it read a damaged byte, so the target holds only part of the \
                 database",
                manifest.label
            ),
            hint: "run `lifeboat verify` to see what else is affected; restore an older dump \
                   (`lifeboat dump list`, then --label) after cleaning the target (--clean)"
                .into(),
        },
        other => other,
    }
}

/// One chunk's plaintext, verified: decoded (authentication, length, hash), its hash equal to its
/// name and its length the manifest's.
async fn fetch_verified(
    repo: &Repository,
    stored: &StoredChunks,
    chunk: DumpChunk,
) -> Result<Vec<u8>> {
    let corrupt =
        |key: String, reason: String| EngineError::Repo(RepoError::Corrupt { key, reason });
    let (key, raw) = match stored.locate(&chunk.id) {
        Some(ChunkPlace::Packed(loc)) => {
            let read = RangeRead {
                pack: loc.pack,
                start: loc.offset,
                end: loc.offset + u64::from(loc.length),
                chunks: vec![(chunk.id, loc)],
            };
            let bytes = repo.fetch_range(&read).await?;
            (
                format!("chunk {} in pack {}", chunk.id, loc.pack.key()),
                bytes,
            )
        }
        Some(ChunkPlace::Loose { .. }) => {
            let bytes = repo
                .store()
                .get(&chunk.id.key())
                .await
                .map_err(RepoError::from)?;
            (chunk.id.key(), bytes)
        }
        None => return Err(corrupt(chunk.id.key(), "missing".into())),
    };
    let codec = repo.codec().clone();
    let plain = tokio::task::spawn_blocking(move || {
        let (header, plain) = codec
            .decode(&raw)
            .map_err(|reason| corrupt(key.clone(), reason))?;
        if header.hash != chunk.id.0 {
            return Err(corrupt(
                key,
                format!("holds content {} under another name", header.hash),
            ));
        }
        if plain.len() != chunk.len as usize {
            return Err(corrupt(
                key,
                format!(
                    "holds {} bytes, the dump manifest says {}",
                    plain.len(),
                    chunk.len
                ),
            ));
        }
        Ok(plain)
    })
    .await
    .map_err(join_error)??;
    Ok(plain)
}
