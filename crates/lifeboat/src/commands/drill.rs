//! `lifeboat drill`: resolve the drill's options, run the engine's drill, store its record in the
//! repository, print a summary (or the record as JSON), and exit 0 when it passed, 9 when it failed.
//!
//! SIGTERM and SIGINT (the daemon stops its child drills with SIGTERM) stop the drill: the scratch
//! server is stopped, its directory removed, nothing is recorded (an interrupted drill is not a
//! failed one), and the exit code is 143.

use lifeboat_engine::drill::{DrillOptions, DrillOutcome, DrillReport, DumpChoice};
use lifeboat_repo::records::DrillKind;
use lifeboat_repo::records::DrillRecord;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::context::restore_command;
use super::context::{human_bytes, open_repo};
use crate::cli::DrillArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure, repo_exit};

pub async fn drill(resolved: &Resolved, args: &DrillArgs) -> Result<Exit, Failure> {
    // Before anything exists that a signal would leave behind.
    let (cancel, signalled) = watch_signals()?;
    let config = &resolved.file.drill;
    // Both were parsed (clap, the config file) into what a drill accepts.
    let target = args.target.unwrap_or(config.target);
    let backup = args.backup.clone().unwrap_or_else(|| config.backup.clone());
    if config.timeout.is_zero() {
        return Err(Failure::config(
            "drill.timeout in the config file is zero: no drill can finish in no time",
            "set it to e.g. \"1h\" in the [drill] section",
        ));
    }
    if let Some(dir) = &config.bindir {
        check_bindir(dir)?;
    }
    let repo = open_repo(resolved).await?;
    let mut opts = DrillOptions::new(config, restore_command(resolved)?);
    opts.backup = backup;
    opts.target = target;
    if let Some(dir) = &args.scratch_dir {
        opts.scratch_dir = dir.clone();
    }
    opts.keep = args.keep;
    if args.dump {
        opts.dump = Some(DumpChoice {
            label: args.label.clone(),
            databases: args.databases.clone(),
        });
    }
    opts.trigger = args.trigger.clone();
    if let Some(n) = resolved.file.restore.parallel {
        opts.parallel = n.max(1);
    }

    let outcome = lifeboat_engine::drill::drill(&repo, &opts, cancel).await?;
    let report = match outcome {
        DrillOutcome::Finished(report) => report,
        DrillOutcome::Interrupted { cleanup_problems } => {
            for problem in &cleanup_problems {
                eprintln!("WARNING: {problem}");
            }
            let how = signalled.borrow().unwrap_or("a signal");
            eprintln!(
                "lifeboat: drill interrupted by {how}: the scratch server was stopped and its directory {}; nothing was recorded",
                if opts.keep { "kept" } else { "removed" }
            );
            return Ok(Exit::Interrupted);
        }
    };

    let stored = repo.put_drill(&report.record).await;
    if args.json {
        let text = serde_json::to_string_pretty(&report.record)
            .map_err(|e| Failure::new(Exit::Internal, e.to_string(), None))?;
        outln!("{text}");
    } else {
        print_summary(&report.record, stored.is_ok());
    }
    for problem in &report.cleanup_problems {
        eprintln!("WARNING: {problem}");
    }
    if let Some(dir) = &report.kept {
        eprintln!(
            "kept the scratch directory {} (server stopped; data in data/, log in postgres.log)",
            dir.display()
        );
    }
    if let Err(e) = stored {
        return Err(Failure::new(
            repo_exit(&e),
            format!(
                "the drill {} but its record could not be stored in the repository: {e}",
                if report.record.passed {
                    "passed"
                } else {
                    "failed"
                }
            ),
            e.hint().or_else(|| {
                Some("check that the repository is writable, then run the drill again".into())
            }),
        ));
    }
    if report.record.passed {
        return Ok(Exit::Success);
    }
    Err(failure(&report))
}

/// `[drill] bindir` must name a directory holding PostgreSQL's server programs; whether they are
/// of the backup's major is known only once the backup is chosen (a failed drill, exit 9).
fn check_bindir(dir: &std::path::Path) -> Result<(), Failure> {
    let hint = "set it to the bin directory of the backups' PostgreSQL major (e.g. \
                /usr/lib/postgresql/13/bin), or remove it to let the drill find the programs by \
                the backup's major";
    if !dir.is_absolute() {
        return Err(Failure::config(
            format!(
                "[drill] bindir = {} in the config file is not an absolute path",
                dir.display()
            ),
            hint,
        ));
    }
    let missing: Vec<&str> = ["postgres", "pg_ctl"]
        .into_iter()
        .filter(|program| !dir.join(program).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(Failure::config(
            format!(
                "[drill] bindir = {} in the config file holds no PostgreSQL server programs \
                 ({} missing)",
                dir.display(),
                missing.join(" and ")
            ),
            hint,
        ));
    }
    Ok(())
}

/// Install the SIGTERM and SIGINT handlers; the receiver turns true at the first of them, and the
/// second channel says which it was.
#[allow(clippy::type_complexity)]
fn watch_signals() -> Result<(watch::Receiver<bool>, watch::Receiver<Option<&'static str>>), Failure>
{
    let failure = |e: std::io::Error| {
        Failure::new(
            Exit::Internal,
            format!("cannot install the signal handlers a drill needs to clean up: {e}"),
            None,
        )
    };
    let mut term = signal(SignalKind::terminate()).map_err(failure)?;
    let mut int = signal(SignalKind::interrupt()).map_err(failure)?;
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (which_tx, which_rx) = watch::channel(None);
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = which_tx.send(Some(which));
        let _ = cancel_tx.send(true);
        // Keep the handlers installed: a second signal must not kill the cleanup.
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    });
    Ok((cancel_rx, which_rx))
}

/// `lifeboat: error: drill of backup X failed at step Y: why`, with what to do.
fn failure(report: &DrillReport) -> Failure {
    let record = &report.record;
    let what = match record.kind {
        DrillKind::Backup => "backup",
        DrillKind::Dump => "dump",
    };
    let of = record
        .backup
        .as_deref()
        .map_or(String::new(), |b| format!(" of {what} {b}"));
    Failure::new(
        Exit::Failed,
        format!(
            "drill{of} failed at step {}: {}",
            record.failed_step.as_deref().unwrap_or("unknown"),
            record.failure.as_deref().unwrap_or("no reason recorded")
        ),
        report.hint.clone(),
    )
}

fn print_summary(record: &DrillRecord, stored: bool) {
    let verdict = if record.passed {
        "passed".to_string()
    } else {
        format!(
            "FAILED at step {}",
            record.failed_step.as_deref().unwrap_or("unknown")
        )
    };
    if record.kind == DrillKind::Dump {
        outln!(
            "dump drill {verdict}: dump {}, databases {}",
            record.backup.as_deref().unwrap_or("(none chosen)"),
            if record.databases.is_empty() {
                "(none restored)".to_string()
            } else {
                record.databases.join(", ")
            }
        );
        let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.1} s"));
        if record.restore_seconds.is_some() {
            outln!(
                "  restore {} ({} through pg_restore); data-loss window {} (drill start minus the dump's snapshot)",
                secs(record.restore_seconds),
                human_bytes(record.bytes_restored),
                secs(record.data_loss_seconds)
            );
        }
        print_checks(record, stored);
        return;
    }
    let target = if record.target == "latest" {
        "the end of the archive (latest)".to_string()
    } else {
        record.target.clone()
    };
    outln!(
        "drill {verdict}: backup {}, target {target}",
        record.backup.as_deref().unwrap_or("(none chosen)")
    );
    let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.1} s"));
    if record.restore_seconds.is_some() {
        outln!(
            "  restore {} ({} written), replay {}, recovery time {}",
            secs(record.restore_seconds),
            human_bytes(record.bytes_restored),
            secs(record.replay_seconds),
            secs(record.recovery_seconds)
        );
    }
    if record.replay_seconds.is_some() {
        let window = match (record.data_loss_seconds, record.target == "latest") {
            (Some(s), _) => format!("data-loss window {s:.1} s (drill start minus newest commit)"),
            (None, true) => "data-loss window unknown (no transaction replayed)".to_string(),
            (None, false) => "no data-loss window for a target inside the archive".to_string(),
        };
        outln!(
            "  newest commit {}; {window}",
            record.newest_commit.as_deref().unwrap_or("none replayed")
        );
    }
    print_checks(record, stored);
}

fn print_checks(record: &DrillRecord, stored: bool) {
    for check in &record.checks {
        outln!(
            "  {:<6} {}: {}",
            if check.passed { "ok" } else { "FAILED" },
            one_line(&check.name),
            one_line(&check.detail)
        );
    }
    if stored {
        outln!("  record {} stored in the repository", record.id);
    }
}

/// The first line of `text`, marked when there were more.
fn one_line(text: &str) -> String {
    let mut lines = text.trim().lines();
    let first = lines.next().unwrap_or("");
    if lines.next().is_some() {
        format!("{first} ...")
    } else {
        first.to_string()
    }
}
