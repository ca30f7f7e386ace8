//! The background pusher (`wal-push-ahead`, started by `wal-push`): keeps up to `parallel` of the
//! files PostgreSQL marked `.ready` uploading at all times, starting the next as each completes
//! (never waiting for a batch), and leaves for each a marker (stored) or an error file (failed)
//! for the `wal-push` call that waits for it. It exits after about a second with nothing to do.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use lifeboat_pg::walname::WalFileName;
use tokio::task::JoinSet;

use super::state::{PushFailure, PusherDir, PusherLock};
use super::{
    BoundIdentity, PushOptions, archive_order, bound_identity, push_ahead, ready_names, spool_of,
};
use crate::error::join_error;
use crate::{EngineError, LazyRepo, Result};

/// Nothing to push for this long: the pusher exits (the next `wal-push` starts another).
const IDLE: Duration = Duration::from_secs(1);

/// How often `archive_status` is read while a slot is free.
const SCAN: Duration = Duration::from_millis(5);

/// A file this process stored whose marker is gone (the waiting call consumed it) is left alone
/// this long while PostgreSQL renames its `.ready` to `.done`; a `.ready` still there after that
/// (PostgreSQL asks again, e.g. after its archiver restarted) is pushed again.
const RENAME_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Default, serde::Serialize)]
pub struct PusherReport {
    pub stored: usize,
    pub failed: usize,
}

/// Push `.ready` files of `wal_dir` until there are none left. `lock_fd`: the locked descriptor
/// the starting `wal-push` handed over (else the lock is taken here). `classify` turns an error
/// into what the waiting call reports. `None`: another pusher holds the lock.
pub async fn run_pusher(
    repo: &LazyRepo,
    wal_dir: &Path,
    options: &PushOptions,
    lock_fd: Option<i32>,
    classify: &(dyn Fn(EngineError) -> PushFailure + Sync),
) -> Result<Option<PusherReport>> {
    let subdir = crate::archive::spool_subdir(repo.store().as_ref());
    let markers = spool_of(wal_dir, options).join("pushed").join(&subdir);
    let dir = PusherDir::new(wal_dir, options, &subdir);
    let Some(lock) = PusherLock::acquire(&dir, lock_fd)? else {
        return Ok(None);
    };
    let parallel = options.parallel.max(1);
    let mut report = PusherReport::default();
    let mut tasks: JoinSet<(String, Result<()>)> = JoinSet::new();
    // Names in flight, and names whose error could not be recorded (left to the waiting call,
    // which sees this pusher leave without its file and pushes it itself).
    let mut in_flight = HashSet::new();
    let mut stored = HashMap::new();
    let mut bound: Option<BoundIdentity> = None;
    let mut idle_since: Option<Instant> = None;
    loop {
        if tasks.len() < parallel {
            let ready = ready_names(wal_dir);
            let todo = to_push(&ready, &markers, &dir, &in_flight, &mut stored);
            let todo: Vec<WalFileName> = todo.into_iter().take(parallel - tasks.len()).collect();
            // The repository is opened once; when that fails, every file of this round gets the
            // error (opening again per file could take the store's whole retry budget each).
            let opened = if todo.is_empty() {
                None
            } else {
                match repo.get().await {
                    Ok(repo) => Some(repo),
                    Err(e) => {
                        let failure = classify(e);
                        for name in &todo {
                            let text = name.to_string();
                            report.failed += 1;
                            if !record_failure(&dir, &text, failure.clone()) {
                                in_flight.insert(text);
                            }
                        }
                        None
                    }
                }
            };
            if let Some(opened) = opened {
                for name in todo {
                    let repo = opened.clone();
                    let text = name.to_string();
                    // One bound identity per process; fetched again while none is bound yet.
                    let identity = bound.get_or_insert_with(|| bound_identity(&repo)).clone();
                    let path = wal_dir.join(&text);
                    let markers = markers.clone();
                    in_flight.insert(text.clone());
                    tasks.spawn(async move {
                        let result = push_ahead(&repo, &name, &path, identity, &markers).await;
                        (text, result)
                    });
                }
            }
        }
        if tasks.is_empty() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < IDLE {
                tokio::time::sleep(SCAN).await;
                continue;
            }
            // Tidy up while no other pusher can be writing markers.
            let ready = ready_names(wal_dir);
            prune_markers(&markers, &ready);
            dir.prune_errors(&ready);
            // Release the lock, then look once more: a `wal-push` that comes after the release
            // finds the lock free and starts a pusher, so no file waits for one that is leaving.
            lock.unlock();
            let ready = ready_names(wal_dir);
            let more = !to_push(&ready, &markers, &dir, &in_flight, &mut stored).is_empty();
            if more && lock.try_relock() {
                idle_since = None;
                continue;
            }
            if report.stored + report.failed > 0 {
                dir.log(&format!(
                    "idle, exiting: {} stored, {} failed",
                    report.stored, report.failed
                ));
            }
            return Ok(Some(report));
        }
        idle_since = None;
        let joined = if tasks.len() < parallel {
            tokio::select! {
                joined = tasks.join_next() => joined,
                () = tokio::time::sleep(SCAN) => None,
            }
        } else {
            tasks.join_next().await
        };
        let Some(joined) = joined else {
            continue;
        };
        let (name, result) = joined.map_err(join_error)?;
        match result {
            Ok(()) => {
                in_flight.remove(&name);
                report.stored += 1;
                stored.insert(name, None);
                if bound
                    .as_ref()
                    .and_then(|b| b.peek())
                    .is_some_and(Option::is_none)
                {
                    bound = None;
                }
            }
            Err(e) => {
                report.failed += 1;
                if record_failure(&dir, &name, classify(e)) {
                    in_flight.remove(&name);
                }
            }
        }
    }
}

/// Write the error file for `name`; false when it cannot be written.
fn record_failure(dir: &PusherDir, name: &str, failure: PushFailure) -> bool {
    dir.log(&format!("{name}: {}", failure.message));
    match dir.write_error(name, &failure) {
        Ok(()) => true,
        Err(e) => {
            dir.log(&format!("cannot record the error for {name}: {e}"));
            false
        }
    }
}

/// The `.ready` files to push now, in archiving order: not marked pushed, not in flight, without
/// an error file (the waiting call removes it, then the file is tried again), not stored by this
/// process a moment ago. `stored` is pruned to the `.ready` set.
pub(super) fn to_push(
    ready: &HashSet<String>,
    markers: &Path,
    dir: &PusherDir,
    in_flight: &HashSet<String>,
    stored: &mut HashMap<String, Option<Instant>>,
) -> Vec<WalFileName> {
    stored.retain(|name, _| ready.contains(name));
    let marked: HashSet<String> = fs::read_dir(markers)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let errors = dir.error_names();
    let now = Instant::now();
    let mut candidates = Vec::new();
    for name in ready {
        if marked.contains(name) || in_flight.contains(name) || errors.contains(name) {
            continue;
        }
        if let Some(seen) = stored.get_mut(name) {
            // Its marker is gone: from now on PostgreSQL renames the `.ready`.
            let since = *seen.get_or_insert(now);
            if now.duration_since(since) < RENAME_GRACE {
                continue;
            }
            stored.remove(name);
        }
        candidates.push(name);
    }
    archive_order(candidates.into_iter())
}

/// Remove markers of files PostgreSQL no longer has pending (nobody will ask for them), and
/// temporary files a killed pusher left. Only while holding the lock with nothing in flight.
pub(super) fn prune_markers(markers: &Path, ready: &HashSet<String>) {
    super::state::remove_all_but(markers, ready);
}
