//! The agent: join the network, find and reach other agents.
//!
//! ```text
//! Agent::builder().network(cfg).build()   binds a QUIC endpoint on a MuxSocket (no traffic yet)
//! agent.join_network()                     dials every bootstrap node in parallel, learns the
//!                                          observed address (reflector), registers (coordinator);
//!                                          returns once one node accepted us and a short grace
//!                                          passed; the others keep joining in the background
//! agent.lookup(peer)                       asks every node at once; the first answer that knows wins
//! agent.connect(peer)                      introduction + relay circuits, then one QUIC connection
//!                                          that starts on the first path that works and moves to
//!                                          direct as soon as one is validated
//! agent.accept()                           connections other agents opened to us
//! ```

mod collab;
mod connect;
mod links;
mod paths;
mod peer;
mod portmap;
mod requests;
mod tcp;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::transport::{self, TransportOptions};
use x0x_proto::wire::{PeerInfo, RoleSet, close};

use crate::error::{AgentError, NodeFailure};
use crate::network::NetworkConfig;
use crate::socket::MuxSocket;

pub use collab::CollabStats;
pub use connect::ConnectOptions;
pub use peer::{PathEvents, PeerConnection};

/// One bootstrap node the agent is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootstrapLink {
    pub peer_id: PeerId,
    /// The node's address.
    pub addr: SocketAddr,
    pub roles: RoleSet,
    /// This agent's address as the node saw it (if it is a reflector).
    pub observed: Option<SocketAddr>,
    /// RTT when the link was made.
    pub rtt: Duration,
    /// Whether the node's coordinator accepted our registration.
    pub registered: bool,
    /// How this agent reaches the node: UDP, or TLS/TCP when UDP is blocked.
    pub transport: crate::path::Transport,
}

/// Where the agent is with one configured bootstrap node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeState {
    /// The first attempt is under way.
    Connecting,
    /// Connected (and registered, if the node coordinates).
    Connected(BootstrapLink),
    /// Not connected; retrying in the background after this error.
    Retrying(String),
    /// Another configured address of this node (say its IPv6 one) is
    /// already linked; this one served to have that address vouched for.
    SameNode(PeerId),
}

/// One configured bootstrap node and the agent's state with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootstrapStatus {
    /// The configured address (`addr` or `PEERID@addr`).
    pub addr: String,
    pub state: NodeState,
}

/// The outcome of [`Agent::join_network`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JoinReport {
    pub connected: Vec<BootstrapLink>,
    /// Bootstrap addresses that failed before `join_network` returned
    /// (they keep being retried in the background).
    pub failed: Vec<NodeFailure>,
    /// Bootstrap addresses still being tried when `join_network` returned.
    pub pending: Vec<String>,
    /// The address reflectors observed (first one reported).
    pub observed_addr: Option<SocketAddr>,
    /// Nodes whose coordinator accepted our registration.
    pub registered: Vec<PeerId>,
}

/// Counters of one agent, with stable names ([`AgentStats::to_prometheus`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStats {
    /// `holepunch_attempts_total{outcome="success"}`
    pub holepunch_success: u64,
    /// `holepunch_attempts_total{outcome="failed"}`
    pub holepunch_failed: u64,
    /// `path_upgrades_total{from="relayed",to="direct"}`
    pub upgrades_relayed_to_direct: u64,
    /// `path_upgrades_total{from="direct",to="relayed"}`
    pub fallbacks_direct_to_relayed: u64,
    /// `path_upgrades_total{from="relayed",to="relayed"}` (another node)
    pub switches_between_relays: u64,
    /// `path_upgrades_total{from="direct",to="direct"}`
    pub switches_between_direct: u64,
    /// `connections_total{path="direct"}`: connections that started direct.
    pub connections_direct: u64,
    /// `connections_total{path="relayed"}`
    pub connections_relayed: u64,
    /// Packets from sources that are neither a node nor a known path.
    pub dropped_unknown_source: u64,
    /// Probes that failed to decode or authenticate.
    pub dropped_bad_probe: u64,
}

impl AgentStats {
    /// The counters in the Prometheus text format (prefix `x0x_agent_`).
    pub fn to_prometheus(&self) -> String {
        let rows = [
            (
                "holepunch_attempts_total{outcome=\"success\"}",
                self.holepunch_success,
            ),
            (
                "holepunch_attempts_total{outcome=\"failed\"}",
                self.holepunch_failed,
            ),
            (
                "path_upgrades_total{from=\"relayed\",to=\"direct\"}",
                self.upgrades_relayed_to_direct,
            ),
            (
                "path_upgrades_total{from=\"direct\",to=\"relayed\"}",
                self.fallbacks_direct_to_relayed,
            ),
            (
                "path_upgrades_total{from=\"relayed\",to=\"relayed\"}",
                self.switches_between_relays,
            ),
            (
                "path_upgrades_total{from=\"direct\",to=\"direct\"}",
                self.switches_between_direct,
            ),
            (
                "connections_total{path=\"direct\"}",
                self.connections_direct,
            ),
            (
                "connections_total{path=\"relayed\"}",
                self.connections_relayed,
            ),
            (
                "dropped_packets_total{reason=\"unknown_source\"}",
                self.dropped_unknown_source,
            ),
            (
                "dropped_packets_total{reason=\"bad_probe\"}",
                self.dropped_bad_probe,
            ),
        ];
        rows.iter()
            .map(|(k, v)| format!("x0x_agent_{k} {v}\n"))
            .collect()
    }
}

/// Builds an [`Agent`].
#[derive(Debug, Default)]
pub struct AgentBuilder {
    network: Option<NetworkConfig>,
    identity: Option<Identity>,
    collab: Option<crate::collab::service::CollabConfig>,
}

impl AgentBuilder {
    /// Which bootstrap nodes to use and how. Default: [`NetworkConfig::default()`].
    pub fn network(mut self, network: NetworkConfig) -> Self {
        self.network = Some(network);
        self
    }

    /// Use this identity. Default: a fresh one.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Tuning of pub/sub, presence, FOAF and task lists (e.g. a longer
    /// presence interval for topics of thousands of agents). Default:
    /// [`CollabConfig::default()`](crate::collab::service::CollabConfig).
    pub fn collab(mut self, config: crate::collab::service::CollabConfig) -> Self {
        self.collab = Some(config);
        self
    }

    /// Bind the agent's QUIC endpoint and start its background tasks.
    /// Sends nothing yet. Must be called inside a Tokio runtime.
    pub fn build(self) -> Result<Agent, AgentError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AgentError::NoRuntime);
        }
        let network = self.network.unwrap_or_default();
        network.validate().map_err(AgentError::InvalidConfig)?;
        let identity = match self.identity {
            Some(i) => i,
            None => Identity::generate()?,
        };
        let peers = TransportOptions::peer(Duration::from_secs(5), Duration::from_secs(30));
        let nodes = TransportOptions::agent_to_node(network.keepalive, network.idle_timeout);
        let server = transport::server_config(&identity, &peers)?;
        let peer_client = transport::client_config(&identity, &peers)?;
        let node_client = transport::client_config(&identity, &nodes)?;
        let tcp_tls = Arc::new(
            x0x_proto::tls::tcp_client_config(&identity)
                .map_err(|e| AgentError::Setup(e.to_string()))?,
        );
        let udp = bind(network.bind)?;
        let local = udp.local_addr().map_err(|source| AgentError::Bind {
            addr: network.bind,
            source,
        })?;
        let (socket, signals) =
            MuxSocket::new(udp, identity.peer_id()).map_err(|source| AgentError::Bind {
                addr: local,
                source,
            })?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            transport::endpoint_config(),
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| AgentError::Bind {
            addr: local,
            source,
        })?;
        endpoint.set_default_client_config(node_client.clone());
        let (accept_tx, accept_rx) = mpsc::channel(256);
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            peer_id: identity.peer_id(),
            incarnation: rand::random(),
            network,
            endpoint,
            socket,
            node_client,
            peer_client,
            tcp_tls,
            links: Mutex::new(HashMap::new()),
            linking: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            maintained: Mutex::new(HashSet::new()),
            homes: Mutex::new(HashMap::new()),
            own_extra: Mutex::new(Vec::new()),
            accepted: accept_tx,
            leaving: cancel.child_token(),
            cancel: cancel.clone(),
            connections_direct: AtomicU64::new(0),
            connections_relayed: AtomicU64::new(0),
            collab: collab::CollabNet::new(),
            portmap: portmap::PortMap::new(&cancel),
        });
        inner
            .collab
            .start(&inner, identity.clone(), self.collab.unwrap_or_default());
        tokio::spawn(connect::accept_loop(inner.clone()));
        tokio::spawn(paths::maintain(inner.clone()));
        tokio::spawn(links::on_socket_signals(inner.clone(), signals));
        Ok(Agent {
            inner,
            accepted: AsyncMutex::new(accept_rx),
            _guard: cancel.drop_guard(),
        })
    }
}

/// Bind `addr`; an IPv6 wildcard falls back to IPv4 where IPv6 is off.
fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, AgentError> {
    const BUFFER: usize = 2 * 1024 * 1024;
    match transport::udp_socket(addr, BUFFER) {
        Ok(s) => Ok(s),
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::debug!("cannot bind {addr} ({e}); using {v4}");
            Ok(transport::udp_socket(v4, BUFFER)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A bootstrap link: the connection and what the node said.
pub(crate) struct Link {
    pub conn: quinn::Connection,
    pub info: BootstrapLink,
}

pub(crate) struct Inner {
    pub peer_id: PeerId,
    pub incarnation: u64,
    pub network: NetworkConfig,
    pub endpoint: quinn::Endpoint,
    pub socket: Arc<MuxSocket>,
    pub node_client: quinn::ClientConfig,
    pub peer_client: quinn::ClientConfig,
    /// TLS for the TCP relay.
    pub tcp_tls: Arc<rustls::ClientConfig>,
    pub links: Mutex<HashMap<PeerId, Link>>,
    /// Nodes a dial is turning into a link right now, by the bootstrap
    /// address that claimed them (lock before `links` when taking both).
    pub linking: Mutex<HashMap<PeerId, String>>,
    /// Per configured bootstrap address.
    pub status: Mutex<HashMap<String, NodeState>>,
    /// Bootstrap addresses with a task keeping them connected.
    pub maintained: Mutex<HashSet<String>>,
    /// Nodes each known peer is registered with (for relay circuits).
    pub homes: Mutex<HashMap<PeerId, Vec<PeerId>>>,
    /// Our own addresses nodes vouch for beyond the links' observed ones
    /// (the other address family, mapped ports).
    pub own_extra: Mutex<Vec<SocketAddr>>,
    pub accepted: mpsc::Sender<PeerConnection>,
    pub cancel: CancellationToken,
    /// Cancelled when the agent starts closing (before `cancel`): links are
    /// no longer redialed, nor moved to TCP, while close frames travel.
    pub leaving: CancellationToken,
    pub connections_direct: AtomicU64,
    pub connections_relayed: AtomicU64,
    /// The collab service on this agent's connections.
    pub collab: Arc<collab::CollabNet>,
    pub portmap: portmap::PortMap,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Live links, fastest first.
    pub fn links_by_rtt(&self) -> Vec<(PeerId, quinn::Connection)> {
        let mut v: Vec<_> = lock(&self.links)
            .iter()
            .filter(|(_, l)| l.conn.close_reason().is_none())
            .map(|(id, l)| (*id, l.conn.clone()))
            .collect();
        v.sort_by_key(|(_, c)| c.rtt());
        v
    }

    /// Whether any node is linked over UDP now.
    pub fn any_udp_link(&self) -> bool {
        lock(&self.links).values().any(|l| {
            l.info.transport == crate::path::Transport::Udp && l.conn.close_reason().is_none()
        })
    }

    pub fn remember(&self, info: &PeerInfo) {
        lock(&self.homes).insert(info.peer, info.homes.clone());
    }
}

/// An agent on the x0x network. Cheap to share: wrap it in an `Arc`; every
/// method takes `&self`.
pub struct Agent {
    inner: Arc<Inner>,
    accepted: AsyncMutex<mpsc::Receiver<PeerConnection>>,
    _guard: DropGuard,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("peer_id", &self.inner.peer_id)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Start building an agent.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// This agent's identity on the network.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The local address of the agent's UDP socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Connect to the configured bootstrap nodes in parallel, learn the
    /// observed address and register with each coordinator.
    ///
    /// Returns once at least one node accepted our registration and
    /// `join_grace` has passed (so the nodes that answer quickly are in
    /// the report), or once every node answered, or at `join_timeout`.
    /// Nodes not joined yet keep being tried in the background; see
    /// [`Agent::bootstrap_status`]. Fails only if no node was reached.
    pub async fn join_network(&self) -> Result<JoinReport, AgentError> {
        portmap::start(&self.inner);
        let report = links::join(&self.inner).await?;
        // The addresses FOAF lookups of this agent return.
        self.inner
            .collab
            .collab()
            .set_addrs(self.inner.socket.own_candidates());
        Ok(report)
    }

    /// The port the router forwards to this agent now (PCP, NAT-PMP or
    /// UPnP; see [`NetworkConfig::port_mapping`]), if any.
    pub fn port_mapping(&self) -> Option<crate::PortMapping> {
        portmap::mapping(&self.inner)
    }

    /// Wait until the first port-mapping probe after `join_network` has
    /// finished (it takes at most about 2 s), then [`Agent::port_mapping`].
    /// `None` at once if port mapping is off or the agent has not joined.
    pub async fn port_mapping_ready(&self) -> Option<crate::PortMapping> {
        portmap::ready(&self.inner).await
    }

    /// Bootstrap nodes connected now.
    pub fn bootstrap_nodes(&self) -> Vec<BootstrapLink> {
        lock(&self.inner.links)
            .values()
            .map(|l| l.info.clone())
            .collect()
    }

    /// Every configured bootstrap node and where the agent is with it.
    pub fn bootstrap_status(&self) -> Vec<BootstrapStatus> {
        let mut v: Vec<BootstrapStatus> = lock(&self.inner.status)
            .iter()
            .map(|(addr, state)| BootstrapStatus {
                addr: addr.clone(),
                state: state.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }

    /// The address reflectors report for this agent.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_nodes().iter().find_map(|l| l.observed)
    }

    /// Every address of this agent that peers may reach it at: observed by
    /// nodes, vouched for by them, and its own interface addresses.
    pub fn candidate_addrs(&self) -> Vec<SocketAddr> {
        self.inner.socket.own_candidates()
    }

    /// Find another agent in the directory, asking every connected node at
    /// once. `Ok(None)`: the nodes that answered do not know it.
    pub async fn lookup(&self, peer: PeerId) -> Result<Option<PeerInfo>, AgentError> {
        requests::lookup(&self.inner, peer).await
    }

    /// Connect to another agent by its [`PeerId`]: see [`ConnectOptions`].
    pub async fn connect(&self, peer: PeerId) -> Result<PeerConnection, AgentError> {
        self.connect_with(peer, ConnectOptions::default()).await
    }

    /// Connect with explicit options.
    pub async fn connect_with(
        &self,
        peer: PeerId,
        opts: ConnectOptions,
    ) -> Result<PeerConnection, AgentError> {
        connect::connect(&self.inner, peer, opts).await
    }

    /// The next connection another agent opened to us. Several tasks may
    /// wait at once; each connection goes to one of them. `None` once the
    /// agent is closed.
    pub async fn accept(&self) -> Option<PeerConnection> {
        let mut rx = self.accepted.lock().await;
        tokio::select! {
            c = rx.recv() => c,
            _ = self.inner.cancel.cancelled() => None,
        }
    }

    /// Whether this agent's NAT hairpins: a packet sent to its own public
    /// address (as a node observed it) comes back to it. `None` when no
    /// node observed a public address.
    pub async fn hairpin(&self) -> Option<bool> {
        let public = self.observed_addr()?;
        let nonce = self.inner.socket.hairpin_check(public);
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.inner.socket.hairpin_returned(&nonce) {
                return Some(true);
            }
        }
        Some(false)
    }

    /// Whether a TLS/TCP relay session to a bootstrap node can be opened
    /// (the fastest linked node's, else the first configured one), and how
    /// long that took. Opens and closes one session.
    pub async fn tcp_relay_check(&self) -> Result<(PeerId, Duration), AgentError> {
        tcp::check(&self.inner).await
    }

    /// Counters of this agent.
    pub fn stats(&self) -> AgentStats {
        let s = &self.inner.socket.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentStats {
            holepunch_success: get(&s.holepunch_success),
            holepunch_failed: get(&s.holepunch_failed),
            upgrades_relayed_to_direct: get(&s.upgrades_relayed_direct),
            fallbacks_direct_to_relayed: get(&s.downgrades_direct_relayed),
            switches_between_relays: get(&s.switches_relayed_relayed),
            switches_between_direct: get(&s.switches_direct_direct),
            connections_direct: get(&self.inner.connections_direct),
            connections_relayed: get(&self.inner.connections_relayed),
            dropped_unknown_source: get(&s.dropped_unknown_source),
            dropped_bad_probe: get(&s.dropped_bad_probe),
        }
    }

    /// Close every connection, delete the router's port mapping and stop
    /// all background work. Waits (at most 2 s) for the close to reach
    /// the peers.
    pub async fn close(&self) {
        // Close first, so close frames still travel (relayed ones too);
        // then stop the background tasks.
        self.inner.leaving.cancel();
        self.inner.endpoint.close(close::NORMAL, b"agent closing");
        let idle = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle());
        let _ = tokio::join!(idle, portmap::stop(&self.inner));
        self.inner.cancel.cancel();
    }
}
