//! `lifeboat serve`. (Being written.)

use crate::cli::{Cli, ServeArgs};
use crate::config::Resolved;
use crate::exit::{Exit, Failure};

pub async fn serve(_cli: &Cli, _resolved: &Resolved, _args: &ServeArgs) -> Result<Exit, Failure> {
    Err(Failure::new(Exit::Usage, "serve is not written yet", None))
}
