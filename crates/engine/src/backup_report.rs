//! What one backup is, as `backup` reports it when it ends and `list` for each backup: a summary
//! of its manifest (shared by both, so neither depends on the other).

use lifeboat_pg::lsn::Lsn;
use lifeboat_repo::backup::{Entry, Manifest};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub label: String,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: String,
    pub stop_time: String,
    pub size: u64,
    pub stored_size: u64,
    pub duration_seconds: f64,
    pub files: u64,
    /// Files unchanged since the previous backup, whose blocks were reused without reading.
    pub files_reused: u64,
    /// Bytes read from the data directory (the rest was reused).
    pub bytes_read: u64,
    pub bad_pages: Vec<lifeboat_repo::backup::BadPage>,
}

impl BackupReport {
    pub fn from_manifest(m: &Manifest) -> Self {
        Self {
            label: m.label.clone(),
            timeline: m.timeline.get(),
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            start_wal: m.start_wal.to_string(),
            stop_wal: m.stop_wal.to_string(),
            start_time: lifeboat_repo::timestamp::text(m.start_time),
            stop_time: lifeboat_repo::timestamp::text(m.stop_time),
            size: m.size,
            stored_size: m.stored_size,
            duration_seconds: m.duration_seconds,
            files: m
                .entries
                .iter()
                .filter(|e| matches!(e, Entry::File(_)))
                .count() as u64,
            files_reused: m.files_reused,
            bytes_read: m.bytes_read,
            bad_pages: m.bad_pages.clone(),
        }
    }
}
