//! Errors of the SDK. Every condition a caller may act on is its own
//! variant; strings only carry detail for people.

use std::time::Duration;

use x0x_proto::wire::{Refusal, WireError};
use x0x_proto::{IdentityError, PeerId};

/// Why a bootstrap node could not be joined.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeFailure {
    /// The configured address (`addr` or `PEERID@addr`).
    pub addr: String,
    /// What went wrong, for people.
    pub reason: String,
}

impl std::fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.addr, self.reason)
    }
}

/// Everything that can go wrong for an [`crate::Agent`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The agent's UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// TLS or QUIC configuration failed (a bug or an unusable key).
    #[error("transport setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `build()` was called outside a Tokio runtime.
    #[error("the agent needs a Tokio runtime (call build() inside one)")]
    NoRuntime,
    /// The configuration cannot work.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(&'static str),
    /// No bootstrap node answered before the join deadline.
    #[error("no bootstrap node could be reached: {}", .failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    NoBootstrapReachable { failures: Vec<NodeFailure> },
    /// The agent has no live connection to any bootstrap node.
    #[error("not connected to any bootstrap node")]
    NotJoined,
    /// A bootstrap node refused the request.
    #[error("bootstrap node {node} refused: {reason}")]
    Refused { node: PeerId, reason: Refusal },
    /// The directory does not know the peer.
    #[error("peer {0} is not in the directory")]
    NotFound(PeerId),
    /// A node broke the protocol.
    #[error("protocol error from a bootstrap node: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("{what} timed out after {} ms", .after.as_millis())]
    Timeout { what: &'static str, after: Duration },
    /// A connection failed.
    #[error("connection error: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// No path to the peer worked.
    #[error("cannot reach peer {peer}: {}", .reasons.join("; "))]
    Unreachable { peer: PeerId, reasons: Vec<String> },
    /// Sending or receiving data on a connection failed.
    #[error("data transfer failed: {0}")]
    Transfer(String),
    /// The agent was closed.
    #[error("the agent is closed")]
    Closed,
}

impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl From<x0x_proto::transport::TransportError> for AgentError {
    fn from(e: x0x_proto::transport::TransportError) -> Self {
        match e {
            x0x_proto::transport::TransportError::Bind { addr, source } => {
                Self::Bind { addr, source }
            }
            other => Self::Setup(other.to_string()),
        }
    }
}
