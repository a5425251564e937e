//! The protocol x0x agents and bootstrap nodes speak, in one place.
//!
//! - [`identity`]: Ed25519 keys; a [`PeerId`] is the public key.
//! - [`tls`]: TLS 1.3 (rustls, aws-lc-rs) with self-signed certificates
//!   bound to the PeerId, post-quantum hybrid key exchange first.
//! - [`wire`]: length-prefixed, versioned postcard frames and every message.
//! - [`relay`]: the non-QUIC packets (relay data plane, vouching, probes).
//! - [`policy`]: which addresses an agent may be told to send packets to.
//! - [`transport`]: the QUIC endpoint settings both ends use.
//! - [`addr`]: peer addresses (`ip:port`, `host:port`).
//!
//! Agents use it through the `x0x` crate, which re-exports what they need;
//! the node (`x0x-bootstrap`) uses it directly.

pub mod addr;
pub mod backoff;
pub mod batch;
pub mod identity;
pub mod policy;
pub mod relay;
pub mod tls;
pub mod transport;
pub mod wire;

pub use addr::{PeerAddr, PeerSpec, canonical};
pub use identity::{Identity, IdentityError, PeerId};
