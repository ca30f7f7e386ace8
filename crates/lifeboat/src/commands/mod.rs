//! The commands, one module each (or one per small group: `wal` holds wal-push, wal-fetch and
//! the processes they start, wal-push-ahead and wal-prefetch): each resolves what it needs, calls
//! the engine and renders the result.
//! `main.rs` dispatches to them. What several commands share (opening the repository, cluster
//! settings, rendering) lives in `context`; commands depend on it, never on each other, and
//! `context` on none of them.

pub(crate) mod alert;
pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod context;
pub(crate) mod copy;
pub(crate) mod drill;
pub(crate) mod dump;
pub(crate) mod expire;
pub(crate) mod ha;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod list;
pub(crate) mod passphrase;
pub(crate) mod restore;
pub(crate) mod serve;
pub(crate) mod standby;
pub(crate) mod stream;
pub(crate) mod upgrade;
pub(crate) mod verify;
pub(crate) mod wal;
