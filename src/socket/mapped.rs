//! Mapped addresses: the stable address quinn sees for each remote agent.
//!
//! IPv6 `fd58:3078::/32` (a unique-local prefix nobody routes to us), or
//! IPv4 `240.0.0.0/4` (reserved, never routed) when the agent's socket is
//! IPv4-only. Addresses are handed out from a counter and never reused
//! within a process (2^28 addresses on IPv4, 2^64 on IPv6), so a packet
//! for a forgotten peer can never reach a new one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `addr` is a mapped address.
pub fn is_mapped(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V6(ip) => ip.segments()[..2] == [0xfd58, 0x3078],
        IpAddr::V4(ip) => ip.octets()[0] >= 240 && !ip.is_broadcast(),
    }
}

#[derive(Debug, Default)]
pub struct Allocator {
    ipv6: bool,
    next: u64,
}

impl Allocator {
    pub fn new(ipv6: bool) -> Self {
        Self { ipv6, next: 0 }
    }

    /// A fresh mapped address.
    pub fn next(&mut self) -> SocketAddr {
        self.next += 1;
        let n = self.next;
        if self.ipv6 {
            let s = |shift: u32| ((n >> shift) & 0xffff) as u16;
            let ip = Ipv6Addr::new(0xfd58, 0x3078, 0, 0, s(48), s(32), s(16), s(0));
            SocketAddr::new(ip.into(), 1)
        } else {
            // 28 bits after the 240/4 prefix; wraps after 2^28 - 2 peers.
            let v = (n % ((1 << 28) - 2)) as u32 + 1;
            let ip = Ipv4Addr::from(0xf000_0000 | v);
            SocketAddr::new(ip.into(), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_recognised_unique_and_never_broadcast() {
        assert!(is_mapped(&"[fd58:3078::1]:1".parse().unwrap()));
        assert!(is_mapped(&"240.0.0.1:1".parse().unwrap()));
        assert!(!is_mapped(&"[fd58:3079::1]:1".parse().unwrap()));
        assert!(!is_mapped(&"127.0.0.1:1".parse().unwrap()));
        assert!(!is_mapped(&"255.255.255.255:1".parse().unwrap()));
        for v6 in [true, false] {
            let mut a = Allocator::new(v6);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..10_000 {
                let m = a.next();
                assert!(is_mapped(&m));
                assert_eq!(m.is_ipv6(), v6);
                assert!(seen.insert(m));
            }
        }
    }
}
