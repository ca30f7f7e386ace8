//! The failover agent inside `lifeboat serve` (with `[ha]`): every `loop_wait` it observes its
//! PostgreSQL ([`observe`]) and the cluster's keys in etcd, asks the policy
//! ([`lifeboat_ha::decide`]) what to do, carries it out ([`act`]), publishes its member key and
//! the role the HTTP endpoints answer from. Fencing ([`fence`]) runs in a separate keeper
//! process so that it holds even when the agent dies or hangs.

pub mod act;
pub mod fence;
pub mod observe;

use std::path::PathBuf;
use std::time::Instant;

use lifeboat_ha::config::{HaConfig, SyncMode};
use lifeboat_ha::dcs::Dcs;
use lifeboat_ha::decide::{Action, Decision, decide};
use lifeboat_ha::state::{ClusterView, LocalState, MemberRecord, Observation, Role};
use lifeboat_pg::cluster::{LocalCluster, StopMode, cluster_owner};
use lifeboat_pg::session::ConnSpec;
use tokio::sync::watch;

use self::act::Local;
use self::fence::FenceKeeper;
use crate::runner::Launcher;

/// The agent's last pass, for `/api/status`, the dashboard and `/metrics`.
pub type SharedHaStatus = std::sync::Arc<std::sync::Mutex<Option<crate::status::HaStatus>>>;

/// How long a standby may follow a leader on a newer timeline without streaming before it is
/// taken to have diverged and rejoins.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the leader keeps the slot of a member whose key vanished.
const SLOT_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Everything the agent needs, resolved by the CLI.
#[derive(Debug, Clone)]
pub struct HaOptions {
    pub config: HaConfig,
    pub pgdata: PathBuf,
    /// How the agent reaches its own PostgreSQL (`db`): a socket directory and port.
    pub local_conninfo: String,
    /// `restore_command` for members (wal-fetch from the repository).
    pub restore_command: String,
    pub launcher: Launcher,
}

/// This member's local process control, from the options: the port and socket directory of
/// `db`, the owner of the data directory's processes.
pub fn local_member(options: &HaOptions) -> Result<Local, String> {
    let spec = ConnSpec::new(Some(&options.local_conninfo))
        .map_err(|e| format!("[ha] needs `db` to reach the local server: {e}"))?;
    let port = spec.ports().first().copied().unwrap_or(5432);
    let socket_dir = spec
        .hosts()
        .into_iter()
        .find(|h| h.starts_with('/'))
        .map(PathBuf::from)
        .ok_or_else(|| {
            "with [ha], `db` must name the local server's socket directory (host=/run/postgresql \
             port=5432 ...): the agent starts and stops that server"
                .to_string()
        })?;
    let owner = cluster_owner().map_err(|e| e.to_string())?;
    let cluster = LocalCluster::existing(&options.pgdata, port, &socket_dir, owner)
        .map_err(|e| e.to_string())?;
    Ok(Local {
        cluster,
        spec,
        pgdata: options.pgdata.clone(),
        name: options.config.name.clone(),
        restore_command: options.restore_command.clone(),
        timeout: options.config.retry_timeout,
        launcher: options.launcher.clone(),
    })
}

/// What the loop carries from one pass to the next.
struct Agent {
    options: HaOptions,
    local: Local,
    dcs: Option<Dcs>,
    keeper: Option<FenceKeeper>,
    /// While leading: last renewal sent + ttl − retry_timeout.
    deadline: Option<Instant>,
    /// The member this standby's primary_conninfo points at, as last written.
    following: Option<String>,
    rejoining: bool,
    /// When each member was last listed for a slot (see [`SLOT_GRACE`]).
    members_seen: std::collections::HashMap<String, Instant>,
    /// The last other member seen holding the leader key (the `from` of a failover).
    last_leader: Option<String>,
    /// The synchronous set in etcd as last read or written.
    published_sync: Option<Vec<String>>,
    /// Since when this standby follows the leader without streaming, on an older timeline.
    stuck_since: Option<Instant>,
    /// When the loop first saw PostgreSQL down (None while it runs).
    down_since: Option<Instant>,
    last_summary: String,
    roles: crate::role::RoleCell,
    status: SharedHaStatus,
}

/// Run the agent until `stop` turns true. On stop, a leader stops its PostgreSQL (fast) and
/// then gives up the key, so that a standby takes over without waiting for the lease.
pub async fn run(
    options: HaOptions,
    roles: crate::role::RoleCell,
    status: SharedHaStatus,
    mut stop: watch::Receiver<bool>,
) {
    let local = match local_member(&options) {
        Ok(local) => local,
        Err(e) => {
            tracing::error!("the failover agent cannot run: {e}");
            return;
        }
    };
    let keeper = match FenceKeeper::spawn(&options.launcher, &options.pgdata) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::error!(
                "cannot start the fence keeper ({e}): fencing depends on this agent alone"
            );
            None
        }
    };
    let mut agent = Agent {
        options,
        local,
        dcs: None,
        keeper,
        deadline: None,
        following: None,
        rejoining: false,
        published_sync: None,
        last_leader: None,
        members_seen: std::collections::HashMap::new(),
        stuck_since: None,
        down_since: None,
        last_summary: String::new(),
        roles,
        status,
    };
    loop {
        agent.pass().await;
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(agent.options.config.loop_wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    agent.shutdown().await;
}

impl Agent {
    async fn pass(&mut self) {
        let config = self.options.config.clone();
        let mut local = observe::observe(
            &self.local.spec,
            &self.local.pgdata,
            config.retry_timeout,
            self.following.clone(),
        )
        .await;
        if local.running {
            self.down_since = None;
        } else {
            self.down_since.get_or_insert_with(Instant::now);
        }
        local.down_since = self.down_since;
        let cluster = self.read_cluster().await;
        if let Some(view) = &cluster {
            self.published_sync = view.sync.as_ref().map(|s| s.standbys.clone());
            if let Some(leader) = view.leader.as_ref().filter(|l| l.name != config.name) {
                self.last_leader = Some(leader.name.clone());
            }
        }
        let observation = Observation {
            local: local.clone(),
            cluster: cluster.clone(),
            now: Instant::now(),
            leader_deadline: self.deadline,
        };
        let decision = decide(&observation, &config);
        if decision.summary != self.last_summary {
            tracing::info!(actions = ?decision.actions, "ha: {}", decision.summary);
            self.last_summary = decision.summary.clone();
        }
        // A member about to start streaming needs its slot on the leader, which the leader
        // creates only for members whose key it sees: without the key published first, a
        // rejoin's start waits out its whole timeout for WAL it cannot stream.
        let starts_streaming = decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Rejoin { .. } | Action::Follow { .. }));
        let unpublished = cluster
            .as_ref()
            .is_some_and(|c| !c.members.iter().any(|m| m.name == config.name));
        if starts_streaming && unpublished {
            self.publish(cluster.as_ref(), Some(local.clone())).await;
        }
        let mut decision = decision;
        if let Some(rejoin) = self.stuck_standby(&decision, &local, cluster.as_ref()) {
            decision.actions = vec![rejoin];
        }
        self.carry_out(&decision, &local).await;
        // What the pass observed still holds unless it acted.
        let unchanged = decision.actions.is_empty().then_some(local);
        self.publish(cluster.as_ref(), unchanged).await;
    }

    /// A standby that follows the leader but has not streamed for [`STUCK_AFTER`] while the
    /// leader runs on a newer timeline most likely received WAL of the old timeline past the
    /// point where the leader's branched off (asynchronous replication: it was ahead of the
    /// member that was promoted), and PostgreSQL will never follow that timeline. It rejoins:
    /// pg_rewind, else a re-clone.
    fn stuck_standby(
        &mut self,
        decision: &Decision,
        local: &LocalState,
        cluster: Option<&ClusterView>,
    ) -> Option<Action> {
        let leader = cluster
            .and_then(|c| c.leader.as_ref())
            .filter(|l| l.name != self.options.config.name)
            .and_then(|l| cluster?.members.iter().find(|m| m.name == l.name))?;
        let behind = matches!((leader.timeline, local.timeline), (Some(l), Some(ours)) if l > ours);
        let stuck = decision.actions.is_empty()
            && local.running
            && local.in_recovery
            && !local.streaming
            && behind;
        if !stuck {
            self.stuck_since = None;
            return None;
        }
        let since = *self.stuck_since.get_or_insert_with(Instant::now);
        if since.elapsed() < STUCK_AFTER {
            return None;
        }
        self.stuck_since = None;
        tracing::warn!(
            leader = %leader.name,
            "ha: this standby has not streamed for {}s and stays on an older timeline than the \
             leader's: rejoining (its history likely diverged)",
            STUCK_AFTER.as_secs()
        );
        Some(Action::Rejoin {
            leader: leader.name.clone(),
            conninfo: leader.conninfo.clone(),
        })
    }

    async fn read_cluster(&mut self) -> Option<ClusterView> {
        if self.dcs.is_none() {
            match Dcs::connect(&self.options.config).await {
                Ok(dcs) => self.dcs = Some(dcs),
                Err(e) => {
                    tracing::warn!("ha: cannot reach etcd: {e}");
                    return None;
                }
            }
        }
        let dcs = self.dcs.as_ref()?;
        match dcs.read().await {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!("ha: cannot read the cluster's keys from etcd: {e}");
                None
            }
        }
    }

    async fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        // The keeper exits once it has fenced: a new one holds the next deadline.
        if self.keeper.as_mut().is_some_and(|k| !k.is_running()) {
            tracing::info!("ha: the fence keeper has exited (it fenced); starting a new one");
            self.keeper = FenceKeeper::spawn(&self.options.launcher, &self.options.pgdata).ok();
        }
        if let Some(keeper) = self.keeper.as_mut()
            && let Err(e) = keeper.set_deadline(deadline).await
        {
            tracing::error!("ha: cannot reach the fence keeper ({e}); starting it again");
            self.keeper = FenceKeeper::spawn(&self.options.launcher, &self.options.pgdata).ok();
            if let Some(keeper) = self.keeper.as_mut() {
                let _ = keeper.set_deadline(deadline).await;
            }
        }
    }

    /// Last renewal sent + ttl − retry_timeout (see `lifeboat_ha::dcs`, "Fencing contract").
    fn fencing_deadline(&self, sent: Instant) -> Instant {
        self.dcs
            .as_ref()
            .map_or(sent, |dcs| dcs.fencing_deadline(sent))
    }

    /// Carry out the actions in order; an action that fails skips the rest (the next pass
    /// observes again). When etcd answers that AcquireLeader or RenewLeader did not get or keep
    /// the key, the decision's `if_key_lost` runs instead of the rest.
    async fn carry_out(&mut self, decision: &Decision, local: &LocalState) {
        for action in &decision.actions {
            match self.act(action, local).await {
                Ok(true) => continue,
                // etcd answered: the key was not taken, or is no longer this member's.
                Ok(false) => {
                    for fallback in &decision.if_key_lost {
                        if let Err(e) = self.act(fallback, local).await {
                            tracing::error!(action = ?fallback, "ha: {e}");
                            break;
                        }
                    }
                }
                Err(e) => tracing::error!(?action, "ha: {e}"),
            }
            break;
        }
    }

    /// One action; Ok(false): stop here without an error.
    async fn act(&mut self, action: &Action, local: &LocalState) -> Result<bool, String> {
        let dcs_needed = || "etcd is not reachable".to_string();
        match action {
            Action::Initialize { system_identifier } => {
                let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                let stored = dcs
                    .initialize(*system_identifier)
                    .await
                    .map_err(|e| e.to_string())?;
                if stored != *system_identifier {
                    return Err(format!(
                        "etcd says this cluster's system identifier is {stored}, this member's \
                         is {system_identifier}: it belongs to another cluster; it will not join"
                    ));
                }
            }
            Action::AcquireLeader => {
                let sent = Instant::now();
                let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                let taken = dcs.acquire_leader().await.map_err(|e| e.to_string())?;
                if !taken {
                    tracing::info!("ha: another member took the leader key first");
                    return Ok(false);
                }
                let deadline = self.fencing_deadline(sent);
                self.set_deadline(Some(deadline)).await;
                tracing::info!("ha: took the leader key");
            }
            Action::RenewLeader => {
                let sent = Instant::now();
                let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                let held = dcs.renew_leader().await.map_err(|e| e.to_string())?;
                if !held {
                    tracing::error!("ha: the leader key is no longer this member's");
                    self.set_deadline(None).await;
                    return Ok(false);
                }
                let deadline = self.fencing_deadline(sent);
                self.set_deadline(Some(deadline)).await;
            }
            Action::ReleaseLeader => {
                let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                dcs.release_leader().await.map_err(|e| e.to_string())?;
                self.set_deadline(None).await;
            }
            Action::Promote => {
                self.local.promote().await?;
                self.following = None;
                tracing::info!("ha: promoted");
                self.record_promotion().await;
            }
            Action::StopImmediately => {
                self.local.stop(StopMode::Immediate).await?;
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    self.set_deadline(None).await;
                }
            }
            Action::Start => self.local.start().await?,
            Action::StartStandby => self.local.start_standby().await?,
            Action::StopFast => self.local.stop(StopMode::Fast).await?,
            Action::Follow { leader, conninfo } => {
                if let Err(e) = self.local.follow(conninfo).await {
                    // A former primary that was started as a standby before it could rejoin
                    // (pg_control no longer says primary) diverged: rewind it.
                    if !e.contains("is not a child of this server's history") {
                        return Err(e);
                    }
                    tracing::warn!(
                        leader,
                        "ha: this member's history diverged from the leader's: rejoining"
                    );
                    self.rejoining = true;
                    let result = self.local.rejoin(conninfo).await;
                    self.rejoining = false;
                    result?;
                }
                if self.following.as_deref() != Some(leader) {
                    tracing::info!(leader, "ha: following the leader");
                }
                self.following = Some(leader.clone());
            }
            Action::Rejoin { leader, conninfo } => {
                self.rejoining = true;
                let result = self.local.rejoin(conninfo).await;
                self.rejoining = false;
                result?;
                tracing::info!(leader, "ha: rejoined as a standby");
                self.following = Some(leader.clone());
            }
            Action::PublishLeaderPosition => {
                if let Some(lsn) = local.wal_position {
                    let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                    dcs.set_leader_position(lsn)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Action::SetSynchronous { standbys } => {
                // A member may be promoted in a synchronous mode only if `sync` lists it, so
                // `sync` never names fewer members than could hold the latest commits: it is
                // published before the server's list widens and after it narrows.
                let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                let published = self.published_sync.clone().unwrap_or_default();
                let widening = standbys.iter().any(|s| !published.contains(s));
                let sync = lifeboat_ha::state::SyncState {
                    leader: self.options.config.name.clone(),
                    standbys: standbys.clone(),
                };
                if widening {
                    dcs.set_sync(&sync).await.map_err(|e| e.to_string())?;
                }
                let strict = self.options.config.synchronous == SyncMode::Strict;
                self.local.set_synchronous(standbys, strict).await?;
                if !widening {
                    dcs.set_sync(&sync).await.map_err(|e| e.to_string())?;
                }
                self.published_sync = Some(standbys.clone());
            }
            Action::KeepSlots { members } => {
                // A member whose key vanished (its agent restarting, its host rebooting) keeps
                // its slot for a while, so that it can stream again instead of replaying the
                // repository.
                let now = Instant::now();
                for member in members {
                    self.members_seen.insert(member.clone(), now);
                }
                self.members_seen
                    .retain(|_, seen| now.duration_since(*seen) < SLOT_GRACE);
                let mut keep: Vec<String> = self.members_seen.keys().cloned().collect();
                keep.sort();
                self.local.keep_slots(&keep).await?
            }
            Action::ClearSwitchover => {
                let dcs = self.dcs.as_ref().ok_or_else(dcs_needed)?;
                dcs.set_switchover(None).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(true)
    }

    /// Append this promotion to the cluster's failover history (best effort: the history is
    /// for people, the promotion stands without it).
    async fn record_promotion(&self) {
        let config = &self.options.config;
        let now = observe::observe(
            &self.local.spec,
            &self.local.pgdata,
            config.retry_timeout,
            None,
        )
        .await;
        let (Some(dcs), Some(timeline)) = (self.dcs.as_ref(), now.timeline) else {
            return;
        };
        let entry = lifeboat_ha::dcs::HistoryEntry::now(
            self.last_leader.clone(),
            config.name.clone(),
            timeline,
            now.wal_position.unwrap_or_default(),
        );
        if let Err(e) = dcs.append_history(&entry).await {
            tracing::warn!("ha: cannot record the promotion in the failover history: {e}");
        }
    }

    /// Publish this member's key and the role the endpoints answer from.
    /// `local`: the pass's observation when no action changed it; else the server is asked again.
    async fn publish(&mut self, cluster: Option<&ClusterView>, local: Option<LocalState>) {
        let config = &self.options.config;
        let (spec, pgdata, following) = (&self.local.spec, &self.local.pgdata, &self.following);
        let local = match local {
            Some(local) => local,
            None => observe::observe(spec, pgdata, config.retry_timeout, following.clone()).await,
        };
        let role = if self.rejoining {
            Role::Rejoining
        } else if !local.running {
            Role::Stopped
        } else if local.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        };
        // A leader's lease is renewed with the key (RenewLeader); anyone else's here, so that
        // its member key lives ttl past the last pass that ran.
        if self.deadline.is_none()
            && let Some(dcs) = self.dcs.as_ref()
            && let Err(e) = dcs.keep_alive().await
        {
            tracing::warn!("ha: cannot renew this member's etcd lease: {e}");
        }
        if let (Some(dcs), Some(sysid)) = (self.dcs.as_ref(), local.system_identifier) {
            let record = MemberRecord {
                name: config.name.clone(),
                role,
                timeline: local.timeline,
                wal_position: local.wal_position,
                replayed: local.replayed,
                conninfo: config.conninfo.clone(),
                api_url: config.api_url.clone(),
                system_identifier: sysid,
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            if let Err(e) = dcs.publish_member(&record).await {
                tracing::warn!("ha: cannot publish this member's key: {e}");
            }
        }
        let observation = Observation {
            local,
            cluster: cluster.cloned(),
            now: Instant::now(),
            leader_deadline: self.deadline,
        };
        let mut view = lifeboat_ha::routes::ha_view(&observation, &config.name);
        view.role = role;
        let status = crate::status::HaStatus {
            name: config.name.clone(),
            role: format!("{role:?}").to_lowercase(),
            leader: cluster
                .and_then(|c| c.leader.as_ref())
                .map(|l| l.name.clone()),
            holds_leader: view.holds_leader == Some(true),
            fencing_in_ms: view.leader_deadline.map(|d| {
                u64::try_from(d.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(u64::MAX)
            }),
            etcd_reachable: cluster.is_some(),
            paused: view.paused,
            timeline: view.timeline.map(|t| t.get()),
            lag_bytes: view.lag_bytes,
            summary: self.last_summary.clone(),
            members: cluster.map(|c| c.members.clone()).unwrap_or_default(),
            observed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
        self.roles.publish(view);
    }

    async fn shutdown(&mut self) {
        let leading = self.deadline.is_some_and(|d| Instant::now() < d);
        if leading {
            tracing::info!("ha: stopping: PostgreSQL is stopped and the leader key released");
            if let Err(e) = self.local.stop(StopMode::Fast).await {
                tracing::error!(
                    "ha: cannot stop PostgreSQL: {e}; the key is kept until it expires"
                );
                return;
            }
            if let Some(dcs) = self.dcs.as_ref()
                && let Err(e) = dcs.release_leader().await
            {
                tracing::warn!(
                    "ha: cannot release the leader key ({e}); it expires with its lease"
                );
            }
        }
        self.set_deadline(None).await;
        // The member key goes at once rather than after ttl.
        if let Some(dcs) = self.dcs.as_ref()
            && let Err(e) = dcs.revoke_lease().await
        {
            tracing::warn!(
                "ha: cannot revoke this member's etcd lease ({e}); it expires by itself"
            );
        }
    }
}
