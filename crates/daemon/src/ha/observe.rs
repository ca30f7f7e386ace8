//! What the agent sees of its own PostgreSQL each loop: [`LocalState`] from one query (with a
//! deadline) and pg_control (the system identifier, readable while the server is down).

use std::path::Path;
use std::time::Duration;

use lifeboat_ha::state::LocalState;
use lifeboat_pg::control::{ControlFile, DbState};
use lifeboat_pg::session::{ConnSpec, Session};

/// Observe the local server. A server that does not answer within `timeout` counts as not
/// running (its role is unknown until it answers).
pub async fn observe(
    spec: &ConnSpec,
    pgdata: &Path,
    timeout: Duration,
    following: Option<String>,
) -> LocalState {
    let control = read_control(pgdata);
    let mut state = LocalState {
        system_identifier: control.as_ref().map(|c| c.system_identifier),
        was_primary: control.is_some_and(|c| ran_as_primary(c.db_state()))
            && !pgdata.join("standby.signal").exists()
            && !pgdata.join("recovery.signal").exists(),
        following,
        ..LocalState::default()
    };
    let answered = tokio::time::timeout(timeout, async {
        let session = Session::connect(spec, timeout).await?;
        session.observe_member().await
    })
    .await;
    match answered {
        Ok(Ok(seen)) => {
            state.running = true;
            state.was_primary = !seen.in_recovery;
            state.in_recovery = seen.in_recovery;
            state.timeline = seen.timeline;
            state.wal_position = seen.wal_position;
            state.replayed = seen.replayed;
            state.streaming = seen.streaming;
            state.connected_standbys = seen.connected_standbys;
        }
        Ok(Err(e)) => tracing::debug!("the local server does not answer: {e}"),
        Err(_) => tracing::debug!("the local server did not answer within {timeout:?}"),
    }
    state
}

/// pg_control, None when it cannot be read.
fn read_control(pgdata: &Path) -> Option<ControlFile> {
    let bytes = std::fs::read(pgdata.join("global").join("pg_control")).ok()?;
    lifeboat_pg::control::parse_control_file(&bytes).ok()
}

/// Whether pg_control's state is one a primary leaves: running or crashed as one, or shut down
/// out of recovery. (A restored standby also says "in production", from its backup: its
/// `standby.signal` tells it apart.)
fn ran_as_primary(state: DbState) -> bool {
    matches!(
        state,
        DbState::InProduction
            | DbState::ShutDown
            | DbState::ShuttingDown
            | DbState::InCrashRecovery
    )
}
