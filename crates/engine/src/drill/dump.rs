//! The steps of a dump drill ([`Run::dump_steps`]): choose the dump, find server programs of its
//! major or newer, make a fresh cluster with `initdb` in the scratch directory and start it like
//! a backup drill's copy, restore each chosen database through the dump restore (every chunk
//! verified before `pg_restore` reads it), then run pg_amcheck and the check queries.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_pg::cluster::{self as pgc, InitOptions, LocalCluster};
use lifeboat_pg::session::ConnSpec;
use lifeboat_repo::dump::DumpManifest;

use super::run::{Halt, Run, failed};
use super::scratch::{make_scratch_dir, sweep_abandoned};
use super::server::server_bindir;
use super::{DumpChoice, round_ms, seconds, step};
use crate::dump::restore::{DumpRestoreOptions, restore};
use crate::{EngineError, join_error};

impl Run<'_> {
    pub(super) async fn dump_steps(&mut self, choice: &DumpChoice) -> Result<(), Halt> {
        let (manifest, databases) = self.choose_dump(choice).await?;
        let dumped_major = manifest
            .databases
            .iter()
            .filter(|d| databases.contains(&d.name))
            .map(|d| d.server_major)
            .max()
            .unwrap_or_else(|| pgc::major_of_version_num(manifest.server_version_num));
        let configured = self.opts.bindir.clone();
        let found = self
            .step_blocking(step::START, "finding the server programs", move || {
                dump_bindir(dumped_major, configured.as_deref())
            })
            .await?;
        let (bindir, major) = found.map_err(|(why, hint)| failed(step::START, why, hint))?;
        self.init_scratch(&bindir).await?;
        let cluster = self.start(bindir).await?;
        self.restore_dump(&cluster, &manifest, &databases).await?;
        self.checks(&cluster, major).await
    }

    /// The dump named, or the newest readable one holding every database asked for; and the
    /// databases to restore (those asked for, or all the dump holds).
    async fn choose_dump(
        &mut self,
        choice: &DumpChoice,
    ) -> Result<(DumpManifest, Vec<String>), Halt> {
        let repo = self.repo;
        let wanted = choice.databases.clone();
        let holds_all = |m: &DumpManifest| wanted.iter().all(|db| m.database(db).is_some());
        let manifest = match &choice.label {
            Some(label) => {
                let read = self
                    .step(
                        step::CHOOSE,
                        "reading the dump manifest",
                        repo.dump_manifest(label),
                    )
                    .await?;
                match read {
                    Ok(m) => m,
                    Err(e) if e.is_not_found() => {
                        return Err(failed(
                            step::CHOOSE,
                            format!("no dump labelled {label} in {}", repo.location()),
                            "`lifeboat dump list` shows the dumps",
                        ));
                    }
                    Err(e) => {
                        return Err(failed(
                            step::CHOOSE,
                            format!("dump {label} cannot be read: {e}"),
                            "`lifeboat verify` checks the dumps; drill another with --label",
                        ));
                    }
                }
            }
            None => {
                let labels = self
                    .step(step::CHOOSE, "listing the dumps", repo.dump_labels())
                    .await?
                    .map_err(EngineError::from)?;
                let mut chosen = None;
                let mut unreadable = Vec::new();
                for (label, _) in labels.iter().rev() {
                    let read = self
                        .step(
                            step::CHOOSE,
                            "reading a dump manifest",
                            repo.dump_manifest(label),
                        )
                        .await?;
                    match read {
                        Ok(m) if holds_all(&m) => {
                            chosen = Some(m);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => unreadable.push(format!("{label} ({e})")),
                    }
                }
                let Some(m) = chosen else {
                    let mut why = if wanted.is_empty() {
                        format!("the repository {} holds no dump", repo.location())
                    } else {
                        format!(
                            "no dump in {} holds database(s) {}",
                            repo.location(),
                            wanted.join(", ")
                        )
                    };
                    if !unreadable.is_empty() {
                        why.push_str(&format!("; unreadable: {}", unreadable.join(", ")));
                    }
                    return Err(failed(
                        step::CHOOSE,
                        why,
                        "take one with `lifeboat dump`; `lifeboat dump list` shows the dumps",
                    ));
                };
                m
            }
        };
        self.record.backup = Some(manifest.label.clone());
        if !holds_all(&manifest) {
            return Err(failed(
                step::CHOOSE,
                format!(
                    "dump {} holds no database {} (it holds: {})",
                    manifest.label,
                    wanted
                        .iter()
                        .filter(|db| manifest.database(db).is_none())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    names(&manifest).join(", ")
                ),
                "`lifeboat dump list` shows each dump's databases",
            ));
        }
        let databases = if wanted.is_empty() {
            names(&manifest)
        } else {
            wanted
        };
        if databases.is_empty() {
            return Err(failed(
                step::CHOOSE,
                format!("dump {} holds no database", manifest.label),
                "take a dump that includes the databases to prove (`lifeboat dump --db NAME`)",
            ));
        }
        Ok((manifest, databases))
    }

    /// The scratch directory (after sweeping abandoned ones) and a fresh cluster in it, owned by
    /// the cluster owner.
    async fn init_scratch(&mut self, bindir: &Path) -> Result<(), Halt> {
        let dir = self.scratch.dir.clone();
        let created = tokio::task::spawn_blocking(move || {
            if let Some(parent) = dir.parent() {
                sweep_abandoned(parent);
            }
            make_scratch_dir(&dir)
        })
        .await
        .map_err(join_error)?;
        if let Err(why) = created {
            return Err(failed(
                step::START,
                why,
                "give --scratch-dir (or drill.scratch_dir) a writable directory with room for the restored databases",
            ));
        }
        self.scratch.created = true;
        let dir = self.scratch.dir.clone();
        let bindir = bindir.to_path_buf();
        let made = self
            .step_blocking(step::START, "initdb", move || {
                let owner = pgc::cluster_owner().map_err(|e| e.to_string())?;
                // initdb runs as the owner: it must be able to enter the directory.
                if let Some(owner) = &owner {
                    pgc::chown_recursive(&dir, owner).map_err(|e| e.to_string())?;
                }
                let opts = InitOptions {
                    socket_dir: dir.clone(),
                    ..InitOptions::default()
                };
                LocalCluster::initdb_in(&bindir, &dir.join("data"), &opts)
                    .map(drop)
                    .map_err(|e| format!("initdb of the scratch cluster failed: {e}"))
            })
            .await?;
        made.map_err(|why| {
            failed(
                step::START,
                why,
                "fix what the message names (the scratch directory, the server programs), then run the drill again",
            )
        })
    }

    /// Each database into the scratch cluster: created from template0, then the dump restore
    /// (ownership and grants left out: the dump's roles do not exist there).
    async fn restore_dump(
        &mut self,
        cluster: &LocalCluster,
        manifest: &DumpManifest,
        databases: &[String],
    ) -> Result<(), Halt> {
        let target = ConnSpec::new(Some(&cluster.conninfo())).map_err(|e| {
            EngineError::Internal(format!("the scratch cluster's connection string: {e}"))
        })?;
        let began = Instant::now();
        let mut oldest_snapshot = None;
        for db in databases {
            if db != "postgres" {
                let creating = cluster.clone();
                let sql = format!("create database {} template template0", quote_ident(db));
                let made = self
                    .step_blocking(step::RESTORE, "creating a database", move || {
                        creating.psql(&sql)
                    })
                    .await?;
                made.map_err(|e| {
                    failed(
                        step::RESTORE,
                        format!("cannot create database {db:?} in the scratch cluster: {e}"),
                        "run the drill with --keep and read postgres.log in the scratch directory",
                    )
                })?;
            }
            let ropts = DumpRestoreOptions {
                database: db.clone(),
                label: Some(manifest.label.clone()),
                tables: Vec::new(),
                clean: false,
                create: false,
                no_owner: true,
                no_privileges: true,
                target: target.with_dbname(db),
            };
            let what = format!("the restore of database {db}");
            let repo = self.repo;
            let report = match self
                .step(step::RESTORE, &what, restore(repo, &ropts))
                .await?
            {
                Ok(report) => report,
                Err(e) => {
                    let mut failure = e.to_string();
                    if let Some(hint) = e.hint() {
                        failure.push_str("; ");
                        failure.push_str(&hint);
                    }
                    return Err(failed(
                        step::RESTORE,
                        failure,
                        "`lifeboat verify` names every damaged or missing object and the dumps it affects; drill an older dump with --label",
                    ));
                }
            };
            self.record.bytes_restored += report.bytes;
            self.record.databases.push(db.clone());
            if let Some(stream) = manifest.database(db) {
                oldest_snapshot = Some(match oldest_snapshot {
                    Some(t) if t < stream.start_time => t,
                    _ => stream.start_time,
                });
            }
        }
        self.record.restore_seconds = Some(seconds(began.elapsed()));
        if let Some(snapshot) = oldest_snapshot {
            let lost = (self.started - snapshot).as_seconds_f64();
            self.record.data_loss_seconds = Some(round_ms(lost.max(0.0)));
        }
        Ok(())
    }
}

fn names(manifest: &DumpManifest) -> Vec<String> {
    manifest.databases.iter().map(|d| d.name.clone()).collect()
}

/// A PostgreSQL identifier, quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Server programs that can restore a dump of PostgreSQL `major`: that major's, or any newer
/// (`[drill] bindir` when set, which must be at least `major`), and their major.
fn dump_bindir(
    major: u32,
    configured: Option<&Path>,
) -> std::result::Result<(PathBuf, u32), (String, String)> {
    if let Some(dir) = configured {
        return match pgc::bindir_major(dir) {
            Ok(found) if found >= major => Ok((dir.to_path_buf(), found)),
            Ok(found) => Err((
                format!(
                    "the dump is of PostgreSQL {major}, but [drill] bindir = {} holds PostgreSQL \
                     {found}, too old to restore it",
                    dir.display()
                ),
                format!(
                    "set [drill] bindir to the bin directory of PostgreSQL {major} or newer, or \
                     remove it to let the drill find one"
                ),
            )),
            Err(e) => Err((
                format!(
                    "the server programs in [drill] bindir = {} do not run: {e}",
                    dir.display()
                ),
                "set [drill] bindir to a directory holding PostgreSQL's postgres, initdb and pg_ctl"
                    .into(),
            )),
        };
    }
    match server_bindir(major, None) {
        Ok(dir) => Ok((dir, major)),
        Err(exact) => match pgc::pg_bindir().map(|d| (pgc::bindir_major(&d), d)) {
            Ok((Ok(found), dir)) if found >= major => Ok((dir, found)),
            _ => Err(exact),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("a\"b; drop"), "\"a\"\"b; drop\"");
    }
}
