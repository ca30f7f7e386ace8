//! `lifeboat dump` and its subcommands: resolve the options, call the engine's dump, list,
//! restore or expire (with a dump retention), print a summary (or JSON).

use lifeboat_engine::dump::list::DumpEntry;
use lifeboat_engine::dump::restore::DumpRestoreOptions;
use lifeboat_engine::dump::{ChunkSizes, DumpOptions};
use lifeboat_engine::expire::{DumpRetention, ExpireOptions};
use lifeboat_pg::session::ConnSpec;

use super::context::{conn_spec_of, human_bytes, open_repo, print_json};
use crate::cli::{DumpArgs, DumpCommand};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn dump(resolved: &Resolved, args: &DumpArgs) -> Result<Exit, Failure> {
    let repo = open_repo(resolved).await?;
    match &args.command {
        None => {
            let run = &args.run;
            let opts = DumpOptions {
                conn: conn_spec_of(resolved, run.from.as_deref())?,
                databases: if run.databases.is_empty() {
                    resolved.file.dump.databases.clone()
                } else {
                    run.databases.clone()
                },
                sizes: ChunkSizes::default(),
                concurrency: repo.store().capabilities().concurrency,
            };
            let report = lifeboat_engine::dump::dump(&repo, &opts).await?;
            if run.json {
                print_json(&report)?;
            }
            for d in &report.databases {
                eprintln!(
                    "  {}: {} in {} chunks ({} new, {} stored) in {:.1} s",
                    d.name,
                    human_bytes(d.size),
                    d.chunks,
                    d.new_chunks,
                    human_bytes(d.stored_size),
                    d.seconds
                );
            }
            eprintln!(
                "dump {} complete: {} databases and the globals, {} dumped, {} stored ({} of {} chunks new), {:.1} s",
                report.label,
                report.databases.len(),
                human_bytes(report.size),
                human_bytes(report.stored_size),
                report.new_chunks,
                report.chunks,
                report.duration_seconds
            );
            Ok(Exit::Success)
        }
        Some(DumpCommand::List(list)) => {
            let dumps = lifeboat_engine::dump::list::list(&repo).await?;
            if list.json {
                print_json(&dumps)?;
            } else {
                print_list(&dumps);
            }
            Ok(Exit::Success)
        }
        Some(DumpCommand::Restore(r)) => {
            // The target is resolved without the PG* environment's dbname taking over the one
            // given: a connection string always names where the restore goes.
            let target = ConnSpec::new(Some(&r.to)).map_err(|e| {
                Failure::config(
                    format!("invalid --to connection string: {e}"),
                    "give a libpq connection string such as 'host=db2 port=5432 user=postgres dbname=app'",
                )
            })?;
            let opts = DumpRestoreOptions {
                database: r.database.clone(),
                label: r.label.clone(),
                tables: r.tables.clone(),
                clean: r.clean,
                create: r.create,
                no_owner: r.no_owner,
                no_privileges: false,
                target,
            };
            let report = lifeboat_engine::dump::restore::restore(&repo, &opts).await?;
            if r.json {
                print_json(&report)?;
            }
            eprintln!(
                "restored database {} from dump {} into {} (PostgreSQL {}, {}): {} in {:.1} s",
                report.database,
                report.label,
                report.target,
                report.target_major,
                report.pg_restore,
                human_bytes(report.bytes),
                report.duration_seconds
            );
            Ok(Exit::Success)
        }
        Some(DumpCommand::Expire(e)) => {
            let opts = ExpireOptions {
                keep_last: None,
                keep_days: None,
                dry_run: e.dry_run,
                // Flags win; without any, the `[dump]` section's policy (the daemon's job).
                dumps: Some(if e.keep_last.is_some() || e.keep_days.is_some() {
                    DumpRetention {
                        keep_last: e.keep_last,
                        keep_days: e.keep_days,
                    }
                } else {
                    DumpRetention {
                        keep_last: resolved.file.dump.keep_last,
                        keep_days: resolved.file.dump.keep_days,
                    }
                }),
            };
            let report = lifeboat_engine::expire::expire(&repo, &opts).await?;
            if e.json {
                print_json(&report)?;
            } else {
                let verb = if report.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                if let Some(policy) = &report.dumps.policy {
                    outln!("dump policy: {policy}");
                }
                for d in &report.dumps.expired {
                    outln!("{verb} dump {} (ended {})", d.label, d.stop_time);
                }
                for d in &report.dumps.kept {
                    outln!(
                        "keep dump {} (ended {}): {}",
                        d.label,
                        d.stop_time,
                        d.reason
                    );
                }
                outln!(
                    "{} {}: chunks {} ({}), packs {} ({}), {} repacked",
                    if report.dry_run {
                        "would free"
                    } else {
                        "freed"
                    },
                    human_bytes(report.bytes_freed),
                    report.chunks.count,
                    human_bytes(report.chunks.bytes),
                    report.packs.count,
                    human_bytes(report.packs.bytes),
                    report.packs.repacked
                );
            }
            for w in &report.warnings {
                eprintln!("WARNING: {w}");
            }
            Ok(Exit::Success)
        }
    }
}

fn print_list(dumps: &[DumpEntry]) {
    if dumps.is_empty() {
        outln!("no dumps in the repository (take one with `lifeboat dump`)");
        return;
    }
    for d in dumps {
        if let Some(problem) = &d.problem {
            outln!("{}  UNREADABLE: {problem}", d.label);
            continue;
        }
        let names: Vec<&str> = d.databases.iter().map(|x| x.name.as_str()).collect();
        outln!(
            "{}  ended {}  {} dumped, {} stored (dedup {:.1}x)  databases: {}",
            d.label,
            d.stop_time,
            human_bytes(d.size),
            human_bytes(d.stored_size),
            d.dedup_ratio,
            names.join(", ")
        );
    }
}
