//! `expire`: resolve the retention policy (flags, else `[retention]` in the config file), call the
//! engine, print what went (or would go) and the restore window before and after.

use lifeboat_engine::expire::{ExpireOptions, ExpireReport};

use super::context::{human_bytes, open_repo};
use crate::cli::ExpireArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn expire(resolved: &Resolved, args: &ExpireArgs) -> Result<Exit, Failure> {
    // A policy is one thing: given on the command line, it replaces the config file's as a whole
    // (mixing `--keep-last 2` with a configured `keep_days = 30` would keep far more than asked).
    let from_flags = args.keep_last.is_some() || args.keep_days.is_some();
    let (keep_last, keep_days) = if from_flags {
        (args.keep_last, args.keep_days)
    } else {
        (
            resolved.file.retention.keep_last,
            resolved.file.retention.keep_days,
        )
    };
    let repo = open_repo(resolved).await?;
    let opts = ExpireOptions {
        keep_last,
        keep_days,
        dry_run: args.dry_run,
        dumps: None,
    };
    let report = lifeboat_engine::expire::expire(&repo, &opts).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?;
        outln!("{text}");
    } else {
        print_text(
            &report,
            if from_flags {
                "command line"
            } else {
                "config file"
            },
        );
    }
    for w in &report.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok(Exit::Success)
}

fn print_text(r: &ExpireReport, source: &str) {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    outln!("policy ({source}): {}", r.policy.rule);
    if r.kept.is_empty() && r.expired.is_empty() {
        outln!("no backups in the repository: nothing to expire");
        return;
    }
    for b in &r.expired {
        outln!(
            "{verb} backup {} (ended {}, stop LSN {})",
            b.label,
            b.stop_time,
            b.stop_lsn
        );
    }
    for b in &r.kept {
        outln!(
            "keep backup {} (ended {}): {}",
            b.label,
            b.stop_time,
            b.reason
        );
    }
    let w = &r.wal;
    if w.segments + w.other_files == 0 {
        outln!(
            "WAL: nothing to delete{}",
            w.kept_from
                .as_deref()
                .map(|s| format!(" (kept from {s} on)"))
                .unwrap_or_default()
        );
    } else {
        outln!(
            "WAL: {verb} {} segments{} from {} to {}, {} (kept from {} on; timeline history files stay)",
            w.segments,
            if w.other_files > 0 {
                format!(" and {} .backup/.partial files", w.other_files)
            } else {
                String::new()
            },
            w.first.as_deref().unwrap_or("-"),
            w.last.as_deref().unwrap_or("-"),
            human_bytes(w.bytes),
            w.kept_from.as_deref().unwrap_or("-")
        );
    }
    outln!(
        "chunks: {verb} {} unreferenced ({}); {} referenced remain ({})",
        r.chunks.count,
        human_bytes(r.chunks.bytes),
        r.chunks.remaining,
        human_bytes(r.chunks.remaining_bytes)
    );
    let p = &r.packs;
    if p.count + p.remaining + p.repacked + p.indexes_replaced > 0 || p.skipped.is_some() {
        let mut parts = vec![format!(
            "packs: {verb} {} unreferenced ({}{})",
            p.count,
            human_bytes(p.bytes),
            if p.unindexed > 0 {
                format!(", {} of them named by no index", p.unindexed)
            } else {
                String::new()
            }
        )];
        if p.repacked > 0 {
            parts.push(format!(
                "{} {} mostly unreferenced ({}) by copying their {} of referenced chunks into new packs",
                if r.dry_run { "would repack" } else { "repacked" },
                p.repacked,
                human_bytes(p.repacked_bytes),
                human_bytes(p.copied_bytes)
            ));
        }
        parts.push(format!(
            "{} remain as they are ({})",
            p.remaining,
            human_bytes(p.remaining_bytes)
        ));
        if p.indexes_replaced > 0 {
            parts.push(format!(
                "{} {} index objects with one",
                if r.dry_run {
                    "would replace"
                } else {
                    "replaced"
                },
                p.indexes_replaced
            ));
        }
        if p.skipped.is_some() {
            parts.push("packs left untouched (see the warning)".into());
        }
        outln!("{}", parts.join("; "));
    }
    outln!(
        "{} {} in {:.1} s (backups: {}, WAL files: {}, chunks: {}, packs: {})",
        if r.dry_run { "would free" } else { "freed" },
        human_bytes(r.bytes_freed),
        r.duration_seconds,
        r.expired.len(),
        w.segments + w.other_files,
        r.chunks.count,
        p.count
    );
    let window = |w: &lifeboat_engine::list::Window| {
        format!(
            "from {} to the end of WAL segment {}",
            w.earliest.as_deref().unwrap_or("-"),
            w.latest_wal.as_deref().unwrap_or("-")
        )
    };
    outln!("restore window before: {}", window(&r.window_before));
    outln!(
        "restore window {}: {}",
        if r.dry_run { "after " } else { "now   " },
        window(&r.window_after)
    );
    if r.dry_run {
        outln!("dry run: nothing was changed");
    }
}
