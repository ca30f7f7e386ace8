//! Local TCP ports: [`free_port`] picks one for a server Lifeboat starts itself (the demo, restore
//! drills, the test harness).

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// Tries before giving up: a port handed out before is skipped, so a few repeats are expected.
const TRIES: usize = 1000;

/// Ports already handed out by [`free_port`] in this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and has not been handed out before in this
/// process (so two servers started by one process never get the same port). An error when the OS
/// will not give out a port (no loopback interface, ephemeral ports exhausted); it never panics.
pub fn free_port() -> io::Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut last_error = None;
    for _ in 0..TRIES {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) if handed_out.insert(addr.port()) => return Ok(addr.port()),
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    let why = last_error.map_or_else(
        || "every port offered was handed out before".to_owned(),
        |e| e.to_string(),
    );
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!(
            "could not find a free TCP port on 127.0.0.1 after {TRIES} tries (last error: {why}): \
             check that the loopback interface is up and the ephemeral port range is not exhausted"
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..100).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(!ports.contains(&0));
    }
}
