//! `lifeboat check`: is the cluster set up to archive into this repository? Lists each problem
//! with its fix and exits 4 when there is one.

use std::time::Duration;

use lifeboat_engine::check::StreamSetup;

use super::context::{conn_spec, open_repo, print_json};
use crate::cli::CheckArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn check(resolved: &Resolved, args: &CheckArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    let conn = conn_spec(resolved, &args.cluster)?;
    let configured = resolved.file.stream.as_ref();
    let stream = StreamSetup {
        application_name: configured
            .and_then(|c| c.application_name.clone())
            .unwrap_or_else(|| "lifeboat".into()),
        slot: configured
            .and_then(|c| c.slot.clone())
            .unwrap_or_else(|| "lifeboat".into()),
    };
    let report = lifeboat_engine::check::check(
        &repo,
        &conn,
        Duration::from_secs(args.timeout.max(1)),
        &stream,
    )
    .await?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "cluster {} (PostgreSQL {}), repository {}",
            report.system_identifier,
            report.server_version,
            repo.location()
        );
        for p in &report.problems {
            outln!("PROBLEM: {}\n  FIX: {}", p.what, p.fix);
        }
        for n in &report.notes {
            outln!("NOTE: {}\n  CONSIDER: {}", n.what, n.fix);
        }
        if let (Some(seg), Some(s)) = (&report.switched_segment, report.archive_seconds) {
            outln!("ok: segment {seg} reached the repository {s:.1} s after the switch");
        }
    }
    if report.problems.is_empty() {
        Ok(Exit::Success)
    } else {
        Err(Failure::new(
            Exit::Refused,
            format!("{} problem(s) found", report.problems.len()),
            Some("apply each FIX above, then run lifeboat check again".into()),
        ))
    }
}
