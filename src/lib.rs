//! x0x: an agent-to-agent network over QUIC.
//!
//! [`Agent`] joins the network through bootstrap nodes, learns its public
//! address, registers in the shared directory and reaches other agents by
//! [`PeerId`]: directly through NATs when they allow it, otherwise through a
//! bootstrap node's relay, end-to-end encrypted either way.
//!
//! ```no_run
//! # async fn demo() -> Result<(), x0x::AgentError> {
//! use x0x::{Agent, NetworkConfig};
//! // NetworkConfig::default() joins the public bootstrap nodes.
//! let agent = Agent::builder().network(NetworkConfig::default()).build().await?;
//! let joined = agent.join_network().await?;
//! println!("I am {} at {:?}", agent.peer_id(), joined.observed_addr);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod collab;
pub mod mux_socket;
pub mod network;

pub use agent::{Agent, AgentBuilder, AgentError, JoinReport};
pub use network::{DEFAULT_BOOTSTRAP_PEERS, NetworkConfig};
/// The QUIC implementation whose types appear in this API ([`quinn::Connection`], streams).
pub use quinn;
pub use x0x_proto::{Identity, IdentityError, PeerAddr, PeerId};
