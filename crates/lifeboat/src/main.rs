//! The `lifeboat` binary: a thin shell over the engine.
//!
//! It parses arguments (clap), resolves configuration, runs one engine operation, renders the
//! result as text or JSON and maps failures to the exit codes in `exit.rs`. No operation logic
//! lives here.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// `println!` for command output that treats a closed standard output (`lifeboat info | head`) as
/// the reader having had enough: exit quietly with 141, as a process stopped by SIGPIPE does,
/// instead of panicking. Any other write failure is an error with the local I/O exit code.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

mod cli;
mod commands;
mod config;
mod demo;
mod exit;
mod limits;

use exit::{Exit, Failure};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // A misspelt restore_command must stop recovery, not look like "segment not found".
            let is_fetch = args.iter().any(|a| a == "wal-fetch");
            if let Some(failure) = out_of_range(&e) {
                return report(&failure, is_fetch);
            }
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ if is_fetch => ExitCode::from(Exit::AbortRecovery.code()),
                _ => ExitCode::from(Exit::Usage.code()),
            };
        }
    };
    init_logging(&cli);
    let in_recovery = matches!(cli.command, cli::Command::WalFetch(_));
    // PostgreSQL starts a process per WAL file; most wal-push calls find their file pushed ahead
    // and return at once. Their heavy work runs on blocking threads anyway, so they do without a
    // worker thread per core, started and joined for nothing.
    let per_wal_file = matches!(
        cli.command,
        cli::Command::WalPush(_) | cli::Command::WalFetch(_)
    );
    let mut builder = if per_wal_file {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return report(
                &Failure::new(
                    Exit::Internal,
                    format!("cannot start the async runtime: {e}"),
                    None,
                ),
                in_recovery,
            );
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(failure) => report(&failure, in_recovery),
    }
}

/// Run one command: the one place that maps a subcommand to the module holding its code.
async fn run(cli: cli::Cli) -> Result<Exit, Failure> {
    use cli::{Command, HaCommand, PassphraseCommand, StandbyCommand};
    use commands::{
        alert, backup, check, copy, drill, dump, expire, ha, info, init, list, passphrase, restore,
        serve, standby, stream, upgrade, verify, wal,
    };
    if let Command::Demo(args) = &cli.command {
        let options = demo::DemoOptions {
            keep: args.keep,
            seconds: args.seconds,
        };
        return tokio::task::block_in_place(|| demo::run(&options));
    }
    if let Command::HaFence(args) = &cli.command {
        // No configuration: the keeper must start whatever the file says, and fast.
        let pgdata = args.pgdata.clone();
        let code = tokio::task::block_in_place(|| lifeboat_daemon::ha::fence::keeper_main(&pgdata));
        return Ok(if code == 0 {
            Exit::Success
        } else {
            Exit::Internal
        });
    }
    let resolved = config::resolve(cli.config.as_deref(), cli.repo.as_deref(), cli.concurrency)?;
    match &cli.command {
        Command::Init(args) => init::init(&resolved, args).await,
        Command::WalPush(args) => wal::wal_push(&cli, &resolved, args).await,
        Command::WalFetch(args) => wal::wal_fetch(&cli, &resolved, args).await,
        Command::WalStream(args) => stream::wal_stream(&resolved, args).await,
        Command::Standby(args) => match &args.command {
            StandbyCommand::Create(create) => standby::create(&resolved, create).await,
        },
        Command::Info(args) => info::info(&resolved, args).await,
        Command::WalPrefetch(args) => wal::wal_prefetch(&resolved, args).await,
        Command::WalPushAhead(args) => wal::wal_push_ahead(&resolved, args).await,
        Command::Backup(args) => backup::backup(&resolved, args).await,
        Command::List(args) => list::list(&resolved, args).await,
        Command::Check(args) => check::check(&resolved, args).await,
        Command::Restore(args) => restore::restore(&resolved, args).await,
        Command::Verify(args) => verify::verify(&resolved, args).await,
        Command::Copy(args) => copy::copy(&resolved, args).await,
        Command::Expire(args) => expire::expire(&resolved, args).await,
        Command::Dump(args) => dump::dump(&resolved, args).await,
        Command::Drill(args) => drill::drill(&resolved, args).await,
        Command::Serve(args) => serve::serve(&cli, &resolved, args).await,
        Command::Alert(args) => alert::alert(&resolved, args).await,
        Command::Passphrase(args) => match &args.command {
            PassphraseCommand::Change(change) => passphrase::change(&resolved, change).await,
        },
        Command::Upgrade => upgrade::upgrade(&resolved).await,
        Command::Ha(args) => match &args.command {
            HaCommand::Status(status) => ha::status(&resolved, status).await,
            HaCommand::Pause => ha::set_pause(&resolved, true).await,
            HaCommand::Resume => ha::set_pause(&resolved, false).await,
        },
        Command::Switchover(args) => ha::switchover(&resolved, args).await,
        Command::Failover(args) => ha::failover(&resolved, args).await,
        Command::Demo(_) | Command::HaFence(_) => Ok(Exit::Success),
    }
}

/// A numeric flag outside its accepted range is a configuration error (exit 3), like the same
/// value in the config file, not a usage error: the message names the flag and the range.
fn out_of_range(e: &clap::Error) -> Option<Failure> {
    use clap::error::{ContextKind, ContextValue};
    let source = std::error::Error::source(e)?.downcast_ref::<limits::ValueError>()?;
    let limits::ValueError::OutOfRange(why) = source else {
        return None;
    };
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg).unwrap_or_else(|| "a flag".into());
    let flag = arg.split_whitespace().next().unwrap_or(&arg).to_string();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    Some(Failure::config(
        format!("{flag} {value} is {why}"),
        format!("give {flag} a value in that range (see lifeboat help)"),
    ))
}

/// See [`outln`].
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(Exit::ClosedOutput.code()));
    }
    let _ = writeln!(
        std::io::stderr(),
        "lifeboat: error: cannot write to standard output: {e}"
    );
    std::process::exit(i32::from(Exit::LocalIo.code()));
}

/// Print a failure PostgreSQL-style: `lifeboat: error: …` then `HINT: …`.
fn report(failure: &Failure, in_recovery: bool) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "lifeboat: error: {}", failure.message);
    if let Some(hint) = &failure.hint {
        let _ = writeln!(err, "HINT: {hint}");
    }
    let exit = if in_recovery && failure.exit != Exit::NotFound {
        Exit::AbortRecovery
    } else {
        failure.exit
    };
    ExitCode::from(exit.code())
}

fn init_logging(cli: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    // The flag wins over the environment, as everywhere else (README, "Configuration").
    // Long-running commands say what they do; one-shot commands only what went wrong.
    let long_running = matches!(
        cli.command,
        cli::Command::Serve(_) | cli::Command::WalStream(_)
    );
    let default = if long_running { "info" } else { "warn" };
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if cli.log_format == cli::LogFormat::Json {
        builder.json().init();
    } else if long_running {
        // A daemon's lines need their time (journald adds its own, a plain file does not).
        builder.init();
    } else {
        builder.without_time().init();
    }
}
