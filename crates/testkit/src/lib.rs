//! Test harness: real PostgreSQL clusters and a real S3-compatible server on 127.0.0.1.
//!
//! Every helper here either gives a working server or returns an error: a test that needs a server
//! it cannot start fails, it never skips. Servers are stopped on drop, also when a test panics.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

pub mod cluster;
pub mod s3;

pub use cluster::{TestCluster, TestDir, chown_to_owner, run_as_owner};
pub use lifeboat_pg::cluster::{InitOptions, LocalCluster, OsUser, StopMode};

/// Ports already handed out by [`free_port`] in this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and has not been handed out before in this
/// process (so two servers of one test run never get the same port).
///
/// # Panics
/// When the OS will not give out a port at all (no loopback interface): nothing could be tested.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut last_error = None;
    for _ in 0..1000 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) if handed_out.insert(addr.port()) => return addr.port(),
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    panic!(
        "could not find a free TCP port on 127.0.0.1 after 1000 tries (last error: {last_error:?}): \
         check that the loopback interface is up and the ephemeral port range is not exhausted"
    );
}
