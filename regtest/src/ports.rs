//! Ports for nodes under test to listen on.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// First port [`free_port`] hands out.
const FIRST: u32 = 10_000;
/// How many ports [`free_port`] hands out: 10000-32767, below Linux's ephemeral range
/// (32768-60999 by default, `net.ipv4.ip_local_port_range`).
const COUNT: u32 = 22_768;

/// A free TCP port on 127.0.0.1 for a node to listen on, from 10000-32767: below the kernel's
/// ephemeral range, so no outgoing connection of another node takes it between this call and
/// the node's own bind (a `:0` port comes from that range, and once was taken by a client
/// socket in between: "Address already in use"). Each call in a process gives a different
/// port, starting at a place set by the process id so that test binaries run side by side
/// do not pick the same ones.
///
/// Errors: no port in the range can be bound.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + offset) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on 127.0.0.1 in {FIRST}-{}", FIRST + COUNT - 1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        assert!(ports.iter().all(|&p| (10_000..32_768).contains(&p)));
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
