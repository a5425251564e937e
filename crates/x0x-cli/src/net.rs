//! What every networked command shares: the bootstrap nodes, the key, JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use x0x::{Agent, AgentError, Identity, JoinReport, NetworkConfig, PeerSpec};

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Agent key (PKCS#8 PEM); created if missing. Without it the agent
    /// uses a new identity each run.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NetArgs {
    /// A bootstrap node: `ip:port`, `[ipv6]:port`, `host:port`, or any of
    /// those as `PEERID@addr` to accept only the node with that key;
    /// repeatable. Default: the public x0x bootstrap nodes.
    #[arg(long = "bootstrap", value_name = "ADDR")]
    pub bootstrap: Vec<PeerSpec>,
    /// The TCP relay of each `--bootstrap` node, by position (the first
    /// `--bootstrap-tcp` is the first node's); repeatable. Default: the
    /// node's host at port 443. Used when UDP to every node fails.
    #[arg(long = "bootstrap-tcp", value_name = "HOST:PORT")]
    pub bootstrap_tcp: Vec<x0x::PeerAddr>,
    /// Local UDP address to bind.
    #[arg(long, default_value = "[::]:0")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub key: KeyArgs,
    /// How long to keep trying to reach bootstrap nodes.
    #[arg(long, default_value_t = 10_000)]
    pub join_timeout_ms: u64,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not ask the router to forward a port (PCP, NAT-PMP, UPnP).
    #[arg(long)]
    pub no_port_mapping: bool,
}

pub fn identity(key: &KeyArgs) -> Result<Identity, AgentError> {
    match &key.key {
        Some(path) => Ok(Identity::load_or_generate(path)?.0),
        None => Ok(Identity::generate()?),
    }
}

/// Status for people on stderr (text mode only; JSON output stays clean).
pub fn progress(net: &NetArgs, line: &str) {
    if !net.json {
        eprintln!("x0x: {line}");
    }
}

/// Milliseconds with microsecond precision, for JSON.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Build an agent for `net` and join the network.
pub async fn join(net: &NetArgs) -> Result<(Agent, JoinReport), AgentError> {
    let mut cfg = if net.bootstrap.is_empty() {
        let cfg = NetworkConfig::default();
        if cfg.bootstrap_peers.iter().any(|p| p.id.is_none()) {
            eprintln!(
                "x0x: warning: the public bootstrap nodes are not pinned to keys yet \
                 (hosts/inventory.toml has no peer_id): their identities are not checked"
            );
        }
        cfg
    } else {
        NetworkConfig::with_bootstrap_peers(net.bootstrap.clone())
    };
    cfg.bind = net.bind;
    cfg.tcp_relays = net.bootstrap_tcp.clone();
    cfg.join_timeout = Duration::from_millis(net.join_timeout_ms);
    cfg.port_mapping = !net.no_port_mapping;
    progress(
        net,
        &format!(
            "joining through {} bootstrap node(s)…",
            cfg.bootstrap_peers.len()
        ),
    );
    let agent = Agent::builder()
        .network(cfg)
        .identity(identity(&net.key)?)
        .build()?;
    let report = agent.join_network().await?;
    progress(
        net,
        &format!(
            "joined: {} node(s) reached, {} unreachable, {} still trying",
            report.connected.len(),
            report.failed.len(),
            report.pending.len()
        ),
    );
    Ok((agent, report))
}
