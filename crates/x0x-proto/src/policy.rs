//! The address policy: which addresses an agent may be told to send
//! packets to.
//!
//! A directory record is a list of addresses other agents will dial and
//! punch. If anyone could put any address there, every agent could be
//! turned into a packet cannon aimed at a host of an attacker's choosing.
//! So both ends apply one policy:
//!
//! - the **node** puts in a record the address it *observed* the agent's
//!   connection from, self-reported addresses that are *local in scope*
//!   (private, unique-local, link-local, loopback: they only reach the
//!   dialer's own network), and public self-reported addresses only once it
//!   has *vouched* for them (sent a nonce there and the agent returned it);
//! - the **agent** dials and probes only addresses in a record a node gave
//!   it, or local-scope ones, and never anything [`is_dialable`] rejects.

use std::net::{IpAddr, SocketAddr};

/// Whether `addr` can be a packet destination at all: a unicast address
/// with a port, not unspecified, multicast or broadcast.
pub fn is_dialable(addr: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.octets()[0] == 0
                || ip.octets()[0] >= 240)
        }
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    }
}

/// Whether `addr` only reaches the sender's own network (and so may be
/// taken from an agent's own report without the node vouching for it).
pub fn is_local_scope(addr: &SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                // 100.64.0.0/10: carrier-grade NAT space, local to the carrier.
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local(),
    }
}

/// Whether a node may list a self-reported address without vouching for it.
pub fn accept_unvouched(addr: &SocketAddr) -> bool {
    is_dialable(addr) && is_local_scope(addr)
}

/// Whether an agent may send packets to `addr`, given the addresses nodes
/// vouched for (`vouched`, from directory records).
pub fn may_dial(addr: &SocketAddr, vouched: &[SocketAddr]) -> bool {
    is_dialable(addr) && (is_local_scope(addr) || vouched.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_local_scope_addresses_pass_unvouched() {
        for ok in [
            "10.1.2.3:5",
            "192.168.1.2:5",
            "172.16.0.1:5",
            "127.0.0.1:5",
            "100.64.1.1:5",
            "[fd00::1]:5",
            "[fe80::1]:5",
            "[::1]:5",
            "[::ffff:10.0.0.1]:5",
        ] {
            assert!(accept_unvouched(&a(ok)), "{ok}");
        }
        for bad in [
            "8.8.8.8:53",
            "198.51.100.7:12000",
            "[2001:db8::1]:5",
            "10.0.0.1:0",
            "0.0.0.0:5",
            "224.0.0.1:5",
            "255.255.255.255:5",
            "240.0.0.1:5",
            "[::]:5",
            "[ff02::1]:5",
            "100.128.0.1:5",
        ] {
            assert!(!accept_unvouched(&a(bad)), "{bad}");
        }
    }

    #[test]
    fn agents_dial_vouched_public_addresses_only() {
        let vouched = [a("198.51.100.7:4000")];
        assert!(may_dial(&a("198.51.100.7:4000"), &vouched));
        assert!(!may_dial(&a("198.51.100.7:4001"), &vouched));
        assert!(!may_dial(&a("203.0.113.9:4000"), &vouched));
        assert!(may_dial(&a("192.168.1.9:4000"), &vouched));
        assert!(!may_dial(&a("224.0.0.1:4000"), &vouched));
    }
}
