//! Network configuration for agents, and bootstrap peer addresses.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use x0x_proto::addr::{PeerAddr, PeerSpec};

/// The public x0x bootstrap nodes (QUIC/UDP 12000), as listed in
/// `hosts/inventory.toml`; a test fails if the two drift apart. A node
/// whose inventory entry has a `peer_id` is pinned (`PEERID@addr`): an
/// agent then refuses a node at that address with another key. A node
/// with an `ipv6` address is listed under both families (one link per
/// node: the other family is only probed, for the agent's address there).
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

/// How an [`crate::Agent`] reaches the network.
///
/// Build one with [`NetworkConfig::default()`] (the public bootstrap
/// nodes) or [`NetworkConfig::with_bootstrap_peers`], then adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetworkConfig {
    /// Bootstrap nodes to join through: `addr`, or `PEERID@addr` to accept
    /// only the node holding that key.
    pub bootstrap_peers: Vec<PeerSpec>,
    /// Local UDP address for the agent's QUIC endpoint. `[::]:0` (the
    /// default) falls back to `0.0.0.0:0` where IPv6 is disabled.
    pub bind: SocketAddr,
    /// How long `join_network` keeps trying before it reports failure.
    pub join_timeout: Duration,
    /// Once one node accepted our registration, how long `join_network`
    /// still waits for the others before it returns (they keep joining in
    /// the background).
    pub join_grace: Duration,
    /// QUIC keep-alive on links to bootstrap nodes (keeps NAT mappings open).
    pub keepalive: Duration,
    /// A bootstrap node silent for this long is considered gone.
    pub idle_timeout: Duration,
    /// Consent to be reached through bootstrap nodes' relays.
    pub accept_relay: bool,
    /// Reach nodes over TLS/TCP when UDP to every node fails.
    pub tcp_fallback: bool,
    /// How long a first UDP attempt to a node may take before the TCP
    /// relay is tried (when UDP works nowhere).
    pub udp_attempt: Duration,
    /// The TCP relay of each bootstrap peer, by position: entry `i` is
    /// for `bootstrap_peers[i]`; missing entries default to the host of
    /// that bootstrap address at port 443.
    pub tcp_relays: Vec<PeerAddr>,
    /// An HTTP proxy for the TCP relay (`CONNECT`). Default: from the
    /// `HTTPS_PROXY` / `https_proxy` environment variable
    /// (`http://host:port` or `host:port`).
    pub https_proxy: Option<PeerAddr>,
    /// Ask the home router to forward a public UDP port to the agent's
    /// socket (PCP, then NAT-PMP, then UPnP IGD, asking only the default
    /// gateway), so peers can connect directly even through a NAT that
    /// gives every destination a new port. Starts with `join_network`, in
    /// the background; the mapped address becomes one of the agent's
    /// candidates (vouched for by the nodes), is renewed before it expires
    /// and is deleted by [`crate::Agent::close`]. Default `true`; `false`
    /// sends no port-mapping request at all.
    pub port_mapping: bool,
    /// Tests: the gateway to ask instead of the default route's.
    #[cfg(test)]
    pub(crate) portmap_gateway: Option<crate::portmap::Gateway>,
}

/// The proxy named by `HTTPS_PROXY` / `https_proxy`, if any and valid.
fn proxy_from_env() -> Option<PeerAddr> {
    let v = std::env::var("HTTPS_PROXY")
        .or_else(|_| std::env::var("https_proxy"))
        .ok()?;
    let v = v.trim();
    let hostport = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .unwrap_or(v)
        .trim_end_matches('/');
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    match hostport.parse() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("ignoring HTTPS_PROXY={v:?}: {e}");
            None
        }
    }
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
    pub fn with_bootstrap_peers(bootstrap_peers: Vec<PeerSpec>) -> Self {
        Self {
            bootstrap_peers,
            bind: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            join_timeout: Duration::from_secs(10),
            join_grace: Duration::from_millis(150),
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(40),
            accept_relay: true,
            tcp_fallback: true,
            udp_attempt: Duration::from_secs(2),
            tcp_relays: Vec::new(),
            https_proxy: proxy_from_env(),
            port_mapping: true,
            #[cfg(test)]
            portmap_gateway: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.bootstrap_peers.is_empty() {
            return Err("bootstrap_peers is empty");
        }
        if self.keepalive.is_zero() || self.keepalive >= self.idle_timeout {
            return Err("keepalive must be above zero and below idle_timeout");
        }
        if self.join_grace > Duration::from_millis(200) {
            return Err("join_grace is at most 200 ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

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
            ipv6: Option<Ipv6Addr>,
            quic_port: u16,
            peer_id: Option<String>,
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hosts/inventory.toml");
        let text = std::fs::read_to_string(path).expect("hosts/inventory.toml is readable");
        let inventory: Inventory = toml::from_str(&text).expect("inventory parses");
        // Both families of a node when its IPv6 address is known, IPv4 first.
        let from_inventory: Vec<String> = inventory
            .node
            .iter()
            .flat_map(|n| {
                let v4 = SocketAddr::new(n.ipv4.into(), n.quic_port);
                let v6 = n.ipv6.map(|ip| SocketAddr::new(ip.into(), n.quic_port));
                [Some(v4), v6]
                    .into_iter()
                    .flatten()
                    .map(|addr| match &n.peer_id {
                        Some(id) => format!("{id}@{addr}"),
                        None => addr.to_string(),
                    })
            })
            .collect();
        assert_eq!(inventory.node.len(), 6);
        assert_eq!(DEFAULT_BOOTSTRAP_PEERS, from_inventory.as_slice());
        // The default network config is built from them (built, never dialed here).
        let cfg = NetworkConfig::default();
        let defaults: Vec<String> = cfg.bootstrap_peers.iter().map(|p| p.to_string()).collect();
        assert!(cfg.validate().is_ok());
        assert_eq!(defaults, from_inventory);
    }
}
