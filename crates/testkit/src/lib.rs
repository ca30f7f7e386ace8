//! Test harness: real PostgreSQL clusters, a real S3-compatible server, real etcd members and
//! HAProxy from the shipped configuration, on 127.0.0.1.
//!
//! Every helper here either gives a working server or returns an error: a test that needs a server
//! it cannot start fails, it never skips. Servers are stopped on drop, also when a test panics.

pub mod cluster;
pub mod etcd;
pub mod haproxy;
pub mod s3;

pub use cluster::{TestCluster, TestDir, chown_to_owner, copy_tree, run_as_owner};
pub use lifeboat_pg::cluster::{InitOptions, LocalCluster, OsUser, StopMode};

/// A TCP port on 127.0.0.1 that was free a moment ago and has not been handed out before in this
/// process (so two servers of one test run never get the same port): [`lifeboat_pg::net::free_port`].
///
/// # Panics
/// When the OS will not give out a port at all (no loopback interface): nothing could be tested.
pub fn free_port() -> u16 {
    match lifeboat_pg::net::free_port() {
        Ok(port) => port,
        Err(e) => panic!("{e}"),
    }
}
