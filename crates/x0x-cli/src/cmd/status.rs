//! `x0x status`: the whole fleet in one command.
//!
//! One throwaway identity dials every node at once (QUIC, `Hello` as an
//! agent, then one `Status` request on its own stream, both sent in the
//! first flight), each within `--timeout-ms`. From the answers: one row
//! per node, an all-pairs matrix of mesh links as each node sees them, and
//! what is wrong in words. `--prometheus ADDR` keeps probing on an
//! interval and serves the results as metrics (like Tailscale's
//! derpprobe), for a monitoring host outside the fleet.
//!
//! Exit codes: 0 every node answered and sees all its configured peers,
//! 1 not, 69 no node answered, 2 usage.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x0x::quinn;
use x0x::{DEFAULT_BOOTSTRAP_PEERS, PeerAddr, PeerId, PeerSpec};
use x0x_proto::identity::Identity;
use x0x_proto::transport::{self, TransportOptions};
use x0x_proto::wire::{self, MeshLinkStatus, Message, NodeStatus, PeerKind, ReadLimits};

/// Exit code when no node answered (`EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

/// The public nodes' names, by address: `hosts/inventory.toml` (a unit
/// test checks the two agree; the file itself is not part of the
/// published crate).
const INVENTORY_NAMES: &[(&str, &str)] = &[
    ("142.93.199.50:12000", "saorsa-2"),
    ("147.182.234.192:12000", "saorsa-3"),
    ("65.21.157.229:12000", "saorsa-6"),
    ("116.203.101.172:12000", "saorsa-7"),
    ("149.28.156.231:12000", "saorsa-8"),
    ("45.77.176.184:12000", "saorsa-9"),
];

/// Most nodes one run probes (a node's status lists at most 64 peers).
const MAX_TARGETS: usize = 64;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A node to probe: `ip:port`, `[ipv6]:port`, `host:port`, or
    /// `PEERID@addr` to accept only the node with that key; repeatable.
    /// Default: every node of the inventory (the public x0x bootstrap
    /// nodes, or those of --inventory).
    #[arg(long = "bootstrap", value_name = "ADDR")]
    pub bootstrap: Vec<PeerSpec>,
    /// An inventory in the format of hosts/inventory.toml (`[[node]]`
    /// tables with `name`, `ipv4`, optional `quic_port` and `peer_id`):
    /// names the nodes by address, and is the list probed when no
    /// --bootstrap is given. Default: the public fleet's inventory.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// How long one node may take to answer (resolve, QUIC handshake,
    /// Hello, Status); nodes that do not answer in time are unreachable.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub timeout_ms: u64,
    /// Local UDP address to probe from.
    #[arg(long, default_value = "[::]:0")]
    pub bind: SocketAddr,
    /// Print one JSON object: {"healthy", "nodes": [...], "problems", ...}
    /// (with --prometheus: one such line per probe).
    #[arg(long)]
    pub json: bool,
    /// Keep probing every --interval-s and serve the results as Prometheus
    /// metrics at http://ADDR/metrics (x0x_status_node_up{node,addr},
    /// x0x_status_node_rtt_seconds, x0x_status_node_peers,
    /// x0x_status_node_expected_peers, x0x_status_mesh_link_up{from,to},
    /// x0x_status_mesh_link_rtt_seconds, x0x_status_healthy,
    /// x0x_status_probe_duration_seconds), until interrupted.
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<SocketAddr>,
    /// Seconds between two probes with --prometheus.
    #[arg(long, default_value_t = 15, requires = "prometheus",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_s: u64,
}

/// One node to probe.
#[derive(Debug, Clone)]
struct Target {
    spec: PeerSpec,
    name: Option<String>,
}

impl Target {
    fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.spec.addr.to_string())
    }
}

/// Agents a node reports, without this probe's own connection (the node
/// counts it: it is admitted before its request is answered).
fn agents(s: &NodeStatus) -> u32 {
    s.agents.saturating_sub(1)
}

/// What one node answered (or why it did not).
#[derive(Debug, Clone)]
struct Probe {
    target: Target,
    /// Addresses the target resolved to.
    resolved: Vec<SocketAddr>,
    /// The identity it proved, or the pinned one, or the one other nodes report.
    peer_id: Option<PeerId>,
    rtt: Option<Duration>,
    status: Option<NodeStatus>,
    error: Option<String>,
}

impl Probe {
    fn reachable(&self) -> bool {
        self.status.is_some()
    }

    fn peers(&self) -> Option<u32> {
        let s = self.status.as_ref()?;
        Some(s.mesh.iter().filter(|l| l.connected).count() as u32)
    }

    fn ok(&self) -> bool {
        match (&self.status, self.peers()) {
            (Some(s), Some(p)) => p >= s.expected_peers,
            _ => false,
        }
    }

    fn state(&self) -> &'static str {
        match self.status {
            None => "unreachable",
            Some(_) if self.ok() => "healthy",
            Some(_) => "degraded",
        }
    }
}

/// A finished probe of every node, analysed.
struct Report {
    probes: Vec<Probe>,
    /// For each probe, for each of its mesh entries: the probed node it is.
    links: Vec<Vec<Option<usize>>>,
    problems: Vec<String>,
    warnings: Vec<String>,
    took: Duration,
}

impl Report {
    fn healthy(&self) -> bool {
        !self.probes.is_empty() && self.probes.iter().all(Probe::ok)
    }

    fn reachable(&self) -> usize {
        self.probes.iter().filter(|p| p.reachable()).count()
    }
}

/// `x0x status`.
pub async fn run(args: StatusArgs) -> ExitCode {
    let targets = match targets(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("x0x: {e}");
            return ExitCode::from(2);
        }
    };
    if args.bootstrap.is_empty() && args.inventory.is_none() && !args.json {
        let unpinned = targets.iter().filter(|t| t.spec.id.is_none()).count();
        if unpinned > 0 {
            eprintln!(
                "x0x: warning: {unpinned} public node(s) are not pinned to keys yet \
                 (hosts/inventory.toml has no peer_id): their identities are not checked"
            );
        }
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    if let Some(addr) = args.prometheus {
        return serve(addr, targets, args.bind, timeout, &args).await;
    }
    let report = match probe_all(&targets, args.bind, timeout).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("x0x: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", report_json(&report));
    } else {
        print!("{}", report_text(&report));
    }
    if report.reachable() == 0 {
        eprintln!(
            "x0x: no node answered: {}",
            report
                .probes
                .iter()
                .map(|p| format!(
                    "{}: {}",
                    p.target.spec,
                    p.error.as_deref().unwrap_or("no answer")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        ExitCode::from(EX_UNAVAILABLE)
    } else if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The nodes to probe, named from the inventory by address.
fn targets(args: &StatusArgs) -> Result<Vec<Target>, String> {
    let (inventory, names): (Vec<PeerSpec>, HashMap<String, String>) = match &args.inventory {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_inventory(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => (
            DEFAULT_BOOTSTRAP_PEERS
                .iter()
                .map(|s| s.parse().expect("DEFAULT_BOOTSTRAP_PEERS are valid"))
                .collect(),
            INVENTORY_NAMES
                .iter()
                .map(|(a, n)| (a.to_string(), n.to_string()))
                .collect(),
        ),
    };
    let specs = if args.bootstrap.is_empty() {
        inventory
    } else {
        args.bootstrap.clone()
    };
    let mut out: Vec<Target> = Vec::new();
    for spec in specs {
        if out.iter().any(|t| t.spec.addr == spec.addr) {
            continue;
        }
        let name = names.get(&spec.addr.to_string()).cloned();
        out.push(Target { spec, name });
    }
    if out.is_empty() {
        return Err("no node to probe (the inventory lists none)".into());
    }
    if out.len() > MAX_TARGETS {
        return Err(format!(
            "{} nodes to probe; at most {MAX_TARGETS} at once",
            out.len()
        ));
    }
    Ok(out)
}

/// Nodes and their names from an inventory (hosts/inventory.toml's format).
fn parse_inventory(text: &str) -> Result<(Vec<PeerSpec>, HashMap<String, String>), String> {
    #[derive(serde::Deserialize)]
    struct Inventory {
        #[serde(default)]
        defaults: Defaults,
        #[serde(default)]
        node: Vec<Node>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Defaults {
        quic_port: Option<u16>,
    }
    #[derive(serde::Deserialize)]
    struct Node {
        name: String,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        quic_port: Option<u16>,
        peer_id: Option<String>,
    }
    let inv: Inventory = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut specs = Vec::new();
    let mut names = HashMap::new();
    for n in inv.node {
        let port = n.quic_port.or(inv.defaults.quic_port).unwrap_or(12000);
        let ip = match (n.ipv4, n.ipv6) {
            (Some(v4), _) => std::net::IpAddr::V4(v4),
            (None, Some(v6)) => std::net::IpAddr::V6(v6),
            (None, None) => return Err(format!("node {:?} has no ipv4 or ipv6", n.name)),
        };
        let id = match &n.peer_id {
            Some(id) => Some(
                id.parse::<PeerId>()
                    .map_err(|e| format!("node {:?}: {e}", n.name))?,
            ),
            None => None,
        };
        let addr = PeerAddr::Socket(SocketAddr::new(ip, port));
        names.insert(addr.to_string(), n.name);
        specs.push(PeerSpec { id, addr });
    }
    Ok((specs, names))
}

/// Probe every target at once from one throwaway identity.
async fn probe_all(
    targets: &[Target],
    bind: SocketAddr,
    timeout: Duration,
) -> Result<Report, String> {
    let started = Instant::now();
    let identity = Identity::generate().map_err(|e| format!("cannot create an identity: {e}"))?;
    // Keep-alives well inside the timeout; the connection lives one exchange.
    let opts =
        TransportOptions::agent_to_node(Duration::from_secs(1), timeout + Duration::from_secs(5));
    let client = transport::client_config(&identity, &opts).map_err(|e| e.to_string())?;
    let endpoint = endpoint(bind)?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let (endpoint, client, t) = (endpoint.clone(), client.clone(), t.clone());
        tasks.spawn(async move { (i, probe_one(&endpoint, &client, t, timeout).await) });
    }
    let mut probes: Vec<Option<Probe>> = vec![None; targets.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, p) = done.map_err(|e| format!("probe task failed: {e}"))?;
        probes[i] = Some(p);
    }
    let took = started.elapsed();
    // Close every connection, so nodes see us leave at once instead of
    // counting an agent until its idle timeout. The close packets leave
    // as soon as the endpoint runs; the draining period (3 PTOs, a second
    // on a long link) is not worth waiting for.
    endpoint.close(wire::close::NORMAL, b"status done");
    let _ = tokio::time::timeout(Duration::from_millis(100), endpoint.wait_idle()).await;
    Ok(analyse(
        probes.into_iter().map(Option::unwrap).collect(),
        took,
    ))
}

fn endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, String> {
    let udp = match transport::udp_socket(bind, 1 << 20) {
        Ok(s) => s,
        // [::] where IPv6 is disabled: fall back to IPv4.
        Err(_) if bind == SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)) => {
            transport::udp_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), 1 << 20)
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    quinn::Endpoint::new(
        transport::endpoint_config(),
        None,
        udp,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("cannot start a QUIC endpoint on {bind}: {e}"))
}

async fn probe_one(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    target: Target,
    timeout: Duration,
) -> Probe {
    let mut probe = Probe {
        peer_id: target.spec.id,
        target,
        resolved: Vec::new(),
        rtt: None,
        status: None,
        error: None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let result = tokio::time::timeout_at(deadline, async {
        let addrs = probe
            .target
            .spec
            .addr
            .resolve()
            .await
            .map_err(|e| format!("cannot resolve: {e}"))?;
        if addrs.is_empty() {
            return Err("resolved to no address".to_string());
        }
        probe.resolved = addrs.clone();
        let (conn, peer) =
            // The deadline around all of this bounds the dial (one message
            // for every node that does not answer in time).
            transport::dial_any(endpoint, client, &addrs, timeout * 2, probe.target.spec.id)
                .await
                .map_err(|e| e.to_string())?;
        probe.peer_id = Some(peer);
        let exchange = async {
            // The control stream (Hello) and the request stream (Status)
            // go out together: one round trip after the handshake.
            let (mut ctl_send, mut ctl_recv) = conn.open_bi().await?;
            let hello = Message::Hello {
                kind: PeerKind::Agent,
                incarnation: rand_u64(),
            };
            wire::write_frame(&mut ctl_send, &hello).await?;
            let (mut req_send, mut req_recv) = conn.open_bi().await?;
            wire::write_frame(&mut req_send, &Message::Status).await?;
            let _ = req_send.finish();
            match wire::read_frame(&mut ctl_recv, &ReadLimits::TO_AGENT).await? {
                Some(Message::Welcome { .. }) => {}
                other => return Err(format!("expected Welcome, got {other:?}").into()),
            }
            let reply = wire::read_frame(&mut req_recv, &ReadLimits::TO_AGENT).await?;
            drop(ctl_send);
            match reply {
                Some(Message::StatusReport { status }) => Ok(status),
                Some(Message::Refused { reason }) => {
                    Err(format!("refused the status request: {reason}").into())
                }
                other => Err(format!("expected StatusReport, got {other:?}").into()),
            }
        };
        let status: Result<NodeStatus, Box<dyn std::error::Error + Send + Sync>> = exchange.await;
        let rtt = conn.rtt();
        conn.close(wire::close::NORMAL, b"status done");
        match status {
            Ok(s) => Ok((s, rtt)),
            Err(e) => Err(format!("answered the handshake, then: {e}")),
        }
    })
    .await;
    match result {
        Ok(Ok((status, rtt))) => {
            probe.status = Some(status);
            probe.rtt = Some(rtt);
        }
        Ok(Err(e)) => probe.error = Some(e),
        Err(_) => probe.error = Some(format!("no answer within {} ms", timeout.as_millis())),
    }
    probe
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // An identity's key is random; its first bytes make a fine incarnation.
    if let Ok(id) = Identity::generate() {
        b.copy_from_slice(&id.peer_id().as_bytes()[..8]);
    }
    u64::from_be_bytes(b)
}

/// Does mesh entry `link` (as some node configured it) name probe `p`?
fn same_node(link: &MeshLinkStatus, p: &Probe) -> bool {
    if let (Some(a), Some(b)) = (link.peer_id, p.peer_id) {
        return a == b;
    }
    if link.addr == p.target.spec.addr.to_string() {
        return true;
    }
    link.addr
        .parse::<SocketAddr>()
        .is_ok_and(|a| p.resolved.contains(&a))
}

fn analyse(mut probes: Vec<Probe>, took: Duration) -> Report {
    // Unreachable nodes: learn their identity from what the others report.
    for i in 0..probes.len() {
        if probes[i].peer_id.is_some() {
            continue;
        }
        let addr = probes[i].target.spec.addr.to_string();
        let learned = probes.iter().find_map(|p| {
            p.status
                .as_ref()?
                .mesh
                .iter()
                .find(|l| l.addr == addr && l.peer_id.is_some())?
                .peer_id
        });
        probes[i].peer_id = learned;
    }
    let links: Vec<Vec<Option<usize>>> = probes
        .iter()
        .enumerate()
        .map(|(i, p)| match &p.status {
            None => Vec::new(),
            Some(s) => s
                .mesh
                .iter()
                .map(|l| {
                    probes
                        .iter()
                        .enumerate()
                        .position(|(j, q)| j != i && same_node(l, q))
                })
                .collect(),
        })
        .collect();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let Some(s) = &p.status else {
            let seen_by: Vec<String> = probes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter(|(j, q)| {
                    q.status.as_ref().is_some_and(|s| {
                        links[*j]
                            .iter()
                            .zip(&s.mesh)
                            .any(|(to, l)| *to == Some(i) && l.connected)
                    })
                })
                .map(|(_, q)| q.target.label())
                .collect();
            let others = if seen_by.is_empty() {
                "; no node sees it".to_string()
            } else {
                format!(
                    "; but {} still see{} it connected (a dead node is noticed within \
                     seconds; if this lasts, the path from here to it is broken)",
                    seen_by.join(", "),
                    if seen_by.len() == 1 { "s" } else { "" }
                )
            };
            problems.push(format!(
                "{} ({}) is unreachable: {}{others}",
                p.target.label(),
                p.target.spec.addr,
                p.error.as_deref().unwrap_or("no answer")
            ));
            continue;
        };
        for (l, to) in s.mesh.iter().zip(&links[i]) {
            if l.connected {
                continue;
            }
            match to {
                // Said once, in the unreachable line.
                Some(j) if !probes[*j].reachable() => {}
                Some(j) => problems.push(format!(
                    "{} does not see {}",
                    p.target.label(),
                    probes[*j].target.label()
                )),
                None => problems.push(format!(
                    "{} does not see {}{} (not probed)",
                    p.target.label(),
                    l.addr,
                    l.peer_id
                        .map_or(String::new(), |id| format!(" ({})", id.short()))
                )),
            }
        }
        for (j, q) in probes.iter().enumerate() {
            if j != i && q.reachable() && !links[i].contains(&Some(j)) {
                warnings.push(format!(
                    "{} does not list {} among its peers",
                    p.target.label(),
                    q.target.label()
                ));
            }
        }
    }
    for (i, p) in probes.iter().enumerate() {
        if let Some(id) = p.peer_id
            && let Some(q) = probes[..i].iter().find(|q| q.peer_id == Some(id))
        {
            warnings.push(format!(
                "{} and {} are the same node ({})",
                q.target.label(),
                p.target.label(),
                id.short()
            ));
        }
    }
    Report {
        probes,
        links,
        problems,
        warnings,
        took,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn report_json(r: &Report) -> Value {
    let nodes: Vec<Value> = r
        .probes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut node = serde_json::Map::new();
            if let Some(name) = &p.target.name {
                node.insert("name".into(), json!(name));
            }
            node.insert("addr".into(), json!(p.target.spec.addr.to_string()));
            node.insert("peer_id".into(), json!(p.peer_id.map(|id| id.to_string())));
            node.insert("reachable".into(), json!(p.reachable()));
            node.insert("rtt_ms".into(), json!(p.rtt.map(ms)));
            let s = p.status.as_ref();
            node.insert("version".into(), json!(s.map(|s| &s.version)));
            node.insert("uptime_s".into(), json!(s.map(|s| s.uptime_s)));
            node.insert("peers".into(), json!(p.peers()));
            node.insert("expected_peers".into(), json!(s.map(|s| s.expected_peers)));
            node.insert("status".into(), json!(p.state()));
            let mesh: Vec<Value> = s
                .map(|s| {
                    s.mesh
                        .iter()
                        .zip(&r.links[i])
                        .map(|(l, to)| {
                            let mut m = serde_json::Map::new();
                            let id = l.peer_id.or_else(|| to.and_then(|j| r.probes[j].peer_id));
                            m.insert("peer_id".into(), json!(id.map(|id| id.to_string())));
                            m.insert("connected".into(), json!(l.connected));
                            m.insert(
                                "rtt_ms".into(),
                                json!(l.rtt_us.map(|us| f64::from(us) / 1e3)),
                            );
                            m.insert("addr".into(), json!(l.addr));
                            if let Some(name) = to.and_then(|j| r.probes[j].target.name.clone()) {
                                m.insert("name".into(), json!(name));
                            }
                            Value::Object(m)
                        })
                        .collect()
                })
                .unwrap_or_default();
            node.insert("mesh".into(), json!(mesh));
            node.insert("agents".into(), json!(s.map(agents)));
            node.insert(
                "directory_agents".into(),
                json!(s.map(|s| s.directory_agents)),
            );
            node.insert(
                "roles".into(),
                json!(s.map(|s| json!({
                    "coordinator": s.roles.coordinator,
                    "reflector": s.roles.reflector,
                    "relay": s.roles.relay,
                }))),
            );
            if let Some(e) = &p.error {
                node.insert("error".into(), json!(e));
            }
            Value::Object(node)
        })
        .collect();
    json!({
        "healthy": r.healthy(),
        "nodes": nodes,
        "problems": r.problems,
        "warnings": r.warnings,
        "probe_ms": ms(r.took),
    })
}

fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn report_text(r: &Report) -> String {
    let mut out = String::new();
    let n = r.probes.len();
    let _ = writeln!(
        out,
        "x0x status: {n} node(s), {} reachable, {} (probed in {:.2} s)\n",
        r.reachable(),
        if r.healthy() {
            "healthy"
        } else {
            "NOT healthy"
        },
        r.took.as_secs_f64()
    );
    let labels: Vec<String> = r.probes.iter().map(|p| p.target.label()).collect();
    let lw = labels.iter().map(String::len).max().unwrap_or(4).max(4);
    let aw = r
        .probes
        .iter()
        .map(|p| p.target.spec.addr.to_string().len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(
        out,
        "{:<lw$}  {:<aw$}  {:<8}  {:>9}  {:<8}  {:>7}  {:>5}  {:>6}  STATUS",
        "NODE", "ADDRESS", "PEER ID", "RTT", "VERSION", "UPTIME", "PEERS", "AGENTS"
    );
    for (p, label) in r.probes.iter().zip(&labels) {
        let s = p.status.as_ref();
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "{label:<lw$}  {:<aw$}  {:<8}  {:>9}  {:<8}  {:>7}  {:>5}  {:>6}  {}",
            p.target.spec.addr.to_string(),
            p.peer_id.map_or_else(dash, |id| id.short()),
            p.rtt.map_or_else(dash, |d| format!("{:.1} ms", ms(d))),
            s.map_or_else(dash, |s| s.version.clone()),
            s.map_or_else(dash, |s| uptime(s.uptime_s)),
            match (p.peers(), s) {
                (Some(c), Some(s)) => format!("{c}/{}", s.expected_peers),
                _ => dash(),
            },
            s.map_or_else(dash, |s| agents(s).to_string()),
            p.state()
        );
    }
    if n > 1 {
        let _ = writeln!(
            out,
            "\nmesh links: how each row's node sees each column's node \
             (RTT in ms; DOWN: configured, not connected; -: not configured; ?: row unreachable)"
        );
        let cw = labels.iter().map(String::len).max().unwrap_or(4).max(6);
        let _ = write!(out, "{:<lw$}", "");
        for l in &labels {
            let _ = write!(out, "  {l:>cw$}");
        }
        out.push('\n');
        for (i, (p, label)) in r.probes.iter().zip(&labels).enumerate() {
            let _ = write!(out, "{label:<lw$}");
            for j in 0..n {
                let cell = if i == j {
                    "·".to_string()
                } else if let Some(s) = &p.status {
                    match r.links[i].iter().position(|to| *to == Some(j)) {
                        None => "-".to_string(),
                        Some(k) if !s.mesh[k].connected => "DOWN".to_string(),
                        Some(k) => s.mesh[k]
                            .rtt_us
                            .map_or("up".to_string(), |us| format!("{:.1}", f64::from(us) / 1e3)),
                    }
                } else {
                    "?".to_string()
                };
                let _ = write!(out, "  {cell:>cw$}");
            }
            out.push('\n');
        }
    }
    out.push('\n');
    if r.problems.is_empty() {
        let _ = writeln!(
            out,
            "no problems: every node answered and sees all its configured peers"
        );
    } else {
        let _ = writeln!(out, "problems:");
        for p in &r.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

// --- Prometheus mode ---

/// The metrics text of one report (OpenMetrics, as prometheus-client writes it).
fn metrics_text(r: &Report) -> String {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::AtomicU64;
    type G = Gauge<f64, AtomicU64>;
    type Labels = Vec<(String, String)>;
    let family = || Family::<Labels, G>::default();
    let mut reg = Registry::default();
    let up = family();
    let rtt = family();
    let peers = family();
    let expected = family();
    let uptime = family();
    let agents = family();
    let link_up = family();
    let link_rtt = family();
    let healthy = G::default();
    let duration = G::default();
    let last = G::default();
    let node = |p: &Probe| vec![("node".to_string(), p.target.label())];
    for (i, p) in r.probes.iter().enumerate() {
        let mut labels = node(p);
        labels.push(("addr".into(), p.target.spec.addr.to_string()));
        up.get_or_create(&labels)
            .set(f64::from(u8::from(p.reachable())));
        let (Some(s), Some(d)) = (&p.status, p.rtt) else {
            continue;
        };
        rtt.get_or_create(&node(p)).set(d.as_secs_f64());
        peers
            .get_or_create(&node(p))
            .set(f64::from(p.peers().unwrap_or(0)));
        expected
            .get_or_create(&node(p))
            .set(f64::from(s.expected_peers));
        uptime.get_or_create(&node(p)).set(s.uptime_s as f64);
        agents
            .get_or_create(&node(p))
            .set(f64::from(self::agents(s)));
        for (l, to) in s.mesh.iter().zip(&r.links[i]) {
            let to = to.map_or_else(|| l.addr.clone(), |j| r.probes[j].target.label());
            let labels = vec![
                ("from".to_string(), p.target.label()),
                ("to".to_string(), to),
            ];
            link_up
                .get_or_create(&labels)
                .set(f64::from(u8::from(l.connected)));
            if let (true, Some(us)) = (l.connected, l.rtt_us) {
                link_rtt.get_or_create(&labels).set(f64::from(us) / 1e6);
            }
        }
    }
    healthy.set(f64::from(u8::from(r.healthy())));
    duration.set(r.took.as_secs_f64());
    last.set(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    reg.register(
        "x0x_status_node_up",
        "1 if the node answered the status probe",
        up,
    );
    reg.register(
        "x0x_status_node_rtt_seconds",
        "QUIC RTT from the prober to the node",
        rtt,
    );
    reg.register(
        "x0x_status_node_peers",
        "configured mesh peers the node sees connected",
        peers,
    );
    reg.register(
        "x0x_status_node_expected_peers",
        "mesh peers the node is configured with",
        expected,
    );
    reg.register(
        "x0x_status_node_uptime_seconds",
        "the node's uptime",
        uptime,
    );
    reg.register(
        "x0x_status_node_agents",
        "agents connected to the node, not counting the prober",
        agents,
    );
    reg.register(
        "x0x_status_mesh_link_up",
        "1 if node `from` sees its configured peer `to` connected",
        link_up,
    );
    reg.register(
        "x0x_status_mesh_link_rtt_seconds",
        "RTT of the mesh link as node `from` measures it",
        link_rtt,
    );
    reg.register(
        "x0x_status_healthy",
        "1 if every node answered and sees all its peers",
        healthy,
    );
    reg.register(
        "x0x_status_probe_duration_seconds",
        "wall time of the last probe of all nodes",
        duration,
    );
    reg.register(
        "x0x_status_last_probe_timestamp_seconds",
        "when the last probe finished (Unix time)",
        last,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg)
        .expect("writing to a String cannot fail");
    text
}

/// Connections the metrics server serves at once; more wait.
const HTTP_CONNECTIONS: usize = 16;
/// A request head must arrive within this and fit in this many bytes.
const HTTP_READ_WITHIN: Duration = Duration::from_secs(5);
const HTTP_HEAD_MAX: usize = 8192;

/// `--prometheus ADDR`: probe every interval; serve the last results.
async fn serve(
    addr: SocketAddr,
    targets: Vec<Target>,
    bind: SocketAddr,
    timeout: Duration,
    args: &StatusArgs,
) -> ExitCode {
    let interval = Duration::from_secs(args.interval_s);
    if timeout >= interval {
        eprintln!(
            "x0x: --timeout-ms ({} ms) must be shorter than --interval-s ({} s)",
            timeout.as_millis(),
            args.interval_s
        );
        return ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("x0x: cannot listen on {addr} for --prometheus: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    if !args.json {
        eprintln!(
            "x0x: serving http://{local}/metrics; probing {} node(s) every {} s",
            targets.len(),
            args.interval_s
        );
    }
    let latest: Arc<RwLock<Option<String>>> = Arc::new(RwLock::new(None));
    let server = tokio::spawn(http_server(listener, latest.clone()));
    let prober = async {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match probe_all(&targets, bind, timeout).await {
                Ok(r) => {
                    *latest.write().unwrap_or_else(|e| e.into_inner()) = Some(metrics_text(&r));
                    if args.json {
                        println!("{}", report_json(&r));
                    } else {
                        eprintln!(
                            "x0x: probe: {}/{} reachable, {}, {} problem(s), {:.2} s",
                            r.reachable(),
                            r.probes.len(),
                            if r.healthy() {
                                "healthy"
                            } else {
                                "NOT healthy"
                            },
                            r.problems.len(),
                            r.took.as_secs_f64()
                        );
                        for p in &r.problems {
                            eprintln!("x0x:   - {p}");
                        }
                    }
                }
                Err(e) => eprintln!("x0x: probe failed: {e}"),
            }
        }
    };
    let code = tokio::select! {
        _ = prober => ExitCode::SUCCESS,
        _ = shutdown_signal() => ExitCode::SUCCESS,
    };
    server.abort();
    code
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A minimal HTTP/1.x server: `GET /metrics` and `GET /`, one request per
/// connection, bounded in connections, bytes and time.
async fn http_server(listener: tokio::net::TcpListener, latest: Arc<RwLock<Option<String>>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let latest = latest.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_READ_WITHIN * 2, answer_http(stream, &latest)).await;
            drop(permit);
        });
    }
}

async fn answer_http(
    mut stream: tokio::net::TcpStream,
    latest: &RwLock<Option<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(HTTP_READ_WITHIN, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HTTP_HEAD_MAX {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match latest.read().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            None => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                "the first probe has not finished yet\n".to_string(),
            ),
        },
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "x0x status prober: metrics at /metrics\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in names are hosts/inventory.toml's, and the built-in
    /// targets (the SDK's DEFAULT_BOOTSTRAP_PEERS) are the same nodes.
    #[test]
    fn built_in_names_match_the_inventory() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../hosts/inventory.toml");
        let text = std::fs::read_to_string(path).expect("hosts/inventory.toml is readable");
        let (specs, names) = parse_inventory(&text).expect("the inventory parses");
        let mut built_in: Vec<(String, String)> = INVENTORY_NAMES
            .iter()
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .collect();
        let mut from_file: Vec<(String, String)> = names.into_iter().collect();
        built_in.sort();
        from_file.sort();
        assert_eq!(built_in, from_file);
        let defaults: Vec<String> = DEFAULT_BOOTSTRAP_PEERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        assert_eq!(defaults, specs);
    }

    fn link(addr: &str, id: Option<PeerId>, connected: bool) -> MeshLinkStatus {
        MeshLinkStatus {
            addr: addr.into(),
            peer_id: id,
            connected,
            rtt_us: connected.then_some(1500),
        }
    }

    fn probe(addr: &str, id: u8, mesh: Option<Vec<MeshLinkStatus>>) -> Probe {
        let expected = mesh.as_ref().map_or(0, |m| m.len() as u32);
        Probe {
            target: Target {
                spec: addr.parse().unwrap(),
                name: Some(format!("n{id}")),
            },
            resolved: vec![addr.parse().unwrap()],
            peer_id: mesh.as_ref().map(|_| PeerId::from_bytes([id; 32])),
            rtt: mesh.as_ref().map(|_| Duration::from_millis(2)),
            status: mesh.map(|mesh| NodeStatus {
                version: "0.1.0".into(),
                uptime_s: 5,
                roles: wire::RoleSet {
                    coordinator: true,
                    reflector: true,
                    relay: true,
                },
                agents: 0,
                directory_agents: 0,
                expected_peers: expected,
                mesh,
            }),
            error: None,
        }
    }

    #[test]
    fn problems_name_the_missing_link_and_the_dead_node() {
        let id = |n: u8| Some(PeerId::from_bytes([n; 32]));
        let a = "10.0.0.1:1";
        let b = "10.0.0.2:1";
        let c = "10.0.0.3:1";
        let probes = vec![
            probe(
                a,
                1,
                Some(vec![link(b, id(2), false), link(c, id(3), false)]),
            ),
            probe(
                b,
                2,
                Some(vec![link(a, id(1), false), link(c, None, false)]),
            ),
            Probe {
                error: Some("no answer within 3000 ms".into()),
                ..probe(c, 3, None)
            },
        ];
        let r = analyse(probes, Duration::from_millis(10));
        assert!(!r.healthy());
        assert_eq!(r.probes[2].peer_id, id(3), "learned from n1's view");
        assert_eq!(
            r.problems,
            vec![
                "n1 does not see n2".to_string(),
                "n2 does not see n1".to_string(),
                "n3 (10.0.0.3:1) is unreachable: no answer within 3000 ms; no node sees it"
                    .to_string(),
            ]
        );
        let text = report_text(&r);
        assert!(
            text.contains("DOWN") && text.contains("NOT healthy"),
            "{text}"
        );
        let metrics = metrics_text(&r);
        assert!(
            metrics.contains("x0x_status_node_up{node=\"n3\",addr=\"10.0.0.3:1\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("x0x_status_mesh_link_up{from=\"n1\",to=\"n2\"} 0"),
            "{metrics}"
        );
        assert!(metrics.contains("x0x_status_healthy 0"), "{metrics}");
    }
}
