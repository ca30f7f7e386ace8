//! `lifeboat info`: the repository's settings, the cluster it is bound to and its archived WAL
//! per timeline (with gaps and partial files), as text or JSON.

use super::context::{human_bytes, open_repo};
use crate::cli::InfoArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn info(resolved: &Resolved, args: &InfoArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let info = lifeboat_engine::info::info(&repo).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?;
        outln!("{text}");
        return Ok(Exit::Success);
    }
    outln!("repository   {} (id {})", info.location, info.repo_id);
    outln!(
        "format       version {}, created {}",
        info.format_version,
        info.created
    );
    outln!(
        "encryption   {}",
        if info.encrypted {
            "XChaCha20-Poly1305, key wrapped by an Argon2id passphrase key"
        } else {
            "none"
        }
    );
    outln!(
        "compression  {} (level {})",
        info.compression,
        info.compression_level
    );
    match &info.cluster {
        Some(c) => outln!(
            "cluster      system identifier {}, PostgreSQL {}, WAL segments of {} MiB",
            c.system_identifier,
            c.pg_major,
            c.wal_segment_size >> 20
        ),
        None => outln!("cluster      not bound yet (no WAL archived)"),
    }
    outln!(
        "WAL          {} files, {} stored",
        info.wal_files,
        human_bytes(info.wal_stored_bytes)
    );
    for tl in &info.timelines {
        outln!(
            "timeline {:<3} {} .. {} ({} segments, {})",
            tl.timeline,
            tl.first_segment,
            tl.last_segment,
            tl.segments,
            if tl.gaps.is_empty() {
                "no gaps".to_string()
            } else {
                format!("{} GAPS", tl.gaps.len())
            }
        );
        for gap in &tl.gaps {
            outln!(
                "  gap        {} .. {} ({} segments missing)",
                gap.first_missing,
                gap.last_missing,
                gap.count
            );
        }
        for p in &tl.partial_files {
            outln!("  partial    {p}");
        }
        if let Some(to) = &tl.streamed_to {
            outln!(
                "  streamed   up to {to} ({} pieces of segments not yet complete)",
                tl.streamed_pieces
            );
        }
    }
    for h in &info.history_files {
        outln!("history      {h}");
    }
    Ok(Exit::Success)
}
