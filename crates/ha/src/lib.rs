//! Automatic failover (issue 16, docs/design/failover.md): this crate owns the cluster's shared
//! state in etcd ([`dcs`]), what one loop observes ([`state`]), the failover policy as a pure
//! function of that observation ([`decide`]), the `[ha]` configuration ([`config`]) and what the
//! role endpoints HAProxy checks answer ([`routes`]).
//!
//! It knows PostgreSQL only through `lifeboat-pg`'s domain types; carrying out the decisions on
//! processes (promote, stop, follow, rewind) and serving the role endpoints belong to the daemon,
//! which depends on this crate, never the other way round.

pub mod config;
pub mod dcs;
pub mod decide;
pub mod routes;
pub mod state;
