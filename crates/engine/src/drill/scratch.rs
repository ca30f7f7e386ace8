//! The scratch directory a drill restores into: made mode 0700 with an owner marker
//! ([`OWNER_FILE`]), swept when a drill that is gone left it behind ([`sweep_abandoned`]), and
//! cleaned up at the end ([`Scratch`]: stop the server, wait for work given up on, remove the
//! directory unless kept), also when the drill's future is dropped.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_pg::cluster::{self as pgc, LocalCluster, StopMode};
use lifeboat_repo::lock::this_pid_scope;

/// The scratch directory, mode 0700: it will hold a copy of the production data.
pub(super) fn make_scratch_dir(dir: &Path) -> std::result::Result<(), String> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|e| {
            format!(
                "cannot create the scratch directory {}: {e}",
                parent.display()
            )
        })?;
    }
    fs::create_dir(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .and_then(|()| fs::write(dir.join(OWNER_FILE), owner_line()))
        .map_err(|e| format!("cannot create the scratch directory {}: {e}", dir.display()))
}

/// In each scratch directory: `<pid> <pid scope>` of the drill that made it (the scope as repository
/// locks record it: `<boot id>:<PID namespace>`), so that a later drill can tell a directory
/// abandoned by a drill that is gone (kill -9, a crash, a reboot), whose server may still run on
/// a full copy of the data, from one in use. Removed from a directory kept on purpose (`--keep`),
/// which is then never swept.
const OWNER_FILE: &str = "drill.owner";

fn owner_line() -> String {
    format!(
        "{} {}\n",
        std::process::id(),
        this_pid_scope().unwrap_or_default()
    )
}

/// Whether the drill named by an owner line is gone: made before this boot, or in this boot and
/// PID namespace by a process that no longer runs. A drill in another PID namespace (another
/// container sharing the directory) cannot be judged from here and counts as running; so does a
/// live pid, perhaps reused, which a later sweep sees again.
fn owner_gone(pid: u32, scope: &str, here: &str) -> bool {
    let boot = |scope: &str| {
        scope
            .split_once(':')
            .map_or(scope, |(boot, _)| boot)
            .to_string()
    };
    if boot(scope) != boot(here) {
        return true;
    }
    scope == here && !pgc::pid_alive(pid)
}

/// Stop the server of, and remove, every scratch directory under `parent` whose drill is gone
/// ([`owner_gone`]). A directory whose owner cannot be read is left alone.
pub(super) fn sweep_abandoned(parent: &Path) {
    let Ok(listing) = fs::read_dir(parent) else {
        return;
    };
    let here = this_pid_scope().unwrap_or_default();
    for entry in listing.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("lifeboat-drill-")
        {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut fields = owner.split_whitespace();
        let Some(pid) = fields.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !owner_gone(pid, fields.next().unwrap_or(""), &here) {
            continue;
        }
        tracing::warn!(
            "removing the scratch directory {} left by drill process {pid}, which is gone (killed or crashed); stopping its server first",
            dir.display()
        );
        let data = dir.join("data");
        let cluster = if data.join("postmaster.pid").exists() {
            match pgc::cluster_owner()
                .and_then(|owner| LocalCluster::existing(&data, 0, &dir, owner))
            {
                Ok(cluster) => Some(cluster),
                Err(e) => {
                    tracing::warn!(
                        "cannot stop the server on {} ({e}): stop it with `pg_ctl -D {} stop -m immediate` as its owner, then remove {}",
                        data.display(),
                        data.display(),
                        dir.display()
                    );
                    continue;
                }
            }
        } else {
            None
        };
        let mut abandoned = Scratch::new(dir, false);
        abandoned.created = true;
        abandoned.cluster = cluster;
        for problem in abandoned.cleanup() {
            tracing::warn!("{problem}");
        }
    }
}

/// The drill's scratch directory and the server running in it; cleaned up by [`Scratch::finish`],
/// or on drop if the drill's future was dropped before it got there (then on a blocking thread of
/// the runtime, which waits for it when it shuts down, never on the runtime thread dropping it).
pub(super) struct Scratch {
    pub(super) dir: PathBuf,
    keep: bool,
    /// Whether the directory was made (by us: never remove what we did not make).
    pub(super) created: bool,
    pub(super) cluster: Option<LocalCluster>,
    pub(super) replay_began: Option<Instant>,
    /// Work given up on that may still be running (a start, a query): done when `true`.
    pub(super) pending: Vec<Box<dyn Fn() -> bool + Send>>,
    cleaned: bool,
    /// Taken out of another to be cleaned up on a blocking thread: if that never runs (the
    /// runtime is shutting down), dropping it cleans up on the spot.
    detached: bool,
}

/// How long cleanup waits for the server to stop and for processes working in the directory.
const CLEANUP_WAIT: Duration = Duration::from_secs(120);

impl Scratch {
    pub(super) fn new(dir: PathBuf, keep: bool) -> Self {
        Self {
            dir,
            keep,
            created: false,
            cluster: None,
            replay_began: None,
            pending: Vec::new(),
            cleaned: false,
            detached: false,
        }
    }

    /// What cleanup needs, moved into a new value; this one is left with nothing to clean.
    fn take(&mut self) -> Scratch {
        let mut taken = Scratch::new(self.dir.clone(), self.keep);
        taken.created = self.created;
        taken.cluster = self.cluster.take();
        taken.pending = std::mem::take(&mut self.pending);
        taken.detached = true;
        self.cleaned = true;
        taken
    }

    pub(super) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stop the server and remove the directory on a blocking thread; what could not be done.
    pub(super) async fn finish(&mut self) -> Vec<String> {
        let mut taken = self.take();
        match tokio::task::spawn_blocking(move || taken.cleanup()).await {
            Ok(problems) => problems,
            Err(e) => vec![format!(
                "cleanup of {} did not finish ({e}): stop any server on it (pg_ctl -D {}/data stop) and remove the directory",
                self.dir.display(),
                self.dir.display()
            )],
        }
    }

    fn cleanup(&mut self) -> Vec<String> {
        self.cleaned = true;
        let mut problems = Vec::new();
        let deadline = Instant::now() + CLEANUP_WAIT;
        // A start given up on may still bring the server up: stop it until nothing is pending.
        loop {
            if let Some(cluster) = &self.cluster
                && cluster.is_running()
                && cluster.stop(StopMode::Fast).is_err()
            {
                let _ = cluster.stop(StopMode::Immediate);
            }
            let running = self.cluster.as_ref().is_some_and(LocalCluster::is_running);
            if !running && self.pending.iter().all(|done| done()) {
                break;
            }
            if Instant::now() >= deadline {
                if running {
                    problems.push(format!(
                        "the scratch server on {}/data would not stop: stop it with `pg_ctl -D {}/data stop -m immediate` as its owner",
                        self.dir.display(),
                        self.dir.display()
                    ));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.created {
            return problems;
        }
        // restore_command's prefetcher works in the data directory after the server is gone.
        let working = wait_for_processes_in(&self.dir, deadline);
        if !working.is_empty() {
            problems.push(format!(
                "processes {working:?} still work in {}: they are left alone",
                self.dir.display()
            ));
        }
        if self.keep {
            // Kept on purpose: no later drill may sweep it.
            let _ = fs::remove_file(self.dir.join(OWNER_FILE));
        }
        if self.keep || !problems.is_empty() {
            return problems;
        }
        let mut last = None;
        for _ in 0..10 {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => return problems,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return problems,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(e) = last {
            problems.push(format!(
                "cannot remove the scratch directory {}: {e}; remove it by hand",
                self.dir.display()
            ));
        }
        problems
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Cleanup may wait up to CLEANUP_WAIT for a server to stop: never on a runtime thread.
        if !self.detached
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut taken = self.take();
            runtime.spawn_blocking(move || {
                for problem in taken.cleanup() {
                    tracing::warn!("{problem}");
                }
            });
            return;
        }
        // No runtime here (or it is shutting down): this thread is not serving one.
        for problem in self.cleanup() {
            tracing::warn!("{problem}");
        }
    }
}

/// Wait until no process has its working directory or an argument under `dir`, or `deadline`;
/// the ones still there.
fn wait_for_processes_in(dir: &Path, deadline: Instant) -> Vec<u32> {
    loop {
        let found = processes_in(dir);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes working in `dir` or naming it, from Linux's /proc (empty elsewhere).
fn processes_in(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pgc::pid_alive(pid))
        .filter(|&pid| {
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir));
            let named = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                raw.split(|&b| b == 0)
                    .any(|arg| Path::new(&*String::from_utf8_lossy(arg)).starts_with(dir))
            });
            cwd || named
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_owner_is_gone_only_when_this_machine_can_tell() {
        let here = "boot-a:pid:[4026531836]";
        let live = std::process::id();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!owner_gone(live, here, here), "a running drill");
        assert!(owner_gone(dead, here, here), "its process is gone");
        assert!(
            owner_gone(live, "boot-b:pid:[4026531836]", here),
            "made before a reboot"
        );
        assert!(
            !owner_gone(dead, "boot-a:pid:[4026532000]", here),
            "another PID namespace"
        );
    }

    /// A drill whose future is dropped before its cleanup ran (a caller's timeout, a task
    /// aborted) must not block the runtime thread while the cleanup waits for work in progress
    /// (up to two minutes for a server that will not stop); the cleanup still happens.
    #[tokio::test]
    async fn dropping_an_unfinished_drill_does_not_block_the_runtime() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lifeboat-drill-dropped");
        fs::create_dir(&dir).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let mut scratch = Scratch::new(dir.clone(), false);
        scratch.created = true;
        let done = released.clone();
        scratch
            .pending
            .push(Box::new(move || done.load(Ordering::SeqCst)));
        // The work in progress finishes 2 s from now.
        let release = released.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            release.store(true, Ordering::SeqCst);
        });

        let began = Instant::now();
        drop(scratch);
        let blocked = began.elapsed();
        assert!(
            blocked < Duration::from_millis(500),
            "dropping the scratch blocked the runtime thread for {blocked:?}"
        );
        assert!(dir.exists(), "removed while work was still in progress");
        let deadline = Instant::now() + Duration::from_secs(30);
        while dir.exists() {
            assert!(
                Instant::now() < deadline,
                "the dropped drill's scratch directory was never removed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        releaser.join().unwrap();
    }
}
