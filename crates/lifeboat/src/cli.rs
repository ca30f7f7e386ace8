//! Command-line definitions (clap). Help text here is the user's first documentation: keep every
//! option explained.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::limits;

mod dump;
pub use dump::{DumpArgs, DumpCommand};

#[derive(Debug, Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Keeps a PostgreSQL cluster's data safe: WAL archiving, base backups, point-in-time restore, restore drills, and a daemon that schedules, watches and alerts.",
    long_about = "Keeps a PostgreSQL cluster's data safe: continuous WAL archiving and deduplicated base \
backups to local disk or any S3-compatible store (GCS and Azure too), verified, compressed and encrypted; \
point-in-time restore; restore drills that prove each backup restores; and `lifeboat serve`, a daemon \
that schedules it all, watches and alerts.\n\n\
Wire it into postgresql.conf:\n    archive_command = 'lifeboat wal-push %p'\n    restore_command = 'lifeboat wal-fetch %f %p'\n\n\
The repository comes from --repo, LIFEBOAT_REPO, or `repo` in the config file (--config, LIFEBOAT_CONFIG, \
or /etc/lifeboat/lifeboat.toml). Exit codes: docs/EXIT_CODES.md."
)]
pub struct Cli {
    /// Repository: a path, file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.
    #[arg(long, global = true, value_name = "URL")]
    pub repo: Option<String>,

    /// Storage requests in flight at once (uploads, downloads, reads, deletes), independent of
    /// --parallel's CPU threads [config: storage.concurrency; default: 32 for S3, GCS and Azure, 8
    /// for a local path; 1 to 1024].
    #[arg(long, global = true, value_name = "N", value_parser = limits::flag::concurrency)]
    pub concurrency: Option<usize>,

    /// TOML config file [env: LIFEBOAT_CONFIG] [default: /etc/lifeboat/lifeboat.toml if present].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log level on stderr (error, warn, info, debug, trace) [default: info for serve and wal-stream, warn
    /// otherwise]. Without this flag, LIFEBOAT_LOG may give a filter (e.g. `lifeboat=debug`).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository (refuses an existing one). Encrypted when a passphrase is configured
    /// (LIFEBOAT_PASSPHRASE_FILE, LIFEBOAT_PASSPHRASE or passphrase_file); otherwise --unencrypted is required.
    Init(InitArgs),
    /// Archive a WAL file (use as archive_command = 'lifeboat wal-push %p'). Exits 0 only once the
    /// file is durably stored; a background process pushes the other files PostgreSQL marked
    /// ready meanwhile.
    WalPush(WalPushArgs),
    /// Restore a WAL file (use as restore_command = 'lifeboat wal-fetch %f %p'). Exits 0 once the file
    /// is complete at DEST, 1 if the repository does not hold it, 200 (stop recovery) on any other failure.
    WalFetch(WalFetchArgs),
    /// Stream WAL from the server over a physical replication slot into the repository, as it is
    /// written (foreground, like pg_receivewal; stop with Ctrl-C or SIGTERM). What a restore can
    /// reach then trails the primary by about a second; with --synchronous and the receiver in
    /// synchronous_standby_names, a commit returns only once the repository holds it.
    WalStream(WalStreamArgs),
    /// Standbys built from the repository: `lifeboat standby create --target-dir DIR --primary
    /// CONNINFO` restores the newest backup as a standby that replays the archive, then streams
    /// from the primary over its own slot.
    Standby(StandbyArgs),
    /// Show the repository: identity, encryption, compression, and per timeline the archived WAL and every gap.
    Info(InfoArgs),
    /// Take a base backup of the running cluster into the repository (needs archive_command =
    /// 'lifeboat wal-push %p' into the same repository).
    Backup(BackupArgs),
    /// List the complete backups and the window a restore can reach.
    List(ListArgs),
    /// Check that the cluster is set up for backups: settings, then a WAL switch that must reach
    /// the repository. Every problem comes with its fix.
    Check(CheckArgs),
    /// Restore a backup into a directory, set up to recover to a target (time, LSN, xid, restore
    /// point, immediate, or the end of the archive).
    Restore(Box<RestoreArgs>),
    /// Apply the retention policy: delete the backups it does not keep, the WAL no kept backup
    /// needs and the blocks no kept backup references (--dry-run shows what would go).
    Expire(ExpireArgs),
    /// Prove the backups restorable: read back every chunk they reference and every WAL file,
    /// check the WAL has no gap from each backup's start on; exits 6 on any problem. Reads only
    /// what earlier runs have not verified (--full: everything).
    Verify(VerifyArgs),
    /// Bring a second repository up to date with this one (another bucket, region or provider),
    /// so that backups survive the loss of their store: objects travel as stored, each verified
    /// on the way, only what the copy lacks, in an order that keeps the copy restorable at every
    /// moment. The copy is a complete repository (same passphrase); its retention is its own.
    Copy(CopyArgs),
    /// Logical dumps: `lifeboat dump` runs pg_dump of each database (and pg_dumpall
    /// --globals-only) into the repository, deduplicated by content-defined chunking; `dump
    /// list`, `dump restore --db NAME [--table T] --to CONNINFO`, `dump expire --keep-last N`.
    Dump(DumpArgs),
    /// Run the whole loop on a scratch cluster and a local repository in a temporary directory:
    /// archive, back up, write rows, restore to a moment in the middle, check that exactly the rows
    /// committed before it came back, report recovery time and data loss, and clean up.
    Demo(DemoArgs),
    /// Prove a backup restores: restore it into a scratch directory, start PostgreSQL on a free
    /// local port, recover to a target, run pg_amcheck and the configured check queries, record
    /// the result (recovery time, data-loss window) in the repository, and remove everything.
    /// Exits 0 when the drill passed, 9 when it failed.
    Drill(DrillArgs),
    /// Run the daemon: scheduled jobs ([schedule]), health checks and alerts ([health], [alerts]),
    /// Prometheus /metrics, a dashboard and a JSON API on [serve] listen (default 127.0.0.1:7433).
    Serve(ServeArgs),
    /// Alerts: `lifeboat alert test` sends a test message through every configured channel.
    Alert(AlertArgs),
    /// The repository's passphrase: `lifeboat passphrase change` wraps the data key with a new one.
    Passphrase(PassphraseArgs),
    /// Raise the repository's format to the version this Lifeboat writes (2: backups store their
    /// chunks in packs of ~8 MiB, far fewer objects on object storage). Rewrites only lifeboat.json
    /// and its copy, under the repository lock; Lifeboat binaries too old for version 2 refuse the
    /// repository afterwards. Does nothing when the repository already is at that version.
    Upgrade,
    /// Automatic failover ([ha]): `ha status` shows the cluster as etcd holds it (leader,
    /// members, lag, history); `ha pause` / `ha resume` stop and restart the agents' automatic
    /// actions (maintenance). Run with a member's config file.
    Ha(HaArgs),
    /// Planned switchover: the leader stops (fast shutdown: its standbys receive all its WAL),
    /// hands the leader key to NODE, a running standby, which promotes; the old leader rejoins
    /// as its standby. Waits until NODE leads; exits 9 (and withdraws the request) if it did not.
    Switchover(SwitchoverArgs),
    /// Manual failover, only when no member leads: NODE, a running standby, takes the leader key
    /// and promotes even if it is further behind than maximum_lag_on_failover (rows the last
    /// leader had and NODE lacks are lost). Refused while a leader exists: use switchover.
    Failover(FailoverArgs),
    /// Internal: fetch segments ahead into the spool (started by wal-fetch in the background).
    #[command(hide = true)]
    WalPrefetch(WalPrefetchArgs),
    /// Internal: push the files PostgreSQL marked ready, in the background (started by wal-push).
    #[command(hide = true)]
    WalPushAhead(WalPushAheadArgs),
    /// Internal: the fence keeper of `serve` with [ha] (stops PostgreSQL at once when the
    /// leader's deadline passes, even if the agent died).
    #[command(hide = true)]
    HaFence(HaFenceArgs),
}

#[derive(Debug, Args)]
pub struct HaArgs {
    #[command(subcommand)]
    pub command: HaCommand,
}

#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// The cluster as etcd holds it: leader, pause, each member's role, timeline, WAL position
    /// and lag, the synchronous set, a pending switchover and the failover history.
    Status(HaStatusArgs),
    /// Maintenance: the agents take no automatic action (no failover, no restart, no rejoin)
    /// until `ha resume`; the leader keeps its key.
    Pause,
    /// End maintenance: the agents act again.
    Resume,
}

#[derive(Debug, Args)]
pub struct HaStatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The member to hand over to: a running standby on the leader's timeline.
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// The current leader, as a check: refused if another member leads.
    #[arg(long, value_name = "LEADER")]
    pub from: Option<String>,
    /// Seconds to wait for NODE to lead (1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The member to promote: a running standby.
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Seconds to wait for NODE to lead (1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct HaFenceArgs {
    /// The data directory whose postmaster is stopped when the deadline passes.
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Create a repository without encryption (required when no passphrase is configured).
    #[arg(long)]
    pub unencrypted: bool,
    /// Compression of stored objects.
    #[arg(long, default_value = "zstd", value_parser = ["zstd", "lz4", "none"])]
    pub compression: String,
    /// zstd level (negative values are zstd's fast levels).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true, value_parser = limits::flag::zstd_level)]
    pub compression_level: i32,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// Path of the WAL file (%p), absolute or relative to the data directory.
    pub path: PathBuf,
    /// Files stored at once by the background pusher, or by this call for a file without its
    /// .ready (by hand) [config: archive.push_parallel; default 8; 1 to 1024; 1 = no pusher, one
    /// file per call].
    #[arg(long, value_parser = limits::flag::parallel)]
    pub parallel: Option<usize>,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// Name of the WAL file PostgreSQL asks for (%f).
    pub name: String,
    /// Where to put it (%p).
    pub dest: PathBuf,
    /// Segments to fetch ahead in the background [config: archive.prefetch; default 8; 0 = off;
    /// at most 256].
    #[arg(long, value_parser = limits::flag::prefetch)]
    pub prefetch: Option<usize>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WalStreamArgs {
    /// libpq connection string of the server to stream from [config: db]; the role needs the
    /// REPLICATION attribute and pg_hba.conf a `replication` line for it.
    #[arg(long, value_name = "CONNINFO")]
    pub db: Option<String>,
    /// Physical replication slot [config: stream.slot; default lifeboat].
    #[arg(long)]
    pub slot: Option<String>,
    /// Do not create the slot when it is missing (fail instead) [config: stream.create_slot].
    #[arg(long)]
    pub no_create_slot: bool,
    /// Store and acknowledge every write as soon as it arrives [config: stream.synchronous].
    #[arg(long)]
    pub synchronous: bool,
    /// How often received WAL is stored, in milliseconds [config: stream.flush_interval_ms;
    /// default 1000; 10 to 60000].
    #[arg(long, value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WalPrefetchArgs {
    /// The segment just served; fetch the ones after it.
    #[arg(long)]
    pub after: String,
    /// Prefetch spool directory.
    #[arg(long)]
    pub spool: PathBuf,
    #[arg(long, default_value_t = 8, value_parser = limits::flag::prefetch)]
    pub count: usize,
    #[arg(long, default_value_t = 4, value_parser = limits::flag::parallel)]
    pub parallel: usize,
}

#[derive(Debug, Args)]
pub struct WalPushAheadArgs {
    /// PostgreSQL's WAL directory (pg_wal), whose archive_status lists the files to push.
    #[arg(long)]
    pub wal_dir: PathBuf,
    #[arg(long, default_value_t = 8, value_parser = limits::flag::parallel)]
    pub parallel: usize,
    /// Descriptor of the pusher's lock file, locked by the wal-push that started this process.
    #[arg(long)]
    pub lock_fd: Option<i32>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the clusters' directories and the repository in place to look at.
    #[arg(long)]
    pub keep: bool,
    /// How long to write rows after the backup (the restore target lies in the middle).
    #[arg(long, default_value_t = 5, value_parser = limits::flag::demo_seconds)]
    pub seconds: u64,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Which backup: `latest`, `random` (any retained), or a label [config: drill.backup].
    #[arg(long, value_name = "CHOICE")]
    pub backup: Option<lifeboat_engine::drill::BackupChoice>,
    /// Recovery target: `latest` (end of the archive) or `random` (a point in it) [drill.target].
    #[arg(long, value_name = "TARGET")]
    pub target: Option<lifeboat_engine::drill::DrillTarget>,
    /// Directory under which the scratch cluster is made [config: drill.scratch_dir; default: TMPDIR].
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Leave the scratch cluster's directory in place (stopped) to look at.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, default_value = "manual", value_parser = ["manual", "schedule"], hide = true)]
    pub trigger: String, // What started the drill, as recorded.
    /// Print the drill record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Drill the newest logical dump: its databases into a fresh scratch cluster, then the checks.
    #[arg(long, conflicts_with_all = ["backup", "target"])]
    pub dump: bool,
    /// With --dump: this dump (`lifeboat dump list`), not the newest.
    #[arg(long, value_name = "LABEL", requires = "dump")]
    pub label: Option<String>,
    /// With --dump: only this database (repeatable); default every database of the dump.
    #[arg(long = "db", value_name = "NAME", requires = "dump")]
    pub databases: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the dashboard, metrics and API: IP:PORT or HOST:PORT [config: serve.listen;
    /// default 127.0.0.1:7433]. Any address that is not loopback needs [serve] token_file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct AlertArgs {
    #[command(subcommand)]
    pub command: AlertCommand,
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send a test message through every configured channel ([alerts] webhook and email); exits
    /// 0 only when every channel took it.
    Test,
}

#[derive(Debug, Args)]
pub struct StandbyArgs {
    #[command(subcommand)]
    pub command: StandbyCommand,
}

#[derive(Debug, Subcommand)]
pub enum StandbyCommand {
    /// Restore the newest backup (or --backup LABEL) into DIR as a standby of --primary:
    /// standby.signal, primary_conninfo with application_name, primary_slot_name (the slot is
    /// created on the primary after the restore), restore_command = wal-fetch, the newest
    /// timeline. Refused before anything is written when the primary is another cluster or its
    /// slot is in use. Start the server afterwards.
    Create(StandbyCreateArgs),
}

#[derive(Debug, Args)]
pub struct StandbyCreateArgs {
    /// Directory of the new standby: missing or empty (or, with --delta, a copy of this cluster).
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// libpq connection string of the primary, written into primary_conninfo (with
    /// application_name added). The role needs REPLICATION; put passwords in ~/.pgpass.
    #[arg(long, value_name = "CONNINFO")]
    pub primary: String,
    /// application_name and slot name [default: the target directory's name, lower-cased].
    #[arg(long)]
    pub name: Option<String>,
    /// Use no replication slot (the primary may then remove WAL the standby still needs; it
    /// falls back to the repository).
    #[arg(long)]
    pub no_slot: bool,
    /// Backup label, or `latest`.
    #[arg(long, value_name = "LABEL")]
    pub backup: Option<String>,
    /// Update an existing copy of this cluster in place (e.g. an old primary after a failover).
    #[arg(long)]
    pub delta: bool,
    /// Restore a tablespace elsewhere: OID=DIR or NAME=DIR (repeatable).
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Threads planning, decoding and writing [config: restore.parallel; default: cores].
    #[arg(long, value_parser = limits::flag::parallel)]
    pub parallel: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PassphraseArgs {
    #[command(subcommand)]
    pub command: PassphraseCommand,
}

#[derive(Debug, Subcommand)]
pub enum PassphraseCommand {
    /// Wrap the repository's data key with a new passphrase and drop the old wrapping; nothing
    /// else is rewritten. The current passphrase comes from the usual settings; afterwards every
    /// process that opens the repository (archive_command, restore_command, the daemon) needs the
    /// new one. Copies of the repository (or of its lifeboat.json) made before still open with the
    /// old passphrase: the data key itself does not change.
    Change(PassphraseChangeArgs),
}

#[derive(Debug, Args)]
pub struct PassphraseChangeArgs {
    /// File holding the new passphrase on its first line (keep it mode 0600) [env:
    /// LIFEBOAT_NEW_PASSPHRASE holds the passphrase itself]. Never given on the command line.
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

/// How to reach the cluster: shared by backup and check.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Data directory [config: pgdata; env: PGDATA; default: the server's data_directory].
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// libpq connection string, e.g. 'host=/var/run/postgresql port=5432 user=postgres'
    /// [config: db; default: the PG* environment, then the local socket as postgres]. Put passwords
    /// in ~/.pgpass or PGPASSWORD, never here.
    #[arg(long, value_name = "CONNINFO")]
    pub db: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Threads reading, hashing, compressing and encrypting [config: backup.parallel; default:
    /// cores; 1 to 1024].
    #[arg(long, value_parser = limits::flag::parallel)]
    pub parallel: Option<usize>,
    /// Let the backup's starting checkpoint spread over checkpoint_completion_target instead of
    /// running at once (less I/O burst, slower start).
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Read every file, even those whose size and modification time are unchanged since the
    /// previous backup (by default their blocks are reused without reading).
    #[arg(long)]
    pub full_scan: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Seconds to wait for the switched segment to reach the repository (1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = limits::flag::wait_seconds)]
    pub timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("recovery_target").args(["target_time", "target_lsn", "target_xid", "target_name", "target"])))]
pub struct RestoreArgs {
    /// Directory to restore into: missing or empty (or, with --delta, a previous restore).
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// Backup label, or `latest`. Default: the newest backup that can reach the target.
    #[arg(long, value_name = "LABEL")]
    pub backup: Option<String>,
    /// Recover to this moment, e.g. '2026-11-23 10:15:00+00'.
    #[arg(long, value_name = "TIMESTAMP")]
    pub target_time: Option<String>,
    /// Recover to this WAL position, e.g. 0/3000148.
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover through this transaction id (uses the newest backup unless --backup names an
    /// older one).
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point); uses the newest backup unless
    /// --backup names an older one.
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// `immediate`: stop as soon as the backup is consistent.
    #[arg(long, value_parser = ["immediate"])]
    pub target: Option<String>,
    /// What the server does at the target.
    #[arg(long, value_parser = ["promote", "pause", "shutdown"], default_value = "promote")]
    pub target_action: String,
    /// Timeline to follow: latest, current, or a number.
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// Update a directory in place: keep files that match, rewrite what differs, remove the rest.
    #[arg(long)]
    pub delta: bool,
    /// Set the cluster up as a standby (standby.signal) instead of recovering once.
    #[arg(long)]
    pub standby: bool,
    /// primary_conninfo for --standby.
    #[arg(long, requires = "standby", value_name = "CONNINFO")]
    pub primary_conninfo: Option<String>,
    /// Restore a tablespace elsewhere: OID=DIR or NAME=DIR (repeatable). Default: its original location.
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Print the plan (backup, WAL range, bytes; with --delta what would be removed and
    /// rewritten) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: list every path that would be removed or rewritten, not only the counts.
    #[arg(long, short)]
    pub verbose: bool,
    /// `off` writes archive_mode = off into the restored cluster, so that a copy beside the
    /// original (a test, an investigation) does not archive a new timeline into the repository.
    /// `preserve` keeps the backed-up setting: right when the restored cluster replaces the lost one.
    #[arg(long, value_parser = ["preserve", "off"], default_value = "preserve")]
    pub archive_mode: String,
    /// Threads planning and (four per thread) decoding and writing; downloads in flight are
    /// --concurrency [config: restore.parallel; default: cores; 1 to 1024].
    #[arg(long, value_parser = limits::flag::parallel)]
    pub parallel: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// Keep the newest N backups (1 to 1000000) [config: retention.keep_last; either flag
    /// replaces the configured policy as a whole].
    #[arg(long, value_name = "N", value_parser = limits::flag::keep_last)]
    pub keep_last: Option<u32>,
    /// Keep what restores to any moment of the last D days: the backups that ended within them
    /// and the last one before [config: retention.keep_days]. With --keep-last too, a backup
    /// either rule keeps is kept. 1 to 100000.
    #[arg(long, value_name = "D", value_parser = limits::flag::keep_days)]
    pub keep_days: Option<u32>,
    /// Print what would be deleted and the restore window before and after; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Where the copy lives: a path, file:///path, s3://, gs:// or az:// URL, reached with the
    /// same storage settings and credentials as the repository [config: copy.to]. An empty
    /// location becomes the copy; one holding another repository is refused.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Check only this backup and the WAL from its start on (default: every backup and all WAL).
    #[arg(long, value_name = "LABEL")]
    pub backup: Option<String>,
    /// Read everything again, also what earlier runs verified (they recorded it in verify/state).
    #[arg(long)]
    pub full: bool,
    /// Share (0-100) of what earlier runs verified that this run reads again, in a rotation that
    /// reads everything again within ceil(100/P) runs; 0 turns it off [config: verify.reread_percent] [default: 5]
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub reread_percent: Option<u8>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
