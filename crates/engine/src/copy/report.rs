//! What a `copy` run reports: counts and bytes copied and skipped, the backups and dumps copied
//! and not,
//! damaged and vanished source objects, and the lag of the copy behind the source.

use serde::Serialize;

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum CopyEvent {
    /// The plan is made: this many stored bytes to copy.
    Planned { bytes: u64 },
    /// This many more bytes were handled (copied, or found damaged or gone).
    Done { bytes: u64 },
}

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub target: String,
    /// This run created the copy (the target location was empty).
    pub target_created: bool,
    pub copied: Copied,
    /// Source objects not copied because the target holds them (or their content: chunks
    /// located in the target's own packs).
    pub skipped: Counts,
    pub backups_copied: Vec<String>,
    /// Backups the target lacks that this run did not copy, each with why.
    pub backups_not_copied: Vec<NotCopied>,
    /// Source backups older than the target's oldest backup: the copy's own retention
    /// removed them (or never held them); not copied again.
    pub backups_older_than_copy: Vec<String>,
    /// Logical dumps copied (their manifests written), oldest first.
    pub dumps_copied: Vec<String>,
    /// Dumps the target lacks that this run did not copy, each with why.
    pub dumps_not_copied: Vec<NotCopied>,
    /// Source dumps older than the target's oldest dump: the copy's own `dump expire` removed
    /// them (or it never held them); not copied again.
    pub dumps_older_than_copy: Vec<String>,
    /// Source objects that failed verification: not copied, nor anything that needs them.
    pub damaged: Vec<Damaged>,
    /// Source objects that disappeared during the run (a source `expire` or `wal-stream`).
    pub vanished: Vec<String>,
    pub warnings: Vec<String>,
    pub lag: Lag,
    pub duration_seconds: f64,
    /// No damaged object was found (exit 0); warnings do not count.
    pub ok: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Copied {
    /// Objects and stored bytes written to the target (indexes written by the copy included).
    pub objects: u64,
    pub bytes: u64,
    pub wal_files: u64,
    pub stream_pieces: u64,
    pub loose_chunks: u64,
    pub packs: u64,
    /// Indexes written to the target for the packs copied (and those of an interrupted run).
    pub indexes: u64,
    /// Backup manifests written.
    pub manifests: u64,
    /// Dump manifests written (`dumps/<label>/manifest`).
    pub dump_manifests: u64,
    /// WAL files older than every backup the copy holds: not copied (its `expire` would delete them).
    pub wal_below_copy_start: u64,
}

#[derive(Debug, Serialize)]
pub struct NotCopied {
    pub label: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Damaged {
    pub key: String,
    pub reason: String,
}

/// How far the copy is behind the source after this run.
#[derive(Debug, Default, Serialize)]
pub struct Lag {
    /// Source backups the copy lacks (older-than-copy ones aside).
    pub backups: u64,
    pub backup_labels: Vec<String>,
    /// Source dumps the copy lacks (older-than-copy ones aside).
    pub dumps: u64,
    pub dump_labels: Vec<String>,
    /// The newest WAL segment in the source and in the copy.
    pub source_newest_wal: Option<String>,
    pub copy_newest_wal: Option<String>,
    /// Source WAL files (and streamed pieces) the copy lacks.
    pub wal_files: u64,
}
