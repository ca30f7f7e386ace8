//! Operations: what the user asks for, built on the repository.
//!
//! Each operation takes typed options and returns a typed report; none reads argv, the
//! environment or a config file, and none prints: the CLI and (later) the daemon render results.
//! Today: archive (`wal-push`, `wal-fetch` with its prefetcher) and `info`.

pub mod archive;
pub mod error;
pub mod info;
pub mod lazy;

pub use error::{EngineError, Result};
pub use lazy::LazyRepo;
