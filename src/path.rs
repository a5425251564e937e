//! Paths of a connection between two agents, as the API reports them.
//!
//! A [`crate::PeerConnection`] is one QUIC connection whatever carries it:
//! its packets go direct (UDP between the two agents, through their NATs)
//! or relayed (through a bootstrap node's relay, still encrypted end to
//! end), and the agent's socket moves them between paths as paths appear
//! and fail, without quinn noticing and without a new handshake.

use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;

use crate::PeerId;
pub use crate::socket::remote::{PathPolicy, PathReason};

/// How a connection's packets travel now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Relayed,
}

/// How this agent's packets leave it: over UDP, or inside the TLS/TCP
/// connection to a bootstrap node (for networks that block UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

/// A change of the path a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathEvent {
    pub path: PathKind,
    /// The relaying node, when relayed.
    pub via: Option<PeerId>,
    /// The peer's address, when direct.
    pub addr: Option<SocketAddr>,
    pub transport: Transport,
    pub reason: PathReason,
    pub at: Instant,
}

/// What one path of a connection looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathInfo {
    pub kind: PathKind,
    /// The peer's address (direct) or the relaying node's address (relayed).
    pub addr: SocketAddr,
    /// The relaying node, when relayed.
    pub via: Option<PeerId>,
    /// The probe RTT, once measured.
    pub rtt: Option<std::time::Duration>,
    /// Whether packets may go this way now.
    pub usable: bool,
    /// Whether the connection's packets use it now.
    pub selected: bool,
}
