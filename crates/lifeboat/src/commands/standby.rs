//! `lifeboat standby create`: the restore options of a standby, then the engine's `standby`.

use lifeboat_engine::restore::RestoreOptions;
use lifeboat_engine::standby::{self, StandbyOptions};
use lifeboat_pg::recovery::{RecoveryTarget, TargetAction, TargetTimeline};

use super::context::{absolute, human_bytes, open_repo, print_json, restore_command};
use super::restore::{direct_io, progress_events, restore_parallel, tablespace_map};
use crate::cli::StandbyCreateArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn create(resolved: &Resolved, args: &StandbyCreateArgs) -> Result<Exit, Failure> {
    let target_dir = absolute(&args.target_dir);
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| standby::default_name(&target_dir));
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Failure::new(
            Exit::Usage,
            format!("invalid --name {name:?}"),
            Some(
                "it names the replication slot: 1 to 63 lower-case letters, digits and underscores"
                    .into(),
            ),
        ));
    }
    let repo = open_repo(resolved).await?;
    let options = StandbyOptions {
        restore: RestoreOptions {
            target_dir,
            backup: args.backup.clone(),
            target: RecoveryTarget::Latest,
            action: TargetAction::Promote,
            timeline: TargetTimeline::Latest,
            delta: args.delta,
            standby: true,
            primary_conninfo: None,
            primary_slot_name: None,
            tablespace_map: tablespace_map(&args.tablespace_map)?,
            dry_run: false,
            parallel: restore_parallel(resolved, args.parallel),
            restore_command: restore_command(resolved)?,
            archive_off: false,
            direct_io: direct_io(),
        },
        primary_conninfo: args.primary.clone(),
        name,
        slot: !args.no_slot,
    };
    let (progress, events) = progress_events();
    let result = standby::create(&repo, &options, events).await;
    progress.finish_and_clear();
    let report = result?;
    if args.json {
        print_json(&report)?;
    }
    for w in report.restore.plan.iter().flat_map(|p| &p.warnings) {
        eprintln!("WARNING: {w}");
    }
    eprintln!(
        "standby {} restored from backup {} into {} ({} written); slot {}; start the server: it replays the repository, then streams from the primary",
        report.name,
        report.restore.backup,
        options.restore.target_dir.display(),
        human_bytes(report.restore.bytes_written),
        match (&report.slot, report.slot_created) {
            (Some(slot), true) => format!("{slot} created on the primary"),
            (Some(slot), false) => format!("{slot} (already on the primary)"),
            (None, _) => "none".into(),
        }
    );
    Ok(Exit::Success)
}
