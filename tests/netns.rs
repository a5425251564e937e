//! Multi-host tests in Linux network namespaces (veth pairs, `ip netns`,
//! iptables NAT and partitions).
//!
//! Run as root (scripts/test.sh runs the suite as root inside `unshare -n`).
//! Elsewhere each test prints `SKIPPED: <test>: needs root and ip netns (...)`
//! and passes as a no-op. Every namespace (with its veths and iptables
//! rules) and every process a test creates is removed when it ends, also
//! when it fails. Only addresses inside those namespaces are used: the
//! bootstrap hosts of hosts/inventory.toml are remapped to the lab's.

#[path = "netns/agents.rs"]
mod agents;
#[path = "netns/fleet.rs"]
mod fleet;
#[path = "netns/flood.rs"]
mod flood;
use x0x_testkit::netns as lab;
#[path = "netns/mesh.rs"]
mod mesh;
#[path = "netns/nat.rs"]
mod nat;
#[path = "netns/nat_model.rs"]
mod nat_model;
#[path = "netns/paths.rs"]
mod paths;
#[path = "netns/portmap.rs"]
mod portmap;
#[path = "netns/reach.rs"]
mod reach;
#[path = "netns/tcp.rs"]
mod tcp;
#[path = "netns/wan.rs"]
mod wan;
