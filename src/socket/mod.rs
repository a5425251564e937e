//! The agent's socket: one UDP socket under quinn, owning every path to
//! every remote agent.
//!
//! ```text
//!             quinn::Endpoint (one per agent)
//!   node links: real addresses │  peers: one mapped address each
//!                    ┌─────────┴───────────────────────────┐
//!                    │ MuxSocket                            │
//!                    │  Table: Remote per peer (remote.rs)  │
//!                    │   direct paths ─┐  relay paths ─┐    │
//!                    └─────────────────┼───────────────┼────┘
//!                            UDP to the peer   [0x01][cid][QUIC] to a node
//! ```
//!
//! quinn sees one stable *mapped* address per remote agent (IPv6
//! `fd58:3078::/32`, or IPv4 `240.0.0.0/4` on an IPv4 socket; neither is
//! ever routed). A packet quinn sends to a mapped address goes out on the
//! path the remote's state selects; packets arriving on any of its paths
//! are handed to quinn as coming from the mapped address. So a connection
//! moves between direct and relayed paths with no handshake and no QUIC
//! migration. Bootstrap nodes are reached at their real addresses; any
//! other source is dropped.
//!
//! Paths are validated and kept alive by authenticated probes
//! ([`probe`]); [`MuxSocket::maintain`] runs the timers (pings, punching
//! rounds, failure detection, expiry) and is called by the agent's path
//! task.

mod mapped;
pub mod probe;
pub mod remote;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::{broadcast, mpsc};
use x0x_proto::batch;
use x0x_proto::canonical;
use x0x_proto::identity::PeerId;
use x0x_proto::relay::{self, RELAY_HEADER_LEN, TYPE_PROBE, TYPE_RELAY, TYPE_VOUCH};

use crate::path::{PathEvent, PathInfo, PathKind, Transport};
pub use mapped::is_mapped;
use probe::{Body, ProbeKey, Tx};
use remote::{BACKUP_PING, Origin, PathId, PathPolicy, ROUND_OUTCOME_AFTER, Remote};

/// Remotes kept at most; beyond it, the longest-unused one without a
/// connection is dropped.
pub const MAX_REMOTES: usize = 16_384;
/// A remote with no connection for this long is forgotten.
pub const REMOTE_IDLE: Duration = Duration::from_secs(30);
/// Datagrams split out of mixed receive batches, waiting for quinn.
const OVERFLOW: usize = 4096;
/// Path events buffered per remote for slow listeners.
const EVENTS: usize = 64;

/// What the socket asks of the agent.
#[derive(Debug)]
pub enum Signal {
    /// A vouch nonce arrived from a node: return it.
    Nonce([u8; 16]),
    /// `peer` offered candidates its record does not vouch for (it may have
    /// learned them since we looked it up): look it up again.
    Unvouched(PeerId),
}

/// The receiving end of [`Signal`]s.
pub type Signals = mpsc::Receiver<Signal>;

/// A peer's record is looked up again for unvouched candidates at most this often.
const RELOOKUP_EVERY: Duration = Duration::from_secs(3);

/// Counters with stable names (see [`crate::AgentStats`]).
#[derive(Debug, Default)]
pub struct SocketStats {
    pub holepunch_success: AtomicU64,
    pub holepunch_failed: AtomicU64,
    pub upgrades_relayed_direct: AtomicU64,
    pub downgrades_direct_relayed: AtomicU64,
    pub switches_relayed_relayed: AtomicU64,
    pub switches_direct_direct: AtomicU64,
    pub dropped_unknown_source: AtomicU64,
    pub dropped_bad_probe: AtomicU64,
}

#[derive(Default)]
struct Table {
    remotes: HashMap<PeerId, Remote>,
    by_mapped: HashMap<SocketAddr, PeerId>,
    by_direct: HashMap<SocketAddr, PeerId>,
    by_cid: HashMap<(SocketAddr, u64), PeerId>,
    /// Bootstrap node addresses: their traffic passes through untouched.
    nodes: HashSet<SocketAddr>,
    events: HashMap<PeerId, broadcast::Sender<PathEvent>>,
    /// Our own candidate addresses, offered in `Call`s.
    own: Vec<SocketAddr>,
    mapped: mapped::Allocator,
}

/// Work the agent must do after [`MuxSocket::maintain`].
#[derive(Debug, Default)]
pub struct Chores {
    /// Peers with live connections that need (more) relay circuits.
    pub want_circuits: Vec<PeerId>,
    /// Nodes whose links should send a packet now: a path through them is
    /// missing pongs, or a direct path failed (this agent's address may
    /// have changed; a packet on each link moves it at the node too).
    pub poke_nodes: Vec<SocketAddr>,
    /// A direct path failed: poke every node.
    pub poke_all: bool,
}

/// Where one copy of a transmit goes.
#[derive(Debug)]
enum Dest {
    Udp(SocketAddr),
    Relay(SocketAddr, u64),
}

/// Bootstrap nodes reached over TCP (UDP blocked): what goes to their
/// UDP address goes down their WebSocket instead.
#[derive(Default)]
struct TcpRoutes {
    routes: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// When a UDP check to a node was last echoed (UDP works again).
    udp_echo: HashMap<SocketAddr, Instant>,
    checks: HashMap<[u8; 8], SocketAddr>,
    /// Hairpin checks sent, and whether each came back.
    hairpin: HashMap<[u8; 8], bool>,
}

/// Datagrams from TCP links waiting for the socket.
const TCP_INBOUND: usize = 8192;

/// See the module documentation.
pub struct MuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    ipv6: bool,
    me: PeerId,
    table: Mutex<Table>,
    tcp: Mutex<TcpRoutes>,
    tcp_in: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    overflow: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    waker: AtomicWaker,
    signals: mpsc::Sender<Signal>,
    pub stats: SocketStats,
}

impl fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn tx() -> Tx {
    rand::random()
}

impl MuxSocket {
    /// Wrap a bound UDP socket for the agent `me`. What the agent must do
    /// for it (vouch nonces to return, records to look up again) comes on
    /// the returned channel.
    pub fn new(socket: std::net::UdpSocket, me: PeerId) -> io::Result<(Arc<Self>, Signals)> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        let (signals, rx) = mpsc::channel(64);
        let table = Table {
            mapped: mapped::Allocator::new(ipv6),
            ..Table::default()
        };
        Ok((
            Arc::new(Self {
                inner,
                ipv6,
                me,
                table: Mutex::new(table),
                tcp: Mutex::default(),
                tcp_in: Mutex::default(),
                overflow: Mutex::new(VecDeque::new()),
                waker: AtomicWaker::new(),
                signals,
                stats: SocketStats::default(),
            }),
            rx,
        ))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `addr` as the socket can send to it (IPv4-mapped on a dual-stack
    /// socket); `None` if the socket cannot reach that family.
    fn for_socket(&self, addr: SocketAddr) -> Option<SocketAddr> {
        match (self.ipv6, addr) {
            (true, SocketAddr::V4(v4)) => {
                Some(SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()))
            }
            (false, SocketAddr::V6(v6)) => v6
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddr::new(ip.into(), v6.port())),
            _ => Some(addr),
        }
    }

    /// Whether the socket can send to `addr`'s family.
    pub fn reaches(&self, addr: &SocketAddr) -> bool {
        self.for_socket(*addr).is_some()
    }

    /// Let traffic from and to bootstrap node `addr` through.
    pub fn allow_node(&self, addr: SocketAddr) {
        self.table().nodes.insert(canonical(addr));
    }

    /// Our own candidate addresses, as last set.
    pub fn own_candidates(&self) -> Vec<SocketAddr> {
        self.table().own.clone()
    }

    /// Our own candidate addresses (observed by nodes, local interfaces, vouched).
    pub fn set_own_candidates(&self, addrs: Vec<SocketAddr>) {
        let mut t = self.table();
        if t.own != addrs {
            t.own = addrs;
            for r in t.remotes.values_mut() {
                r.punch.reset(Instant::now());
            }
        }
    }

    /// The mapped address of `peer`, creating its state if needed; adds
    /// `candidates` (from a node's record, which also vouches for them).
    pub fn remote(&self, peer: PeerId, candidates: &[SocketAddr], initiator: bool) -> SocketAddr {
        let now = Instant::now();
        let mut guard = self.table();
        let t = &mut *guard;
        if !t.remotes.contains_key(&peer) {
            if t.remotes.len() >= MAX_REMOTES {
                evict_one(t);
            }
            let mapped = t.mapped.next();
            t.by_mapped.insert(mapped, peer);
            t.remotes.insert(peer, Remote::new(peer, mapped, now));
        }
        let r = t.remotes.get_mut(&peer).expect("just inserted");
        r.initiator |= initiator;
        r.last_active = now;
        for a in candidates {
            let a = canonical(*a);
            if !r.vouched.contains(&a) {
                r.vouched.push(a);
            }
        }
        for a in candidates {
            if self.reaches(a) && r.add_direct(*a, Origin::Directory) {
                t.by_direct.insert(canonical(*a), peer);
            }
        }
        r.mapped
    }

    /// Restrict the paths of `peer`'s connections.
    /// The path policy set for `peer`, if the socket knows it.
    pub fn policy(&self, peer: &PeerId) -> Option<PathPolicy> {
        self.table().remotes.get(peer).map(|r| r.policy)
    }

    pub fn set_policy(&self, peer: &PeerId, policy: PathPolicy) {
        if let Some(r) = self.table().remotes.get_mut(peer) {
            r.policy = policy;
            // A path the new policy forbids (left selected by an earlier
            // connection to the same peer) is no longer the current one.
            let forbidden = matches!(
                (policy, r.selected),
                (PathPolicy::RelayOnly, Some(remote::PathId::Direct(_)))
                    | (PathPolicy::DirectOnly, Some(remote::PathId::Relay(_)))
            );
            if forbidden {
                r.selected = None;
            }
        }
    }

    /// The peer behind a mapped address.
    pub fn peer_of(&self, mapped: &SocketAddr) -> Option<PeerId> {
        self.table().by_mapped.get(mapped).copied()
    }

    /// A relay circuit to `peer` through `node` (at `node_addr`), tagged `cid`.
    pub fn add_relay(&self, peer: PeerId, node: PeerId, node_addr: SocketAddr, cid: u64) {
        let mut guard = self.table();
        let t = &mut *guard;
        let Some(r) = t.remotes.get_mut(&peer) else {
            return;
        };
        let node_addr = canonical(node_addr);
        if let Some(old) = r.relays.iter().find(|p| p.node == node) {
            t.by_cid.remove(&(old.node_addr, old.cid));
        }
        r.add_relay(node, node_addr, cid);
        t.by_cid.insert((node_addr, cid), peer);
        let change = r.select();
        if let Some(change) = change {
            self.emit(t, &peer, change, Instant::now());
        }
    }

    /// The circuit `cid` at `node_addr` closed.
    pub fn circuit_closed(&self, node_addr: SocketAddr, cid: u64) {
        let mut guard = self.table();
        let t = &mut *guard;
        let Some(peer) = t.by_cid.remove(&(canonical(node_addr), cid)) else {
            return;
        };
        if let Some(r) = t.remotes.get_mut(&peer) {
            r.relays.retain(|p| p.cid != cid);
            if let Some(change) = r.select() {
                self.emit(t, &peer, change, Instant::now());
            }
        }
    }

    /// Bootstrap node `node` is gone: its circuits with it.
    pub fn node_lost(&self, node: &PeerId) {
        let mut guard = self.table();
        let t = &mut *guard;
        let now = Instant::now();
        let mut changes = Vec::new();
        for r in t.remotes.values_mut() {
            if let Some(p) = r.relays.iter().find(|p| p.node == *node) {
                t.by_cid.remove(&(p.node_addr, p.cid));
            }
            if r.remove_relay(node)
                && let Some(change) = r.select()
            {
                changes.push((r.peer, change));
            }
        }
        for (peer, change) in changes {
            self.emit(t, &peer, change, now);
        }
    }

    /// A connection with `peer` completed: its probe key, and one more user of the mapped address.
    pub fn attach(&self, peer: &PeerId, key: Option<ProbeKey>) {
        let early = self.attach_inner(peer, key);
        for p in early {
            self.on_probe(&p.packet, p.source, p.via);
        }
    }

    fn attach_inner(&self, peer: &PeerId, key: Option<ProbeKey>) -> Vec<remote::EarlyProbe> {
        let mut t = self.table();
        let mut early = Vec::new();
        if let Some(r) = t.remotes.get_mut(peer) {
            r.connections += 1;
            r.last_active = Instant::now();
            if let Some(k) = key {
                r.keys.push(k);
                if r.keys.len() > 2 {
                    r.keys.remove(0);
                }
                // Probe at once: the handshake may have gone direct already.
                r.punch.reset(Instant::now());
                early = std::mem::take(&mut r.early_probes);
            }
        }
        early
    }

    /// A connection with `peer` ended.
    pub fn detach(&self, peer: &PeerId) {
        if let Some(r) = self.table().remotes.get_mut(peer) {
            r.connections = r.connections.saturating_sub(1);
            r.last_active = Instant::now();
        }
    }

    /// Path changes of `peer`'s connections.
    pub fn subscribe(&self, peer: &PeerId) -> broadcast::Receiver<PathEvent> {
        self.table()
            .events
            .entry(*peer)
            .or_insert_with(|| broadcast::channel(EVENTS).0)
            .subscribe()
    }

    /// How this agent's packets for `peer` leave it now.
    pub fn transport(&self, peer: &PeerId) -> Transport {
        let t = self.table();
        let Some(r) = t.remotes.get(peer) else {
            return Transport::Udp;
        };
        match r.selected {
            Some(PathId::Relay(n)) => r
                .relays
                .iter()
                .find(|p| p.node == n)
                .filter(|p| self.over_tcp(&p.node_addr))
                .map_or(Transport::Udp, |_| Transport::Tcp),
            _ => Transport::Udp,
        }
    }

    /// The path `peer`'s packets use now: (kind, relaying node).
    pub fn current_path(&self, peer: &PeerId) -> Option<(PathKind, Option<PeerId>)> {
        let t = self.table();
        let r = t.remotes.get(peer)?;
        Some(match r.selected? {
            PathId::Direct(_) => (PathKind::Direct, None),
            PathId::Relay(n) => (PathKind::Relayed, Some(n)),
        })
    }

    /// Every path to `peer`.
    pub fn paths(&self, peer: &PeerId) -> Vec<PathInfo> {
        let t = self.table();
        let Some(r) = t.remotes.get(peer) else {
            return Vec::new();
        };
        let direct = r.direct.iter().map(|d| PathInfo {
            kind: PathKind::Direct,
            addr: d.addr,
            via: None,
            rtt: d.health.rtt,
            usable: d.usable(),
            selected: r.selected == Some(PathId::Direct(d.addr)),
        });
        let relays = r.relays.iter().map(|p| PathInfo {
            kind: PathKind::Relayed,
            addr: p.node_addr,
            via: Some(p.node),
            rtt: p.health.rtt,
            usable: p.usable(),
            selected: r.selected == Some(PathId::Relay(p.node)),
        });
        direct.chain(relays).collect()
    }

    /// When a direct path to `peer` was first validated.
    pub fn direct_since(&self, peer: &PeerId) -> Option<Instant> {
        self.table().remotes.get(peer)?.direct_at
    }

    /// Nodes relaying for `peer` now.
    pub fn relay_nodes(&self, peer: &PeerId) -> Vec<PeerId> {
        self.table()
            .remotes
            .get(peer)
            .map(|r| r.relays.iter().map(|p| p.node).collect())
            .unwrap_or_default()
    }

    /// Remotes known now.
    #[cfg(test)]
    pub fn remotes(&self) -> usize {
        self.table().remotes.len()
    }

    fn tcp(&self) -> MutexGuard<'_, TcpRoutes> {
        self.tcp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send what goes to `node_addr` down `route` (a WebSocket to that
    /// node) instead of UDP, or (`None`) over UDP again.
    pub fn set_tcp_route(&self, node_addr: SocketAddr, route: Option<mpsc::Sender<Vec<u8>>>) {
        let key = canonical(node_addr);
        let mut t = self.tcp();
        match route {
            Some(r) => {
                t.routes.insert(key, r);
                t.udp_echo.remove(&key);
            }
            None => {
                t.routes.remove(&key);
            }
        }
    }

    /// Stop routing `node_addr` down `route` (if that is still its route).
    pub fn clear_tcp_route(&self, node_addr: &SocketAddr, route: &mpsc::Sender<Vec<u8>>) {
        let key = canonical(*node_addr);
        let mut t = self.tcp();
        if t.routes.get(&key).is_some_and(|r| r.same_channel(route)) {
            t.routes.remove(&key);
        }
    }

    /// Whether `node_addr` is reached over TCP now.
    pub fn over_tcp(&self, node_addr: &SocketAddr) -> bool {
        self.tcp().routes.contains_key(&canonical(*node_addr))
    }

    /// A datagram that came from the node at `node_addr` over its TCP link.
    pub fn inject(&self, node_addr: SocketAddr, datagram: Vec<u8>) -> bool {
        {
            let mut q = self.tcp_in.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= TCP_INBOUND {
                return false;
            }
            q.push_back((node_addr, datagram));
        }
        self.waker.wake();
        true
    }

    /// Send a UDP check to `node_addr` over UDP, whatever the route.
    pub fn udp_check(&self, node_addr: SocketAddr) {
        let nonce: [u8; 8] = rand::random();
        let mut p = [0u8; relay::UDP_CHECK_LEN];
        p[0] = relay::TYPE_UDP_CHECK;
        p[1..].copy_from_slice(&nonce);
        {
            let mut t = self.tcp();
            if t.checks.len() > 256 {
                t.checks.clear();
            }
            t.checks.insert(nonce, canonical(node_addr));
        }
        if let Some(to) = self.for_socket(node_addr) {
            let _ = self.inner.try_send(&Transmit {
                destination: to,
                ecn: None,
                contents: &p,
                segment_size: None,
                src_ip: None,
            });
        }
    }

    /// Send a hairpin check to our own public address `public`; see
    /// [`Self::hairpin_returned`].
    pub fn hairpin_check(&self, public: SocketAddr) -> [u8; 8] {
        let nonce: [u8; 8] = rand::random();
        let mut p = [0u8; relay::UDP_CHECK_LEN];
        p[0] = relay::TYPE_HAIRPIN;
        p[1..].copy_from_slice(&nonce);
        self.tcp().hairpin.insert(nonce, false);
        if let Some(to) = self.for_socket(public) {
            let _ = self.inner.try_send(&Transmit {
                destination: to,
                ecn: None,
                contents: &p,
                segment_size: None,
                src_ip: None,
            });
        }
        nonce
    }

    /// Whether the hairpin check `nonce` came back.
    pub fn hairpin_returned(&self, nonce: &[u8; 8]) -> bool {
        self.tcp().hairpin.get(nonce).copied().unwrap_or(false)
    }

    /// When a UDP check to `node_addr` was last answered over UDP.
    pub fn udp_echoed(&self, node_addr: &SocketAddr) -> Option<Instant> {
        self.tcp().udp_echo.get(&canonical(*node_addr)).copied()
    }

    fn send_raw(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let route = self.tcp().routes.get(&canonical(to)).cloned();
        if let Some(route) = route {
            for d in contents.chunks(segment.unwrap_or(contents.len()).max(1)) {
                if route.try_send(d.to_vec()).is_err() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
            return Ok(());
        }
        let Some(to) = self.for_socket(to) else {
            return Ok(());
        };
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        })
    }

    fn send_relay(
        &self,
        node_addr: SocketAddr,
        cid: u64,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let seg = segment.unwrap_or(contents.len()).max(1);
        let header = relay::relay_header(cid);
        let mut buf =
            Vec::with_capacity(contents.len() + contents.len().div_ceil(seg) * RELAY_HEADER_LEN);
        for chunk in contents.chunks(seg) {
            buf.extend_from_slice(&header);
            buf.extend_from_slice(chunk);
        }
        let segs = contents.len().div_ceil(seg);
        let max = self.inner.max_transmit_segments().max(1);
        let stride = seg + RELAY_HEADER_LEN;
        let mut result = Ok(());
        for part in buf.chunks(max * stride) {
            let r = self.send_raw(
                node_addr,
                part,
                (segs > 1 && part.len() > stride).then_some(stride),
            );
            if r.is_err() {
                result = r;
            }
        }
        result
    }

    fn send_probe_on(&self, path: &Dest, packet: &[u8]) {
        let _ = match *path {
            Dest::Udp(a) => self.send_raw(a, packet, None),
            Dest::Relay(n, cid) => self.send_relay(n, cid, packet, None),
        };
    }

    /// Run the timers of every remote: pings, punching rounds, failure
    /// detection, path choice, expiry. Call every ~100 ms.
    pub fn maintain(&self, now: Instant) -> Chores {
        let mut chores = Chores::default();
        let mut sends: Vec<(Dest, Vec<u8>)> = Vec::new();
        {
            let mut guard = self.table();
            let t = &mut *guard;
            expire(t, now);
            let own = t.own.clone();
            let mut changes = Vec::new();
            for r in t.remotes.values_mut() {
                if r.connections > 0 && r.policy != PathPolicy::DirectOnly && r.relays.len() < 2 {
                    chores.want_circuits.push(r.peer);
                }
                let Some(key) = r.keys.last().cloned() else {
                    continue;
                };
                let was_direct = matches!(r.selected, Some(PathId::Direct(_)));
                if r.check_health(now)
                    && let Some(change) = r.select()
                {
                    if was_direct && change.1 == remote::PathReason::DirectFailed {
                        chores.poke_all = true;
                    }
                    changes.push((r.peer, change));
                }
                for p in &r.relays {
                    if p.health.missed > 0 && !chores.poke_nodes.contains(&p.node_addr) {
                        chores.poke_nodes.push(p.node_addr);
                    }
                }
                self.schedule_pings(r, &key, &own, now, &mut sends);
                if let Some(change) = r.select() {
                    changes.push((r.peer, change));
                }
            }
            for (peer, change) in changes {
                self.emit(t, &peer, change, now);
            }
        }
        for (dest, packet) in sends {
            if let Some(p) = probe::decode(&packet) {
                tracing::trace!(to = ?dest, body = ?p.body, "probe out");
            }
            self.send_probe_on(&dest, &packet);
        }
        chores
    }

    /// Pings and punching for one remote.
    fn schedule_pings(
        &self,
        r: &mut Remote,
        key: &ProbeKey,
        own: &[SocketAddr],
        now: Instant,
        sends: &mut Vec<(Dest, Vec<u8>)>,
    ) {
        let me = self.me;
        let ping = |sends: &mut Vec<(Dest, Vec<u8>)>, dest: Dest, health: &mut remote::Health| {
            let t = tx();
            health.ping = Some((t, now));
            health.last_ping = Some(now);
            sends.push((dest, probe::encode(key, &me, &t, &Body::Ping)));
        };
        let selected = r.selected;
        // Keep the path in use and the reserves answering.
        for d in &mut r.direct {
            let every = if selected == Some(PathId::Direct(d.addr)) {
                remote::ACTIVE_PING
            } else {
                BACKUP_PING
            };
            let active = selected == Some(PathId::Direct(d.addr));
            if d.health.last_pong.is_some() && d.health.ping_due(every, active, now) {
                ping(sends, Dest::Udp(d.addr), &mut d.health);
            }
        }
        for p in &mut r.relays {
            let every = if selected == Some(PathId::Relay(p.node)) {
                remote::ACTIVE_PING
            } else {
                BACKUP_PING
            };
            let active = selected == Some(PathId::Relay(p.node));
            if p.health.ping_due(every, active, now) {
                ping(sends, Dest::Relay(p.node_addr, p.cid), &mut p.health);
            }
        }
        if r.policy == PathPolicy::RelayOnly {
            return;
        }
        let has_direct = r.direct.iter().any(|d| d.usable());
        // The outcome of the current punching attempt.
        if let Some(started) = r.punch.attempt {
            if has_direct {
                self.stats.holepunch_success.fetch_add(1, Ordering::Relaxed);
                r.punch.attempt = None;
            } else if now.saturating_duration_since(started) >= ROUND_OUTCOME_AFTER {
                self.stats.holepunch_failed.fetch_add(1, Ordering::Relaxed);
                r.punch.attempt = None;
            }
        }
        if has_direct {
            return;
        }
        let relay = r
            .selected
            .and_then(|p| match p {
                PathId::Relay(n) => r.relays.iter().find(|x| x.node == n),
                PathId::Direct(_) => None,
            })
            .or_else(|| r.relays.first())
            .map(|p| Dest::Relay(p.node_addr, p.cid));
        // A Call lost on the way (or that arrived before the peer had our
        // key) is sent again soon, not a whole round later.
        if r.punch
            .awaiting
            .is_some_and(|(_, sent)| now.saturating_duration_since(sent) >= remote::CALL_RETRY)
        {
            r.punch.awaiting = None;
            r.punch.next_round = now;
        }
        // Start a round: through the relay a Call (the peer answers, we
        // measure the RTT and send Sync), or without one, ping at once.
        if now >= r.punch.next_round && (r.initiator || relay.is_none()) {
            r.punch.attempt.get_or_insert(now);
            match &relay {
                Some(dest) => {
                    let t = tx();
                    r.punch.awaiting = Some((t, now));
                    let call = Body::Call {
                        round: r.punch.round,
                        candidates: own.to_vec(),
                    };
                    sends.push((
                        match dest {
                            Dest::Relay(a, c) => Dest::Relay(*a, *c),
                            Dest::Udp(a) => Dest::Udp(*a),
                        },
                        probe::encode(key, &me, &t, &call),
                    ));
                }
                None => r.punch.ping_all_at = Some(now),
            }
            r.punch.next(now);
        }
        if r.punch.ping_all_at.is_some_and(|t| t <= now) {
            r.punch.ping_all_at = None;
            r.punch.last_ping_all = Some(now);
            for d in &mut r.direct {
                if self.reaches(&d.addr) {
                    ping(sends, Dest::Udp(d.addr), &mut d.health);
                }
            }
        }
    }

    /// Handle one probe that arrived on `path` from `source`.
    fn on_probe(&self, packet: &[u8], source: SocketAddr, via: Option<(SocketAddr, u64)>) {
        let now = Instant::now();
        let Some(p) = probe::decode(packet) else {
            self.stats.dropped_bad_probe.fetch_add(1, Ordering::Relaxed);
            return;
        };
        tracing::trace!(from = %p.from.short(), %source, relayed = via.is_some(), body = ?p.body, "probe in");
        let mut replies: Vec<(Dest, Vec<u8>)> = Vec::new();
        {
            let mut guard = self.table();
            let t = &mut *guard;
            let own = t.own.clone();
            let Some(r) = t.remotes.get_mut(&p.from) else {
                self.stats.dropped_bad_probe.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if r.keys.is_empty() {
                // The peer finished its handshake before we did: keep it.
                if r.early_probes.len() < remote::MAX_EARLY_PROBES {
                    r.early_probes.push(remote::EarlyProbe {
                        packet: packet.to_vec(),
                        source,
                        via,
                    });
                }
                return;
            }
            let Some(key) = r
                .keys
                .iter()
                .rev()
                .find(|k| probe::verify(k, packet))
                .cloned()
            else {
                self.stats.dropped_bad_probe.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let (path, back) = match via {
                Some((node_addr, cid)) => match r.relays.iter().find(|x| x.cid == cid) {
                    Some(x) => (PathId::Relay(x.node), Dest::Relay(node_addr, cid)),
                    None => return,
                },
                None => (PathId::Direct(canonical(source)), Dest::Udp(source)),
            };
            let me = self.me;
            match p.body {
                Body::Ping => {
                    if let PathId::Direct(addr) = path
                        && r.add_direct(addr, Origin::Reflexive)
                    {
                        t.by_direct.insert(addr, p.from);
                        r.punch.ping_all_at = Some(now);
                    }
                    let pong = Body::Pong { observed: source };
                    replies.push((back, probe::encode(&key, &me, &p.tx, &pong)));
                }
                Body::Pong { .. } => {
                    if r.on_pong(path, &p.tx, now) && matches!(path, PathId::Direct(_)) {
                        r.direct_at.get_or_insert(now);
                    }
                }
                Body::Call { candidates, .. } => {
                    let mut unvouched = false;
                    for a in candidates {
                        if !self.reaches(&a) {
                            continue;
                        }
                        if r.add_direct(a, Origin::Call) {
                            t.by_direct.insert(canonical(a), p.from);
                        } else if !x0x_proto::policy::may_dial(&a, &r.vouched)
                            && x0x_proto::policy::is_dialable(&a)
                        {
                            unvouched = true;
                        }
                    }
                    if unvouched
                        && r.relookup_at
                            .is_none_or(|at| now.saturating_duration_since(at) >= RELOOKUP_EVERY)
                    {
                        r.relookup_at = Some(now);
                        let _ = self.signals.try_send(Signal::Unvouched(p.from));
                    }
                    let reply_to_ours = r.punch.awaiting.is_some_and(|(tx, _)| tx == p.tx);
                    if reply_to_ours {
                        // Our Call was answered: the relay RTT is known. Tell the
                        // peer to ping now, and ping when our Sync reaches it.
                        let (_, sent) = r.punch.awaiting.take().expect("checked");
                        let rtt = now.saturating_duration_since(sent);
                        let sync = Body::Sync {
                            round: r.punch.round,
                        };
                        replies.push((back, probe::encode(&key, &me, &tx(), &sync)));
                        r.punch.ping_all_at = Some(now + rtt / 2);
                    } else {
                        let answer = Body::Call {
                            round: 0,
                            candidates: own,
                        };
                        replies.push((back, probe::encode(&key, &me, &p.tx, &answer)));
                        r.punch.attempt.get_or_insert(now);
                    }
                }
                Body::Sync { .. } => {
                    let recent = r.punch.last_ping_all.is_some_and(|t| {
                        now.saturating_duration_since(t) < Duration::from_millis(300)
                    });
                    if !recent {
                        r.punch.ping_all_at = Some(now);
                    }
                }
            }
            // Answer Syncs and reflexive pings without waiting for the next tick.
            if r.punch.ping_all_at.is_some_and(|t| t <= now) {
                r.punch.ping_all_at = None;
                r.punch.last_ping_all = Some(now);
                for d in &mut r.direct {
                    if !self.reaches(&d.addr) {
                        continue;
                    }
                    let t = tx();
                    d.health.ping = Some((t, now));
                    d.health.last_ping = Some(now);
                    replies.push((Dest::Udp(d.addr), probe::encode(&key, &me, &t, &Body::Ping)));
                }
            }
            if let Some(change) = r.select() {
                let peer = r.peer;
                self.emit(t, &peer, change, now);
            }
        }
        for (dest, packet) in replies {
            if let Some(p) = probe::decode(&packet) {
                tracing::trace!(to = ?dest, body = ?p.body, "probe reply");
            }
            self.send_probe_on(&dest, &packet);
        }
    }

    /// Classify one receive buffer: keep it for quinn (possibly attributed
    /// to a mapped address), or take its datagrams out. Returns whether to keep it.
    fn classify(&self, buf: &mut [u8], meta: &mut RecvMeta) -> bool {
        let from = canonical(meta.addr);
        let stride = meta.stride.max(1);
        let all_quic = batch::segments(buf, meta).all(|r| !relay::is_x0x(buf[r.start]));
        if all_quic {
            return self.attribute(meta, from);
        }
        // One circuit's relayed QUIC packets (the bulk case): strip in place.
        let mut cid = None;
        let one_circuit = batch::segments(buf, meta).all(|r| {
            let seg = &buf[r];
            match relay::parse_relay(seg) {
                Some((c, payload)) if !payload.is_empty() && !relay::is_x0x(payload[0]) => {
                    *cid.get_or_insert(c) == c
                }
                _ => false,
            }
        });
        if one_circuit
            && let Some(cid) = cid
            && let Some(mapped) = self.mapped_for_circuit(from, cid)
        {
            batch::strip_prefix(buf, meta, RELAY_HEADER_LEN, mapped);
            return true;
        }
        // Mixed: one datagram at a time.
        let ranges: Vec<_> = batch::segments(buf, meta).collect();
        let mut quic = Vec::new();
        for r in ranges {
            let seg = &buf[r.clone()];
            match seg[0] {
                TYPE_RELAY => {
                    let Some((cid, payload)) = relay::parse_relay(seg) else {
                        continue;
                    };
                    if payload.first() == Some(&TYPE_PROBE) {
                        if self.is_node(&from) {
                            self.on_probe(payload, meta.addr, Some((from, cid)));
                        }
                    } else if let Some(mapped) = self.mapped_for_circuit(from, cid) {
                        self.queue_inbound(mapped, payload.to_vec());
                    }
                }
                TYPE_PROBE => self.on_probe(seg, meta.addr, None),
                TYPE_VOUCH => {
                    if let Some(nonce) = relay::parse_vouch(seg) {
                        let _ = self.signals.try_send(Signal::Nonce(nonce));
                    }
                }
                relay::TYPE_HAIRPIN if seg.len() == relay::UDP_CHECK_LEN => {
                    let nonce: [u8; 8] = seg[1..].try_into().expect("checked length");
                    if let Some(seen) = self.tcp().hairpin.get_mut(&nonce) {
                        *seen = true;
                    }
                }
                relay::TYPE_UDP_ECHO if seg.len() == relay::UDP_CHECK_LEN => {
                    let mut t = self.tcp();
                    let nonce: [u8; 8] = seg[1..].try_into().expect("checked length");
                    if t.checks.remove(&nonce) == Some(from) {
                        t.udp_echo.insert(from, Instant::now());
                    }
                }
                b if !relay::is_x0x(b) => quic.push(r),
                _ => {}
            }
        }
        if quic.is_empty() {
            return false;
        }
        // The QUIC datagrams left, moved to the front of the buffer.
        let mut write = 0;
        for r in quic {
            let len = r.len();
            buf.copy_within(r, write);
            write += len;
        }
        meta.len = write;
        meta.stride = stride.min(write);
        self.attribute(meta, from)
    }

    /// QUIC datagrams from `from`: a node's pass through, a remote's
    /// candidate address is mapped, anything else is dropped.
    fn attribute(&self, meta: &mut RecvMeta, from: SocketAddr) -> bool {
        let mut t = self.table();
        if t.nodes.contains(&from) {
            return true;
        }
        let Some(peer) = t.by_direct.get(&from).copied() else {
            drop(t);
            self.stats
                .dropped_unknown_source
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let Some(r) = t.remotes.get_mut(&peer) else {
            return false;
        };
        let now = Instant::now();
        if let Some(d) = r.direct_mut(&from) {
            d.health.last_recv = Some(now);
        }
        meta.addr = r.mapped;
        true
    }

    fn is_node(&self, addr: &SocketAddr) -> bool {
        self.table().nodes.contains(addr)
    }

    fn mapped_for_circuit(&self, node_addr: SocketAddr, cid: u64) -> Option<SocketAddr> {
        let mut t = self.table();
        let peer = *t.by_cid.get(&(node_addr, cid))?;
        let r = t.remotes.get_mut(&peer)?;
        if let Some(p) = r.relays.iter_mut().find(|p| p.cid == cid) {
            p.health.last_recv = Some(Instant::now());
        }
        Some(r.mapped)
    }

    fn queue_inbound(&self, from: SocketAddr, data: Vec<u8>) {
        let mut q = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < OVERFLOW {
            q.push_back((from, data));
        }
    }

    /// Where a transmit to a mapped address goes.
    fn route(&self, mapped: &SocketAddr) -> Vec<Dest> {
        let now = Instant::now();
        let mut guard = self.table();
        let t = &mut *guard;
        let Some(r) = t.by_mapped.get(mapped).and_then(|p| t.remotes.get_mut(p)) else {
            return Vec::new();
        };
        let dests = r.destinations(now);
        if let [only] = dests[..] {
            r.sent_on(only, now);
        }
        dests
            .into_iter()
            .filter_map(|p| match p {
                PathId::Direct(a) => Some(Dest::Udp(a)),
                PathId::Relay(n) => r
                    .relays
                    .iter()
                    .find(|x| x.node == n)
                    .map(|x| Dest::Relay(x.node_addr, x.cid)),
            })
            .collect()
    }
}

impl MuxSocket {
    /// Tell listeners about a path change and count it.
    fn emit(
        &self,
        t: &mut Table,
        peer: &PeerId,
        (choice, reason): (Option<PathId>, remote::PathReason),
        now: Instant,
    ) {
        let stats = &self.stats;
        let Some(r) = t.remotes.get(peer) else {
            return;
        };
        let Some(choice) = choice else {
            return;
        };
        let (path, via, addr) = match choice {
            PathId::Direct(a) => (PathKind::Direct, None, Some(a)),
            PathId::Relay(n) => (PathKind::Relayed, Some(n), None),
        };
        let transport = match choice {
            PathId::Relay(n)
                if r.relays
                    .iter()
                    .any(|p| p.node == n && self.over_tcp(&p.node_addr)) =>
            {
                Transport::Tcp
            }
            _ => Transport::Udp,
        };
        let counter = match (reason, path) {
            (remote::PathReason::Initial, _) => None,
            (_, PathKind::Direct) if r.direct.iter().filter(|d| d.usable()).count() > 1 => {
                Some(&stats.switches_direct_direct)
            }
            (remote::PathReason::DirectValidated, _) => Some(&stats.upgrades_relayed_direct),
            (remote::PathReason::DirectFailed, PathKind::Relayed) => {
                Some(&stats.downgrades_direct_relayed)
            }
            (_, PathKind::Relayed) => Some(&stats.switches_relayed_relayed),
            _ => Some(&stats.switches_direct_direct),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = t.events.get(peer) {
            let _ = tx.send(PathEvent {
                path,
                via,
                addr,
                transport,
                reason,
                at: now,
            });
        }
    }
}

fn forget(t: &mut Table, peer: &PeerId) {
    if let Some(r) = t.remotes.remove(peer) {
        t.by_mapped.remove(&r.mapped);
        for d in &r.direct {
            if t.by_direct.get(&d.addr) == Some(peer) {
                t.by_direct.remove(&d.addr);
            }
        }
        for p in &r.relays {
            t.by_cid.remove(&(p.node_addr, p.cid));
        }
    }
    t.events.remove(peer);
}

/// Forget remotes without connections that have been idle for long.
fn expire(t: &mut Table, now: Instant) {
    let idle: Vec<PeerId> = t
        .remotes
        .values()
        .filter(|r| {
            r.connections == 0 && now.saturating_duration_since(r.last_active) >= REMOTE_IDLE
        })
        .map(|r| r.peer)
        .collect();
    for p in idle {
        forget(t, &p);
    }
}

/// Make room: drop the longest-unused remote without a connection.
fn evict_one(t: &mut Table) {
    let victim = t
        .remotes
        .values()
        .filter(|r| r.connections == 0)
        .min_by_key(|r| r.last_active)
        .map(|r| r.peer);
    if let Some(p) = victim {
        forget(t, &p);
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !is_mapped(&transmit.destination) {
            return self.send_raw(
                transmit.destination,
                transmit.contents,
                transmit.segment_size,
            );
        }
        let dests = self.route(&transmit.destination);
        let single = dests.len() == 1;
        for d in dests {
            let r = match d {
                Dest::Udp(a) => self.send_raw(a, transmit.contents, transmit.segment_size),
                Dest::Relay(n, cid) => {
                    self.send_relay(n, cid, transmit.contents, transmit.segment_size)
                }
            };
            // One path: let quinn wait for the socket. Several (the
            // handshake): best effort, QUIC retransmits.
            if single
                && let Err(e) = r
                && e.kind() == io::ErrorKind::WouldBlock
            {
                return Err(e);
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.waker.register(cx.waker());
        loop {
            {
                let mut q = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
                if !q.is_empty() {
                    let n = batch::fill_from(&mut q, bufs, meta);
                    if n > 0 {
                        return Poll::Ready(Ok(n));
                    }
                }
            }
            // Datagrams from TCP links, classified like UDP ones.
            let from_tcp = {
                let mut q = self.tcp_in.lock().unwrap_or_else(|e| e.into_inner());
                batch::fill_from(&mut q, bufs, meta)
            };
            let n = if from_tcp > 0 {
                from_tcp
            } else {
                ready!(self.inner.poll_recv(cx, bufs, meta))?
            };
            let keep: Vec<bool> = (0..n)
                .map(|i| self.classify(&mut bufs[i], &mut meta[i]))
                .collect();
            let kept = batch::compact(bufs, meta, &keep);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn remotes_without_connections_expire_so_the_table_never_fills_for_good() {
        let (s, _v) =
            MuxSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), id(0)).unwrap();
        // 10 000 peers come and go (each had one connection).
        for i in 0..10_000u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            let peer = PeerId::from_bytes(b);
            s.remote(peer, &[], false);
            s.attach(&peer, None);
            s.detach(&peer);
        }
        assert_eq!(s.remotes(), 10_000);
        s.maintain(Instant::now() + REMOTE_IDLE + Duration::from_secs(1));
        assert_eq!(s.remotes(), 0);
        // A new peer still gets a working mapped address.
        let m = s.remote(id(7), &["10.1.1.1:5".parse().unwrap()], false);
        assert!(is_mapped(&m));
        assert_eq!(s.peer_of(&m), Some(id(7)));
    }

    #[tokio::test]
    async fn the_table_is_bounded_and_evicts_only_unconnected_remotes() {
        let (s, _v) =
            MuxSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), id(0)).unwrap();
        let peer = |i: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            PeerId::from_bytes(b)
        };
        s.remote(peer(0), &[], true);
        s.attach(&peer(0), None);
        for i in 1..=(MAX_REMOTES as u32 + 100) {
            s.remote(peer(i), &[], false);
        }
        assert_eq!(s.remotes(), MAX_REMOTES);
        assert!(s.current_path(&peer(0)).is_none()); // known, no path yet
        assert!(
            s.table().remotes.contains_key(&peer(0)),
            "a connected remote is never evicted"
        );
    }
}
