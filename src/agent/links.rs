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

use super::requests::request;
use super::{BootstrapLink, Inner, JoinReport, Link, NodeState, lock};
use crate::error::{AgentError, NodeFailure};

/// A bootstrap link that lived this long resets the redial backoff.
const STABLE_LINK: Duration = Duration::from_secs(2);
/// How long one dial or one request may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The first outcome of one address's task.
enum First {
    Joined(BootstrapLink),
    Failed(NodeFailure),
}

/// See [`crate::Agent::join_network`].
pub(super) async fn join(inner: &Arc<Inner>) -> Result<JoinReport, AgentError> {
    let started = Instant::now();
    let deadline = started + inner.network.join_timeout;
    let (tx, mut rx) = mpsc::channel(64);
    let mut waiting = Vec::new();
    for spec in inner.network.bootstrap_peers.clone() {
        let key = spec.to_string();
        // Each address is kept by one task for the agent's life.
        if !lock(&inner.maintained).insert(key.clone()) {
            continue;
        }
        lock(&inner.status).insert(key.clone(), NodeState::Connecting);
        waiting.push(key);
        tokio::spawn(maintain(inner.clone(), spec, deadline, tx.clone()));
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
                    .filter(|(_, s)| matches!(s, NodeState::Connected(_)))
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
    spec: PeerSpec,
    deadline: Instant,
    first: mpsc::Sender<First>,
) {
    let key = spec.to_string();
    let mut first = Some(first);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let timeout = match first {
            Some(_) => deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200), STEP_TIMEOUT),
            None => STEP_TIMEOUT,
        };
        let attempt = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = connect(&inner, &spec, timeout) => r,
        };
        match attempt {
            Ok((conn, control, mut info)) => {
                let duplicate = {
                    let links = lock(&inner.links);
                    links
                        .get(&info.peer_id)
                        .is_some_and(|l| l.conn.close_reason().is_none())
                };
                if duplicate {
                    // The same node under another address: one link per node.
                    conn.close(wire::close::DUPLICATE, b"already connected to this node");
                    if let Some(tx) = first.take() {
                        let _ = tx
                            .send(First::Failed(NodeFailure {
                                addr: key.clone(),
                                reason: "same node as another bootstrap address".into(),
                            }))
                            .await;
                    }
                    return;
                }
                info.registered = register(&inner, &conn, &info).await;
                lock(&inner.links).insert(
                    info.peer_id,
                    Link {
                        conn: conn.clone(),
                        info: info.clone(),
                    },
                );
                lock(&inner.status).insert(key.clone(), NodeState::Connected(info.clone()));
                refresh_candidates(&inner);
                if let Some(tx) = first.take() {
                    let _ = tx.send(First::Joined(info.clone())).await;
                }
                let started = Instant::now();
                run_link(&inner, conn, control, &info).await;
                lock(&inner.status).insert(key.clone(), NodeState::Retrying("link lost".into()));
                if started.elapsed() >= STABLE_LINK {
                    backoff.reset();
                }
            }
            Err(e) => {
                debug!(addr = %key, "bootstrap dial failed: {e}");
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
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The control stream. Our side sends nothing after `Hello`, but keeps the
/// send half open: finishing it would tell the node we are leaving.
type Control = (quinn::SendStream, quinn::RecvStream);

async fn connect(
    inner: &Inner,
    spec: &PeerSpec,
    timeout: Duration,
) -> Result<(quinn::Connection, Control, BootstrapLink), String> {
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
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let msg = Message::Hello {
            kind: PeerKind::Agent,
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
    let (send, recv, roles, observed) = tokio::time::timeout(STEP_TIMEOUT, hello)
        .await
        .map_err(|_| "no Welcome from node".to_string())?
        .map_err(|e| e.to_string())?;
    let info = BootstrapLink {
        peer_id: peer,
        addr: x0x_proto::canonical(conn.remote_address()),
        roles,
        observed,
        rtt: conn.rtt(),
        registered: false,
    };
    Ok((conn, (send, recv), info))
}

/// Addresses of this agent's own interfaces worth telling peers about
/// (the node keeps only local-scope ones without vouching).
fn local_candidates(inner: &Inner) -> Vec<SocketAddr> {
    let mut v = Vec::new();
    if let Ok(local) = inner.endpoint.local_addr()
        && !local.ip().is_unspecified()
    {
        v.push(x0x_proto::canonical(local));
    }
    v
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

/// Tell the socket our candidate addresses: every observed one, then local ones.
fn refresh_candidates(inner: &Inner) {
    let mut own: Vec<SocketAddr> = lock(&inner.links)
        .values()
        .filter_map(|l| l.info.observed)
        .collect();
    own.extend(local_candidates(inner));
    own.dedup();
    let mut seen = Vec::new();
    own.retain(|a| {
        let fresh = !seen.contains(a);
        seen.push(*a);
        fresh
    });
    inner.socket.set_own_candidates(own);
}

/// Serve one bootstrap link until it closes: pushes on the control stream.
async fn run_link(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    control: Control,
    info: &BootstrapLink,
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
    tokio::select! {
        _ = pushes => {},
        _ = conn.closed() => {},
        _ = inner.cancel.cancelled() => {},
    }
    {
        let mut links = lock(&inner.links);
        if links
            .get(&node)
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
        {
            links.remove(&node);
        }
    }
    inner.socket.node_lost(&node);
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

/// Return vouch nonces that reached us to the node that sent them.
pub(super) async fn answer_vouches(
    inner: Arc<Inner>,
    mut nonces: mpsc::Receiver<(SocketAddr, [u8; 16])>,
) {
    loop {
        let (from, nonce) = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            n = nonces.recv() => match n { Some(n) => n, None => return },
        };
        // The nonce may come from another address of the node (its other
        // family): offer it to every link; only the node that issued it accepts.
        let conns: Vec<quinn::Connection> = lock(&inner.links)
            .values()
            .map(|l| l.conn.clone())
            .collect();
        let _ = from;
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
