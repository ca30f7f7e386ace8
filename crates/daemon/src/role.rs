//! This module owns the role view the role endpoints answer from (`/primary`, `/replica`, ...;
//! `lifeboat_ha::routes`): a shared cell holding the last published [`RoleView`], and, without
//! `[ha]`, the observer that publishes one every second from the local PostgreSQL.
//!
//! Answers never query PostgreSQL themselves: HAProxy asks every second per backend, and a slow or
//! hung server must make the check fail fast (503 on a stopped or stale view), not hang it. With
//! `[ha]` the failover loop owns the cell and publishes instead of the observer (it knows the
//! leader key and the fencing deadline, which PostgreSQL does not).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_ha::state::{Role, RoleView};
use lifeboat_pg::session::{ConnSpec, RoleStatus, Session};
use tokio::sync::watch;

/// How often the observer reads the local role without `[ha]`.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// Deadline of connecting and of the one query: a server that takes longer counts as stopped,
/// well inside the views' staleness limit (`lifeboat_ha::routes::STALE_WITHOUT_HA`).
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// The last published role view (None until the first one), shared by the HTTP handlers and
/// whoever publishes: the observer without `[ha]`, the failover loop with it.
#[derive(Debug, Clone)]
pub struct RoleCell(Arc<watch::Sender<Option<RoleView>>>);

impl Default for RoleCell {
    fn default() -> Self {
        RoleCell(Arc::new(watch::Sender::new(None)))
    }
}

impl RoleCell {
    /// Replace the view; the next request answers from it.
    pub fn publish(&self, view: RoleView) {
        self.0.send_replace(Some(view));
    }

    /// The last published view.
    pub fn latest(&self) -> Option<RoleView> {
        self.0.borrow().clone()
    }

    /// Wakes on each publication (for tests and for whoever waits for a role change).
    pub fn subscribe(&self) -> watch::Receiver<Option<RoleView>> {
        self.0.subscribe()
    }
}

/// The role view of one reading of the local server without `[ha]` (no leader key, no deadline),
/// observed at `at` (when the question was sent: the view is at least as old as that).
pub fn local_view(status: &RoleStatus, at: Instant) -> RoleView {
    RoleView {
        role: if status.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        },
        holds_leader: None,
        leader_deadline: None,
        timeline: status.timeline,
        lag_bytes: status.replay_lag_bytes(),
        streaming: status.in_recovery && status.streaming,
        paused: false,
        observed_at: at,
    }
}

/// The view when the server could not be asked: stopped, as far as routing goes.
pub fn stopped_view(at: Instant) -> RoleView {
    RoleView {
        role: Role::Stopped,
        holds_leader: None,
        leader_deadline: None,
        timeline: None,
        lag_bytes: None,
        streaming: false,
        paused: false,
        observed_at: at,
    }
}

/// Without `[ha]`: read the local server's role every [`OBSERVE_EVERY`] over one kept session
/// (`db`, as the health loop connects), publish it, until `stop`. A failed reading publishes a
/// stopped view and drops the session, so the next one reconnects.
pub async fn observe_local(cell: RoleCell, db: Option<String>, mut stop: watch::Receiver<bool>) {
    let mut session: Option<Session> = None;
    let mut last: Option<(Role, Option<String>)> = None;
    loop {
        let at = Instant::now();
        let reading = read(&mut session, db.as_deref()).await;
        let view = match &reading {
            Ok(status) => local_view(status, at),
            Err(_) => {
                session = None;
                stopped_view(at)
            }
        };
        // Said once per change, not every second.
        let now = (view.role, reading.as_ref().err().cloned());
        if last.as_ref() != Some(&now) {
            match &now.1 {
                None => {
                    tracing::info!(role = ?view.role, timeline = ?view.timeline, streaming = view.streaming, "the role endpoints answer for this role")
                }
                Some(e) => tracing::warn!(
                    "the role endpoints answer 503: cannot read PostgreSQL's role: {e}"
                ),
            }
            last = Some(now);
        }
        cell.publish(view);
        tokio::select! {
            () = tokio::time::sleep(OBSERVE_EVERY.saturating_sub(at.elapsed())) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn read(session: &mut Option<Session>, db: Option<&str>) -> Result<RoleStatus, String> {
    if session.is_none() {
        let spec = ConnSpec::new(db).map_err(|e| e.to_string())?;
        let s = Session::connect(&spec, DB_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        s.set_statement_timeout(DB_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        *session = Some(s);
    }
    let Some(s) = session.as_ref() else {
        return Err("no session".to_string());
    };
    match tokio::time::timeout(DB_TIMEOUT, s.role_status()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{} did not answer within {DB_TIMEOUT:?}",
            s.target()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_pg::lsn::Lsn;

    #[test]
    fn a_reading_becomes_a_view_without_ha() {
        let at = Instant::now();
        let standby = RoleStatus {
            in_recovery: true,
            timeline: lifeboat_pg::timeline::TimelineId::new(2),
            flushed: None,
            received: Some(Lsn(1000)),
            replayed: Some(Lsn(400)),
            streaming: true,
            sender_end: Some(Lsn(1500)),
        };
        let v = local_view(&standby, at);
        assert_eq!(v.role, Role::Replica);
        assert_eq!(v.lag_bytes, Some(1100));
        assert!(v.streaming);
        assert_eq!((v.holds_leader, v.leader_deadline), (None, None));
        let primary = RoleStatus {
            in_recovery: false,
            flushed: Some(Lsn(5)),
            ..RoleStatus::default()
        };
        let v = local_view(&primary, at);
        assert_eq!(
            (v.role, v.lag_bytes, v.streaming),
            (Role::Primary, None, false)
        );
        assert_eq!(stopped_view(at).role, Role::Stopped);
    }

    #[test]
    fn the_cell_keeps_the_last_view() {
        let cell = RoleCell::default();
        assert_eq!(cell.latest(), None);
        let rx = cell.subscribe();
        let at = Instant::now();
        cell.publish(stopped_view(at));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(cell.latest().map(|v| v.role), Some(Role::Stopped));
    }
}
