//! The series of `/metrics`, one function per part of the snapshot (backups, WAL, jobs,
//! drills), and the [`Builder`] that registers only the values that are known.

use std::sync::atomic::AtomicU64;

use lifeboat_repo::records::Outcome;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{unix_of, unix_seconds};
use crate::status::Snapshot;

type FloatGauge = Gauge<f64, AtomicU64>;
type Labels = Vec<(String, String)>;

/// Registers only what is known: see the module comment.
pub(super) struct Builder {
    pub(super) registry: Registry,
}

impl Builder {
    pub(super) fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, value: Option<f64>) {
        let Some(value) = value else { return };
        let gauge = FloatGauge::default();
        gauge.set(value);
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help, unit, gauge),
            None => self.registry.register(name, help, gauge),
        }
    }

    pub(super) fn family(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: Vec<(Labels, f64)>,
    ) {
        if samples.is_empty() {
            return;
        }
        let family = Family::<Labels, FloatGauge>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help, unit, family),
            None => self.registry.register(name, help, family),
        }
    }

    pub(super) fn counter(&mut self, name: &str, help: &str, value: Option<u64>) {
        let Some(value) = value else { return };
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.registry.register(name, help, counter);
    }
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

pub(super) fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

pub(super) fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

pub(super) const OUTCOMES: [Outcome; 3] =
    [Outcome::Succeeded, Outcome::Failed, Outcome::Interrupted];

pub(super) fn backups(b: &mut Builder, s: &Snapshot) {
    b.gauge(
        "backups",
        "Complete backups in the repository",
        None,
        Some(s.backups.len() as f64),
    );
    b.gauge(
        "newest_backup_age",
        "Time since the newest complete backup finished",
        Some(Unit::Seconds),
        s.newest_backup_age_seconds,
    );
    b.gauge(
        "dumps",
        "Logical dumps in the repository",
        None,
        Some(s.dumps as f64),
    );
    b.gauge(
        "newest_dump_age",
        "Time since the newest logical dump started",
        Some(Unit::Seconds),
        s.newest_dump_age_seconds,
    );
    b.gauge(
        "copy_age",
        "Time since the last successful copy to the second repository started: how far behind it may be",
        Some(Unit::Seconds),
        s.copy_age_seconds,
    );
    b.gauge(
        "restore_window_start_timestamp",
        "The earliest moment a restore can reach: the oldest backup's stop time",
        Some(Unit::Seconds),
        s.window.earliest.as_deref().and_then(unix_seconds),
    );
    let Some(latest) = s.backups.last() else {
        return;
    };
    b.gauge(
        "latest_backup_stop_timestamp",
        "When the newest complete backup finished",
        Some(Unit::Seconds),
        unix_seconds(&latest.stop_time),
    );
    b.gauge(
        "latest_backup_size",
        "Size of the data directory the newest backup copied",
        Some(Unit::Bytes),
        Some(latest.size as f64),
    );
    b.gauge(
        "latest_backup_stored",
        "Bytes the newest backup added to the repository (after deduplication, compression)",
        Some(Unit::Bytes),
        Some(latest.stored_size as f64),
    );
    b.gauge(
        "latest_backup_duration",
        "How long the newest backup took",
        Some(Unit::Seconds),
        Some(latest.duration_seconds),
    );
    b.gauge(
        "latest_backup_files",
        "Files in the newest backup",
        None,
        Some(latest.files as f64),
    );
    b.gauge(
        "latest_backup_files_reused",
        "Files of the newest backup unchanged since the previous one, reused without reading",
        None,
        Some(latest.files_reused as f64),
    );
    b.gauge(
        "latest_backup_bad_pages",
        "Pages whose checksum failed while the newest backup read them",
        None,
        Some(latest.bad_pages.len() as f64),
    );
}

pub(super) fn wal(b: &mut Builder, s: &Snapshot) {
    let w = &s.wal;
    b.gauge(
        "wal_archive_lag",
        "Age of the oldest WAL segment waiting to be archived: what an outage now would lose",
        Some(Unit::Seconds),
        w.archive_lag_seconds,
    );
    b.gauge(
        "wal_ready_segments",
        "WAL segments PostgreSQL marked ready and not yet archived",
        None,
        w.ready_segments.map(|v| v as f64),
    );
    b.counter(
        "wal_archive_failures",
        "Failed archive_command runs (pg_stat_archiver.failed_count)",
        w.failed_count,
    );
    b.gauge(
        "wal_last_archived_timestamp",
        "When PostgreSQL last archived a WAL file (pg_stat_archiver)",
        Some(Unit::Seconds),
        w.last_archived_time.as_deref().and_then(unix_seconds),
    );
    b.gauge(
        "wal_last_failed_timestamp",
        "When archive_command last failed (pg_stat_archiver)",
        Some(Unit::Seconds),
        w.last_failed_time.as_deref().and_then(unix_seconds),
    );
    let gaps: usize = w.timelines.iter().map(|t| t.gaps.len()).sum();
    let missing: u64 = w
        .timelines
        .iter()
        .flat_map(|t| &t.gaps)
        .map(|g| g.count)
        .sum();
    b.gauge(
        "wal_gaps",
        "Gaps in the archived WAL, over every timeline",
        None,
        Some(gaps as f64),
    );
    b.gauge(
        "wal_missing_segments",
        "WAL segments missing inside those gaps",
        None,
        Some(missing as f64),
    );
    b.gauge(
        "wal_files",
        "WAL files in the repository",
        None,
        Some(w.wal_files as f64),
    );
    b.gauge(
        "wal_stored",
        "Bytes the archived WAL takes in the repository",
        Some(Unit::Bytes),
        Some(w.wal_stored_bytes as f64),
    );
}

/// The WAL receiver, as the server sees it; nothing without `[stream]`.
/// Every standby the server lists, by `application_name`.
pub(super) fn replicas(b: &mut Builder, s: &Snapshot) {
    let per = |f: &dyn Fn(&lifeboat_pg::session::ReplicationClient) -> Option<f64>| {
        s.replicas
            .iter()
            .filter_map(|r| f(r).map(|v| (labels(&[("application_name", &r.application_name)]), v)))
            .collect::<Vec<_>>()
    };
    b.family(
        "replica_lag",
        "WAL a standby has not replayed yet: the server's position minus its replay position (pg_stat_replication)",
        Some(Unit::Bytes),
        per(&|r| r.replay_lag_bytes.map(|v| v as f64)),
    );
    b.family(
        "replica_replay_lag",
        "How long ago the newest WAL a standby replayed was written on the server (replay_lag)",
        Some(Unit::Seconds),
        per(&|r| r.replay_lag_seconds),
    );
}

pub(super) fn stream(b: &mut Builder, s: &Snapshot) {
    let Some(st) = &s.stream else {
        return;
    };
    b.gauge(
        "stream_up",
        "1 when the server lists the WAL receiver as streaming or catching up (pg_stat_replication)",
        None,
        st.streaming.map(flag),
    );
    b.gauge(
        "stream_lag",
        "WAL the receiver has not stored yet: the server's position minus its flush position",
        Some(Unit::Bytes),
        st.lag_bytes.map(|v| v as f64),
    );
    b.gauge(
        "stream_exposure",
        "What a crash of the server now would lose, in time: flush_lag of the receiver (pg_stat_replication), 0 when caught up",
        Some(Unit::Seconds),
        st.exposure_seconds,
    );
    b.gauge(
        "slot_retained",
        "WAL the receiver's replication slot keeps on the server (position minus restart_lsn)",
        Some(Unit::Bytes),
        st.retained_bytes.map(|v| v as f64),
    );
    b.gauge(
        "slot_lost",
        "1 when the server removed WAL the slot still needed (wal_status = lost)",
        None,
        st.wal_status.as_deref().map(|w| flag(w == "lost")),
    );
    b.counter(
        "stream_receiver_starts",
        "Times the daemon started the WAL receiver (wal-stream) since it started",
        Some(st.receiver.starts),
    );
}

pub(super) fn jobs(b: &mut Builder, s: &Snapshot) {
    let per_job = |f: &dyn Fn(&crate::status::JobStatus) -> Option<f64>| -> Vec<(Labels, f64)> {
        s.jobs
            .iter()
            .filter_map(|j| f(j).map(|v| (labels(&[("job", &j.job)]), v)))
            .collect()
    };
    b.family(
        "job_last_success_timestamp",
        "When the job last finished successfully",
        Some(Unit::Seconds),
        per_job(&|j| {
            j.history
                .last_success
                .as_ref()
                .and_then(|r| unix_seconds(&r.finished))
        }),
    );
    b.family(
        "job_last_failure_timestamp",
        "When the job last failed",
        Some(Unit::Seconds),
        per_job(&|j| {
            j.history
                .last_failure
                .as_ref()
                .and_then(|r| unix_seconds(&r.finished))
        }),
    );
    b.family(
        "job_last_duration",
        "How long the job's last run took",
        Some(Unit::Seconds),
        per_job(&|j| j.history.last_run().map(|r| r.duration_seconds)),
    );
    b.family(
        "job_last_exit_code",
        "Exit code of the job's last run (docs/EXIT_CODES.md), when it exited by itself",
        None,
        per_job(&|j| {
            j.history
                .last_run()
                .and_then(|r| r.exit_code)
                .map(f64::from)
        }),
    );
    b.family(
        "job_running",
        "1 while the job runs",
        None,
        per_job(&|j| Some(flag(j.running_since.is_some()))),
    );
    b.family(
        "job_next_run_timestamp",
        "When the schedule runs the job next",
        Some(Unit::Seconds),
        per_job(&|j| j.next_run.as_deref().and_then(unix_seconds)),
    );
    // One series per outcome, 1 on the last run's: a series that is 0 rather than absent keeps
    // `lifeboat_job_last_outcome{outcome="failed"} == 1` rules simple.
    let mut last_outcome = Vec::new();
    let mut runs = Vec::new();
    for j in &s.jobs {
        let last = j.history.last_run().map(|r| r.outcome);
        for o in OUTCOMES {
            let l = labels(&[("job", &j.job), ("outcome", outcome_name(o))]);
            if let Some(last) = last {
                last_outcome.push((l.clone(), flag(last == o)));
            }
            let n = j.history.runs.iter().filter(|r| r.outcome == o).count();
            runs.push((l, n as f64));
        }
    }
    b.family(
        "job_last_outcome",
        "1 for the outcome of the job's last run, 0 for the others",
        None,
        last_outcome,
    );
    // A gauge, not a counter: the history keeps only the newest runs, so this can go down.
    b.family(
        "job_recorded_runs",
        "Runs of the job in its recorded history (the newest 100), by outcome",
        None,
        runs,
    );
}

pub(super) fn drills(b: &mut Builder, s: &Snapshot) {
    b.gauge(
        "drills_recorded",
        "Restore drills in the recorded history shown",
        None,
        Some(s.drills.len() as f64),
    );
    // Newest first.
    if let Some(passed) = s.drills.iter().find(|d| d.passed) {
        b.gauge(
            "drill_last_success_timestamp",
            "When the newest passing restore drill finished",
            Some(Unit::Seconds),
            Some(unix_of(passed.finished)),
        );
    }
    let Some(d) = s.drills.first() else { return };
    b.gauge(
        "drill_last_passed",
        "1 when the newest restore drill passed",
        None,
        Some(flag(d.passed)),
    );
    b.gauge(
        "drill_last_timestamp",
        "When the newest restore drill finished",
        Some(Unit::Seconds),
        Some(unix_of(d.finished)),
    );
    b.gauge(
        "drill_last_restore",
        "Newest drill: time to fetch and write the backup",
        Some(Unit::Seconds),
        d.restore_seconds,
    );
    b.gauge(
        "drill_last_replay",
        "Newest drill: time from starting PostgreSQL to the end of recovery",
        Some(Unit::Seconds),
        d.replay_seconds,
    );
    b.gauge(
        "drill_last_recovery",
        "Newest drill: restore plus replay, the recovery time an outage would take",
        Some(Unit::Seconds),
        d.recovery_seconds,
    );
    b.gauge(
        "drill_last_data_loss",
        "Newest drill: the target minus the newest commit the restored cluster held",
        Some(Unit::Seconds),
        d.data_loss_seconds,
    );
    b.gauge(
        "drill_last_restored",
        "Newest drill: bytes restored",
        Some(Unit::Bytes),
        Some(d.bytes_restored as f64),
    );
}

/// The failover agent (`[ha]`): whether this member leads, whether etcd answered, its lag.
pub(super) fn ha(b: &mut Builder, s: &Snapshot) {
    let Some(ha) = &s.ha else {
        return;
    };
    b.gauge(
        "ha_leader",
        "1 when this member holds the leader key and is before its fencing deadline",
        None,
        Some(flag(ha.holds_leader)),
    );
    b.gauge(
        "ha_etcd_up",
        "1 when etcd answered the failover agent's last pass",
        None,
        Some(flag(ha.etcd_reachable)),
    );
    b.gauge(
        "ha_paused",
        "1 while the cluster is paused (lifeboat ha pause): no automatic failover",
        None,
        Some(flag(ha.paused)),
    );
    b.gauge(
        "ha_members",
        "Members whose agent published its key in etcd (as seen on the last pass)",
        None,
        ha.etcd_reachable.then_some(ha.members.len() as f64),
    );
    b.gauge(
        "ha_replica_lag",
        "This standby's distance behind the leader's published WAL position",
        Some(Unit::Bytes),
        ha.lag_bytes.map(|v| v as f64),
    );
}
