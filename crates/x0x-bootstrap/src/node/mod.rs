//! The bootstrap node: a QUIC endpoint, the mesh of configured peers, the
//! three roles, and the health server.
//!
//! [`Node::start`] binds everything before it returns (so a caller can
//! report readiness), [`Node::shutdown`] closes every connection with an
//! application close code so peers see the departure at once.

mod mesh;
mod registry;
mod session;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::roles::coordinator::Directory;
use crate::roles::relay::Limiter;
use registry::Registry;
use x0x_proto::addr::{PeerAddr, canonical};
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::transport::{self, TransportError, TransportOptions};
use x0x_proto::wire::{AgentRecord, Message, PeerKind, RoleSet, close};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot bind health server on {addr}: {source}")]
    HealthBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State shared by every task of a node.
pub(crate) struct Shared {
    pub peer_id: PeerId,
    /// Random per process: lets peers tell a restart from a duplicate.
    pub incarnation: u64,
    pub config: Config,
    pub endpoint: quinn::Endpoint,
    pub registry: Registry,
    pub limiter: Limiter,
    pub metrics: Metrics,
    pub started: Instant,
    pub shutdown: CancellationToken,
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

    /// Queue a control message to every connected mesh peer.
    pub fn broadcast(&self, msg: Message) {
        for (peer, entry) in self.registry.of_kind(PeerKind::Node) {
            self.send_control(&peer, &entry, msg.clone());
        }
    }

    fn send_control(&self, peer: &PeerId, entry: &registry::Entry, msg: Message) -> bool {
        match entry.control.try_send(msg) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                // A peer that cannot keep up would miss directory updates;
                // reconnecting gives it a fresh snapshot.
                warn!(peer = %peer, "control queue full; closing connection");
                entry.conn.close(close::PROTOCOL, b"control queue overflow");
                false
            }
            Err(_) => false,
        }
    }

    /// Tell the local agent `to` that `from` wants to connect.
    pub fn deliver_introduction(&self, to: &PeerId, from: AgentRecord) -> bool {
        match self.registry.get(to) {
            Some(entry) if entry.kind == PeerKind::Agent => {
                self.send_control(to, &entry, Message::Introduction { record: from })
            }
            _ => false,
        }
    }

    /// Ask mesh peer `home` to deliver an introduction to its agent `to`.
    pub fn forward_introduction(&self, home: &PeerId, from: AgentRecord, to: PeerId) -> bool {
        match self.registry.get(home) {
            Some(entry) if entry.kind == PeerKind::Node => {
                self.send_control(home, &entry, Message::ForwardIntroduction { from, to })
            }
            _ => false,
        }
    }

    /// Change the directory and send the resulting update to every mesh
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
                self.limiter.forget(&peer);
                self.update_directory(|d| d.unregister(&peer));
            }
            PeerKind::Node => self.directory().drop_peer(&peer),
        }
        self.update_gauges();
    }

    pub fn update_gauges(&self) {
        let (nodes, agents) = self.registry.counts();
        self.metrics.peers_connected.set(nodes as i64);
        self.metrics.agents_connected.set(agents as i64);
        let known = self.directory().len();
        self.metrics.directory_agents.set(known as i64);
    }

    /// RTTs of live connections and open relay circuits, for `/metrics`.
    pub fn live_paths(&self) -> crate::metrics::RttSnapshot {
        let secs = |e: &registry::Entry| e.conn.rtt().as_secs_f64();
        crate::metrics::RttSnapshot {
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
            relay_circuits: self.limiter.circuits(),
        }
    }

    pub fn health(&self) -> Health {
        let (peers, agents) = self.registry.counts();
        let expected = self
            .config
            .peers
            .len()
            .saturating_sub(lock(&self.self_addrs).len());
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
}

/// A running bootstrap node.
pub struct Node {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    health_addr: SocketAddr,
}

impl Node {
    /// Bind the QUIC socket and the health server, then start accepting,
    /// dialing the configured peers and serving health.
    pub async fn start(config: Config, identity: Identity) -> Result<Self, NodeError> {
        let opts = TransportOptions::for_node(
            config.transport.keepalive(),
            config.transport.idle_timeout(),
            config.transport.udp_buffer_bytes,
        );
        let endpoint = transport::endpoint(&identity, config.listen, &opts)?;
        let health_listener = tokio::net::TcpListener::bind(config.health.listen)
            .await
            .map_err(|source| NodeError::HealthBind {
                addr: config.health.listen,
                source,
            })?;
        let health_addr = health_listener.local_addr().unwrap_or(config.health.listen);

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
            limiter: Limiter::new(&config.limits),
            registry: Registry::new(identity.peer_id()),
            endpoint,
            metrics: Metrics::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            directory: Mutex::new(Directory::default()),
            mesh_ids: Mutex::new(HashMap::new()),
            mesh_addrs: Mutex::new(mesh_addrs),
            pinned,
            self_addrs: Mutex::new(HashSet::new()),
            config,
        });

        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(shared.clone(), tasks.clone()));
        for peer in shared.config.peers.clone() {
            tasks.spawn(mesh::maintain(shared.clone(), peer));
        }
        tasks.spawn(health::serve(shared.clone(), health_listener));
        info!(
            peer_id = %shared.peer_id,
            listen = %shared.endpoint.local_addr().map_or("?".into(), |a| a.to_string()),
            health = %health_addr,
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

/// Source IPs tracked for the accept-rate limit before idle ones are pruned.
const ACCEPT_TRACKED_IPS: usize = 4096;

async fn accept_loop(shared: Arc<Shared>, tasks: TaskTracker) {
    let rate = shared.config.limits.accept_per_sec;
    let mut per_ip: HashMap<std::net::IpAddr, crate::roles::relay::Bucket> = HashMap::new();
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            i = shared.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let remote = canonical(incoming.remote_address());
        // Configured mesh peers are never locked out by agents or floods.
        if !shared.is_mesh_addr(&remote) {
            if shared.registry.len() >= shared.config.limits.max_connections {
                shared.metrics.reject_connection("max_connections");
                incoming.refuse();
                continue;
            }
            let now = Instant::now();
            if per_ip.len() >= ACCEPT_TRACKED_IPS {
                per_ip.retain(|_, b| !b.is_full(now));
            }
            let bucket = per_ip
                .entry(remote.ip())
                .or_insert_with(|| crate::roles::relay::Bucket::new(rate, now));
            if !bucket.take(1.0, now) {
                shared.metrics.reject_connection("accept_rate");
                incoming.refuse();
                continue;
            }
        }
        tasks.spawn(session::inbound(shared.clone(), incoming));
    }
}
