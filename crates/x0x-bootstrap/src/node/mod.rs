//! The bootstrap node: a QUIC endpoint on a `NodeSocket`, the
//! mesh of configured peers, the three roles, and the health server.
//!
//! [`Node::start`] binds everything before it returns (so a caller can
//! report readiness), [`Node::shutdown`] closes every connection with an
//! application close code so peers see the departure at once.

mod admission;
mod mesh;
mod outbox;
mod registry;
mod session;
mod socket;
mod tcp;
mod vouch;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};
use x0x_proto::addr::{PeerAddr, canonical};
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::transport::{self, TransportError, TransportOptions};
use x0x_proto::wire::{self, Message, PeerInfo, PeerKind, RoleSet, close};

use crate::config::Config;
use crate::health::{self, Health};
use crate::metrics::{LiveSnapshot, Metrics};
use crate::roles::coordinator::Directory;
use crate::roles::relay::Relay;
use admission::{Admission, Verdict};
use registry::Registry;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot bind health server on {addr}: {source}")]
    HealthBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot bind the TCP relay on {addr}: {source} (ports below 1024 need root, CAP_NET_BIND_SERVICE or a systemd socket; `[tcp] listen = \"\"` turns the TCP relay off)"
    )]
    TcpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration of the TCP relay failed: {0}")]
    TcpTls(String),
}

/// State shared by every task of a node.
pub(crate) struct Shared {
    pub peer_id: PeerId,
    /// Random per process: lets peers tell a restart from a duplicate.
    pub incarnation: u64,
    pub config: Config,
    pub endpoint: quinn::Endpoint,
    pub socket: Arc<socket::NodeSocket>,
    pub registry: Registry,
    pub relay: Arc<Relay>,
    pub admission: Arc<Admission>,
    pub vouches: vouch::Vouches,
    /// Collab topic memberships of the agents registered here.
    pub topics: Mutex<crate::roles::topics::Topics>,
    pub metrics: Metrics,
    pub started: Instant,
    pub shutdown: CancellationToken,
    /// Transport for connections between nodes (dialed and accepted).
    pub mesh_client: quinn::ClientConfig,
    pub mesh_server: Arc<quinn::ServerConfig>,
    directory: Mutex<Directory>,
    /// Configured peer address -> the identity found there.
    mesh_ids: Mutex<HashMap<PeerAddr, PeerId>>,
    /// Resolved addresses of configured peers, with the identity pinned there.
    mesh_addrs: Mutex<HashMap<SocketAddr, Option<PeerId>>>,
    /// Identities pinned in `peers`.
    pinned: HashSet<PeerId>,
    /// Configured addresses that turned out to be this node.
    self_addrs: Mutex<HashSet<PeerAddr>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn directory(&self) -> MutexGuard<'_, Directory> {
        lock(&self.directory)
    }

    pub fn role_set(&self) -> RoleSet {
        let r = self.config.roles;
        RoleSet {
            coordinator: r.coordinator,
            reflector: r.reflector,
            relay: r.relay,
        }
    }

    pub fn mesh_id(&self, addr: &PeerAddr) -> Option<PeerId> {
        lock(&self.mesh_ids).get(addr).copied()
    }

    pub fn learn_mesh_id(&self, addr: &PeerAddr, peer: PeerId) {
        lock(&self.mesh_ids).insert(addr.clone(), peer);
    }

    /// A mesh peer that dialed us from a configured address (by IP, not by
    /// host name) is the peer at that address: remember its identity, as a
    /// dial would, so the status view names it even if our own dial never
    /// succeeded (it was down when we tried, then dialed us first).
    pub fn learn_inbound_mesh_id(&self, peer: PeerId, remote: SocketAddr) {
        let remote = canonical(remote);
        for p in &self.config.peers {
            if let PeerAddr::Socket(a) = p.addr
                && canonical(a) == remote
                && p.id.is_none_or(|pin| pin == peer)
            {
                self.learn_mesh_id(&p.addr, peer);
            }
        }
    }

    pub fn learn_mesh_addrs(&self, addrs: &[SocketAddr], pin: Option<PeerId>) {
        lock(&self.mesh_addrs).extend(addrs.iter().map(|a| (canonical(*a), pin)));
    }

    pub fn mark_self(&self, addr: &PeerAddr) {
        lock(&self.self_addrs).insert(addr.clone());
    }

    pub fn is_mesh_addr(&self, addr: &SocketAddr) -> bool {
        lock(&self.mesh_addrs).contains_key(&canonical(*addr))
    }

    /// Whether a peer claiming to be a bootstrap node is one of ours: a
    /// pinned identity (from any address), an identity we verified by
    /// dialing, or whoever connects from an unpinned configured address.
    pub fn is_mesh_member(&self, peer: &PeerId, remote: SocketAddr) -> bool {
        if self.pinned.contains(peer) || lock(&self.mesh_ids).values().any(|p| p == peer) {
            return true;
        }
        match lock(&self.mesh_addrs).get(&canonical(remote)) {
            Some(None) => true,
            Some(Some(pin)) => pin == peer,
            None => false,
        }
    }

    /// Where `conn`'s peer is: its UDP address, or for a TCP relay session
    /// the TCP peer's address.
    pub fn observed_of(&self, conn: &quinn::Connection) -> SocketAddr {
        let remote = conn.remote_address();
        canonical(self.socket.tcp_peer_of(&remote).unwrap_or(remote))
    }

    /// Whether `conn` runs over a TCP relay session.
    pub fn over_tcp(&self, conn: &quinn::Connection) -> bool {
        self.socket.tcp_peer_of(&conn.remote_address()).is_some()
    }

    /// The address the reflector reports for `conn`, if the role is on.
    pub fn reflect(&self, conn: &quinn::Connection) -> Option<SocketAddr> {
        self.config.roles.reflector.then(|| self.observed_of(conn))
    }

    /// Configured mesh peers other than this node.
    pub fn expected_peers(&self) -> usize {
        self.config
            .peers
            .len()
            .saturating_sub(lock(&self.self_addrs).len())
    }

    /// Queue a control message to every connected mesh peer.
    pub fn broadcast(&self, msg: Message) {
        for (_, entry) in self.registry.of_kind(PeerKind::Node) {
            entry.outbox.push(msg.clone());
        }
    }

    /// Queue a push to a local agent; counts it if its queue is full.
    pub fn push_to_agent(&self, to: &PeerId, msg: Message) -> bool {
        match self.registry.get(to) {
            Some(entry) if entry.kind == PeerKind::Agent => {
                let queued = entry.outbox.push(msg);
                if !queued {
                    self.metrics.pushes_dropped.inc();
                }
                queued
            }
            _ => false,
        }
    }

    /// Tell the local agent `to` that `from` wants to connect.
    pub fn deliver_introduction(&self, to: &PeerId, from: PeerInfo) -> bool {
        self.push_to_agent(to, Message::Introduction { info: from })
    }

    /// Ask mesh peer `home` to deliver an introduction to its agent `to`.
    pub fn forward_introduction(&self, home: &PeerId, from: PeerInfo, to: PeerId) -> bool {
        match self.registry.get(home) {
            Some(entry) if entry.kind == PeerKind::Node => {
                entry.outbox.push(Message::ForwardIntroduction { from, to })
            }
            _ => false,
        }
    }

    /// Change the directory and queue the resulting update to every mesh
    /// peer while still holding the directory lock, so every peer sees the
    /// updates in the order they happened (and after any snapshot it got).
    pub fn update_directory(&self, change: impl FnOnce(&mut Directory) -> Option<Message>) {
        let mut directory = self.directory();
        if let Some(update) = change(&mut directory) {
            self.broadcast(update);
        }
    }

    /// Clean up after a peer's connection ended.
    pub fn forget(&self, peer: PeerId, kind: PeerKind) {
        match kind {
            PeerKind::Agent => {
                for closed in self.relay.forget(&peer) {
                    self.metrics.close_circuit("peer_left");
                    self.push_to_agent(
                        &closed.agent,
                        Message::CircuitClosed {
                            cid: closed.cid,
                            reason: closed.reason,
                        },
                    );
                }
                self.vouches.forget(&peer);
                lock(&self.topics).forget(&peer);
                self.update_directory(|d| d.unregister(&peer));
            }
            PeerKind::Node => self.directory().drop_peer(&peer),
            PeerKind::Probe => {}
        }
        self.update_gauges();
    }

    pub fn update_gauges(&self) {
        let (nodes, agents) = self.registry.counts();
        self.metrics.peers_connected.set(nodes as i64);
        self.metrics
            .peers_expected
            .set(self.expected_peers() as i64);
        self.metrics.agents_connected.set(agents as i64);
        let known = self.directory().len();
        self.metrics.directory_agents.set(known as i64);
        let (topics, memberships) = {
            let t = lock(&self.topics);
            (t.len(), t.memberships())
        };
        self.metrics.topics.set(topics as i64);
        self.metrics.topic_memberships.set(memberships as i64);
    }

    /// Live figures for `/metrics`.
    pub fn live(&self) -> LiveSnapshot {
        let secs = |e: &registry::Entry| e.conn.rtt().as_secs_f64();
        LiveSnapshot {
            mesh: self
                .registry
                .of_kind(PeerKind::Node)
                .iter()
                .map(|(p, e)| (p.short(), secs(e)))
                .collect(),
            agents: self
                .registry
                .of_kind(PeerKind::Agent)
                .iter()
                .map(|(_, e)| secs(e))
                .collect(),
            relay_circuits: self.relay.circuits(),
            handshakes: self.admission.handshakes(),
        }
    }

    pub fn health(&self) -> Health {
        let (peers, agents) = self.registry.counts();
        let expected = self.expected_peers();
        Health {
            status: if peers >= expected {
                "healthy"
            } else {
                "degraded"
            },
            peers,
            expected_peers: expected,
            agents,
            peer_id: self.peer_id.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            roles: self.config.roles,
            directory_agents: self.directory().len(),
            listen: self.endpoint.local_addr().ok(),
        }
    }

    /// What a `Status` request gets: the health figures and this node's
    /// view of each configured mesh peer.
    pub fn status(&self) -> wire::NodeStatus {
        let h = self.health();
        let self_addrs = lock(&self.self_addrs).clone();
        let mesh = self
            .config
            .peers
            .iter()
            .filter(|p| !self_addrs.contains(&p.addr))
            .map(|p| {
                let id = p.id.or_else(|| self.mesh_id(&p.addr));
                let entry = id.and_then(|id| self.registry.get(&id));
                let connected = entry.as_ref().is_some_and(|e| e.kind == PeerKind::Node);
                wire::MeshLinkStatus {
                    addr: p.addr.to_string(),
                    peer_id: id,
                    connected,
                    rtt_us: entry
                        .filter(|_| connected)
                        .map(|e| e.conn.rtt().as_micros().min(u32::MAX as u128) as u32),
                }
            })
            .collect();
        wire::NodeStatus {
            version: h.version.to_string(),
            uptime_s: h.uptime_s,
            roles: self.role_set(),
            agents: h.agents as u32,
            directory_agents: h.directory_agents as u32,
            expected_peers: h.expected_peers as u32,
            mesh,
        }
    }
}

/// A running bootstrap node.
pub struct Node {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    health_addr: SocketAddr,
}

impl Node {
    /// Bind the QUIC socket, the TCP relay and the health server, then
    /// start accepting, dialing the configured peers and serving health.
    pub async fn start(config: Config, identity: Identity) -> Result<Self, NodeError> {
        Self::start_with_tcp(config, identity, None).await
    }

    /// [`Node::start`] with an already bound TCP relay listener (systemd
    /// socket activation), used instead of binding `[tcp] listen`.
    pub async fn start_with_tcp(
        config: Config,
        identity: Identity,
        tcp: Option<std::net::TcpListener>,
    ) -> Result<Self, NodeError> {
        let agents = TransportOptions::node_to_agent(
            config.transport.keepalive(),
            config.transport.idle_timeout(),
        );
        let mesh = TransportOptions::mesh(config.mesh.keepalive(), config.mesh.idle_timeout());
        let server = transport::server_config(&identity, &agents)?;
        let mesh_server = Arc::new(transport::server_config(&identity, &mesh)?);
        let mesh_client = transport::client_config(&identity, &mesh)?;
        let metrics = Metrics::new();
        let relay = Arc::new(Relay::new(&config.limits));
        let udp = transport::udp_socket(config.listen, config.transport.udp_buffer_bytes)?;
        let bind_err = |source| TransportError::Bind {
            addr: config.listen,
            source,
        };
        let socket = socket::NodeSocket::new(
            udp,
            relay.clone(),
            config.roles.relay,
            config.limits.relay_datagram_bytes,
            metrics.clone(),
        )
        .map_err(bind_err)?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            transport::endpoint_config(),
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(mesh_client.clone());
        let health_listener = tokio::net::TcpListener::bind(config.health.listen)
            .await
            .map_err(|source| NodeError::HealthBind {
                addr: config.health.listen,
                source,
            })?;
        let health_addr = health_listener.local_addr().unwrap_or(config.health.listen);
        let tcp_listener = match (tcp, config.tcp.addr()) {
            (Some(l), _) => {
                l.set_nonblocking(true).ok();
                let addr = l.local_addr().unwrap_or(config.listen);
                Some(
                    tokio::net::TcpListener::from_std(l)
                        .map_err(|source| NodeError::TcpBind { addr, source })?,
                )
            }
            (None, Some(addr)) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::TcpBind { addr, source })?,
            ),
            (None, None) => None,
        };
        let tcp_tls = x0x_proto::tls::tcp_server_config(&identity)
            .map_err(|e| NodeError::TcpTls(e.to_string()))?;

        let mesh_addrs = config
            .peers
            .iter()
            .filter_map(|p| match p.addr {
                PeerAddr::Socket(a) => Some((canonical(a), p.id)),
                PeerAddr::Host { .. } => None,
            })
            .collect();
        let pinned = config.peers.iter().filter_map(|p| p.id).collect();
        let shared = Arc::new(Shared {
            peer_id: identity.peer_id(),
            incarnation: rand::random(),
            relay,
            admission: Admission::new(&config.limits),
            vouches: vouch::Vouches::default(),
            topics: Mutex::default(),
            registry: Registry::new(identity.peer_id()),
            endpoint,
            socket,
            metrics,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            mesh_client,
            mesh_server,
            directory: Mutex::new(Directory::new(config.limits.directory_records_per_peer)),
            mesh_ids: Mutex::new(HashMap::new()),
            mesh_addrs: Mutex::new(mesh_addrs),
            pinned,
            self_addrs: Mutex::new(HashSet::new()),
            config,
        });
        shared.update_gauges();

        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(shared.clone(), tasks.clone()));
        tasks.spawn(expire_loop(shared.clone()));
        tasks.spawn(session::track_addresses(shared.clone()));
        for peer in shared.config.peers.clone() {
            tasks.spawn(mesh::maintain(shared.clone(), peer));
        }
        tasks.spawn(health::serve(shared.clone(), health_listener));
        let tcp_addr = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(l) = tcp_listener {
            tasks.spawn(tcp::serve(shared.clone(), l, Arc::new(tcp_tls)));
        }
        info!(
            peer_id = %shared.peer_id,
            listen = %shared.endpoint.local_addr().map_or("?".into(), |a| a.to_string()),
            health = %health_addr,
            tcp = %tcp_addr.map_or("off".into(), |a| a.to_string()),
            peers = shared.config.peers.len(),
            roles = ?shared.config.roles,
            "node started"
        );
        Ok(Self {
            shared,
            tasks,
            health_addr,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// The Prometheus text `/metrics` serves.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(self.shared.live())
    }

    /// Stop accepting, close every connection with [`close::SHUTDOWN`], and
    /// wait (bounded by `grace`) for the close to reach peers.
    pub async fn shutdown(self, grace: Duration) {
        info!("shutting down");
        self.shared.shutdown.cancel();
        self.shared
            .endpoint
            .close(close::SHUTDOWN, b"node shutting down");
        let deadline = Instant::now() + grace;
        let _ = tokio::time::timeout(grace, self.shared.endpoint.wait_idle()).await;
        self.tasks.close();
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, self.tasks.wait()).await;
        info!("shutdown complete");
    }
}

async fn accept_loop(shared: Arc<Shared>, tasks: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            i = shared.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let remote = incoming.remote_address();
        // A TCP relay session counts against its TCP peer's address.
        let source = shared.socket.tcp_peer_of(&remote).unwrap_or(remote);
        let verdict = shared.admission.judge(
            source,
            incoming.remote_address_validated(),
            incoming.may_retry(),
            shared.is_mesh_addr(&remote),
            shared.registry.len(),
            Instant::now(),
        );
        match verdict {
            Verdict::Retry => {
                shared.metrics.accept_retries.inc();
                if incoming.retry().is_err() {
                    debug!(%remote, "retry not possible; dropped");
                }
            }
            Verdict::Refuse(reason) => {
                shared.metrics.reject_connection(reason);
                incoming.refuse();
            }
            Verdict::Mesh | Verdict::Accept => {
                let mesh = verdict == Verdict::Mesh;
                let slot = shared.admission.start(source, mesh);
                tasks.spawn(session::inbound(shared.clone(), incoming, mesh, slot));
            }
        }
    }
}

/// Close spent relay circuits and stale vouches, and share relay receive
/// budgets among circuits, once a second.
async fn expire_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // Ends come in pairs (opener, target): count each circuit once.
        for (i, closed) in shared.relay.expire(now).into_iter().enumerate() {
            let reason = match closed.reason {
                wire::CircuitEnd::Idle => "idle",
                wire::CircuitEnd::Lifetime => "lifetime",
                wire::CircuitEnd::Bytes => "bytes",
                wire::CircuitEnd::PeerLeft => "peer_left",
            };
            if i.is_multiple_of(2) {
                shared.metrics.close_circuit(reason);
            }
            shared.push_to_agent(
                &closed.agent,
                Message::CircuitClosed {
                    cid: closed.cid,
                    reason: closed.reason,
                },
            );
        }
        shared.relay.rebalance(now);
        shared.vouches.expire(now);
    }
}
