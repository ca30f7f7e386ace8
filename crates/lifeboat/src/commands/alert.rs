//! `lifeboat alert test`: proves every configured channel reaches someone, before a real problem
//! has to. Needs only the `[alerts]` section, no repository.

use lifeboat_daemon::alert::{Message, Notifier};

use crate::cli::{AlertArgs, AlertCommand};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn alert(resolved: &Resolved, args: &AlertArgs) -> Result<Exit, Failure> {
    match args.command {
        AlertCommand::Test => test(resolved).await,
    }
}

async fn test(resolved: &Resolved) -> Result<Exit, Failure> {
    let config_file = match &resolved.config_path {
        Some(path) => path.display().to_string(),
        None => {
            "the config file (--config, LIFEBOAT_CONFIG or /etc/lifeboat/lifeboat.toml)".to_string()
        }
    };
    let notifier = Notifier::from_config(&resolved.file.alerts).map_err(|e| {
        Failure::config(
            format!("the [alerts] configuration is unusable: {e}"),
            format!("fix [alerts] in {config_file}"),
        )
    })?;
    if notifier.is_empty() {
        return Err(Failure::config(
            "no alert channel is configured: [alerts] has no webhook and no email",
            format!(
                "add a [[alerts.webhook]] with `url_file` (or `url`), or an [alerts.email] section \
                 with `server`, `from` and `to`, to {config_file}"
            ),
        ));
    }
    let host = lifeboat_repo::lock::this_host();
    let message = Message::test(&host);
    let results = notifier.send_each(&message).await;
    let total = results.len();
    let mut failed = Vec::new();
    for (name, outcome) in results {
        match outcome {
            Ok(()) => outln!("{name}: ok"),
            Err(why) => {
                outln!("{name}: failed: {why}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        return Ok(Exit::Success);
    }
    Err(Failure::new(
        Exit::Failed,
        format!(
            "{} of {total} alert channel(s) did not take the test message: {}",
            failed.len(),
            failed.join(", ")
        ),
        Some(
            "each failed line above says why; check the webhook's url_file (or url), or \
             [alerts.email] server, port, tls and credentials, and that this host can reach them"
                .to_string(),
        ),
    ))
}
