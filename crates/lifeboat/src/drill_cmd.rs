//! `lifeboat drill`. (Being written.)

use crate::cli::DrillArgs;
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn drill(_resolved: &Resolved, _args: &DrillArgs) -> Result<Exit, Failure> {
    Err(Failure::new(Exit::Usage, "drill is not written yet", None))
}
