//! x0x: an agent-to-agent network over QUIC.
//!
//! - [`Agent`] joins the network through bootstrap nodes, learns its public
//!   address, registers in the shared directory and reaches other agents.
//! - [`node::Node`] is the bootstrap node (`x0x-bootstrap`): reflector,
//!   coordinator and relay for agents, in a full mesh with its peers.
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
pub mod backoff;
pub mod config;
pub mod coordinator;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod mux_socket;
pub mod network;
pub mod node;
pub mod reflector;
pub mod relay;
pub mod tls;
pub mod transport;
pub mod wire;

pub use agent::{Agent, AgentBuilder, AgentError, JoinReport};
pub use identity::{Identity, PeerId};
pub use network::{DEFAULT_BOOTSTRAP_PEERS, NetworkConfig, PeerAddr};
