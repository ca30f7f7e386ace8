//! A builder of manifests for unit tests (the `testing` feature, which the workspace's crates
//! enable only in their dev-dependencies): one place that knows every field, so a test states only
//! what it depends on and a new field changes one file.

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::WalSegmentName;

use super::{Entry, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, Tablespace};
use crate::timestamp;

/// The WAL segment size the builder's segment numbers count in (PostgreSQL's default).
pub const SEGMENT: u64 = 16 << 20;

/// A manifest of a backup of PostgreSQL 15 on timeline 1 in segment 1, stopped at
/// 2026-01-01T00:00:00Z, with 1 MiB blocks and no entries, unless told otherwise.
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    manifest: Manifest,
    start_segno: u64,
    stop_segno: u64,
}

impl ManifestBuilder {
    pub fn new(label: &str) -> Self {
        let time = timestamp::parse("2026-01-01T00:00:00Z").expect("a valid time");
        let timeline = TimelineId::new(1).expect("timeline 1");
        let first = WalSegmentName::from_segno(timeline, 1, SEGMENT);
        Self {
            manifest: Manifest {
                format: MANIFEST_FORMAT.into(),
                version: MANIFEST_VERSION,
                label: label.into(),
                system_identifier: 1,
                pg_version_num: 150000,
                timeline,
                start_lsn: Lsn(SEGMENT + 40),
                stop_lsn: Lsn(SEGMENT + 100),
                start_wal: first,
                stop_wal: first,
                start_time: time,
                stop_time: time,
                duration_seconds: 1.0,
                backup_label: String::new(),
                tablespace_map: None,
                block_size: 1 << 20,
                data_checksums: true,
                size: 0,
                stored_size: 0,
                tablespaces: Vec::new(),
                entries: Vec::new(),
                bad_pages: Vec::new(),
                bytes_read: 0,
                files_reused: 0,
            },
            start_segno: 1,
            stop_segno: 1,
        }
    }

    /// The timeline, also of the WAL segments.
    pub fn timeline(mut self, timeline: u32) -> Self {
        self.manifest.timeline = TimelineId::new(timeline).expect("a valid timeline");
        let (start, stop) = (self.start_segno, self.stop_segno);
        self.segments(start, stop)
    }

    /// Starts in segment `start` and stops in `stop` (numbers of [`SEGMENT`]-sized segments), at
    /// LSNs inside them.
    pub fn segments(mut self, start: u64, stop: u64) -> Self {
        let tl = self.manifest.timeline;
        (self.start_segno, self.stop_segno) = (start, stop);
        self.manifest.start_wal = WalSegmentName::from_segno(tl, start, SEGMENT);
        self.manifest.stop_wal = WalSegmentName::from_segno(tl, stop, SEGMENT);
        self.manifest.start_lsn = Lsn(start * SEGMENT + 40);
        self.manifest.stop_lsn = Lsn(stop * SEGMENT + 100);
        self
    }

    /// The start and stop LSNs alone (the segments stay as they are).
    pub fn lsns(mut self, start: u64, stop: u64) -> Self {
        self.manifest.start_lsn = Lsn(start);
        self.manifest.stop_lsn = Lsn(stop);
        self
    }

    /// Started and stopped at `rfc3339`.
    pub fn time(mut self, rfc3339: &str) -> Self {
        let t = timestamp::parse(rfc3339).expect("an RFC 3339 time");
        self.manifest.start_time = t;
        self.manifest.stop_time = t;
        self
    }

    pub fn block_size(mut self, block_size: u32) -> Self {
        self.manifest.block_size = block_size;
        self
    }

    /// The entries, and `size` as the sum of their files' sizes.
    pub fn entries(mut self, entries: Vec<Entry>) -> Self {
        self.manifest.size = entries
            .iter()
            .map(|e| match e {
                Entry::File(f) => f.size,
                _ => 0,
            })
            .sum();
        self.manifest.entries = entries;
        self
    }

    pub fn tablespace(mut self, oid: u32, name: &str, location: &str) -> Self {
        self.manifest.tablespaces.push(Tablespace {
            oid,
            name: name.into(),
            location: location.into(),
        });
        self
    }

    pub fn build(self) -> Manifest {
        self.manifest
    }
}
