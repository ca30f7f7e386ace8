//! `lifeboat list`: the backups in the repository and the restore window, as a table or JSON.

use super::context::{human_bytes, open_repo, print_json};
use crate::cli::ListArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn list(resolved: &Resolved, args: &ListArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let listing = lifeboat_engine::list::list(&repo).await?;
    if args.json {
        print_json(&listing)?;
        return Ok(Exit::Success);
    }
    if listing.backups.is_empty() {
        outln!("no backups yet: take one with `lifeboat backup`");
        return Ok(Exit::Success);
    }
    outln!(
        "{:<17} {:<27} {:<27} {:>3} {:>14} {:>10} {:>10} {:>8}",
        "label",
        "start",
        "stop",
        "tl",
        "stop lsn",
        "size",
        "stored",
        "seconds"
    );
    for b in &listing.backups {
        outln!(
            "{:<17} {:<27} {:<27} {:>3} {:>14} {:>10} {:>10} {:>8.1}",
            b.label,
            b.start_time,
            b.stop_time,
            b.timeline,
            b.stop_lsn.to_string(),
            human_bytes(b.size),
            human_bytes(b.stored_size),
            b.duration_seconds
        );
    }
    let w = &listing.window;
    let end = match &w.streamed_to {
        Some(lsn) => format!(
            "the end of WAL segment {}, then streamed WAL up to {lsn}",
            w.latest_wal.as_deref().unwrap_or("-")
        ),
        None => format!(
            "the end of WAL segment {}",
            w.latest_wal.as_deref().unwrap_or("-")
        ),
    };
    outln!(
        "restore window: from {} to {end} (newest backup ended {})",
        w.earliest.as_deref().unwrap_or("-"),
        w.latest_backup.as_deref().unwrap_or("-")
    );
    Ok(Exit::Success)
}
