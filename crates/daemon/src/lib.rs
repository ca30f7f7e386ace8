//! The daemon, `lifeboat serve`: one long-running process that schedules the other commands,
//! watches the health of the archive and the disks, alerts, and serves metrics, a dashboard and a
//! JSON API.
//!
//! It runs every job (backup, expire, verify, drill) as a child `lifeboat` process, so the daemon
//! calls exactly the commands an operator runs, a failing or killed job cannot take the daemon
//! (and the alerts) down with it, and a shutdown can abandon a job the way the crash tests prove
//! safe. Job history, drill results and alert state live in the repository (`lifeboat_repo::records`).
//!
//! Map: `config` (the TOML sections), `schedule` (cron, catch-up), `runner` (child processes),
//! `health` (findings), `receiver` (the WAL receiver child `wal-stream`), `stream_watch` (the
//! receiver as the server sees it, and its findings), `alert` (de-duplication, webhook, SMTP), `status` (the snapshot every
//! page is rendered from), `metrics`, `dashboard`, `http`, `role` (the role view the endpoints
//! HAProxy checks answer from), `serve` (the main loop).

pub mod alert;
pub mod config;
pub mod dashboard;
pub mod ha;
pub mod health;
pub mod http;
pub mod metrics;
pub mod receiver;
pub mod role;
pub mod runner;
#[cfg(test)]
mod samples;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod stream_watch;

pub use config::DaemonConfig;
