//! Starting and stopping a [`LocalCluster`]: `pg_ctl` start and stop, a simulated crash
//! (`kill -9`), waiting for connections and for WAL to be archived, and the stale lock files a crash
//! leaves.

use std::fs;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process::{PidState, children_of, owner_can_write, pid_alive, pid_state, send_signal};
use super::{
    ClusterError, LocalCluster, MAX_SOCKET_PATH, Result, StopMode, read_lock_pid, run, said,
    shell_quote,
};

impl LocalCluster {
    /// Pid of the postmaster according to `postmaster.pid` (it may be stale after a crash).
    pub fn postmaster_pid(&self) -> Option<u32> {
        read_lock_pid(&self.datadir.join("postmaster.pid"))
    }

    /// Whether a postmaster is running on this data directory.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(pid_alive)
    }

    /// Start the server and wait until it accepts connections (`pg_ctl -w`). On failure the error
    /// carries the last lines of the server log. If it timed out the server may still be coming
    /// up; [`stop`](Self::stop) it if you give up on it.
    pub fn start(&self, timeout: Duration) -> Result<()> {
        if let Some(pid) = self.postmaster_pid().filter(|&pid| pid_alive(pid)) {
            return Err(ClusterError::Invalid(format!(
                "postgres is already running on {} (pid {pid}): stop it before starting it again",
                self.datadir.display()
            )));
        }
        self.check_socket_dir()?;
        self.remove_locks_of_unreaped_postmaster()?;
        let secs = (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1);
        let server_opts = format!(
            "-p {} -k {}",
            self.port,
            shell_quote(&self.socket_dir.to_string_lossy())
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &secs.to_string(), "-o", &server_opts, "start"]);
        let out = run(&mut cmd)?;
        if out.status.success() {
            return Ok(());
        }
        let tail = self.log_tail(30);
        let what = said(&out);
        if what.contains("did not start in time") {
            Err(ClusterError::Timeout {
                what: "postgres did not start".into(),
                after: Duration::from_secs(secs),
                detail: format!("last lines of {}:\n{tail}", self.log_file.display()),
            })
        } else {
            Err(ClusterError::Start(format!(
                "postgres on {} failed to start: {what}\nlast lines of {}:\n{tail}",
                self.datadir.display(),
                self.log_file.display()
            )))
        }
    }

    /// Stop the server and wait until it is gone. Stopping a server that is not running is not an
    /// error.
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.datadir)
            .args(["-m", mode.as_pg_ctl(), "-w", "-t", "120", "stop"]);
        let out = run(&mut cmd)?;
        if out.status.success() || !self.is_running() {
            return Ok(());
        }
        Err(ClusterError::Failed {
            program: "pg_ctl stop".into(),
            status: out.status.to_string(),
            detail: format!(
                "{}\nlast lines of {}:\n{}\nif it is stuck, use kill9 and start it again to recover",
                said(&out),
                self.log_file.display(),
                self.log_tail(20)
            ),
        })
    }

    /// Simulate a crash: SIGKILL the postmaster and every server process it started, giving none
    /// of them a chance to flush anything, and wait until they are gone. The next start runs crash
    /// recovery. Finding the server processes needs Linux's `/proc`; elsewhere only the postmaster
    /// is killed and its children exit on their own when they notice.
    pub fn kill9(&self) -> Result<()> {
        let Some(pid) = self.postmaster_pid().filter(|&pid| pid_alive(pid)) else {
            return Err(ClusterError::Invalid(format!(
                "postgres is not running on {}: there is nothing to kill; start it first",
                self.datadir.display()
            )));
        };
        // Freeze the postmaster so it cannot start a child between our listing and the kill.
        send_signal(pid, Signal::SIGSTOP)?;
        let children = children_of(pid);
        send_signal(pid, Signal::SIGKILL)?;
        for &child in &children {
            send_signal(child, Signal::SIGKILL)?;
        }

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive: Vec<u32> = std::iter::once(pid)
                .chain(children.iter().copied())
                .filter(|&p| pid_alive(p))
                .collect();
            if alive.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: "server processes did not exit after SIGKILL".into(),
                    after: Duration::from_secs(30),
                    detail: format!(
                        "still alive: {alive:?}; the system may be overloaded or the processes stuck in the kernel"
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the server accepts connections (`pg_isready`), e.g. after a start without
    /// waiting or while a standby reaches consistency.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut cmd = self.command("pg_isready");
            cmd.args(["-t", "2"]);
            let out = run(&mut cmd)?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("postgres on port {} did not accept connections", self.port),
                    after: timeout,
                    detail: format!(
                        "pg_isready says: {}\nlast lines of {}:\n{}",
                        said(&out),
                        self.log_file.display(),
                        self.log_tail(20)
                    ),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of the server log, or a note saying why there are none.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_file) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(no server log at {}: {e})", self.log_file.display()),
        }
    }

    /// Wait until `pg_stat_archiver.last_archived_wal` reaches `wal_name` (compared as names, which
    /// sort in WAL order). The error reports the archiver's failures, if any.
    pub fn wait_archived(&self, wal_name: &str, timeout: Duration) -> Result<()> {
        let mode = self.psql("show archive_mode")?;
        if mode == "off" {
            return Err(ClusterError::Invalid(format!(
                "cannot wait for {wal_name} to be archived: archive_mode is off; start the cluster with \
                 archive_mode = on and an archive_command (or archive_library)"
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.psql(
                "select coalesce(last_archived_wal, ''), archived_count, failed_count, \
                 coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') from pg_stat_archiver",
            )?;
            let fields: Vec<&str> = row.split('|').collect();
            let [last, archived, failed, last_failed, failed_at] = fields[..] else {
                return Err(ClusterError::Invalid(format!(
                    "unexpected pg_stat_archiver row {row:?}"
                )));
            };
            if !last.is_empty() && last >= wal_name {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let failures = if failed == "0" {
                    "no failed attempts".to_owned()
                } else {
                    format!("{failed} failed attempts, last for {last_failed} at {failed_at}")
                };
                return Err(ClusterError::Timeout {
                    what: format!("WAL segment {wal_name} was not archived"),
                    after: timeout,
                    detail: format!(
                        "last archived {last:?} ({archived} archived, {failures}); check archive_command and the server log:\n{}",
                        self.log_tail(20)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After a crash the lock files (`postmaster.pid`, and `.s.PGSQL.<port>.lock` by the socket)
    /// stay behind. PostgreSQL ignores them when the pid in them is gone, but takes an exited,
    /// unreaped postmaster (a zombie: containers whose init does not reap orphans keep them
    /// forever) for a running one and refuses to start. A zombie holds nothing, so its lock files
    /// can go; shared memory still in use by surviving children is checked by PostgreSQL itself.
    fn remove_locks_of_unreaped_postmaster(&self) -> Result<()> {
        let locks = [
            self.datadir.join("postmaster.pid"),
            self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)),
        ];
        for lock in locks {
            let Some(pid) = read_lock_pid(&lock) else {
                continue;
            };
            if pid_state(pid) != PidState::Zombie {
                continue;
            }
            match fs::remove_file(&lock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ClusterError::Io {
                        context: format!(
                            "could not remove {}, left by postmaster {pid} which has exited; remove it by hand",
                            lock.display()
                        ),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The Unix socket must fit in `sun_path` and its directory must be writable by the owner.
    pub(super) fn check_socket_dir(&self) -> Result<()> {
        let socket = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ClusterError::Invalid(format!(
                "socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} Unix sockets allow: \
                 use a shorter socket directory",
                socket.display()
            )));
        }
        if !owner_can_write(&self.socket_dir, self.owner.as_ref()) {
            let who = self.owner.as_ref().map_or("we", |o| o.name.as_str());
            return Err(ClusterError::Invalid(format!(
                "socket directory {} is missing or not writable by {who}: the server creates its socket \
                 and lock file there; create it and give it to {who} (chown), or use another directory",
                self.socket_dir.display()
            )));
        }
        Ok(())
    }
}
