//! Connections between agents, by [`PeerId`]: direct through NATs when the
//! NATs allow it, else relayed through a bootstrap node, end-to-end
//! encrypted either way.
//!
//! 1. The caller asks a coordinator to introduce it to the peer. The reply
//!    carries the peer's addresses (as reflectors observed them); the peer
//!    receives ours and starts sending punch packets toward us from its
//!    endpoint's socket, opening its NAT.
//! 2. The caller dials every candidate address from the same socket (its
//!    QUIC Initials open our own NAT). The first handshake that completes
//!    with the right identity wins.
//! 3. If none completes within `direct_timeout`, the caller dials the
//!    peer's virtual relay address (see [`crate::mux_socket`]): the same
//!    QUIC handshake, carried in datagrams through the peer's home node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Agent, AgentError, Inner, TAG_QUIC};
use crate::mux_socket::{RelayedPacket, is_virtual};
use x0x_proto::identity::PeerId;
use x0x_proto::wire::{AgentRecord, close};
use x0x_proto::{relay, tls, transport};

/// How a connection between two agents travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Relayed,
}

/// An authenticated QUIC connection to another agent.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    peer: PeerId,
    path: PathKind,
    via: Option<PeerId>,
    conn: quinn::Connection,
}

impl PeerConnection {
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    pub fn path(&self) -> PathKind {
        self.path
    }

    /// The bootstrap node relaying this connection, if relayed.
    pub fn via(&self) -> Option<PeerId> {
        self.via
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The underlying QUIC connection (open streams, send datagrams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }
}

/// How [`Agent::connect_with`] may reach a peer.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    pub allow_direct: bool,
    pub allow_relay: bool,
    /// How long to try direct paths before falling back to the relay.
    pub direct_timeout: Duration,
    /// How long the relayed handshake may take.
    pub relay_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            allow_direct: true,
            allow_relay: true,
            direct_timeout: Duration::from_secs(3),
            relay_timeout: Duration::from_secs(10),
        }
    }
}

impl Agent {
    /// Connect to another agent by its [`PeerId`]: direct if possible, else
    /// relayed. See [`ConnectOptions`].
    pub async fn connect(&self, peer: PeerId) -> Result<PeerConnection, AgentError> {
        self.connect_with(peer, ConnectOptions::default()).await
    }

    pub async fn connect_with(
        &self,
        peer: PeerId,
        opts: ConnectOptions,
    ) -> Result<PeerConnection, AgentError> {
        if peer == self.peer_id() {
            return Err(AgentError::Unreachable {
                peer,
                reasons: vec!["that is this agent".into()],
            });
        }
        let record = self.introduce(peer).await?;
        let mut reasons = Vec::new();
        if opts.allow_direct {
            match connect_direct(&self.inner, &record, opts.direct_timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => reasons.push(format!("direct: {e}")),
            }
        }
        if opts.allow_relay {
            match connect_relayed(&self.inner, &record, opts.relay_timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => reasons.push(format!("relayed: {e}")),
            }
        }
        if reasons.is_empty() {
            reasons.push("neither direct nor relayed paths are allowed".into());
        }
        Err(AgentError::Unreachable { peer, reasons })
    }

    /// The next connection another agent opened to us.
    pub async fn accept(&self) -> Option<PeerConnection> {
        self.accepted.lock().await.recv().await
    }
}

fn check_identity(conn: &quinn::Connection, expected: PeerId) -> Result<(), String> {
    if tls::remote_peer_id(conn) == Some(expected) {
        return Ok(());
    }
    conn.close(close::WRONG_PEER, b"not the peer that was dialed");
    Err(format!(
        "{} answered with another identity",
        conn.remote_address()
    ))
}

async fn connect_direct(
    inner: &Inner,
    record: &AgentRecord,
    timeout: Duration,
) -> Result<PeerConnection, String> {
    let local_v6 = inner
        .endpoint
        .local_addr()
        .map(|a| a.is_ipv6())
        .unwrap_or(true);
    let mut attempts: FuturesUnordered<_> = record
        .addrs
        .iter()
        .filter(|a| {
            !is_virtual(a) && !a.ip().is_unspecified() && a.port() != 0 && (local_v6 || a.is_ipv4())
        })
        .map(|addr| transport::dial(&inner.endpoint, *addr, timeout))
        .collect();
    if attempts.is_empty() {
        return Err("no usable address for the peer".into());
    }
    let mut errors = Vec::new();
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok((conn, _)) => match check_identity(&conn, record.peer) {
                Ok(()) => {
                    return Ok(PeerConnection {
                        peer: record.peer,
                        path: PathKind::Direct,
                        via: None,
                        conn,
                    });
                }
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors.join(", "))
}

async fn connect_relayed(
    inner: &Inner,
    record: &AgentRecord,
    timeout: Duration,
) -> Result<PeerConnection, String> {
    let node = record.home;
    if inner.link(&node).is_none() {
        return Err(format!("not connected to the peer's home node {node}"));
    }
    let addr = inner.socket.relay_addr(node, record.peer);
    let (conn, _) = transport::dial(&inner.endpoint, addr, timeout)
        .await
        .map_err(|e| e.to_string())?;
    check_identity(&conn, record.peer)?;
    Ok(PeerConnection {
        peer: record.peer,
        path: PathKind::Relayed,
        via: Some(node),
        conn,
    })
}

/// Forward the QUIC packets of relayed connections to their relay nodes.
pub(super) async fn pump_relayed(inner: Arc<Inner>, mut queue: mpsc::Receiver<RelayedPacket>) {
    let mut buf = Vec::with_capacity(2048);
    loop {
        let packet = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            p = queue.recv() => match p { Some(p) => p, None => return },
        };
        let Some(conn) = inner.link(&packet.node) else {
            continue; // the relay is gone: drop, QUIC will time out or recover
        };
        buf.clear();
        buf.push(TAG_QUIC);
        buf.extend_from_slice(&packet.payload);
        let _ = conn.send_datagram(relay::join(&packet.peer, &buf));
    }
}

/// Accept connections from other agents, direct or relayed.
pub(super) async fn accept_loop(inner: Arc<Inner>, accepted: mpsc::Sender<PeerConnection>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let inner = inner.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), incoming).await else {
                return;
            };
            let Some(peer) = tls::remote_peer_id(&conn) else {
                conn.close(close::PROTOCOL, b"no identity");
                return;
            };
            let remote = conn.remote_address();
            let (path, via) = match inner.socket.relay_route(&remote) {
                Some((node, _)) => (PathKind::Relayed, Some(node)),
                None => (PathKind::Direct, None),
            };
            tracing::debug!(peer = %peer, ?path, took = ?started.elapsed(), "accepted agent connection");
            let pc = PeerConnection {
                peer,
                path,
                via,
                conn: conn.clone(),
            };
            if accepted.try_send(pc).is_err() {
                // Nobody is calling accept() fast enough: refuse rather than pile up.
                conn.close(close::OVERLOADED, b"not accepting connections");
            }
        });
    }
}
