//! Logical dumps (docs/FORMAT.md, "Dumps"): `pg_dump` of each database and `pg_dumpall
//! --globals-only`, cut with content-defined chunking into ordinary chunks (deduplicated against
//! every chunk the indexes locate, so the next dump of a slowly changing database stores only
//! what changed), stored in packs with the repository's codec; then a dump manifest, last.
//!
//! Parts: `programs` (finding pg_dump, pg_dumpall and pg_restore of the right major, connecting
//! them through the environment), `stream` (one program's output into chunks), `restore`
//! (chunks, verified, into `pg_restore`), `list` (what the repository holds). Retention of dumps
//! and their chunks' garbage collection are `expire`'s ([`crate::expire`]); their verification,
//! `verify`'s.
//!
//! Lock: `dump`, which excludes `expire` (its GC would delete the packs a running dump has not
//! referenced yet), `passphrase` and other dumps, and runs beside a `backup`: both only add packs
//! and their own indexes, then a manifest.

pub mod list;
pub mod programs;
pub mod restore;
pub mod stream;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::major_of_version_num;
use lifeboat_pg::session::{ConnSpec, Session};
use lifeboat_repo::Repository;
use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::dump::{DUMP_FORMAT, DUMP_VERSION, DumpManifest, DumpStream};
use lifeboat_repo::lock::{LockKind, RepoLock};
use lifeboat_repo::stored::ChunkScope;
use lifeboat_repo::timestamp;
use serde::Serialize;

use crate::backup::packer::PackWriter;
use crate::{EngineError, Result};
pub use stream::ChunkSizes;

#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The cluster (its `dbname` is where the databases are listed and the globals dumped).
    pub conn: ConnSpec,
    /// Databases to dump; empty: every database that accepts connections, templates left out.
    pub databases: Vec<String>,
    pub sizes: ChunkSizes,
    /// Pack uploads at once (the store's request concurrency).
    pub concurrency: usize,
}

/// What `lifeboat dump --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    pub label: String,
    pub manifest: String,
    pub server_version_num: u32,
    pub start_time: String,
    pub stop_time: String,
    pub duration_seconds: f64,
    /// Bytes of all streams (the globals and every database).
    pub size: u64,
    /// Bytes this run added to the repository: packs (or loose chunks) and the manifest.
    pub stored_size: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub databases: Vec<StreamReport>,
    pub globals: StreamReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub program_version: String,
    pub size: u64,
    /// Encoded bytes of the chunks this stream added (pack trailers not counted).
    pub stored_size: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub seconds: f64,
}

fn postgres(e: impl std::fmt::Display) -> EngineError {
    EngineError::Postgres {
        message: e.to_string(),
        hint: "check that the server runs and accepts this connection (--db / `db` in the config \
               file)"
            .into(),
    }
}

pub async fn dump(repo: &Repository, opts: &DumpOptions) -> Result<DumpReport> {
    opts.sizes.check()?;
    let mut lock = RepoLock::acquire(repo, LockKind::Dump)
        .await
        .map_err(EngineError::from)?;
    let result = run(repo, opts, &lock).await;
    lock.release().await;
    result
}

async fn run(repo: &Repository, opts: &DumpOptions, lock: &RepoLock) -> Result<DumpReport> {
    let started = Instant::now();
    let start_time = timestamp::now_micros();
    let session = Session::connect(&opts.conn, Duration::from_secs(30))
        .await
        .map_err(postgres)?;
    let version_num = session.server_version_num();
    let major = major_of_version_num(version_num);
    let all = session.databases().await.map_err(postgres)?;
    drop(session);
    let databases = if opts.databases.is_empty() {
        all
    } else {
        for name in &opts.databases {
            if !all.contains(name) {
                return Err(EngineError::invalid(
                    format!(
                        "no database {name:?} to dump on {} (it has: {})",
                        opts.conn.target(),
                        all.join(", ")
                    ),
                    "name a database that accepts connections with --db, or leave --db out to dump them all",
                ));
            }
        }
        opts.databases.clone()
    };
    let pg_dump = programs::find("pg_dump", major, major)?;
    let pg_dumpall = programs::find("pg_dumpall", major, major)?;

    let mut labels: Vec<String> = repo.dump_labels().await?.into_iter().map(|l| l.0).collect();
    let mut label = crate::backup::new_label();
    while labels.contains(&label) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        label = crate::backup::new_label();
    }
    labels.clear();

    // Every chunk an index places in a listed pack is known; a v1 repository's loose chunks are
    // deduplicated by their create-only put instead.
    let stored = repo
        .stored_chunks(ChunkScope::Wanted(&HashSet::new()))
        .await?;
    let known: HashSet<ChunkId> = stored.packed.chunks().copied().collect();
    drop(stored);
    let packs = if repo.writes_packs() {
        Some(Arc::new(PackWriter::new(repo, opts.concurrency)?))
    } else {
        None
    };
    let sink = stream::Sink {
        repo: repo.clone(),
        packs: packs.clone(),
        known: Arc::new(Mutex::new(known)),
        sizes: opts.sizes,
    };

    let mut reports = Vec::new();
    let mut streams = Vec::new();
    let mut globals_cmd = programs::command(&pg_dumpall, &opts.conn);
    globals_cmd.args(["--globals-only", "--no-password"]);
    let (globals, globals_report) =
        one_stream(&sink, globals_cmd, "", "sql", &pg_dumpall, major).await?;
    for db in &databases {
        let mut cmd = programs::command(&pg_dump, &opts.conn.with_dbname(db));
        // Custom format without compression: content-defined chunking finds what is unchanged,
        // and chunks are compressed by the repository's codec.
        cmd.args(["--format=custom", "-Z0", "--no-password"]);
        let (s, r) = one_stream(&sink, cmd, db, "custom", &pg_dump, major).await?;
        streams.push(s);
        reports.push(r);
    }
    let mut stored_size: u64 = 0;
    if let Some(packs) = &packs {
        stored_size += packs.finish().await?.pack_bytes;
    } else {
        stored_size += globals.stored_size + streams.iter().map(|s| s.stored_size).sum::<u64>();
    }

    let stop_time = timestamp::now_micros();
    let size = globals.size + streams.iter().map(|s| s.size).sum::<u64>();
    let mut manifest = DumpManifest {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        label: label.clone(),
        server_version_num: version_num,
        start_time,
        stop_time,
        duration_seconds: started.elapsed().as_secs_f64(),
        chunking: opts.sizes.describe(),
        globals,
        databases: streams,
        size,
        stored_size,
    };
    manifest.check(&label).map_err(EngineError::Internal)?;
    // The lock must still be ours: an expire that took it over could have deleted our packs.
    lock.check_held().await.map_err(EngineError::from)?;
    let manifest_bytes = repo.put_dump_manifest(&manifest).await?;
    manifest.stored_size += manifest_bytes;
    let chunks = reports.iter().map(|r| r.chunks).sum::<u64>() + globals_report.chunks;
    let new_chunks = reports.iter().map(|r| r.new_chunks).sum::<u64>() + globals_report.new_chunks;
    tracing::info!(
        "dump {label}: {} databases, {size} bytes, {} stored",
        reports.len(),
        manifest.stored_size
    );
    Ok(DumpReport {
        manifest: lifeboat_repo::keys::dump_manifest(&label),
        label,
        server_version_num: version_num,
        start_time: timestamp::text(manifest.start_time),
        stop_time: timestamp::text(manifest.stop_time),
        duration_seconds: started.elapsed().as_secs_f64(),
        size,
        stored_size: manifest.stored_size,
        chunks,
        new_chunks,
        databases: reports,
        globals: globals_report,
    })
}

async fn one_stream(
    sink: &stream::Sink,
    cmd: std::process::Command,
    name: &str,
    format: &str,
    program: &programs::Program,
    server_major: u32,
) -> Result<(DumpStream, StreamReport)> {
    let what = if name.is_empty() {
        "the globals".to_string()
    } else {
        format!("database {name:?}")
    };
    let began = Instant::now();
    let start_time = timestamp::now_micros();
    let out = stream::store(sink, cmd, &what).await?;
    let stop_time = timestamp::now_micros();
    tracing::info!(
        "dumped {what}: {} bytes in {} chunks, {} new",
        out.size,
        out.chunks.len(),
        out.new_chunks
    );
    let report = StreamReport {
        name: name.to_string(),
        program_version: program.version.clone(),
        size: out.size,
        stored_size: out.stored,
        chunks: out.chunks.len() as u64,
        new_chunks: out.new_chunks,
        seconds: began.elapsed().as_secs_f64(),
    };
    let stream = DumpStream {
        name: name.to_string(),
        format: format.to_string(),
        program_version: program.version.clone(),
        server_major,
        start_time,
        stop_time,
        size: out.size,
        stored_size: out.stored,
        chunks: out.chunks,
    };
    Ok((stream, report))
}
