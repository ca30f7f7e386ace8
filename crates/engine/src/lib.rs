//! Operations: what the user asks for, built on the repository.
//!
//! Each operation takes typed options and returns a typed report; none reads argv, the
//! environment or a config file, and none prints: the CLI and the daemon render results.
//! The operations: archive (`wal-push`, `wal-fetch` with its prefetcher), `info`, `backup`,
//! `check`, `list`, `restore`, `expire`, `verify` and `drill`; `walcheck` answers whether the WAL
//! a backup or a restore needs is archived.

pub mod archive;
pub mod backup;
pub mod backup_report;
pub mod check;
pub mod copy;
pub mod drill;
pub mod dump;
pub mod error;
pub mod expire;
pub mod info;
pub mod lazy;
pub mod list;
pub mod restore;
pub mod standby;
pub mod stream;
pub mod verify;
pub mod walcheck;

#[cfg(test)]
mod store_tests;

pub(crate) use error::join_error;
pub use error::{EngineError, Result};
pub use lazy::LazyRepo;
