//! Sample records for the unit tests of the pages (`dashboard`, `metrics`, `http`): one healthy
//! snapshot of host `db1` with one backup, one backup job and one passed drill. A test that
//! depends on a value states it itself, with struct-update syntax or by changing the snapshot.

use lifeboat_engine::backup::BackupReport;
use lifeboat_engine::info::{Gap, TimelineInfo};
use lifeboat_engine::list::Window;
use lifeboat_pg::lsn::Lsn;
use lifeboat_repo::records::{DrillCheck, DrillKind, DrillRecord, JobHistory, JobRun, Outcome};

use crate::status::{JobStatus, Snapshot, WalStatus};

/// A finished backup on timeline 1: 5 MiB, 1 MiB stored, 850 of 900 files reused, 12.5 s.
pub(crate) fn backup(label: &str) -> BackupReport {
    BackupReport {
        label: label.into(),
        timeline: 1,
        start_lsn: Lsn(0x100_0028),
        stop_lsn: Lsn(0x300_0100),
        start_wal: "000000010000000000000001".into(),
        stop_wal: "000000010000000000000003".into(),
        start_time: "2026-01-02T10:00:00Z".into(),
        stop_time: "2026-01-02T10:00:12.5Z".into(),
        size: 5 << 20,
        stored_size: 1 << 20,
        duration_seconds: 12.5,
        files: 900,
        files_reused: 850,
        bytes_read: 100,
        bad_pages: Vec::new(),
    }
}

/// A manual drill of backup 20260102T100000Z with one check; a failed one failed at `check`.
pub(crate) fn drill(passed: bool) -> DrillRecord {
    DrillRecord {
        kind: DrillKind::Backup,
        id: "20260102T060000Z-ab".into(),
        host: "db1".into(),
        trigger: "manual".into(),
        started: time::macros::datetime!(2026-01-02 10:30:00 UTC),
        finished: time::macros::datetime!(2026-01-02 10:31:00 UTC),
        backup: Some("20260102T100000Z".into()),
        databases: Vec::new(),
        backup_choice: "latest".into(),
        target: "latest".into(),
        passed,
        failed_step: (!passed).then(|| "check".into()),
        failure: (!passed).then(|| "query returned <nothing>".into()),
        restore_seconds: Some(20.0),
        replay_seconds: Some(5.5),
        recovery_seconds: Some(25.5),
        newest_commit: None,
        data_loss_seconds: Some(0.8),
        bytes_restored: 4096,
        checks: vec![DrillCheck {
            name: "SELECT count(*) > 0 FROM \"orders\" WHERE note <> '<b>'".into(),
            passed,
            detail: "t".into(),
        }],
    }
}

/// A 42-second run on `db1` that started at 09:59 and ended at `finished`.
pub(crate) fn run(outcome: Outcome, finished: &str) -> JobRun {
    JobRun {
        scheduled_for: None,
        started: "2026-01-02T09:59:00Z".into(),
        finished: finished.into(),
        duration_seconds: 42.0,
        outcome,
        message: None,
        summary: None,
        host: "db1".into(),
        exit_code: None,
    }
}

/// The hourly backup job, idle, with no runs recorded.
pub(crate) fn backup_job() -> JobStatus {
    JobStatus {
        job: "backup".into(),
        schedule: Some("0 * * * *".into()),
        next_run: Some("2026-01-02T12:00:00Z".into()),
        running_since: None,
        history: JobHistory {
            job: "backup".into(),
            ..Default::default()
        },
    }
}

/// Segments 4 and 5 of timeline 1 missing.
pub(crate) fn gap() -> Gap {
    Gap {
        first_missing: "000000010000000000000004".into(),
        last_missing: "000000010000000000000005".into(),
        count: 2,
    }
}

/// A recoverable `db1` at 11:00: backup 20260102T100000Z, WAL archived up to segment 9 of
/// timeline 1 without gaps, the backup job and a passed drill.
pub(crate) fn snapshot() -> Snapshot {
    Snapshot {
        generated_at: Some("2026-01-02T11:00:00Z".into()),
        host: "db1".into(),
        repository: "/var/lib/lifeboat".into(),
        version: "0.1.0".into(),
        recoverable: true,
        window: Window {
            earliest: Some("2026-01-02T10:00:12.5Z".into()),
            latest_backup: Some("2026-01-02T10:00:12.5Z".into()),
            latest_wal: Some("000000010000000000000009".into()),
            streamed_to: None,
        },
        backups: vec![backup("20260102T100000Z")],
        newest_backup_age_seconds: Some(3587.5),
        wal: WalStatus {
            last_archived_wal: Some("000000010000000000000009".into()),
            last_archived_time: Some("2026-01-02 10:59:00+00".into()),
            timelines: vec![TimelineInfo {
                timeline: 1,
                first_segment: "000000010000000000000001".into(),
                last_segment: "000000010000000000000009".into(),
                segments: 9,
                gaps: Vec::new(),
                partial_files: Vec::new(),
                backup_files: Vec::new(),
                streamed_to: None,
                streamed_pieces: 0,
            }],
            ..Default::default()
        },
        jobs: vec![backup_job()],
        drills: vec![drill(true)],
        ..Default::default()
    }
}
