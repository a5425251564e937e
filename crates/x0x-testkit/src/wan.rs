//! The bootstrap fleet under real WAN delays: the six hosts of
//! `hosts/inventory.toml`, each in a namespace of its own on a lab's wan,
//! running the real `x0x-bootstrap` with its host's configuration
//! (addresses remapped to the lab's), with the one-way delay of every pair
//! set to half the real round-trip time between the two cities and a
//! loss rate on every packet the wan forwards. Next to each node an agent
//! host ([`ACCESS_RTT_MS`] from it, farther from the others by that much),
//! and an operator's host as close to the first node (NYC), from which
//! `x0x status` runs.
//!
//! Delay and loss come from `x0x-netem` ([`Lab::netem`]): this machine's
//! kernel has no `sch_netem`, so a user-space NFQUEUE daemon in the wan
//! namespace holds each forwarded packet for the delay of its (source,
//! destination) pair and drops the given share, like `tc netem delay ...
//! loss ...` with per-destination filters would. Only addresses inside the
//! lab's namespaces are used.
//!
//! Used by `tests/netns/wan.rs` (short: asserts behaviour) and by
//! `x0x-bench --only wan` (full: the figures in docs/BENCHMARKS.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::netns::{Host, Lab, NetemRule, Ran, http_get, in_ns};

/// The inventory's locations, in the order of [`RTT_MS`].
pub const LOCATIONS: [&str; 6] = ["NYC", "SFO", "Helsinki", "Nuremberg", "Singapore", "Tokyo"];

/// Round-trip times between the locations, in milliseconds (symmetric).
///
/// Sources (each figure rounded to 5 ms; "derived" marks figures computed
/// from the others rather than read off a table):
/// - AWS inter-region averages, "Latency Between AWS Global Regions", as
///   tabulated at <https://acomputerscientistlearnsaws.blogspot.com/2017/04/aws-regions.html>:
///   N. Virginia–N. California 72.7, N. Virginia–Frankfurt 88.7,
///   N. Virginia–Tokyo 145.3, N. Virginia–Singapore 216.7,
///   N. California–Frankfurt 166.6, N. California–Tokyo 102.5,
///   N. California–Singapore 174.0, Frankfurt–Tokyo 236.5,
///   Tokyo–Singapore 73.8 (and Frankfurt–Singapore 325.9, a 2017 route
///   through the US, not used).
/// - Pings from a host in Tokyo (<https://gist.github.com/scari/8d8d8bb9273ad04973fb>):
///   Singapore 75, N. California 107, N. Virginia 167, Frankfurt 241.
/// - WonderProxy, "Miles per Millisecond" (<https://wonderproxy.com/blog/miles-per-milisecond/>):
///   New York–Fremont (SF Bay) 77.5.
/// - CloudPing's AWS matrix (<https://cloudping.co/>): Hong Kong from
///   Frankfurt 198.5, from Singapore 34.0, so Frankfurt–Singapore ≈ 165
///   (derived: Europe–Asia cables land in Singapore before Hong Kong).
/// - Helsinki: Hetzner runs its own fibre between Nuremberg, Falkenstein,
///   Frankfurt and Helsinki (<https://docs.hetzner.com/general/others/data-centers-and-connection>),
///   and the C-Lion1 cable Helsinki–Rostock has a signal time under 10 ms
///   (c't 3/2016, <http://ct.de/select/ct/2016/3/1454648855321892>):
///   Helsinki–Nuremberg 25 (derived), and Helsinki–X = Nuremberg–X + 20
///   for destinations outside Europe (derived: Finland's traffic to the
///   Americas and Asia leaves through Frankfurt).
///
/// NYC stands for N. Virginia + a few ms (DigitalOcean NYC), SFO for
/// N. California, Nuremberg for Frankfurt + 2 ms (190 km).
pub const RTT_MS: [[f64; 6]; 6] = [
    //  NYC    SFO    HEL    NUE    SIN    TYO
    [0.0, 70.0, 105.0, 90.0, 215.0, 160.0],  // NYC
    [70.0, 0.0, 175.0, 165.0, 175.0, 105.0], // SFO
    [105.0, 175.0, 0.0, 25.0, 185.0, 255.0], // Helsinki
    [90.0, 165.0, 25.0, 0.0, 165.0, 235.0],  // Nuremberg
    [215.0, 175.0, 185.0, 165.0, 0.0, 70.0], // Singapore
    [160.0, 105.0, 255.0, 235.0, 70.0, 0.0], // Tokyo
];

/// RTT between an agent (or the operator) and the node next to it.
pub const ACCESS_RTT_MS: f64 = 5.0;

/// The default loss on every packet the wan forwards (each direction).
pub const LOSS_PCT: f64 = 1.0;

/// The RTT between two inventory locations, if both are known.
pub fn rtt_ms(a: &str, b: &str) -> Option<f64> {
    let i = LOCATIONS.iter().position(|l| *l == a)?;
    let j = LOCATIONS.iter().position(|l| *l == b)?;
    Some(RTT_MS[i][j])
}

/// One `[[node]]` of hosts/inventory.toml.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct InventoryNode {
    pub name: String,
    pub location: String,
    pub provider: String,
    pub ipv4: Ipv4Addr,
    pub quic_port: Option<u16>,
}

/// Parse hosts/inventory.toml's nodes (ports defaulted from `[defaults]`).
pub fn inventory(text: &str) -> Result<Vec<InventoryNode>, String> {
    #[derive(serde::Deserialize)]
    struct Inventory {
        defaults: Defaults,
        node: Vec<InventoryNode>,
    }
    #[derive(serde::Deserialize)]
    struct Defaults {
        quic_port: u16,
    }
    let inv: Inventory = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(inv
        .node
        .into_iter()
        .map(|mut n| {
            n.quic_port.get_or_insert(inv.defaults.quic_port);
            n
        })
        .collect())
}

/// One node of the lab.
pub struct WanNode {
    pub name: String,
    pub location: String,
    pub host: Host,
    pub quic: SocketAddr,
    pub config: PathBuf,
    /// Index in `lab.procs` while running.
    pub proc: Option<usize>,
    starts: usize,
}

/// The lab: six nodes, an agent host next to each, an operator's host.
pub struct Wan {
    pub lab: Lab,
    pub nodes: Vec<WanNode>,
    /// `agent_hosts[i]` is [`ACCESS_RTT_MS`] from `nodes[i]`.
    pub agent_hosts: Vec<Host>,
    /// The operator's host, [`ACCESS_RTT_MS`] from `nodes[0]`.
    pub ops: Host,
    /// An inventory naming the nodes at their lab addresses (`x0x status --inventory`).
    pub inventory: PathBuf,
    pub loss_pct: f64,
    node_bin: String,
    cli_bin: String,
}

/// A host of the lab and where it is: (location index, access RTT).
type Place = (Ipv4Addr, usize, f64);

impl Wan {
    /// Build the lab (nodes not started). `None` only when network
    /// namespaces cannot be used and `X0X_SKIP_NETNS=1` asked to skip.
    pub fn new(
        test: &str,
        entries: &[InventoryNode],
        node_bin: &str,
        cli_bin: &str,
        loss_pct: f64,
    ) -> Option<Self> {
        assert_eq!(entries.len(), 6, "hosts/inventory.toml lists six nodes");
        let loc: Vec<usize> = entries
            .iter()
            .map(|e| {
                LOCATIONS
                    .iter()
                    .position(|l| *l == e.location)
                    .unwrap_or_else(|| panic!("no RTTs for location {:?}", e.location))
            })
            .collect();
        let mut lab = Lab::new(test)?;
        let hosts: Vec<Host> = (0..6).map(|i| lab.public_host(&format!("n{i}"))).collect();
        let agent_hosts: Vec<Host> = (0..6).map(|i| lab.public_host(&format!("a{i}"))).collect();
        let ops = lab.public_host("ops");
        let mut places: Vec<Place> = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            places.push((h.addr, loc[i], 0.0));
        }
        for (i, h) in agent_hosts.iter().enumerate() {
            places.push((h.addr, loc[i], ACCESS_RTT_MS));
        }
        places.push((ops.addr, loc[0], ACCESS_RTT_MS));
        let mut rules = Vec::new();
        for a in &places {
            for b in &places {
                if a.0 == b.0 {
                    continue;
                }
                let rtt = RTT_MS[a.1][b.1] + a.2 + b.2;
                rules.push(NetemRule {
                    src: format!("{}/32", a.0),
                    dst: format!("{}/32", b.0),
                    delay_ms: rtt / 2.0,
                    loss_pct,
                });
            }
        }
        lab.netem(&rules);

        let mut nodes = Vec::new();
        let mut inventory = String::from(
            "# the lab's fleet: inventory names at lab addresses\n[defaults]\nquic_port = 12000\n",
        );
        for (i, (entry, host)) in entries.iter().zip(&hosts).enumerate() {
            let port = entry.quic_port.unwrap_or(12000);
            let peers: Vec<String> = hosts
                .iter()
                .zip(entries)
                .filter(|(_, e)| e.name != entry.name)
                .map(|(h, e)| format!("\"{}:{}\"", h.addr, e.quic_port.unwrap_or(12000)))
                .collect();
            let config = format!(
                "# {name} ({location}, {provider}), remapped to {addr}\n\
                 listen = \"[::]:{port}\"\n\
                 peers = [{peers}]\n\
                 state_dir = \"{state}\"\n\n\
                 [health]\n\
                 listen = \"127.0.0.1:12600\"\n",
                name = entry.name,
                location = entry.location,
                provider = entry.provider,
                addr = host.addr,
                peers = peers.join(", "),
                state = lab.path(&format!("state-{i}")).display(),
            );
            for e in entries {
                assert!(
                    !config.contains(&e.ipv4.to_string()),
                    "a production address leaked into a lab config:\n{config}"
                );
            }
            let path = lab.path(&format!("{}.toml", entry.name));
            std::fs::write(&path, &config).unwrap();
            inventory.push_str(&format!(
                "\n[[node]]\nname = \"{}\"\nlocation = \"{}\"\nipv4 = \"{}\"\nquic_port = {port}\n",
                entry.name, entry.location, host.addr
            ));
            nodes.push(WanNode {
                name: entry.name.clone(),
                location: entry.location.clone(),
                host: host.clone(),
                quic: SocketAddr::new(host.addr.into(), port),
                config: path,
                proc: None,
                starts: 0,
            });
        }
        let inventory_path = lab.path("lab-inventory.toml");
        std::fs::write(&inventory_path, inventory).unwrap();
        Some(Self {
            lab,
            nodes,
            agent_hosts,
            ops,
            inventory: inventory_path,
            loss_pct,
            node_bin: node_bin.to_string(),
            cli_bin: cli_bin.to_string(),
        })
    }

    /// The configured RTT between nodes `i` and `j`, ms.
    pub fn node_rtt_ms(&self, i: usize, j: usize) -> f64 {
        rtt_ms(&self.nodes[i].location, &self.nodes[j].location).unwrap_or(f64::NAN)
    }

    /// The configured RTT from the operator's host to node `i`, ms.
    pub fn ops_rtt_ms(&self, i: usize) -> f64 {
        self.node_rtt_ms(0, i) + ACCESS_RTT_MS
    }

    /// Start node `i` (same key and state directory as before).
    pub fn start(&mut self, i: usize) {
        assert!(self.nodes[i].proc.is_none(), "{} runs", self.nodes[i].name);
        let n = &mut self.nodes[i];
        n.starts += 1;
        let log = format!("{}.{}", n.name, n.starts);
        let config = n.config.display().to_string();
        let ns = n.host.ns.clone();
        let p = self.lab.spawn(
            &ns,
            &log,
            &self.node_bin,
            &["--config", &config],
            &[("RUST_LOG", "info")],
        );
        self.nodes[i].proc = Some(p);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// SIGKILL node `i`: it says goodbye to no one.
    pub fn kill9(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.take() {
            self.lab.procs[p].kill();
        }
    }

    /// Kill every node and remove their keys and state (the next start is
    /// a fresh fleet).
    pub fn reset(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
            let _ = std::fs::remove_dir_all(self.lab.path(&format!("state-{i}")));
        }
    }

    /// Node `i`'s `/health`, read inside its namespace.
    pub fn health(&self, i: usize) -> Option<serde_json::Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 12600));
        serde_json::from_str(&http_get(&self.nodes[i].host.ns, addr, "/health")?).ok()
    }

    pub fn peers(&self, i: usize) -> Option<u64> {
        self.health(i)?.get("peers")?.as_u64()
    }

    pub fn peer_counts(&self) -> Vec<Option<u64>> {
        (0..self.nodes.len()).map(|i| self.peers(i)).collect()
    }

    /// Poll (every 10 ms) until every node in `which` reports `want`
    /// peers; how long it took from `since`.
    pub fn wait_peers(
        &self,
        which: &[usize],
        want: u64,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        loop {
            if which.iter().all(|&i| self.peers(i) == Some(want)) {
                return Ok(since.elapsed());
            }
            if since.elapsed() >= timeout {
                return Err(format!(
                    "nodes {which:?} did not all report {want} peers within {timeout:?} (now {:?})",
                    self.peer_counts()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `x0x status --inventory <lab inventory> ARGS` from the operator's host.
    pub fn status(&self, args: &[&str]) -> Ran {
        let inventory = self.inventory.display().to_string();
        let bind = format!("{}:0", self.ops.addr);
        let mut all = vec!["status", "--inventory", &inventory, "--bind", &bind];
        all.extend_from_slice(args);
        self.lab
            .run(&self.ops.ns, &self.cli_bin, &all, Duration::from_secs(60))
    }

    /// Every node's QUIC address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.quic).collect()
    }
}

/// How one agent's join went.
#[derive(Debug, Clone)]
pub struct Joined {
    /// `Agent::join_network()`: until one node accepted the registration
    /// and the SDK's grace (150 ms by default) passed or every node answered.
    pub join: Duration,
    /// The node whose link came up first (the report's first entry).
    pub first: SocketAddr,
    /// Nodes linked when `join_network` returned.
    pub linked_at_return: usize,
    /// Until the agent was linked to every node (`None`: not within 10 s).
    pub all_linked: Option<Duration>,
}

/// An SDK agent on `host` (its UDP socket in that namespace) joins the
/// given nodes; the figures of its join. Needs a Tokio runtime.
pub async fn join_from(host: &Host, nodes: &[SocketAddr]) -> Result<Joined, String> {
    let handle = tokio::runtime::Handle::current();
    let mut cfg =
        x0x::NetworkConfig::with_bootstrap_peers(nodes.iter().map(|a| (*a).into()).collect());
    cfg.bind = SocketAddr::new(host.addr.into(), 0);
    let agent = in_ns(&host.ns, move || {
        let _guard = handle.enter();
        x0x::Agent::builder().network(cfg).build()
    })
    .map_err(|e| format!("agent on {}: {e}", host.ns))?;
    let t0 = Instant::now();
    let report = agent.join_network().await;
    let join = t0.elapsed();
    let result = match report {
        Ok(r) => {
            let first = r
                .connected
                .first()
                .map(|l| l.addr)
                .ok_or("joined with no link")?;
            let linked_at_return = r.connected.len();
            let mut all_linked = None;
            while t0.elapsed() < Duration::from_secs(10) {
                let st = agent.bootstrap_status();
                if st.len() == nodes.len()
                    && st
                        .iter()
                        .all(|s| matches!(s.state, x0x::NodeState::Connected(_)))
                {
                    all_linked = Some(t0.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Joined {
                join,
                first,
                linked_at_return,
                all_linked,
            })
        }
        Err(e) => Err(format!("join from {} failed: {e}", host.addr)),
    };
    agent.close().await;
    result
}

/// The median of some durations, in ms.
pub fn median_ms(v: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    match ms.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => ms[n / 2],
        n => (ms[n / 2 - 1] + ms[n / 2]) / 2.0,
    }
}
