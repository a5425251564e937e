//! Network configuration for agents, and bootstrap peer addresses.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The public x0x bootstrap nodes (QUIC/UDP 12000), as listed in
/// `hosts/inventory.toml`; a test fails if the two drift apart.
///
/// [`NetworkConfig::default()`] joins these. Tests and examples must never
/// use them: they pass their own local peers.
pub const DEFAULT_BOOTSTRAP_PEERS: &[&str] = &[
    "142.93.199.50:12000",   // saorsa-2, NYC
    "147.182.234.192:12000", // saorsa-3, SFO
    "65.21.157.229:12000",   // saorsa-6, Helsinki
    "116.203.101.172:12000", // saorsa-7, Nuremberg
    "149.28.156.231:12000",  // saorsa-8, Singapore
    "45.77.176.184:12000",   // saorsa-9, Tokyo
];

/// How long a hostname lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer address: `ip:port`, `[ipv6]:port` or `hostname:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    Socket(SocketAddr),
    Host { host: String, port: u16 },
}

/// Why a string is not a [`PeerAddr`].
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid peer address {input:?}: {reason} (expected ip:port, [ipv6]:port or hostname:port)"
)]
pub struct ParsePeerAddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for PeerAddr {
    type Err = ParsePeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePeerAddrError {
            input: s.to_string(),
            reason,
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Socket(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| err("port is not a number in 0..=65535"))?;
        if port == 0 {
            return Err(err("port 0 cannot be dialed"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            // "::1:5" or "[bad]:5": an IPv6 address needs brackets, and must be valid.
            return Err(err("IPv6 addresses must be written [addr]:port"));
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(err("not a valid IP address or hostname"));
        }
        if name
            .split('.')
            .all(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(err("not a valid IPv4 address"));
        }
        Ok(Self::Host {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(a) => write!(f, "{a}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Socket(a)
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl PeerAddr {
    /// Resolve to socket addresses (DNS for hostnames).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Self::Socket(a) => Ok(vec![*a]),
            Self::Host { host, port } => {
                let lookup = tokio::net::lookup_host((host.as_str(), *port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(addrs) => Ok(addrs?.collect()),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("resolving {host} took over {RESOLVE_TIMEOUT:?}"),
                    )),
                }
            }
        }
    }
}

/// Map IPv4-mapped IPv6 addresses (`[::ffff:1.2.3.4]:5`, as seen on a
/// dual-stack socket) to plain IPv4, so one peer has one spelling.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// How an [`crate::Agent`] reaches the network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Bootstrap nodes to join through.
    pub bootstrap_peers: Vec<PeerAddr>,
    /// Local UDP address for the agent's QUIC endpoint.
    pub bind: SocketAddr,
    /// How long `join_network` keeps retrying before it reports failure.
    pub join_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keepalive: Duration,
    /// A silent peer is considered gone after this long.
    pub idle_timeout: Duration,
}

impl Default for NetworkConfig {
    /// Joins the public bootstrap nodes ([`DEFAULT_BOOTSTRAP_PEERS`]).
    fn default() -> Self {
        Self::with_bootstrap_peers(
            DEFAULT_BOOTSTRAP_PEERS
                .iter()
                .map(|s| s.parse().expect("DEFAULT_BOOTSTRAP_PEERS are valid"))
                .collect(),
        )
    }
}

impl NetworkConfig {
    /// A configuration that joins the given bootstrap nodes.
    pub fn with_bootstrap_peers(bootstrap_peers: Vec<PeerAddr>) -> Self {
        Self {
            bootstrap_peers,
            bind: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            join_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_address_forms() {
        assert!(matches!("127.0.0.1:12000".parse(), Ok(PeerAddr::Socket(_))));
        assert!(matches!("[::1]:12000".parse(), Ok(PeerAddr::Socket(_))));
        assert_eq!(
            "boot.example.org:12000".parse::<PeerAddr>().unwrap(),
            PeerAddr::Host {
                host: "boot.example.org".into(),
                port: 12000
            }
        );
        for bad in [
            "127.0.0.1",
            "::1:12000",
            "host:",
            "host:99999",
            "-bad-:1",
            "1.2.3:5",
            "a b:1",
            ":5",
            "[::1:5",
        ] {
            let err = bad.parse::<PeerAddr>();
            assert!(err.is_err(), "{bad} should be rejected");
            assert!(
                err.unwrap_err().to_string().contains(bad),
                "error names the input"
            );
        }
    }

    #[test]
    fn canonical_unmaps_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:5".parse().unwrap());
    }

    /// DEFAULT_BOOTSTRAP_PEERS must list exactly the nodes of hosts/inventory.toml.
    #[test]
    fn default_bootstrap_peers_match_inventory() {
        #[derive(Deserialize)]
        struct Inventory {
            node: Vec<Node>,
        }
        #[derive(Deserialize)]
        struct Node {
            ipv4: std::net::Ipv4Addr,
            quic_port: u16,
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hosts/inventory.toml");
        let text = std::fs::read_to_string(path).expect("hosts/inventory.toml is readable");
        let inventory: Inventory = toml::from_str(&text).expect("inventory parses");
        let from_inventory: Vec<String> = inventory
            .node
            .iter()
            .map(|n| SocketAddr::new(n.ipv4.into(), n.quic_port).to_string())
            .collect();
        assert_eq!(from_inventory.len(), 6);
        assert_eq!(DEFAULT_BOOTSTRAP_PEERS, from_inventory.as_slice());
        // The default network config is built from them (built, never dialed here).
        let cfg = NetworkConfig::default();
        let defaults: Vec<String> = cfg.bootstrap_peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(defaults, from_inventory);
    }
}
