//! The agent SDK: join the network through bootstrap nodes.
//!
//! ```text
//! Agent::builder().network(cfg).build()   binds a QUIC endpoint (no traffic yet)
//! agent.join_network()                     dials every bootstrap node in parallel,
//!                                          learns the observed address (reflector),
//!                                          registers in the directory (coordinator)
//! agent.lookup / introduce                 directory and introductions
//! agent.send_relayed / recv_relayed        datagrams through a node's relay
//! ```
//!
//! After joining, a background task per bootstrap node redials it (with
//! backoff) whenever the connection drops, and registers again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use crate::mux_socket::MuxSocket;
use crate::network::{NetworkConfig, PeerAddr};
use x0x_proto::backoff::Backoff;
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::relay;
use x0x_proto::transport::{self, TransportError, TransportOptions};
use x0x_proto::wire::{self, AgentRecord, Message, PeerKind, RoleSet, close};

mod peer;

pub use peer::{ConnectOptions, PathKind, PeerConnection};

/// First byte of a relayed payload: an agent-to-agent QUIC packet.
const TAG_QUIC: u8 = b'Q';
/// First byte of a relayed payload: an application datagram ([`Agent::send_relayed`]).
const TAG_APP: u8 = b'A';
/// How long an introduced agent keeps punching toward the introduced peer.
const PUNCH_FOR: Duration = Duration::from_secs(2);
const PUNCH_EVERY: Duration = Duration::from_millis(100);

/// A bootstrap link that lived this long resets the redial backoff.
const STABLE_LINK: Duration = Duration::from_secs(2);
/// Punch tasks running at once; further introductions do not punch.
const MAX_PUNCHES: usize = 16;

/// How long one dial or one request may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("identity: {0}")]
    Identity(#[from] x0x_proto::identity::IdentityError),
    #[error("no bootstrap node could be reached: {}", .failures.join("; "))]
    NoBootstrapReachable { failures: Vec<String> },
    #[error("not connected to any bootstrap node")]
    NotConnected,
    #[error("not connected to bootstrap node {0}")]
    UnknownNode(PeerId),
    #[error("bootstrap node refused: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection error: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("timed out")]
    Timeout,
    #[error("cannot send datagram: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
    #[error("cannot reach peer {peer}: {}", .reasons.join("; "))]
    Unreachable { peer: PeerId, reasons: Vec<String> },
}

impl From<wire::WireError> for AgentError {
    fn from(e: wire::WireError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// One bootstrap node the agent is connected to.
#[derive(Debug, Clone)]
pub struct BootstrapLink {
    pub peer_id: PeerId,
    pub addr: SocketAddr,
    pub roles: RoleSet,
    /// This agent's address as the node saw it (if it is a reflector).
    pub observed: Option<SocketAddr>,
    pub rtt: Duration,
}

/// The outcome of [`Agent::join_network`].
#[derive(Debug, Clone)]
pub struct JoinReport {
    pub connected: Vec<BootstrapLink>,
    /// Bootstrap addresses that could not be reached before the deadline.
    pub failed: Vec<String>,
    /// The address reflectors observed (first one reported).
    pub observed_addr: Option<SocketAddr>,
    /// Nodes whose coordinator accepted our registration.
    pub registered: Vec<PeerId>,
}

/// A datagram received through a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedDatagram {
    pub from: PeerId,
    pub via: PeerId,
    pub payload: Bytes,
}

pub struct AgentBuilder {
    network: Option<NetworkConfig>,
    identity: Option<Identity>,
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

    /// Bind the agent's QUIC endpoint. Sends nothing yet.
    pub async fn build(self) -> Result<Agent, AgentError> {
        let network = self.network.unwrap_or_default();
        let identity = match self.identity {
            Some(i) => i,
            None => Identity::generate()?,
        };
        let opts = TransportOptions {
            keepalive: network.keepalive,
            idle_timeout: network.idle_timeout,
            ..TransportOptions::default()
        };
        let (server, client) = transport::configs(&identity, &opts)?;
        let udp = transport::udp_socket(network.bind, &opts)?;
        let bind_err = |source| TransportError::Bind {
            addr: network.bind,
            source,
        };
        let (socket, relay_queue) = MuxSocket::new(udp).map_err(bind_err)?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let (intro_tx, intro_rx) = mpsc::channel(256);
        let (relay_tx, relay_rx) = mpsc::channel(4096);
        let (accept_tx, accept_rx) = mpsc::channel(256);
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            peer_id: identity.peer_id(),
            incarnation: rand::random(),
            network,
            endpoint,
            socket,
            links: Mutex::new(HashMap::new()),
            punches: Arc::default(),
            maintained: Mutex::default(),
            intro_tx,
            relay_tx,
            cancel: cancel.clone(),
        });
        tokio::spawn(peer::pump_relayed(inner.clone(), relay_queue));
        tokio::spawn(peer::accept_loop(inner.clone(), accept_tx));
        Ok(Agent {
            inner,
            introductions: AsyncMutex::new(intro_rx),
            relayed: AsyncMutex::new(relay_rx),
            accepted: AsyncMutex::new(accept_rx),
            _guard: cancel.drop_guard(),
        })
    }
}

struct Link {
    conn: quinn::Connection,
    info: BootstrapLink,
}

struct Inner {
    peer_id: PeerId,
    incarnation: u64,
    network: NetworkConfig,
    endpoint: quinn::Endpoint,
    socket: Arc<MuxSocket>,
    links: Mutex<HashMap<PeerId, Link>>,
    /// Bootstrap addresses with a task keeping them connected.
    maintained: Mutex<std::collections::HashSet<PeerAddr>>,
    /// Punch tasks running now.
    punches: Arc<std::sync::atomic::AtomicUsize>,
    intro_tx: mpsc::Sender<AgentRecord>,
    relay_tx: mpsc::Sender<RelayedDatagram>,
    cancel: CancellationToken,
}

/// An agent on the x0x network.
pub struct Agent {
    inner: Arc<Inner>,
    introductions: AsyncMutex<mpsc::Receiver<AgentRecord>>,
    relayed: AsyncMutex<mpsc::Receiver<RelayedDatagram>>,
    accepted: AsyncMutex<mpsc::Receiver<PeerConnection>>,
    _guard: DropGuard,
}

impl Agent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder {
            network: None,
            identity: None,
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Connect to every configured bootstrap node in parallel (retrying
    /// until `join_timeout`), learn the observed address and register with
    /// each coordinator. Fails if no bootstrap node could be reached.
    pub async fn join_network(&self) -> Result<JoinReport, AgentError> {
        let deadline = Instant::now() + self.inner.network.join_timeout;
        let mut pending = Vec::new();
        for addr in self.inner.network.bootstrap_peers.clone() {
            // Each address is maintained by one task for the agent's life;
            // joining again only reports on the links that exist.
            if !self
                .inner
                .maintained
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr.clone())
            {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            tokio::spawn(maintain(self.inner.clone(), addr, deadline, tx));
            pending.push(rx);
        }
        if pending.is_empty() {
            while self.bootstrap_nodes().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let connected = self.bootstrap_nodes();
            if connected.is_empty() {
                return Err(AgentError::NoBootstrapReachable {
                    failures: vec!["still trying every bootstrap node in the background".into()],
                });
            }
            return Ok(JoinReport {
                observed_addr: connected.iter().find_map(|l| l.observed),
                registered: connected
                    .iter()
                    .filter(|l| l.roles.coordinator)
                    .map(|l| l.peer_id)
                    .collect(),
                connected,
                failed: Vec::new(),
            });
        }
        let mut report = JoinReport {
            connected: Vec::new(),
            failed: Vec::new(),
            observed_addr: None,
            registered: Vec::new(),
        };
        for rx in pending {
            match rx.await {
                Ok(Ok((link, registered))) => {
                    report.observed_addr = report.observed_addr.or(link.observed);
                    if registered {
                        report.registered.push(link.peer_id);
                    }
                    report.connected.push(link);
                }
                Ok(Err(e)) => report.failed.push(e),
                Err(_) => report.failed.push("join cancelled".into()),
            }
        }
        if report.connected.is_empty() {
            return Err(AgentError::NoBootstrapReachable {
                failures: report.failed,
            });
        }
        Ok(report)
    }

    /// Bootstrap nodes connected now.
    pub fn bootstrap_nodes(&self) -> Vec<BootstrapLink> {
        self.inner
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.info.clone())
            .collect()
    }

    /// The address reflectors report for this agent.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_nodes().iter().find_map(|l| l.observed)
    }

    /// Find another agent through any connected bootstrap node.
    pub async fn lookup(&self, peer: PeerId) -> Result<Option<AgentRecord>, AgentError> {
        let found = |m: &Message| matches!(m, Message::Found { record: Some(_) });
        match self
            .inner
            .request_any(Message::Lookup { peer }, found)
            .await?
        {
            Message::Found { record } => Ok(record),
            other => Err(unexpected(other)),
        }
    }

    /// Ask a coordinator to introduce us to `peer`: the peer receives our
    /// record (see [`Agent::next_introduction`]) and we get theirs.
    pub async fn introduce(&self, peer: PeerId) -> Result<AgentRecord, AgentError> {
        match self
            .inner
            .request_any(Message::Introduce { peer }, |m| {
                matches!(m, Message::Introduction { .. })
            })
            .await?
        {
            Message::Introduction { record } => Ok(record),
            other => Err(unexpected(other)),
        }
    }

    /// The next introduction a coordinator delivered: an agent that wants to connect.
    pub async fn next_introduction(&self) -> Option<AgentRecord> {
        self.introductions.lock().await.recv().await
    }

    /// Send `payload` to agent `to` through the relay of bootstrap node `via`.
    pub fn send_relayed(&self, via: PeerId, to: PeerId, payload: &[u8]) -> Result<(), AgentError> {
        let conn = self.inner.link(&via).ok_or(AgentError::UnknownNode(via))?;
        let mut tagged = Vec::with_capacity(payload.len() + 1);
        tagged.push(TAG_APP);
        tagged.extend_from_slice(payload);
        conn.send_datagram(relay::join(&to, &tagged))?;
        Ok(())
    }

    /// The next datagram relayed to us.
    pub async fn recv_relayed(&self) -> Option<RelayedDatagram> {
        self.relayed.lock().await.recv().await
    }

    /// Close every connection and stop reconnecting.
    pub async fn close(self) {
        // Close first, so the close frames of relayed connections still get
        // pumped to their relays; then stop the background tasks.
        self.inner.endpoint.close(close::NORMAL, b"agent closing");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        self.inner.cancel.cancel();
    }
}

fn unexpected(msg: Message) -> AgentError {
    match msg {
        Message::Refused { reason } => AgentError::Refused(reason),
        other => AgentError::Protocol(format!("unexpected reply {other:?}")),
    }
}

impl Inner {
    fn link(&self, node: &PeerId) -> Option<quinn::Connection> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(|l| l.conn.clone())
    }

    fn connections(&self) -> Vec<quinn::Connection> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.conn.clone())
            .collect()
    }

    /// Send a request to the first node that answers it.
    /// Ask each connected node in turn until one gives a reply `good`
    /// accepts (a node may refuse, e.g. without the coordinator role, or not
    /// know the peer while partitioned). Returns the last reply otherwise.
    async fn request_any(
        &self,
        msg: Message,
        good: fn(&Message) -> bool,
    ) -> Result<Message, AgentError> {
        let mut last = Err(AgentError::NotConnected);
        for conn in self.connections() {
            match request(&conn, &msg).await {
                Ok(reply) if good(&reply) => return Ok(reply),
                other => last = other,
            }
        }
        last
    }
}

/// One request/response on its own stream.
async fn request(conn: &quinn::Connection, msg: &Message) -> Result<Message, AgentError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        wire::write_frame(&mut send, msg).await?;
        let _ = send.finish();
        wire::read_frame(&mut recv)
            .await?
            .ok_or_else(|| AgentError::Protocol("stream ended without a reply".into()))
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| AgentError::Timeout)?
}

type FirstResult = Result<(BootstrapLink, bool), String>;

/// Keep one bootstrap node connected: report the first outcome on `first`
/// (giving up on it at `deadline`), then redial whenever the link drops.
async fn maintain(
    inner: Arc<Inner>,
    addr: PeerAddr,
    deadline: Instant,
    first: oneshot::Sender<FirstResult>,
) {
    let mut first = Some(first);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let attempt = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = connect(&inner, &addr, dial_timeout(first.is_some(), deadline)) => r,
        };
        match attempt {
            Ok((conn, control, info)) => {
                let duplicate = {
                    let mut links = inner.links.lock().unwrap_or_else(|e| e.into_inner());
                    let live = links
                        .get(&info.peer_id)
                        .is_some_and(|l| l.conn.close_reason().is_none());
                    if !live {
                        let link = Link {
                            conn: conn.clone(),
                            info: info.clone(),
                        };
                        links.insert(info.peer_id, link);
                    }
                    live
                };
                if duplicate {
                    // The same node under another address: one link per node.
                    conn.close(close::DUPLICATE, b"already connected to this node");
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(format!(
                            "{addr}: same node as another bootstrap address"
                        )));
                    }
                    return;
                }
                let registered = register(&inner, &conn, &info).await;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok((info.clone(), registered)));
                }
                let started = Instant::now();
                run_link(&inner, conn, control, info).await;
                if started.elapsed() >= STABLE_LINK {
                    backoff.reset();
                }
            }
            Err(e) => {
                debug!(%addr, "bootstrap dial failed: {e}");
                if Instant::now() >= deadline
                    && let Some(tx) = first.take()
                {
                    // Report the failure to join_network, but keep trying:
                    // the node may be rebooting.
                    let _ = tx.send(Err(format!("{addr}: {e}")));
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// While `join_network` waits, a dial may not outlast its deadline.
fn dial_timeout(joining: bool, deadline: Instant) -> Duration {
    if !joining {
        return STEP_TIMEOUT;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    left.clamp(Duration::from_millis(200), STEP_TIMEOUT)
}

async fn connect(
    inner: &Inner,
    addr: &PeerAddr,
    timeout: Duration,
) -> Result<(quinn::Connection, Control, BootstrapLink), String> {
    let resolved = addr
        .resolve()
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let (conn, peer) = transport::dial_any(&inner.endpoint, &resolved, timeout).await?;
    let socket = crate::network::canonical(conn.remote_address());
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let msg = Message::Hello {
            kind: PeerKind::Agent,
            incarnation: inner.incarnation,
        };
        wire::write_frame(&mut send, &msg).await?;
        match wire::read_frame(&mut recv).await? {
            Some(Message::Welcome {
                roles, observed, ..
            }) => Ok((send, recv, roles, observed)),
            other => Err(AgentError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    };
    let (send, recv, roles, observed) = tokio::time::timeout(STEP_TIMEOUT, hello)
        .await
        .map_err(|_| "no Welcome from node".to_string())?
        .map_err(|e| e.to_string())?;
    let info = BootstrapLink {
        peer_id: peer,
        addr: socket,
        roles,
        observed,
        rtt: conn.rtt(),
    };
    Ok((conn, (send, recv), info))
}

/// The control stream. Our side sends nothing after `Hello`, but keeps the
/// send half open: finishing it would tell the node we are leaving.
type Control = (quinn::SendStream, quinn::RecvStream);

/// Register with the node's coordinator. Returns whether it accepted.
async fn register(inner: &Inner, conn: &quinn::Connection, info: &BootstrapLink) -> bool {
    if !info.roles.coordinator {
        return false;
    }
    let mut addrs = Vec::new();
    if let Ok(local) = inner.endpoint.local_addr()
        && !local.ip().is_unspecified()
    {
        addrs.push(local);
    }
    matches!(
        request(conn, &Message::Register { addrs }).await,
        Ok(Message::Registered { .. })
    )
}

/// Serve one bootstrap link until it closes: introductions pushed on the
/// control stream and relayed datagrams.
async fn run_link(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    control: Control,
    info: BootstrapLink,
) {
    let (_send, mut control) = control;
    let node = info.peer_id;
    let pushes = async {
        while let Ok(Some(msg)) = wire::read_frame(&mut control).await {
            if let Message::Introduction { record } = msg {
                // Open our NAT toward the peer that is about to dial us.
                let targets = punch_targets(&record.addrs);
                let running = inner.punches.clone();
                if running.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_PUNCHES {
                    let socket = inner.socket.clone();
                    tokio::spawn(async move {
                        punch(socket, targets).await;
                        running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    });
                } else {
                    running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = inner.intro_tx.try_send(record);
            }
        }
    };
    let datagrams = async {
        while let Ok(d) = conn.read_datagram().await {
            let Some((from, payload)) = relay::split(&d) else {
                continue;
            };
            match payload.first() {
                Some(&TAG_QUIC) => inner.socket.deliver(node, from, payload.slice(1..)),
                Some(&TAG_APP) => {
                    let payload = payload.slice(1..);
                    let _ = inner.relay_tx.try_send(RelayedDatagram {
                        from,
                        via: node,
                        payload,
                    });
                }
                _ => {} // not ours: drop
            }
        }
    };
    tokio::select! {
        _ = pushes => {},
        _ = datagrams => {},
        _ = conn.closed() => {},
        _ = inner.cancel.cancelled() => {},
    }
    let mut links = inner.links.lock().unwrap_or_else(|e| e.into_inner());
    if links
        .get(&node)
        .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
    {
        links.remove(&node);
    }
}

/// Where to punch for an introduced peer: the address the node observed
/// (first in the record) and self-reported addresses only if they are
/// private or local, so a registered record cannot aim our packets at
/// arbitrary public hosts.
fn punch_targets(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let local = |a: &SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local()
        }
    };
    addrs
        .iter()
        .enumerate()
        .filter(|(i, a)| *i == 0 || local(a))
        .map(|(_, a)| *a)
        .take(x0x_proto::wire::MAX_ADDRS)
        .collect()
}

/// Send punch packets to `addrs` for [`PUNCH_FOR`].
async fn punch(socket: Arc<MuxSocket>, addrs: Vec<SocketAddr>) {
    let rounds = PUNCH_FOR.as_millis() / PUNCH_EVERY.as_millis();
    for _ in 0..rounds {
        for addr in &addrs {
            socket.punch(*addr);
        }
        tokio::time::sleep(PUNCH_EVERY).await;
    }
}
