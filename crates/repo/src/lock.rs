//! Repository locks: at most one `backup`, `expire`, `dump` or `passphrase change` works on a
//! repository at a time, except that a `backup` and a `dump` may run together.
//!
//! Protocol (docs/FORMAT.md, "Locks"): a process that wants the repository first writes its own
//! lock object, `locks/<kind>-<random id>`, create-only, and only then lists `locks/`. If any other
//! lock is fresh, it deletes its own and refuses; stale ones it deletes (a takeover, logged).
//! Writing before looking is what makes two processes that start at the same instant safe: with
//! a store whose listings show every completed put (all the stores we support), at least one of
//! them sees the other, so they never both proceed (at worst both refuse).
//!
//! A lock is stale when its holder ran on this machine (same host name, boot and PID namespace)
//! and its process is gone, or when its heartbeat is older than [`LockSettings::stale_after`]. The
//! holder rewrites its heartbeat every [`LockSettings::heartbeat`] from a background task, and
//! stops trusting its own lock (it must not delete or publish anything more) once its last
//! successful heartbeat is older than [`LockSettings::trust_limit`], well before anyone else may
//! call it stale, or once it finds its lock object gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lifeboat_storage::{ErrorKind, PutMode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{RepoError, Repository, Result, keys};

/// What a lock protects. Every lock excludes every other but one pair: two backups at once would
/// race on labels and double the load, and `expire` must never delete what a running backup or
/// dump relies on. A `dump` and a `backup` may run together: both only add packs and their own
/// indexes, and their manifests last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Backup,
    Expire,
    /// `passphrase change`: two at once could leave the config's copies with different keys.
    Passphrase,
    /// `copy` holds it on the repository it copies into, so that no `expire` runs there
    /// meanwhile (older binaries respect a kind they do not know).
    Copy,
    /// `dump`: logical dumps (docs/FORMAT.md, "Dumps").
    Dump,
}

impl LockKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LockKind::Backup => "backup",
            LockKind::Expire => "expire",
            LockKind::Passphrase => "passphrase",
            LockKind::Copy => "copy",
            LockKind::Dump => "dump",
        }
    }

    /// Whether a fresh lock of `other` (a kind as stored, possibly one this version does not
    /// know) keeps a holder of this kind out. Only `backup` and `dump` tolerate each other; an
    /// unknown kind is respected.
    pub fn excluded_by(&self, other: &str) -> bool {
        !matches!(
            (self, other),
            (LockKind::Dump, "backup") | (LockKind::Backup, "dump")
        )
    }
}

impl std::fmt::Display for LockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content of a lock object (JSON inside an ordinary, encrypted-when-the-repository-is object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// `backup` or `expire`; a string so that kinds added later are still read (and respected).
    pub kind: String,
    pub id: String,
    /// Host name of the holder, for people and for the same-machine test.
    pub host: String,
    pub pid: u32,
    /// `<boot id>:<PID namespace>` of the holder: the pid test is only meaningful on the same
    /// running kernel and in the same PID namespace (containers sharing a host name do not).
    #[serde(default)]
    pub pid_scope: Option<String>,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC; rewritten by the holder while it runs.
    pub heartbeat: String,
}

impl LockRecord {
    /// A record for this process, started and heartbeating now, with a fresh random id.
    pub fn for_this_process(kind: LockKind) -> Result<Self> {
        let id = hex::encode(
            crate::crypto::random_bytes::<8>()
                .map_err(|e| RepoError::Invalid(format!("cannot make a lock id: {e}")))?,
        );
        let now = now_rfc3339();
        Ok(Self {
            kind: kind.as_str().to_string(),
            id,
            host: this_host(),
            pid: std::process::id(),
            pid_scope: this_pid_scope(),
            started: now.clone(),
            heartbeat: now,
        })
    }

    pub fn key(&self) -> String {
        keys::lock(&self.kind, &self.id)
    }

    /// Why this lock is stale as seen from this process at `now`, or `None` when it is fresh.
    pub fn stale_reason(&self, now: OffsetDateTime, stale_after: Duration) -> Option<String> {
        if self.host == this_host()
            && self.pid_scope.is_some()
            && self.pid_scope == this_pid_scope()
            && !lifeboat_pg::cluster::pid_alive(self.pid)
        {
            return Some(format!(
                "its process {} no longer exists on this machine",
                self.pid
            ));
        }
        match OffsetDateTime::parse(&self.heartbeat, &Rfc3339) {
            Ok(beat) => {
                let age = now - beat;
                (age.whole_seconds() > i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX))
                    .then(|| {
                        format!(
                            "its last heartbeat was {} ago (more than {} s)",
                            human_age(age),
                            stale_after.as_secs()
                        )
                    })
            }
            // Unreadable time: only the heartbeat rule could free it, so it would never be
            // freed. A record we cannot date is not trusted to hold the repository.
            Err(e) => Some(format!(
                "its heartbeat {:?} is not a time ({e})",
                self.heartbeat
            )),
        }
    }

    /// `backup running as pid 1234 on host db1 since …, last heartbeat 12 s ago`.
    pub fn describe(&self, now: OffsetDateTime) -> String {
        let beat = OffsetDateTime::parse(&self.heartbeat, &Rfc3339)
            .map(|t| format!("{} ago", human_age(now - t)))
            .unwrap_or_else(|_| self.heartbeat.clone());
        format!(
            "{} running as pid {} on host {} since {}, last heartbeat {beat}",
            self.kind, self.pid, self.host, self.started
        )
    }
}

fn human_age(age: time::Duration) -> String {
    let s = age.whole_seconds();
    if s < 0 {
        format!("{} s in the future", -s)
    } else if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

/// A lock found in the repository (another holder's, from our point of view).
#[derive(Debug, Clone)]
pub struct FoundLock {
    pub key: String,
    /// `Err`: the object could not be read or decoded (the reason).
    pub record: std::result::Result<LockRecord, String>,
}

/// Timings of the protocol. The defaults are what every lifeboat uses; tests may shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockSettings {
    /// How often a holder rewrites its heartbeat.
    pub heartbeat: Duration,
    /// A lock whose heartbeat is older than this is stale (also across machines, whose clocks must
    /// agree to well within `stale_after - trust_limit`).
    pub stale_after: Duration,
    /// A holder whose last successful heartbeat is older than this no longer trusts its lock.
    pub trust_limit: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(60),
            stale_after: Duration::from_secs(600),
            trust_limit: Duration::from_secs(180),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds the repository.
    #[error("refusing to start {wanted}: the repository is locked by another process: {}", holders.join("; and "))]
    Held {
        wanted: LockKind,
        /// Each holder, described (kind, pid, host, since, last heartbeat), or an unreadable key.
        holders: Vec<String>,
        keys: Vec<String>,
    },
    /// Our lock may have been taken over: stop before changing anything more.
    #[error("lost the repository lock {key}: {reason}; stopped before changing anything more")]
    Lost { key: String, reason: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl LockError {
    /// The operator's next step.
    pub fn hint(&self) -> Option<String> {
        match self {
            LockError::Held { keys, .. } => Some(format!(
                "wait for it to finish, then retry. A lock left by a killed process is taken over \
                 automatically: at once on the machine it ran on, after {} minutes elsewhere. If you \
                 are certain no lifeboat backup or expire runs, delete {} from the repository",
                LockSettings::default().stale_after.as_secs() / 60,
                keys.join(", ")
            )),
            LockError::Lost { .. } => Some(
                "another process judged this one dead (no heartbeat reached the repository in \
                 time: check the store's reachability and that the machines' clocks agree), then \
                 retry; nothing already stored was damaged"
                    .into(),
            ),
            LockError::Repo(e) => e.hint(),
        }
    }
}

impl Repository {
    /// Store a lock record under its key (`Create` when taking a lock, `Overwrite` for heartbeats).
    pub async fn put_lock(&self, record: &LockRecord, mode: PutMode) -> Result<()> {
        let json = serde_json::to_vec(record)
            .map_err(|e| RepoError::Invalid(format!("cannot serialise a lock: {e}")))?;
        self.put_object(&record.key(), &json, mode).await?;
        Ok(())
    }

    /// Every lock object in the repository, read and decoded where possible.
    pub async fn locks(&self) -> Result<Vec<FoundLock>> {
        let mut out = Vec::new();
        for object in self.store().list(keys::LOCK_PREFIX).await? {
            if keys::parse_lock_key(&object.key).is_none() {
                continue;
            }
            let record = match self.get_object(&object.key).await {
                Ok((_, plain)) => serde_json::from_slice::<LockRecord>(&plain)
                    .map_err(|e| format!("unreadable lock record: {e}")),
                // Released between the listing and the read: not a lock any more.
                Err(e) if e.is_not_found() => continue,
                Err(RepoError::Corrupt { reason, .. }) => Err(reason),
                Err(e) => return Err(e),
            };
            out.push(FoundLock {
                key: object.key,
                record,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn delete_lock(&self, key: &str) -> Result<()> {
        Ok(self.store().delete(key).await?)
    }
}

/// What the holder's heartbeat task shares with it.
#[derive(Debug)]
struct Heartbeat {
    last_ok: Mutex<Instant>,
    lost: Mutex<Option<String>>,
    stopped: AtomicBool,
}

impl Heartbeat {
    fn lost(&self) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn set_lost(&self, reason: String) {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
    }
    fn since_ok(&self) -> Duration {
        self.last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
    fn ok(&self) {
        *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

/// A lock this process holds. Call [`release`](Self::release) when done; dropping it unreleased
/// (a panic, a cancelled task) deletes it in the background on a best-effort basis, and a
/// process killed outright leaves it for the next one to take over.
#[derive(Debug)]
pub struct RepoLock {
    repo: Repository,
    record: LockRecord,
    key: String,
    settings: LockSettings,
    beat: Arc<Heartbeat>,
    task: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl RepoLock {
    /// Take the repository for `kind` with the default timings.
    pub async fn acquire(repo: &Repository, kind: LockKind) -> Result<Self, LockError> {
        Self::acquire_with(repo, kind, LockSettings::default()).await
    }

    pub async fn acquire_with(
        repo: &Repository,
        kind: LockKind,
        settings: LockSettings,
    ) -> Result<Self, LockError> {
        // 1. Our own lock first, so that anyone who lists after this sees us.
        let mut record = LockRecord::for_this_process(kind)?;
        let mut attempts = 0;
        loop {
            match repo.put_lock(&record, PutMode::Create).await {
                Ok(()) => break,
                // 64 random bits collided (or our own earlier attempt landed before a timeout
                // and its retry reported the key present): pick another id.
                Err(RepoError::Storage(e))
                    if e.kind == ErrorKind::AlreadyExists && attempts < 3 =>
                {
                    attempts += 1;
                    record = LockRecord::for_this_process(kind)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let key = record.key();
        let beat = Arc::new(Heartbeat {
            last_ok: Mutex::new(Instant::now()),
            lost: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let mut lock = RepoLock {
            repo: repo.clone(),
            record,
            key,
            settings,
            beat,
            task: None,
            released: false,
        };

        // 2. Then everyone else's.
        let others = match repo.locks().await {
            Ok(found) => found,
            Err(e) => {
                lock.release().await;
                return Err(e.into());
            }
        };
        let now = OffsetDateTime::now_utc();
        let mut holders = Vec::new();
        let mut held_keys = Vec::new();
        for other in others.into_iter().filter(|o| o.key != lock.key) {
            match &other.record {
                Ok(rec) => match rec.stale_reason(now, settings.stale_after) {
                    Some(reason) => {
                        tracing::warn!(
                            "taking over the stale repository lock {} ({}): {reason}",
                            other.key,
                            rec.describe(now)
                        );
                        if let Err(e) = repo.delete_lock(&other.key).await {
                            lock.release().await;
                            return Err(e.into());
                        }
                    }
                    None if !kind.excluded_by(&rec.kind) => {
                        tracing::debug!("{} may run beside {}", kind, rec.describe(now));
                    }
                    None => {
                        holders.push(rec.describe(now));
                        held_keys.push(other.key.clone());
                    }
                },
                // We cannot tell whose it is or whether it is alive: respect it, and say how to
                // clear it.
                Err(reason) => {
                    holders.push(format!(
                        "an unreadable lock object {} ({reason})",
                        other.key
                    ));
                    held_keys.push(other.key.clone());
                }
            }
        }
        if !holders.is_empty() {
            lock.release().await;
            return Err(LockError::Held {
                wanted: kind,
                holders,
                keys: held_keys,
            });
        }

        // 3. Keep it fresh while we work.
        lock.task = Some(tokio::spawn(heartbeat_loop(
            lock.repo.clone(),
            lock.record.clone(),
            lock.beat.clone(),
            settings,
        )));
        tracing::debug!("took the repository lock {}", lock.key);
        Ok(lock)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn record(&self) -> &LockRecord {
        &self.record
    }

    /// Whether we may still act as the holder: not taken over, heartbeat recent, object present.
    /// Call before each step that publishes or deletes something.
    pub async fn check_held(&self) -> Result<(), LockError> {
        let lost = |reason: String| LockError::Lost {
            key: self.key.clone(),
            reason,
        };
        if let Some(reason) = self.beat.lost() {
            return Err(lost(reason));
        }
        let since = self.beat.since_ok();
        if since > self.settings.trust_limit {
            return Err(lost(format!(
                "its heartbeat has not reached the repository for {} s",
                since.as_secs()
            )));
        }
        match self.repo.store().head(&self.key).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Err(lost(
                "its object was deleted by another process, which judged it stale".into(),
            )),
            Err(e) => Err(LockError::Repo(e.into())),
        }
    }

    /// Stop the heartbeat and delete the lock object. A failure to delete is logged, not returned:
    /// the work is done, and the lock will be judged stale (at once on this machine).
    pub async fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        self.beat.stopped.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.repo.delete_lock(&self.key).await {
            tracing::warn!(
                "could not delete the repository lock {}: {e}; it will be taken over as stale",
                self.key
            );
        } else {
            tracing::debug!("released the repository lock {}", self.key);
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.beat.stopped.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Best effort: a runtime that is shutting down may never run this.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let repo = self.repo.clone();
            let key = self.key.clone();
            handle.spawn(async move {
                let _ = repo.delete_lock(&key).await;
            });
        }
    }
}

async fn heartbeat_loop(
    repo: Repository,
    mut record: LockRecord,
    beat: Arc<Heartbeat>,
    settings: LockSettings,
) {
    let key = record.key();
    let mut ticks = tokio::time::interval(settings.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; the lock was just written
    loop {
        ticks.tick().await;
        if beat.stopped.load(Ordering::SeqCst) || beat.lost().is_some() {
            return;
        }
        // Past the trust limit another process may soon call us stale: never write the lock
        // again, or we could bring back one that was taken over.
        let since = beat.since_ok();
        if since > settings.trust_limit {
            let reason = format!(
                "its heartbeat could not be written for {} s",
                since.as_secs()
            );
            tracing::error!("repository lock {key}: {reason}");
            beat.set_lost(reason);
            return;
        }
        // Look before rewriting: an Overwrite would otherwise resurrect a lock taken over.
        match repo.store().head(&key).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                let reason = "its object was deleted by another process".to_string();
                tracing::error!("repository lock {key}: {reason}");
                beat.set_lost(reason);
                return;
            }
            Err(e) => {
                tracing::warn!("cannot refresh the repository lock {key}: {e}; retrying");
                continue;
            }
        }
        record.heartbeat = now_rfc3339();
        match repo.put_lock(&record, PutMode::Overwrite).await {
            Ok(()) => beat.ok(),
            Err(e) => tracing::warn!("cannot refresh the repository lock {key}: {e}; retrying"),
        }
    }
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// This machine's host name (`unknown` when it cannot be read).
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// `<boot id>:<PID namespace>`, or `None` where Linux's /proc does not say: then a lock is only
/// ever judged by its heartbeat.
pub fn this_pid_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}:{}", boot.trim(), ns.to_string_lossy()))
}

#[cfg(test)]
mod tests;
