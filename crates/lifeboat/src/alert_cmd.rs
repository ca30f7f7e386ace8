//! `lifeboat alert test`. (Being written.)

use crate::cli::AlertArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn alert(_resolved: &Resolved, _args: &AlertArgs) -> Result<Exit, Failure> {
    Err(Failure::new(Exit::Failed, "alert is not written yet", None))
}
