//! `verify`: call the engine's verification, draw progress on a terminal, print one line per
//! finding, one per backup and a summary (or the JSON report), and exit 6 on any finding.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_engine::verify::{BackupVerdict, VerifyEvent, VerifyOptions, VerifyReport};

use super::context::{human_bytes, open_repo};
use crate::cli::VerifyArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn verify(resolved: &Resolved, args: &VerifyArgs) -> Result<Exit, Failure> {
    let reread_percent = match (args.reread_percent, resolved.file.verify.reread_percent) {
        (Some(p), _) => p,
        (None, Some(p)) => u8::try_from(p).ok().filter(|p| *p <= 100).ok_or_else(|| {
            Failure::config(
                format!("verify.reread_percent = {p} is out of range"),
                "set verify.reread_percent in the config file to a share from 0 (never re-read what was verified) to 100 (re-read everything every run); the default is 5",
            )
        })?,
        (None, None) => lifeboat_engine::verify::DEFAULT_REREAD_PERCENT,
    };
    let repo = open_repo(resolved).await?;
    let opts = VerifyOptions {
        backup: args.backup.clone(),
        full: args.full,
        reread_percent,
        ..VerifyOptions::default()
    };
    let progress = progress_bar();
    let events = {
        let progress = progress.clone();
        Arc::new(move |event: VerifyEvent| match event {
            VerifyEvent::Planned { bytes, .. } => {
                progress.set_length(bytes);
                progress.set_message("reading");
            }
            VerifyEvent::Read { bytes } => progress.inc(bytes),
        })
    };
    let result = lifeboat_engine::verify::verify(&repo, &opts, events).await;
    progress.finish_and_clear();
    let report = result?;
    let mut text = if args.json {
        serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?
    } else {
        render_text(&report)
    };
    text.push('\n');
    // A reader that went away (`| head`) is no reason to panic; the exit code still tells.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(if report.ok {
        Exit::Success
    } else {
        Exit::Corrupt
    })
}

fn progress_bar() -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("listing");
    bar
}

/// One line per finding, one per warning (no problem: the exit code stays 0), one per backup, a
/// note about the state if any, then the summary.
fn render_text(report: &VerifyReport) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let backups = if f.backups.is_empty() {
            "none".to_string()
        } else {
            f.backups.join(", ")
        };
        let _ = writeln!(
            out,
            "PROBLEM: {}; backups affected: {backups}; FIX: {}",
            f.what, f.action
        );
    }
    for w in &report.warnings {
        let _ = writeln!(out, "WARNING: {}; {}", w.what, w.action);
    }
    for b in &report.backups {
        let _ = writeln!(out, "{}", verdict_line(b));
    }
    if let Some(note) = &report.state.note {
        let _ = writeln!(out, "NOTE: {note}");
    }
    let c = &report.counters;
    if c.dumps_checked > 0 {
        let _ = writeln!(
            out,
            "dumps: {} checked, {}",
            c.dumps_checked,
            match c.dumps_damaged {
                0 => "every chunk of every database intact".to_string(),
                n => format!("{n} NOT RESTORABLE (see above)"),
            }
        );
    }
    let _ = writeln!(out, "{}", reread_line(report));
    let problems = report.findings.len();
    let _ = write!(
        out,
        "verify{}: {} backup{} checked in {:.1} s: {} chunks read, {} skipped (verified by an earlier run), {} read; {} WAL files checked ({} read, {} skipped); {}",
        if report.full { " --full" } else { "" },
        c.backups_checked,
        if c.backups_checked == 1 { "" } else { "s" },
        c.duration_seconds,
        c.chunks_read,
        c.chunks_skipped,
        human_bytes(c.bytes_read),
        c.wal_files,
        c.wal_read,
        c.wal_skipped,
        match problems {
            0 => "no problems".to_string(),
            1 => "1 PROBLEM".to_string(),
            n => format!("{n} PROBLEMS"),
        }
    );
    out
}

/// What the rotation re-read and how long a whole cycle takes.
fn reread_line(report: &VerifyReport) -> String {
    let r = &report.reread;
    let c = &report.counters;
    let Some(cycle) = r.cycle_runs else {
        return "re-read: off (verify.reread_percent = 0): what earlier runs verified is read again only by `lifeboat verify --full`".into();
    };
    let pace = match r.cycle_days {
        Some(days) => format!(
            "about {days} days at the pace of the {} runs recorded so far",
            r.runs_before
        ),
        None => format!("{cycle} days if verify runs once a day"),
    };
    format!(
        "re-read: {} chunk{} and {} WAL file{} verified earlier, in their turn ({}% a run): everything verified is read again every {cycle} run{} ({pace})",
        c.chunks_reread,
        if c.chunks_reread == 1 { "" } else { "s" },
        c.wal_reread,
        if c.wal_reread == 1 { "" } else { "s" },
        r.percent,
        if cycle == 1 { "" } else { "s" },
    )
}

fn verdict_line(b: &BackupVerdict) -> String {
    if !b.manifest_ok {
        return format!(
            "backup {}: NOT RESTORABLE (its manifest is unreadable)",
            b.label
        );
    }
    let window = match &b.restores_to {
        Some(end) => format!(
            "restores to any moment from its end ({}) up to the end of WAL segment {end}",
            b.stop_time.as_deref().unwrap_or("-")
        ),
        None => String::new(),
    };
    if b.restorable {
        return format!("backup {}: intact, {window}", b.label);
    }
    let mut why = Vec::new();
    if b.chunks_missing > 0 {
        why.push(format!(
            "{} of {} chunks missing",
            b.chunks_missing, b.chunks
        ));
    }
    if b.chunks_damaged > 0 {
        why.push(format!(
            "{} of {} chunks damaged",
            b.chunks_damaged, b.chunks
        ));
    }
    if !b.wal_complete {
        why.push(format!(
            "WAL {} .. {} incomplete",
            b.start_wal.as_deref().unwrap_or("-"),
            b.stop_wal.as_deref().unwrap_or("-")
        ));
    }
    format!("backup {}: NOT RESTORABLE ({})", b.label, why.join(", "))
}
