//! The operator's side of automatic failover (docs/design/failover.md): `lifeboat ha status`,
//! `ha pause`, `ha resume` (here and in `status`), `lifeboat switchover` and `lifeboat failover`
//! (in `handover`). Thin: each reads or writes the cluster's keys in etcd through
//! [`lifeboat_ha::dcs::Dcs`], with the `[ha]` section of a member's config file; the members'
//! agents carry the requests out (their policy is `lifeboat_ha::decide`).

mod handover;
mod status;

pub use handover::{failover, switchover};
pub use status::status;

use lifeboat_ha::config::HaConfig;
use lifeboat_ha::dcs::{Dcs, DcsError};

use crate::config::Resolved;
use crate::exit::{Exit, Failure};

/// `[ha]` of the config file, validated, and a client of its etcd (no call made yet).
async fn connect(resolved: &Resolved) -> Result<(Dcs, HaConfig), Failure> {
    let file = resolved.config_path.as_ref().map_or_else(
        || "the config file".to_string(),
        |p| p.display().to_string(),
    );
    let raw = resolved.file.ha.clone().ok_or_else(|| {
        Failure::config(
            format!(
                "{file} has no [ha] section: this command talks to the failover cluster's etcd"
            ),
            "run it with the config file of a member of the cluster (--config or LIFEBOAT_CONFIG), \
             the one its `lifeboat serve` reads",
        )
    })?;
    let config = raw.into_config().map_err(|e| {
        Failure::config(
            format!("{file}: {e}"),
            "fix [ha] in the configuration file; README, \"Automatic failover\", lists its keys",
        )
    })?;
    let dcs = Dcs::connect(&config)
        .await
        .map_err(|e| dcs_failure(e, &config))?;
    Ok((dcs, config))
}

/// A failed etcd call as the user sees it. etcd out of reach is an unreachable store (exit 5,
/// as for the repository's): nothing was changed, or the outcome of a write is unknown.
fn dcs_failure(e: DcsError, config: &HaConfig) -> Failure {
    let endpoints = config.etcd.join(",");
    let (exit, hint) = match &e {
        DcsError::Unavailable { .. } => (
            Exit::Storage,
            "the endpoints are [ha] etcd in the config file; run the command again once a \
             majority of the etcd members answers"
                .to_string(),
        ),
        DcsError::Refused { .. } | DcsError::Endpoint { .. } => (
            Exit::Config,
            format!("check [ha] etcd ({endpoints}) and the etcd user's permissions"),
        ),
        DcsError::Corrupt { .. } => (
            Exit::Corrupt,
            "nothing was changed; repair or remove the key as the message says".to_string(),
        ),
        DcsError::LeaseExpired { .. } | DcsError::Invalid { .. } => (
            Exit::Internal,
            "a bug in lifeboat: please report it with this message".to_string(),
        ),
    };
    Failure::new(exit, e.to_string(), Some(hint))
}

/// As [`dcs_failure`], for a write: when etcd did not answer, the write may have landed.
fn dcs_write_failure(e: DcsError, config: &HaConfig) -> Failure {
    let unknown = matches!(e, DcsError::Unavailable { .. });
    let mut failure = dcs_failure(e, config);
    if unknown && let Some(hint) = failure.hint.as_mut() {
        hint.push_str(
            "; the change may or may not have been stored: `lifeboat ha status` shows which",
        );
    }
    failure
}

/// `lifeboat ha pause` (true) and `ha resume` (false).
pub async fn set_pause(resolved: &Resolved, paused: bool) -> Result<Exit, Failure> {
    let (dcs, config) = connect(resolved).await?;
    dcs.set_pause(paused)
        .await
        .map_err(|e| dcs_write_failure(e, &config))?;
    if paused {
        outln!(
            "cluster {} paused: the agents take no automatic action (no failover, restart or \
             rejoin) until `lifeboat ha resume`; the leader keeps its key",
            config.cluster
        );
    } else {
        outln!(
            "cluster {} resumed: the agents act again from their next loop (within {}s)",
            config.cluster,
            config.loop_wait.as_secs()
        );
    }
    Ok(Exit::Success)
}
