//! PostgreSQL knowledge in one place.
//!
//! Domain scalars (LSN, timeline, WAL file names) with one text form each, pure parsers of on-disk
//! structures (WAL page headers, pg_control, timeline history files), and control of local clusters
//! (initdb, start, stop) and a free local port (`net`) for the demo, drills and tests. For backups and restores: data page
//! checksums (`page`), which files of a data directory a base backup copies (`pgdata`), the
//! `backup_label` file (`backup_label`), recovery settings (`recovery`), SQL sessions with a
//! running server (`session`), and physical replication connections that stream WAL
//! (`replication`). Everything here becomes small, version-independent values at the
//! border: no other crate knows a WAL page layout. Depends on no other Lifeboat crate.

pub mod backup_label;
pub mod cluster;
pub mod conf;
pub mod control;
pub mod history;
pub mod lsn;
pub mod net;
pub mod page;
pub mod pgdata;
pub mod recovery;
pub mod replication;
pub mod session;
pub mod timeline;
pub mod walheader;
pub mod walname;
