//! Command-line definitions of `lifeboat dump` and its subcommands (logical dumps).

use clap::{Args, Subcommand};

use crate::limits;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DumpArgs {
    #[command(subcommand)]
    pub command: Option<DumpCommand>,
    #[command(flatten)]
    pub run: DumpRunArgs,
}

#[derive(Debug, Args)]
pub struct DumpRunArgs {
    /// A database to dump (repeat for several) [default: every database that accepts
    /// connections, templates left out].
    #[arg(long = "db", value_name = "NAME")]
    pub databases: Vec<String>,
    /// The cluster, as a libpq connection string [config: db; default: the PG* environment,
    /// then the local socket as postgres]. Put passwords in ~/.pgpass or PGPASSWORD, never here.
    #[arg(long, value_name = "CONNINFO")]
    pub from: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DumpCommand {
    /// List the dumps: label, time, databases, sizes, bytes stored and dedup ratio.
    List(DumpListArgs),
    /// Restore one database (or some of its tables) from a dump into a running server of the
    /// same or a newer major version, through pg_restore. Every chunk is verified before
    /// pg_restore reads it.
    Restore(DumpRestoreArgs),
    /// Apply a dump retention: delete the dumps it does not keep, then the chunks and packs no
    /// backup and no kept dump references. Backups and WAL are not touched.
    Expire(DumpExpireArgs),
}

#[derive(Debug, Args)]
pub struct DumpListArgs {
    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DumpRestoreArgs {
    /// The database to restore (its name in the dump).
    #[arg(long = "db", value_name = "NAME")]
    pub database: String,
    /// The dump to restore from [default: the newest holding the database].
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Restore only this table (repeat for several; pg_restore -t).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// The target server and database, as a libpq connection string. It is passed to pg_restore
    /// through its environment, never its command line; a password is best kept in ~/.pgpass or
    /// PGPASSWORD (or give the whole string in LIFEBOAT_DUMP_RESTORE_TO).
    #[arg(
        long,
        value_name = "CONNINFO",
        env = "LIFEBOAT_DUMP_RESTORE_TO",
        hide_env_values = true
    )]
    pub to: String,
    /// Drop each object before creating it (pg_restore --clean --if-exists).
    #[arg(long)]
    pub clean: bool,
    /// Create the database first (pg_restore --create): the target's dbname is then only where
    /// pg_restore connects to issue CREATE DATABASE.
    #[arg(long)]
    pub create: bool,
    /// Skip ownership: everything belongs to the restoring user (pg_restore --no-owner).
    #[arg(long)]
    pub no_owner: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DumpExpireArgs {
    /// Keep the newest N dumps (1 to 1000000).
    #[arg(long, value_name = "N", value_parser = limits::flag::keep_last)]
    pub keep_last: Option<u32>,
    /// Keep the dumps that ended within the last D days (1 to 100000). With --keep-last too, a
    /// dump either rule keeps is kept; the newest dump is always kept.
    #[arg(long, value_name = "D", value_parser = limits::flag::keep_days)]
    pub keep_days: Option<u32>,
    /// Print what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
