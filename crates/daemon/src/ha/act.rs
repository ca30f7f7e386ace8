//! The agent's actions on its own PostgreSQL: promote, stop at once, start, follow a leader
//! (`primary_conninfo` and slot, by `ALTER SYSTEM` and reload while running, in
//! `postgresql.auto.conf` with `standby.signal` while stopped), rejoin as a standby after a
//! failover (`pg_rewind`, else a re-clone from the repository), the member slots and
//! `synchronous_standby_names` of a leader.
//!
//! Blocking process control (`pg_ctl`, `pg_rewind`) runs on the blocking pool. Every error is a
//! sentence for the log and `ha status`: the loop retries at its next pass.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use lifeboat_pg::cluster::{LocalCluster, StopMode, chown_recursive};
use lifeboat_pg::conf::quote_value;
use lifeboat_pg::session::ha::member_slot;
use lifeboat_pg::session::{ConnSpec, Session};

use crate::runner::Launcher;

/// `synchronous_standby_names` of a strict leader without a synchronous standby: a name no
/// member or receiver uses (member names are lower-case), so commits wait.
const NO_STANDBY: &str = "\"Lifeboat: no synchronous standby\"";

/// How long a start or a promotion may take before the loop tries again.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// This member's PostgreSQL and how to reach and change it.
#[derive(Debug, Clone)]
pub struct Local {
    pub cluster: LocalCluster,
    pub spec: ConnSpec,
    pub pgdata: PathBuf,
    /// This member's name: `application_name` and slot name on the leader.
    pub name: String,
    /// `restore_command` every member uses (wal-fetch from the repository).
    pub restore_command: String,
    /// Deadline of connections and queries.
    pub timeout: Duration,
    pub launcher: Launcher,
}

pub type ActResult = Result<(), String>;

impl Local {
    async fn session(&self) -> Result<Session, String> {
        let session = Session::connect(&self.spec, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        session
            .set_statement_timeout(self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(session)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(LocalCluster) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(cluster))
            .await
            .map_err(|e| format!("{what} failed: {e}"))?
    }

    pub fn is_running(&self) -> bool {
        self.cluster.is_running()
    }

    pub async fn promote(&self) -> ActResult {
        let session = self.session().await?;
        match session.promote(START_TIMEOUT).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "PostgreSQL did not leave recovery within {}s of pg_promote",
                START_TIMEOUT.as_secs()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn stop(&self, mode: StopMode) -> ActResult {
        self.blocking("stopping PostgreSQL", move |c| {
            c.stop(mode).map_err(|e| e.to_string())
        })
        .await
    }

    pub async fn start(&self) -> ActResult {
        if self.is_running() {
            return Ok(());
        }
        self.blocking("starting PostgreSQL", |c| {
            c.start(START_TIMEOUT).map_err(|e| e.to_string())
        })
        .await
    }

    /// Start in recovery with no upstream yet: `standby.signal` and `restore_command` (the
    /// repository), so the member replays what is archived and takes part in the election as
    /// a standby.
    pub async fn start_standby(&self) -> ActResult {
        if self.is_running() {
            return Ok(());
        }
        self.write_standby_files(&[("restore_command", self.restore_command.clone())])?;
        self.start().await
    }

    /// The settings of a standby of the member reachable at `leader_conninfo`.
    fn standby_settings(&self, leader_conninfo: &str) -> [(&'static str, String); 3] {
        [
            (
                "primary_conninfo",
                lifeboat_engine::standby::with_application_name(leader_conninfo, &self.name),
            ),
            ("primary_slot_name", member_slot(&self.name)),
            ("restore_command", self.restore_command.clone()),
        ]
    }

    /// Point this standby at the leader. Running in recovery: ALTER SYSTEM and reload (the
    /// WAL receiver reconnects to the new primary). Stopped: the settings and `standby.signal`
    /// written, then started.
    pub async fn follow(&self, leader_conninfo: &str) -> ActResult {
        let settings = self.standby_settings(leader_conninfo);
        if self.is_running() {
            let session = self.session().await?;
            if !session.is_in_recovery().await.map_err(|e| e.to_string())? {
                return Err(
                    "PostgreSQL runs as a primary: it must rejoin (rewind), not just follow".into(),
                );
            }
            for (name, value) in &settings {
                session
                    .alter_system(name, value)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            return session.reload().await.map_err(|e| e.to_string());
        }
        self.write_standby_files(&settings)?;
        self.start().await
    }

    /// `standby.signal` and the settings appended to `postgresql.auto.conf` (read last: the
    /// appended lines win; the next ALTER SYSTEM rewrites the file cleanly).
    fn write_standby_files(&self, settings: &[(&'static str, String)]) -> ActResult {
        let auto = self.pgdata.join("postgresql.auto.conf");
        let mut text = String::from("# Set by lifeboat serve ([ha]): follow the leader.\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = {}\n", quote_value(value)));
        }
        // Never through a symbolic link: these are the data directory's own files.
        let open = |path: &std::path::Path, append: bool| {
            std::fs::OpenOptions::new()
                .write(true)
                .append(append)
                .create(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| {
                    format!(
                        "cannot open {} ({e}); check that it is a plain file the agent's user may \
                         write",
                        path.display()
                    )
                })
        };
        let mut file = open(&auto, true)?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", auto.display()))?;
        let signal = self.pgdata.join("standby.signal");
        open(&signal, false)?;
        if let Some(owner) = &self.cluster.owner {
            for path in [&auto, &signal] {
                chown_recursive(path, owner).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// A former primary that diverged from the leader comes back as its standby: stopped,
    /// `pg_rewind --restore-target-wal` from the leader (the WAL it needs comes from the
    /// repository through restore_command); if that fails, re-cloned from the repository
    /// (`standby create --delta`). Then started as a standby.
    pub async fn rejoin(&self, leader_conninfo: &str) -> ActResult {
        self.stop(StopMode::Immediate).await?;
        // What this server finished writing but never archived goes to the repository, on its
        // own timeline, before pg_rewind or a re-clone replaces its pg_wal: nothing it
        // acknowledged is destroyed without a copy (PITR on the old timeline can reach it).
        self.archive_ready_wal().await?;
        let settings = self.standby_settings(leader_conninfo);
        // pg_rewind needs restore_command in the target's configuration.
        self.write_standby_files(&settings[2..])?;
        let _ = std::fs::remove_file(self.pgdata.join("standby.signal"));
        // pg_rewind reads the leader's timeline from its pg_control, which a promoted server
        // updates only at its first checkpoint: without one it finds "no rewind required" and
        // the old primary then refuses to follow ("not a child of this server's history").
        self.checkpoint_leader(leader_conninfo).await?;
        let conninfo = leader_conninfo.to_string();
        let rewound = self
            .blocking("pg_rewind", move |c| {
                let mut cmd = c.command("pg_rewind");
                cmd.arg("--target-pgdata")
                    .arg(&c.datadir)
                    .arg("--source-server")
                    .arg(&conninfo)
                    .arg("--restore-target-wal");
                let out = cmd
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run pg_rewind: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
                }
            })
            .await;
        if let Err(e) = rewound {
            tracing::warn!(
                "pg_rewind failed ({e}); re-cloning this member from the repository instead"
            );
            self.reclone(leader_conninfo).await?;
        }
        self.write_standby_files(&settings)?;
        self.start().await
    }

    /// `wal-push` of every file `pg_wal/archive_status` marks `.ready` (complete segments and
    /// history files the archiver had not stored yet), each then marked `.done`. A file that
    /// cannot be stored stops the rejoin: nothing is discarded before it is safe.
    async fn archive_ready_wal(&self) -> ActResult {
        let status_dir = self.pgdata.join("pg_wal").join("archive_status");
        let entries = match std::fs::read_dir(&status_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot list {}: {e}", status_dir.display())),
        };
        let mut ready: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|name| name.strip_suffix(".ready").map(str::to_owned))
            // Only PostgreSQL's own names: nothing else is handed to a command.
            .filter(|name| lifeboat_pg::walname::WalFileName::parse(name).is_ok())
            .collect();
        ready.sort();
        for name in ready {
            let path = self.pgdata.join("pg_wal").join(&name);
            let path_text = path.to_string_lossy().into_owned();
            let out = self
                .launcher
                .command_with(&["wal-push", &path_text])
                .output()
                .await
                .map_err(|e| format!("cannot run wal-push: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot archive {name} before rejoining (nothing was discarded): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let from = status_dir.join(format!("{name}.ready"));
            let to = status_dir.join(format!("{name}.done"));
            std::fs::rename(&from, &to).map_err(|e| format!("cannot mark {name} archived: {e}"))?;
            tracing::info!(file = %name, "ha: archived before rejoining");
        }
        Ok(())
    }

    /// `CHECKPOINT` on the leader (a superuser, or a role with pg_checkpoint on 15+).
    async fn checkpoint_leader(&self, leader_conninfo: &str) -> ActResult {
        let spec = ConnSpec::new(Some(leader_conninfo)).map_err(|e| e.to_string())?;
        let session = Session::connect(&spec, self.timeout)
            .await
            .map_err(|e| format!("cannot reach the leader to rewind from it: {e}"))?;
        session.checkpoint().await.map_err(|e| {
            format!(
                "CHECKPOINT on the leader failed ({e}); pg_rewind needs it after a promotion: \
                 connect as a superuser or grant pg_checkpoint"
            )
        })
    }

    /// `lifeboat standby create --delta` into this member's data directory.
    async fn reclone(&self, leader_conninfo: &str) -> ActResult {
        let target = self.pgdata.to_string_lossy().into_owned();
        let mut cmd = self.launcher.command_with(&[
            "standby",
            "create",
            "--delta",
            "--target-dir",
            &target,
            "--primary",
            leader_conninfo,
            "--name",
            &member_slot(&self.name),
        ]);
        let out = cmd
            .output()
            .await
            .map_err(|e| format!("cannot run standby create: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "standby create --delta failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// On the leader: a slot per member, the slots of members gone dropped.
    pub async fn keep_slots(&self, members: &[String]) -> ActResult {
        let session = self.session().await?;
        let dropped = session
            .keep_member_slots(members)
            .await
            .map_err(|e| e.to_string())?;
        if !dropped.is_empty() {
            tracing::info!(slots = ?dropped, "dropped the slots of members that left");
        }
        Ok(())
    }

    /// `synchronous_standby_names` = ANY 1 of the standbys, reloaded. An empty set turns
    /// synchronous commit off, except in `strict`: there it names no one who can connect
    /// ([`NO_STANDBY`]), so commits wait until a standby is listed again.
    pub async fn set_synchronous(&self, standbys: &[String], strict: bool) -> ActResult {
        let value = if standbys.is_empty() && strict {
            NO_STANDBY.to_string()
        } else if standbys.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = standbys
                .iter()
                .map(|s| format!("\"{}\"", s.replace('"', "")))
                .collect();
            format!("ANY 1 ({})", quoted.join(", "))
        };
        let session = self.session().await?;
        session
            .alter_system("synchronous_standby_names", &value)
            .await
            .map_err(|e| e.to_string())?;
        session.reload().await.map_err(|e| e.to_string())
    }
}
