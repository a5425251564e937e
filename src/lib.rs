//! x0x: an agent-to-agent network over QUIC.
//!
//! An [`Agent`] joins the network through bootstrap nodes, learns its
//! public address, registers in the shared directory and reaches other
//! agents by [`PeerId`]: directly through NATs when they allow it,
//! otherwise through a bootstrap node's relay, end-to-end encrypted either
//! way. One [`PeerConnection`] moves between those paths as they appear
//! and fail ([`path`]).
//!
//! Two agents on this machine, meeting through a local bootstrap node
//! (`cargo run -p x0x-bootstrap -- --config node.toml` with
//! `listen = "127.0.0.1:12000"` and `state_dir` set):
//!
//! ```no_run
//! use x0x::{Agent, NetworkConfig};
//!
//! # async fn demo() -> Result<(), x0x::AgentError> {
//! let network = NetworkConfig::with_bootstrap_peers(vec!["127.0.0.1:12000".parse().unwrap()]);
//! let alice = Agent::builder().network(network.clone()).build()?;
//! let bob = Agent::builder().network(network).build()?;
//! alice.join_network().await?;
//! bob.join_network().await?;
//!
//! let to_bob = alice.connect(bob.peer_id()).await?;
//! println!("path: {:?}", to_bob.path());
//! let (mut send, _recv) = to_bob.connection().open_bi().await?;
//! send.write_all(b"hello").await.ok();
//! let from_alice = bob.accept().await.expect("alice connects");
//! assert_eq!(from_alice.peer_id(), alice.peer_id());
//! # Ok(()) }
//! ```
//!
//! `NetworkConfig::default()` joins the public bootstrap nodes
//! ([`DEFAULT_BOOTSTRAP_PEERS`]).

mod agent;
mod error;
mod network;
pub mod path;
mod portmap;
mod socket;

pub use agent::{
    Agent, AgentBuilder, AgentStats, BootstrapLink, BootstrapStatus, ConnectOptions, JoinReport,
    NodeState, PathEvents, PeerConnection,
};
pub use error::{AgentError, NodeFailure};
pub use network::{DEFAULT_BOOTSTRAP_PEERS, NetworkConfig};
pub use path::{PathEvent, PathInfo, PathKind, PathPolicy, PathReason, Transport};
pub use portmap::{PortMapProtocol, PortMapping};
/// The QUIC implementation whose types appear in this API ([`quinn::Connection`], streams).
pub use quinn;
/// Which addresses an agent may be told to send packets to.
pub use x0x_proto::policy;
/// What the directory knows about an agent (its addresses and nodes).
pub use x0x_proto::wire::PeerInfo;
/// Why a bootstrap node refused a request.
pub use x0x_proto::wire::Refusal;
pub use x0x_proto::{Identity, IdentityError, PeerAddr, PeerId, PeerSpec};
