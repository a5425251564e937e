//! An authenticated QUIC connection to another agent, and its paths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use x0x_proto::PeerId;

use crate::path::{PathEvent, PathInfo, PathKind, Transport};
use crate::socket::MuxSocket;

/// An authenticated QUIC connection to another agent. Its packets move
/// between direct and relayed paths as paths come and go; the connection
/// (streams, datagrams) stays the same.
#[derive(Clone)]
pub struct PeerConnection {
    peer: PeerId,
    conn: quinn::Connection,
    socket: Arc<MuxSocket>,
    started: Instant,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("peer", &self.peer)
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl PeerConnection {
    pub(crate) fn new(
        peer: PeerId,
        conn: quinn::Connection,
        socket: Arc<MuxSocket>,
        started: Instant,
    ) -> Self {
        Self {
            peer,
            conn,
            socket,
            started,
        }
    }

    /// The peer's authenticated identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// How the connection's packets travel now (it changes).
    pub fn path(&self) -> PathKind {
        match self.socket.current_path(&self.peer) {
            Some((kind, _)) => kind,
            // No path chosen yet: relayed if any circuit exists, else direct.
            None if self.socket.relay_nodes(&self.peer).is_empty() => PathKind::Direct,
            None => PathKind::Relayed,
        }
    }

    /// How this agent's packets of the connection leave it now: UDP, or
    /// inside the TLS/TCP link to the relaying node.
    pub fn transport(&self) -> Transport {
        self.socket.transport(&self.peer)
    }

    /// The bootstrap node relaying the connection now, if relayed.
    pub fn via(&self) -> Option<PeerId> {
        self.socket
            .current_path(&self.peer)
            .and_then(|(_, via)| via)
    }

    /// Every path to the peer, with its RTT and whether it is in use.
    pub fn paths(&self) -> Vec<PathInfo> {
        self.socket.paths(&self.peer)
    }

    /// Path changes from now on.
    pub fn path_events(&self) -> PathEvents {
        PathEvents(self.socket.subscribe(&self.peer))
    }

    /// How long after the connection attempt started a direct path was
    /// first validated (if one was).
    pub fn time_to_direct(&self) -> Option<Duration> {
        self.socket
            .direct_since(&self.peer)
            .map(|t| t.saturating_duration_since(self.started))
    }

    /// When the connection attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// QUIC's round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The QUIC connection: open streams, send datagrams.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }
}

/// A stream of [`PathEvent`]s of one peer's connections.
#[derive(Debug)]
pub struct PathEvents(broadcast::Receiver<PathEvent>);

impl PathEvents {
    /// The next path change; `None` once the agent forgot the peer.
    /// Events a slow reader missed are skipped.
    pub async fn next(&mut self) -> Option<PathEvent> {
        loop {
            match self.0.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
