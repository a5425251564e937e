//! The six bootstrap hosts of `hosts/inventory.toml`, each in a namespace
//! of its own on the lab's wan, running the real `x0x-bootstrap` with the
//! configuration its host has (see hosts/common.nix), with every address
//! remapped to the lab's.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::lab::{Host, Lab, http_get, wait_until};

/// The node binary, as a string for [`Lab::spawn`].
pub fn bootstrap() -> String {
    x0x_testkit::bootstrap_bin().display().to_string()
}

#[derive(Debug, Deserialize)]
struct Inventory {
    defaults: Defaults,
    node: Vec<InventoryNode>,
}

#[derive(Debug, Deserialize)]
struct Defaults {
    quic_port: u16,
    health_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InventoryNode {
    pub name: String,
    pub location: String,
    pub provider: String,
    pub ipv4: Ipv4Addr,
    pub quic_port: Option<u16>,
}

/// One bootstrap node in the lab.
pub struct Node {
    pub inventory: InventoryNode,
    pub host: Host,
    pub quic: SocketAddr,
    pub health: SocketAddr,
    pub config: String,
    pub proc: usize,
}

impl Node {
    pub fn health_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(&self.host.ns, self.health, "/health")?).ok()
    }

    pub fn peers(&self) -> Option<u64> {
        self.health_json()?.get("peers")?.as_u64()
    }

    pub fn metrics(&self) -> String {
        http_get(&self.host.ns, self.health, "/metrics").unwrap_or_default()
    }

    /// Sum of a metric over its label sets (0 when absent).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let base = key.split('{').next()?;
                (base == name).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}

pub fn inventory() -> Vec<InventoryNode> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hosts/inventory.toml");
    let text = std::fs::read_to_string(path).expect("read hosts/inventory.toml");
    let inv: Inventory = toml::from_str(&text).expect("parse hosts/inventory.toml");
    inv.node
        .into_iter()
        .map(|mut n| {
            n.quic_port.get_or_insert(inv.defaults.quic_port);
            n
        })
        .collect()
}

fn health_port() -> u16 {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hosts/inventory.toml");
    let inv: Inventory = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    inv.defaults.health_port
}

/// Start the fleet: one public host per inventory entry, each node
/// configured as its host is (listen on [::] at its QUIC port, the other
/// nodes as peers, health on loopback), with lab addresses only.
pub fn start(lab: &mut Lab, entries: &[InventoryNode]) -> Vec<Node> {
    let hosts: Vec<Host> = (0..entries.len())
        .map(|i| lab.public_host(&format!("n{i}")))
        .collect();
    let remap: HashMap<Ipv4Addr, Ipv4Addr> = entries
        .iter()
        .zip(&hosts)
        .map(|(e, h)| (e.ipv4, h.addr))
        .collect();
    let health_port = health_port();
    let mut nodes = Vec::new();
    for (entry, host) in entries.iter().zip(&hosts) {
        let port = entry.quic_port.unwrap();
        // The same list hosts/fleet.nix builds: the other nodes, in
        // inventory order, with production addresses swapped for the lab's.
        let peers: Vec<String> = entries
            .iter()
            .filter(|other| other.name != entry.name)
            .map(|other| format!("\"{}:{}\"", remap[&other.ipv4], other.quic_port.unwrap()))
            .collect();
        let state = lab.path(&format!("state-{}", entry.name));
        let config = format!(
            "# {name} ({location}, {provider}), remapped to {addr}\n\
             listen = \"[::]:{port}\"\n\
             peers = [{peers}]\n\
             state_dir = \"{state}\"\n\n\
             [health]\n\
             listen = \"127.0.0.1:{health_port}\"\n",
            name = entry.name,
            location = entry.location,
            provider = entry.provider,
            addr = host.addr,
            peers = peers.join(", "),
            state = state.display(),
        );
        for e in entries {
            assert!(
                !config.contains(&e.ipv4.to_string()),
                "a production address leaked into a test config:\n{config}"
            );
        }
        let path = lab.path(&format!("{}.toml", entry.name));
        std::fs::write(&path, &config).unwrap();
        let proc = lab.spawn(
            &host.ns,
            &entry.name,
            &bootstrap(),
            &["--config", path.to_str().unwrap()],
            &[("RUST_LOG", "x0x=debug,info")],
        );
        nodes.push(Node {
            inventory: entry.clone(),
            host: host.clone(),
            quic: SocketAddr::new(host.addr.into(), port),
            health: SocketAddr::from(([127, 0, 0, 1], health_port)),
            config,
            proc,
        });
    }
    nodes
}

pub fn peer_counts(nodes: &[Node]) -> Vec<Option<u64>> {
    nodes.iter().map(Node::peers).collect()
}

/// Wait until every node in `which` reports `want` peers.
pub fn wait_peers(nodes: &[Node], which: &[usize], want: u64, timeout: Duration) -> bool {
    wait_until(timeout, || {
        which.iter().all(|&i| nodes[i].peers() == Some(want))
    })
}
