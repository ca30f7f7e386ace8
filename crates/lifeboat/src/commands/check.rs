//! `lifeboat check`: is the cluster set up to archive into this repository? Lists each problem
//! with its fix and exits 4 when there is one.

use std::time::Duration;

use lifeboat_engine::check::{Problem, StreamSetup};

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
    let mut report = report;
    // Failover's needs are checked too, so one command says what a node lacks.
    if let Some(raw) = &resolved.file.ha {
        report.problems.extend(failover_problems(raw, &conn).await?);
    }
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

/// With `[ha]`: the section itself, etcd (reachable, this cluster's system identifier) and the
/// server's settings failover needs.
async fn failover_problems(
    raw: &lifeboat_ha::config::RawHaConfig,
    conn: &lifeboat_pg::session::ConnSpec,
) -> Result<Vec<Problem>, Failure> {
    let config = match raw.clone().into_config() {
        Ok(config) => config,
        Err(e) => {
            return Ok(vec![Problem {
                what: e.to_string(),
                fix: "fix [ha] in the configuration file (README, \"Automatic failover\")".into(),
            }]);
        }
    };
    let mut problems = Vec::new();
    let mut members = 3;
    let view = match lifeboat_ha::dcs::Dcs::connect(&config).await {
        Ok(dcs) => dcs.read().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match view {
        Ok(view) => {
            members = members.max(view.members.len());
            let session = lifeboat_pg::session::Session::connect(conn, Duration::from_secs(30))
                .await
                .map_err(|e| Failure::new(Exit::Postgres, e.to_string(), None))?;
            let ours = session
                .system_identifier()
                .await
                .map_err(|e| Failure::new(Exit::Postgres, e.to_string(), None))?;
            if let Some(theirs) = view.initialize.filter(|&id| id != ours) {
                problems.push(Problem {
                    what: format!(
                        "etcd says cluster {:?} is database system {theirs}, this server is {ours}",
                        config.cluster
                    ),
                    fix: "give this node the cluster's data (lifeboat standby create), or use \
                          another [ha] cluster name"
                        .into(),
                });
            }
        }
        Err(e) => problems.push(Problem {
            what: format!("etcd ({}) cannot be read: {e}", config.etcd.join(", ")),
            fix: "check that the etcd members run, that [ha] etcd lists their client URLs, and \
                  that this host reaches them"
                .into(),
        }),
    }
    problems.extend(
        lifeboat_engine::check::failover_problems(conn, members)
            .await
            .map_err(|e| Failure::new(Exit::Postgres, e.to_string(), None))?,
    );
    Ok(problems)
}
