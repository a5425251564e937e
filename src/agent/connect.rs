//! Connections between agents, by [`PeerId`].
//!
//! 1. The caller asks a coordinator to introduce it to the peer (fastest
//!    node first) and, at the same time, asks every node it is linked to
//!    for a relay circuit to the peer (nodes the peer is not registered
//!    with refuse). The peer's nodes push it our record and the circuits'
//!    other ends, so its socket knows our paths before our first packet.
//! 2. The caller dials the peer's mapped address. While the handshake is
//!    under way its packets go on every path (each relay circuit and each
//!    candidate address); the first that gets through wins. So `connect`
//!    returns in about one relay round trip when no direct path works yet.
//! 3. With the connection up, both sides hold a probe key and the path
//!    layer punches, validates direct paths and moves the connection to
//!    the best one (see [`crate::socket`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tracing::debug;
use x0x_proto::transport;
use x0x_proto::wire::close;
use x0x_proto::{PeerId, tls};

use super::peer::PeerConnection;
use super::requests::{introduce, open_circuit};
use super::{Inner, lock};
use crate::error::AgentError;
use crate::path::{PathKind, PathPolicy};
use crate::socket::{is_mapped, probe};

/// How [`crate::Agent::connect_with`] may reach a peer.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Which paths the connection may use.
    pub paths: PathPolicy,
    /// How long the handshake may take on the allowed paths.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            paths: PathPolicy::Any,
            timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectOptions {
    /// Options allowing only `paths`.
    pub fn paths(mut self, paths: PathPolicy) -> Self {
        self.paths = paths;
        self
    }

    /// Options with a handshake deadline of `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Open circuits to `peer` on every linked node (or only the nodes in
/// `only`). Returns how many opened and why the others did not.
pub(super) async fn open_circuits(
    inner: &Inner,
    peer: PeerId,
    only: Option<&[PeerId]>,
) -> (usize, Vec<String>) {
    let links = inner.links_by_rtt();
    let asks = links
        .iter()
        .filter(|(node, _)| only.is_none_or(|o| o.contains(node)))
        .map(|(node, conn)| async move {
            (
                *node,
                conn.remote_address(),
                open_circuit(conn, *node, peer).await,
            )
        });
    let mut opened = 0;
    let mut errors = Vec::new();
    for (node, addr, r) in join_all(asks).await {
        match r {
            Ok(cid) => {
                inner.socket.add_relay(peer, node, addr, cid);
                opened += 1;
            }
            Err(e) => errors.push(format!("relay via {}: {e}", node.short())),
        }
    }
    (opened, errors)
}

/// See [`crate::Agent::connect_with`].
pub(super) async fn connect(
    inner: &Arc<Inner>,
    peer: PeerId,
    opts: ConnectOptions,
) -> Result<PeerConnection, AgentError> {
    connect_as(inner, peer, opts, true).await
}

/// A connection the agent opens for itself (the collab service): it takes
/// whatever path policy the application last set for `peer` instead of
/// overriding it (the socket's paths to a peer are shared by all
/// connections to it).
pub(super) async fn connect_for_service(
    inner: &Arc<Inner>,
    peer: PeerId,
) -> Result<PeerConnection, AgentError> {
    connect_as(inner, peer, ConnectOptions::default(), false).await
}

async fn connect_as(
    inner: &Arc<Inner>,
    peer: PeerId,
    opts: ConnectOptions,
    set_policy: bool,
) -> Result<PeerConnection, AgentError> {
    if peer == inner.peer_id {
        return Err(AgentError::Unreachable {
            peer,
            reasons: vec!["that is this agent".into()],
        });
    }
    let started = Instant::now();
    let mut opts = opts;
    if !set_policy && let Some(policy) = inner.socket.policy(&peer) {
        opts.paths = policy;
    }
    // The socket state must exist before circuits are added to it.
    inner.socket.remote(peer, &[], true);
    inner.socket.set_policy(&peer, opts.paths);
    let relays = async {
        if opts.paths == PathPolicy::DirectOnly {
            (0, Vec::new())
        } else {
            open_circuits(inner, peer, None).await
        }
    };
    let (info, (opened, mut reasons)) = tokio::join!(introduce(inner, peer), relays);
    let info = info?;
    let mapped = if opts.paths == PathPolicy::RelayOnly {
        inner.socket.remote(peer, &[], true)
    } else {
        inner.socket.remote(peer, &info.addrs, true)
    };
    if opts.paths == PathPolicy::RelayOnly && opened == 0 {
        reasons.insert(0, "no relay circuit could be opened".into());
        return Err(AgentError::Unreachable { peer, reasons });
    }
    let dialed = transport::dial(
        &inner.endpoint,
        &inner.peer_client,
        mapped,
        opts.timeout,
        Some(peer),
    )
    .await;
    let conn = match dialed {
        Ok((conn, _)) => conn,
        Err(e) => {
            reasons.insert(0, e.to_string());
            return Err(AgentError::Unreachable { peer, reasons });
        }
    };
    let pc = established(inner, peer, conn.clone(), started);
    inner.collab.attach(peer, conn);
    let counter = match pc.path() {
        PathKind::Direct => &inner.connections_direct,
        PathKind::Relayed => &inner.connections_relayed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(pc)
}

/// A handshake with `peer` completed: hand the probe key to the socket and
/// track the connection's life.
fn established(
    inner: &Arc<Inner>,
    peer: PeerId,
    conn: quinn::Connection,
    started: Instant,
) -> PeerConnection {
    let key = probe::key_from_connection(&conn);
    inner.socket.attach(&peer, key);
    // Start probing now rather than at the next tick.
    inner.socket.maintain(Instant::now());
    let socket = inner.socket.clone();
    let watched = conn.clone();
    tokio::spawn(async move {
        watched.closed().await;
        socket.detach(&peer);
    });
    PeerConnection::new(peer, conn, inner.socket.clone(), started)
}

/// Accept connections other agents open to us. Only mapped addresses are
/// accepted (the peer introduced itself through a node), and the peer
/// must prove the identity that address belongs to.
pub(super) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let remote = incoming.remote_address();
        let Some(expected) = is_mapped(&remote)
            .then(|| inner.socket.peer_of(&remote))
            .flatten()
        else {
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), incoming).await else {
                return;
            };
            if tls::remote_peer_id(&conn) != Some(expected) {
                conn.close(close::WRONG_PEER, b"not the introduced peer");
                return;
            }
            debug!(peer = %expected.short(), took = ?started.elapsed(), "accepted agent connection");
            let pc = established(&inner, expected, conn.clone(), started);
            inner.collab.attach(expected, conn);
            if inner.accepted.try_send(pc).is_err() {
                // Nobody is calling accept() fast enough: the application
                // does not get this one (the collab service still uses it).
                debug!(peer = %expected.short(), "accept queue full: connection not handed to accept()");
            }
        });
    }
}

/// Peers with live connections that lack relay circuits get them again
/// (on the nodes they are registered with), at most every few seconds.
pub(super) async fn reopen_circuits(inner: &Arc<Inner>, peers: Vec<PeerId>) {
    for peer in peers {
        let homes = lock(&inner.homes).get(&peer).cloned().unwrap_or_default();
        let have = inner.socket.relay_nodes(&peer);
        let missing: Vec<PeerId> = homes.into_iter().filter(|h| !have.contains(h)).collect();
        if missing.is_empty() {
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ = open_circuits(&inner, peer, Some(&missing)).await;
        });
    }
}
