//! Links to bootstrap nodes: join, keep connected, register, and serve
//! what nodes push (introductions, relay circuit notices).
//!
//! One task per configured address keeps that node connected for the
//! agent's life: it dials (every resolved address at once, the pinned key
//! checked), says `Hello`, registers, then reads the node's pushes until
//! the link drops, and redials with capped exponential backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::debug;
use x0x_proto::backoff::Backoff;
use x0x_proto::policy;
use x0x_proto::transport;
use x0x_proto::wire::{self, Message, PeerKind, ReadLimits};
use x0x_proto::{PeerId, PeerSpec};

use super::requests::{self, request};
use super::tcp;
use super::{BootstrapLink, Inner, JoinReport, Link, NodeState, lock};
use crate::error::{AgentError, NodeFailure};
use crate::path::Transport;
use crate::socket::{Signal, Signals};

/// A bootstrap link that lived this long resets the redial backoff.
const STABLE_LINK: Duration = Duration::from_secs(2);
/// How long one dial or one request may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The first outcome of one address's task.
enum First {
    Joined(BootstrapLink),
    Failed(NodeFailure),
    /// Another address of a node already linked.
    Duplicate,
}

/// See [`crate::Agent::join_network`].
pub(super) async fn join(inner: &Arc<Inner>) -> Result<JoinReport, AgentError> {
    let started = Instant::now();
    let deadline = started + inner.network.join_timeout;
    let (tx, mut rx) = mpsc::channel(64);
    let mut waiting = Vec::new();
    for (index, spec) in inner
        .network
        .bootstrap_peers
        .clone()
        .into_iter()
        .enumerate()
    {
        let key = spec.to_string();
        // Each address is kept by one task for the agent's life.
        if !lock(&inner.maintained).insert(key.clone()) {
            continue;
        }
        lock(&inner.status).insert(key.clone(), NodeState::Connecting);
        waiting.push(key);
        tokio::spawn(maintain(inner.clone(), index, spec, deadline, tx.clone()));
    }
    drop(tx);
    let mut report = JoinReport {
        connected: Vec::new(),
        failed: Vec::new(),
        pending: Vec::new(),
        observed_addr: None,
        registered: Vec::new(),
    };
    let mut grace_until: Option<Instant> = None;
    let mut answered = 0;
    while answered < waiting.len() {
        let until = grace_until.map_or(deadline, |g| g.min(deadline));
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = tokio::time::sleep_until(until.into()) => break,
        };
        let Some(first) = first else { break };
        answered += 1;
        match first {
            First::Joined(link) => {
                if link.registered {
                    report.registered.push(link.peer_id);
                    grace_until.get_or_insert_with(|| Instant::now() + inner.network.join_grace);
                }
                report.connected.push(link);
            }
            First::Failed(f) => report.failed.push(f),
            First::Duplicate => {}
        }
    }
    if waiting.is_empty() {
        // Joined before: wait (up to the deadline) for one live link.
        while lock(&inner.links).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report.connected = lock(&inner.links)
            .values()
            .map(|l| l.info.clone())
            .collect();
        report.registered = report
            .connected
            .iter()
            .filter(|l| l.registered)
            .map(|l| l.peer_id)
            .collect();
    } else {
        let done: Vec<String> = report
            .failed
            .iter()
            .map(|f| f.addr.clone())
            .chain(
                lock(&inner.status)
                    .iter()
                    .filter(|(_, s)| matches!(s, NodeState::Connected(_) | NodeState::SameNode(_)))
                    .map(|(k, _)| k.clone()),
            )
            .collect();
        report.pending = waiting.into_iter().filter(|k| !done.contains(k)).collect();
    }
    report.observed_addr = report.connected.iter().find_map(|l| l.observed);
    if report.connected.is_empty() {
        let mut failures = report.failed;
        let status = lock(&inner.status).clone();
        failures.extend(report.pending.into_iter().map(|addr| {
            let reason = match status.get(&addr) {
                Some(NodeState::Retrying(e)) => e.clone(),
                _ => format!(
                    "no answer within {} ms",
                    inner.network.join_timeout.as_millis()
                ),
            };
            NodeFailure { addr, reason }
        }));
        if failures.is_empty() {
            failures.push(NodeFailure {
                addr: "(all)".into(),
                reason: "no bootstrap node is connected".into(),
            });
        }
        return Err(AgentError::NoBootstrapReachable { failures });
    }
    Ok(report)
}

/// Keep one bootstrap node connected: report the first outcome on `first`
/// (giving up on it at `deadline`), then redial whenever the link drops.
async fn maintain(
    inner: Arc<Inner>,
    index: usize,
    spec: PeerSpec,
    deadline: Instant,
    first: mpsc::Sender<First>,
) {
    let key = spec.to_string();
    let mut first = Some(first);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut over_tcp: Option<OverTcp> = None;
    let mut udp_failures = 0u32;
    loop {
        let mut timeout = match first {
            Some(_) => deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200), STEP_TIMEOUT),
            None => STEP_TIMEOUT,
        };
        let tcp_allowed = inner.network.tcp_fallback;
        // UDP failed here and works with no node: try the TCP relay.
        if tcp_allowed && udp_failures > 0 && over_tcp.is_none() && !inner.any_udp_link() {
            match start_tcp(&inner, index, &spec).await {
                Ok(t) => over_tcp = Some(t),
                Err(e) => debug!(addr = %key, "TCP relay: {e}"),
            }
        }
        if tcp_allowed && over_tcp.is_none() && !inner.any_udp_link() {
            timeout = timeout.min(inner.network.udp_attempt);
        }
        let attempt = tokio::select! {
            _ = inner.leaving.cancelled() => return,
            r = connect(&inner, &spec, timeout) => r,
        };
        match attempt {
            Ok(Dialed::SameNode {
                conn,
                node,
                observed,
            }) => {
                // The same node under another address (its other address
                // family): one link per node. But the node just saw us from
                // this family: have it vouch for that address, so peers can
                // reach us over it (IPv6 past IPv4 NATs).
                if let Some(observed) = observed {
                    vouch_own(&inner, node, observed).await;
                }
                conn.close(wire::close::NORMAL, b"probe done");
                lock(&inner.status).insert(key.clone(), NodeState::SameNode(node));
                if let Some(tx) = first.take() {
                    let _ = tx.send(First::Duplicate).await;
                }
                // Stand by: take over if the node's link drops.
                tokio::select! {
                    _ = inner.leaving.cancelled() => return,
                    _ = link_gone(&inner, node) => {}
                }
                lock(&inner.status).insert(key.clone(), NodeState::Retrying("link lost".into()));
            }
            Ok(Dialed::Link(conn, control, mut info)) => {
                if over_tcp.is_some() {
                    info.transport = Transport::Tcp;
                    // Over TCP the node sees the TCP peer, not a UDP mapping.
                    info.observed = None;
                }
                info.registered = register(&inner, &conn, &info).await;
                lock(&inner.links).insert(
                    info.peer_id,
                    Link {
                        conn: conn.clone(),
                        info: info.clone(),
                    },
                );
                release_claim(&inner, info.peer_id, &key);
                lock(&inner.status).insert(key.clone(), NodeState::Connected(info.clone()));
                refresh_candidates(&inner);
                super::portmap::on_link(&inner, &conn, &info);
                if let Some(tx) = first.take() {
                    let _ = tx.send(First::Joined(info.clone())).await;
                }
                let started = Instant::now();
                run_link(&inner, conn, control, &info, &mut over_tcp).await;
                lock(&inner.status).insert(key.clone(), NodeState::Retrying("link lost".into()));
                if started.elapsed() >= STABLE_LINK {
                    backoff.reset();
                }
            }
            Err(e) => {
                debug!(addr = %key, "bootstrap dial failed: {e}");
                match over_tcp.take() {
                    // The TCP route did not carry a handshake either: start over.
                    Some(_) => {}
                    None => udp_failures += 1,
                }
                lock(&inner.status).insert(key.clone(), NodeState::Retrying(e.clone()));
                if Instant::now() + Duration::from_millis(1) >= deadline
                    && let Some(tx) = first.take()
                {
                    // Report the failure to join_network, but keep trying:
                    // the node may be rebooting.
                    let _ = tx
                        .send(First::Failed(NodeFailure {
                            addr: key.clone(),
                            reason: e,
                        }))
                        .await;
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = inner.leaving.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A node reached over its TCP relay: the link, and the node's UDP address
/// whose traffic it carries.
struct OverTcp {
    _link: tcp::TcpLink,
    node_udp: SocketAddr,
}

async fn start_tcp(inner: &Arc<Inner>, index: usize, spec: &PeerSpec) -> Result<OverTcp, String> {
    let node_udp = spec
        .addr
        .resolve()
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .into_iter()
        .find(|a| inner.socket.reaches(a))
        .ok_or("resolved to no usable address")?;
    inner.socket.allow_node(node_udp);
    let relay = tcp::relay_addr(inner, index, &spec.addr);
    let link = tcp::start(inner, &relay, node_udp, spec.id).await?;
    Ok(OverTcp {
        _link: link,
        node_udp,
    })
}

/// The control stream. Our side sends nothing after `Hello`, but keeps the
/// send half open: finishing it would tell the node we are leaving.
type Control = (quinn::SendStream, quinn::RecvStream);

/// What a dial to a bootstrap node gave.
enum Dialed {
    /// A new link.
    Link(quinn::Connection, Control, BootstrapLink),
    /// A node we already have a live link to, reached at another of its
    /// addresses; probed only (nothing admitted): the address it saw us at.
    SameNode {
        conn: quinn::Connection,
        node: PeerId,
        observed: Option<SocketAddr>,
    },
}

async fn connect(inner: &Inner, spec: &PeerSpec, timeout: Duration) -> Result<Dialed, String> {
    let resolved: Vec<SocketAddr> = spec
        .addr
        .resolve()
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .into_iter()
        .filter(|a| inner.socket.reaches(a))
        .collect();
    for a in &resolved {
        inner.socket.allow_node(*a);
    }
    let (conn, peer) = transport::dial_any(
        &inner.endpoint,
        &inner.node_client,
        &resolved,
        timeout,
        spec.id,
    )
    .await
    .map_err(|e| e.to_string())?;
    // A second link would displace the first on the node: probe instead.
    // Dials to a node's two address families run in parallel, so the first
    // to get here claims the node until its link is in `links`.
    let key = spec.to_string();
    let same_node = {
        let mut claims = lock(&inner.linking);
        let linked = lock(&inner.links)
            .get(&peer)
            .is_some_and(|l| l.conn.close_reason().is_none());
        let claimed = claims.get(&peer).is_some_and(|k| *k != key);
        if !linked && !claimed {
            claims.insert(peer, key.clone());
        }
        linked || claimed
    };
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let msg = Message::Hello {
            kind: if same_node {
                PeerKind::Probe
            } else {
                PeerKind::Agent
            },
            incarnation: inner.incarnation,
        };
        wire::write_frame(&mut send, &msg).await?;
        match wire::read_frame(&mut recv, &ReadLimits::TO_AGENT).await? {
            Some(Message::Welcome {
                roles, observed, ..
            }) => Ok((send, recv, roles, observed)),
            other => Err(AgentError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    };
    let welcomed = tokio::time::timeout(STEP_TIMEOUT, hello)
        .await
        .map_err(|_| "no Welcome from node".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let (send, recv, roles, observed) = match welcomed {
        Ok(w) => w,
        Err(e) => {
            if !same_node {
                release_claim(inner, peer, &key);
            }
            return Err(e);
        }
    };
    if same_node {
        return Ok(Dialed::SameNode {
            conn,
            node: peer,
            observed,
        });
    }
    let info = BootstrapLink {
        peer_id: peer,
        addr: x0x_proto::canonical(conn.remote_address()),
        roles,
        observed,
        rtt: conn.rtt(),
        registered: false,
        transport: Transport::Udp,
    };
    Ok(Dialed::Link(conn, (send, recv), info))
}

/// Give up this bootstrap address's claim on `node` (see [`connect`]).
fn release_claim(inner: &Inner, node: PeerId, key: &str) {
    let mut claims = lock(&inner.linking);
    if claims.get(&node).is_some_and(|k| k == key) {
        claims.remove(&node);
    }
}

/// Wait until this agent has no live link to `node`.
async fn link_gone(inner: &Inner, node: PeerId) {
    loop {
        let conn = lock(&inner.links).get(&node).map(|l| l.conn.clone());
        match conn {
            Some(c) if c.close_reason().is_none() => {
                c.closed().await;
            }
            // Another address of the node is still becoming its link.
            _ if lock(&inner.linking).contains_key(&node) => {}
            _ => return,
        }
        // The link may have been replaced meanwhile: look again.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Addresses of this agent's own interfaces worth telling peers about
/// (the node keeps only local-scope ones without vouching): the bound
/// address, or when bound to a wildcard every interface address at the
/// socket's port (so agents on one LAN reach each other over it).
fn local_candidates(inner: &Inner) -> Vec<SocketAddr> {
    let Ok(local) = inner.endpoint.local_addr() else {
        return Vec::new();
    };
    if !local.ip().is_unspecified() {
        return vec![x0x_proto::canonical(local)];
    }
    let port = local.port();
    let mut v: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| SocketAddr::new(i.ip(), port))
        .filter(|a| inner.socket.reaches(a) && policy::is_dialable(a))
        .filter(|a| match a.ip() {
            // Link-local IPv6 needs a scope id: not a usable candidate.
            std::net::IpAddr::V6(ip) => !ip.is_unicast_link_local(),
            std::net::IpAddr::V4(_) => true,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Ask node `node` (over its existing link) to vouch for `addr`, an
/// address it just saw us at; the nonce it sends there comes back through
/// [`answer_vouches`]. Local-scope addresses need no vouching.
async fn vouch_own(inner: &Arc<Inner>, node: PeerId, addr: SocketAddr) {
    if policy::is_local_scope(&addr) || !policy::is_dialable(&addr) {
        return;
    }
    // The probe can finish before the node's link (the other family's
    // dial, which claimed the node) has registered and entered `links`:
    // wait for it rather than lose the vouch.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let conn = loop {
        let conn = lock(&inner.links).get(&node).map(|l| l.conn.clone());
        match conn {
            Some(c) => break c,
            None if lock(&inner.linking).contains_key(&node) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => {
                debug!(%addr, node = %node.short(), "no link to the node: not vouched");
                return;
            }
        }
    };
    match request(&conn, &Message::Vouch { addr }).await {
        Ok(Message::VouchSent) => {
            {
                let mut extra = lock(&inner.own_extra);
                if !extra.contains(&addr) {
                    extra.push(addr);
                }
            }
            refresh_candidates(inner);
        }
        other => debug!(%addr, "vouch refused: {other:?}"),
    }
}

/// Register with the node's coordinator. Returns whether it accepted.
async fn register(inner: &Inner, conn: &quinn::Connection, info: &BootstrapLink) -> bool {
    if !info.roles.coordinator {
        return false;
    }
    let msg = Message::Register {
        addrs: local_candidates(inner)
            .into_iter()
            .filter(policy::accept_unvouched)
            .collect(),
        accept_relay: inner.network.accept_relay,
    };
    matches!(request(conn, &msg).await, Ok(Message::Registered { .. }))
}

/// Tell the socket our candidate addresses: every observed one, the port
/// the router maps for us, then local ones.
pub(super) fn refresh_candidates(inner: &Inner) {
    let mut own: Vec<SocketAddr> = lock(&inner.links)
        .values()
        .filter_map(|l| l.info.observed)
        .collect();
    own.extend(super::portmap::candidate(inner));
    own.extend(local_candidates(inner));
    own.extend(lock(&inner.own_extra).iter().copied());
    own.dedup();
    let mut seen = Vec::new();
    own.retain(|a| {
        let fresh = !seen.contains(a);
        seen.push(*a);
        fresh
    });
    inner.socket.set_own_candidates(own);
}

/// Serve one bootstrap link until it closes: pushes on the control
/// stream, and (over TCP) checks whether UDP works again.
async fn run_link(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    control: Control,
    info: &BootstrapLink,
    over_tcp: &mut Option<OverTcp>,
) {
    let (_send, mut control) = control;
    let node = info.peer_id;
    let node_addr = conn.remote_address();
    let pushes = async {
        loop {
            match wire::read_frame(&mut control, &ReadLimits::TO_AGENT).await {
                Ok(Some(msg)) => on_push(inner, node, node_addr, msg),
                Ok(None) | Err(_) => return,
            }
        }
    };
    tokio::pin!(pushes);
    let node_udp = over_tcp.as_ref().map(|t| t.node_udp);
    let socket = inner.socket.clone();
    let recheck = async move {
        let Some(node_udp) = node_udp else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(tcp::UDP_RECHECK);
        loop {
            tick.tick().await;
            if socket.udp_echoed(&node_udp).is_some() {
                return node_udp;
            }
            socket.udp_check(node_udp);
        }
    };
    tokio::pin!(recheck);
    let mut rechecking = node_udp.is_some();
    loop {
        tokio::select! {
            _ = &mut pushes => break,
            _ = conn.closed() => break,
            _ = inner.cancel.cancelled() => break,
            node_udp = &mut recheck, if rechecking => {
                // UDP works again: the same QUIC link moves to it (the node
                // sees a migration); the WebSocket closes a little later.
                rechecking = false;
                inner.socket.set_tcp_route(node_udp, None);
                if let Some(l) = lock(&inner.links).get_mut(&node) {
                    l.info.transport = Transport::Udp;
                }
                tokio::spawn(poke(inner.clone(), conn.clone()));
                if let Some(t) = over_tcp.take() {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        drop(t);
                    });
                }
                debug!(node = %node.short(), "back on UDP");
            }
        }
    }
    let lost = {
        let mut links = lock(&inner.links);
        let ours = links
            .get(&node)
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
        if ours {
            links.remove(&node);
        }
        // A newer link to the node (it replaced this one) keeps its paths.
        ours || !links.contains_key(&node)
    };
    if lost {
        inner.socket.node_lost(&node);
    }
    refresh_candidates(inner);
}

fn on_push(inner: &Inner, node: PeerId, node_addr: SocketAddr, msg: Message) {
    match msg {
        Message::Introduction { info } => {
            // Someone is about to connect: map its addresses to it, so its
            // first packets (direct or relayed) reach the right connection.
            inner.socket.remote(info.peer, &info.addrs, false);
            inner.remember(&info);
        }
        Message::CircuitNotice { peer, cid } => {
            inner.socket.remote(peer, &[], false);
            inner.socket.add_relay(peer, node, node_addr, cid);
        }
        Message::CircuitClosed { cid, .. } => inner.socket.circuit_closed(node_addr, cid),
        other => debug!(node = %node.short(), "ignored push {other:?}"),
    }
}

/// Do what the socket asks: return vouch nonces that reached us to the
/// node that sent them, look peers up again.
pub(super) async fn on_socket_signals(inner: Arc<Inner>, mut signals: Signals) {
    loop {
        let signal = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            s = signals.recv() => match s { Some(s) => s, None => return },
        };
        match signal {
            Signal::Nonce(nonce) => return_nonce(&inner, nonce),
            Signal::Unvouched(peer) => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Ok(Some(info)) = requests::lookup(&inner, peer).await {
                        debug!(peer = %peer.short(), addrs = ?info.addrs, "record looked up again");
                        inner.socket.remote(info.peer, &info.addrs, false);
                        inner.remember(&info);
                    }
                });
            }
        }
    }
}

/// Offer a vouch nonce on every link: it may come from another address
/// of the node (its other family); only the node that issued it accepts.
fn return_nonce(inner: &Arc<Inner>, nonce: [u8; 16]) {
    let conns: Vec<quinn::Connection> = lock(&inner.links)
        .values()
        .map(|l| l.conn.clone())
        .collect();
    for conn in conns {
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Ok(Message::Vouched { addr }) =
                request(&conn, &Message::VouchProof { nonce }).await
            {
                debug!(%addr, "address vouched for");
                refresh_candidates(&inner);
            }
        });
    }
}

/// Send a packet on a node link now (QUIC then follows this agent to a new
/// address at once) and learn the address the node sees us from.
pub(super) async fn poke(inner: Arc<Inner>, conn: quinn::Connection) {
    let Ok(Message::Pong { observed }) = request(&conn, &Message::Ping).await else {
        return;
    };
    let changed = {
        let mut links = lock(&inner.links);
        let link = links
            .values_mut()
            .find(|l| l.conn.stable_id() == conn.stable_id());
        match link {
            Some(l) if observed.is_some() && l.info.observed != observed => {
                l.info.observed = observed;
                true
            }
            _ => false,
        }
    };
    if changed {
        debug!(?observed, "a node sees this agent at a new address");
        refresh_candidates(&inner);
    }
}
