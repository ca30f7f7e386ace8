//! Lifeboat end to end: the built `lifeboat` binary run as a user runs it, against real
//! PostgreSQL clusters, a real S3-compatible server and real alert receivers. One module per
//! feature; `support` holds the setup they share.
//!
//! One test binary, not one per file: each binary would link the support code, the workspace's
//! crates and their dependencies again. cargo-nextest still runs every test in its own process,
//! so tests share no state through this binary. Select a feature's tests with a module path:
//! `bash scripts/test.sh -E 'binary(e2e) and test(/^verify::/)'`.

mod support;

mod adversarial;
mod alerts;
mod archive;
mod backup_restore;
mod concurrency;
mod copy;
mod crash;
mod daemon;
mod daemon_jobs;
mod dashboard;
mod drill;
mod drill_dump;
mod dump;
mod expire;
mod expire_packs;
mod failover;
mod failover_faults;
mod ha_cli;
mod old_format;
mod packs;
mod pusher;
mod routing;
mod stream;
mod stream_daemon;
mod stream_faults;
mod stream_trials;
mod upgrade;
mod verify;
mod versions;
