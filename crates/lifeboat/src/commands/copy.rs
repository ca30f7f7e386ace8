//! `copy`: open the repository and the copy's store (`--to`, else `[copy] to`), call the engine
//! with a progress bar on a terminal, print what was copied, skipped and not copied (or the JSON
//! report), and exit 6 when a damaged source object kept something from being copied.

use std::sync::Arc;

use lifeboat_engine::copy::{CopyEvent, CopyReport};

use super::context::{bar, human_bytes, open_repo, print_json, storage_failure};
use crate::cli::CopyArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn copy(resolved: &Resolved, args: &CopyArgs) -> Result<Exit, Failure> {
    let to = args
        .to
        .clone()
        .or_else(|| resolved.file.copy.to.clone())
        .ok_or_else(|| {
            Failure::config(
                "no copy location given",
                "pass --to URL (a path or an s3://, gs://, az:// location), or set `to` in the [copy] section of the config file",
            )
        })?;
    let source = open_repo(resolved).await?;
    // A local copy's directory is created as `init` creates a repository's.
    let store = lifeboat_storage::open_or_create(&to, &resolved.storage)
        .map_err(|e| storage_failure(&to, e))?;
    let progress = bar(0);
    progress.set_message("listing");
    let events = {
        let progress = progress.clone();
        Arc::new(move |event: CopyEvent| match event {
            CopyEvent::Planned { bytes } => {
                progress.set_length(bytes);
                progress.set_message("copying");
            }
            CopyEvent::Done { bytes } => progress.inc(bytes),
        })
    };
    let result =
        lifeboat_engine::copy::copy(&source, store, resolved.passphrase.as_ref(), events).await;
    progress.finish_and_clear();
    let report = result?;
    if args.json {
        print_json(&report)?;
    } else {
        print_text(&report);
    }
    for w in &report.warnings {
        eprintln!("WARNING: {w}");
    }
    if report.ok {
        return Ok(Exit::Success);
    }
    let keys: Vec<&str> = report.damaged.iter().map(|d| d.key.as_str()).collect();
    Err(Failure::new(
        Exit::Corrupt,
        format!(
            "{} damaged object(s) in the source were not copied, nor the backups that need them: {}",
            keys.len(),
            keys.join(", ")
        ),
        Some(
            "everything sound was copied. Run `lifeboat verify` on the source: it names the backups affected and how to repair each object (a damaged loose chunk or WAL file is stored again by a new backup or wal-push once removed; a chunk inside a damaged pack is reused by new backups, so those wait for the pack's repair); `lifeboat copy` then copies what it can".to_string(),
        ),
    ))
}

fn print_text(r: &CopyReport) {
    if r.target_created {
        outln!("created the copy at {}", r.target);
    }
    for d in &r.damaged {
        outln!("DAMAGED: {} ({}): not copied", d.key, d.reason);
    }
    for b in &r.backups_not_copied {
        outln!("backup {} not copied: {}", b.label, b.reason);
    }
    for label in &r.backups_copied {
        outln!("copied backup {label}");
    }
    for d in &r.dumps_not_copied {
        outln!("dump {} not copied: {}", d.label, d.reason);
    }
    for label in &r.dumps_copied {
        outln!("copied dump {label}");
    }
    let c = &r.copied;
    outln!(
        "copy to {}: {} object(s), {} copied ({} WAL files, {} streamed pieces, {} packs, {} loose chunks, {} indexes, {} manifests, {} dump manifests); {} object(s), {} already there; {:.1} s",
        r.target,
        c.objects,
        human_bytes(c.bytes),
        c.wal_files,
        c.stream_pieces,
        c.packs,
        c.loose_chunks,
        c.indexes,
        c.manifests,
        c.dump_manifests,
        r.skipped.objects,
        human_bytes(r.skipped.bytes),
        r.duration_seconds
    );
    let lag = &r.lag;
    outln!(
        "lag: {} backup(s), {} dump(s) and {} WAL file(s) of the source not in the copy; newest WAL: source {}, copy {}",
        lag.backups,
        lag.dumps,
        lag.wal_files,
        lag.source_newest_wal.as_deref().unwrap_or("none"),
        lag.copy_newest_wal.as_deref().unwrap_or("none")
    );
}
