//! PostgreSQL knowledge in one place.
//!
//! Domain scalars (LSN, timeline, WAL file names) with one text form each, pure parsers of on-disk
//! structures (WAL page headers, pg_control, timeline history files), and control of local clusters
//! (initdb, start, stop) for the demo, drills and tests. Everything here becomes small,
//! version-independent values at the border: no other crate knows a WAL page layout.
//! Depends on no other Lifeboat crate.

pub mod cluster;
pub mod control;
pub mod history;
pub mod lsn;
pub mod timeline;
pub mod walheader;
pub mod walname;
