//! The x0x bootstrap node (`x0x-bootstrap`).
//!
//! A QUIC endpoint that keeps a full mesh with its configured peers and
//! serves agents in three roles ([`roles`]): reflector, coordinator and
//! relay. [`Node::start`] binds everything and returns a running node;
//! [`Node::shutdown`] closes every connection with a code peers recognise.
//!
//! The binary adds the configuration file ([`config`]), logging and systemd
//! readiness; health and metrics are served over HTTP ([`health`]).

mod bucket;
pub mod config;
pub mod health;
mod ipkey;
pub mod metrics;
pub mod node;
pub mod roles;

pub use config::Config;
pub use node::{Node, NodeError};
