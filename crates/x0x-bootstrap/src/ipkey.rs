//! Source-address keys for per-address limits: an IPv4 address, or the
//! /64 prefix of an IPv6 address (one subscriber usually holds a whole /64).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl IpKey {
    pub fn of(addr: &SocketAddr) -> Self {
        match addr.ip().to_canonical() {
            IpAddr::V4(ip) => Self::V4(ip.octets()),
            IpAddr::V6(ip) => {
                let mut p = [0u8; 8];
                p.copy_from_slice(&ip.octets()[..8]);
                Self::V6Prefix(p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_of_one_slash64_share_a_key() {
        let k = |s: &str| IpKey::of(&s.parse().unwrap());
        assert_eq!(k("[2001:db8:1:2::1]:5"), k("[2001:db8:1:2:ffff::9]:6"));
        assert_ne!(k("[2001:db8:1:2::1]:5"), k("[2001:db8:1:3::1]:5"));
        assert_eq!(k("[::ffff:10.0.0.1]:5"), k("10.0.0.1:7"));
        assert_ne!(k("10.0.0.1:5"), k("10.0.0.2:5"));
    }
}
