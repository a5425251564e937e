//! Test harness shared by the x0x crates' integration tests (not published).
//!
//! - [`cluster`]: real `x0x-bootstrap` processes on `127.<net>.0.0/24`.
//! - [`netns`]: a lab of Linux network namespaces (routers, NATs, hosts).
//! - [`raw`]: a raw protocol client; [`lean`]: thousands of lean agents.
//! - [`flood`]: spoofed-source floods of real QUIC Initials (raw sockets).
//! - [`procstat`]: CPU time and RSS of a process.
//! - [`wss`]: a raw client of a node's TCP relay (TLS + WebSocket).
//! - [`wan`]: the six-node fleet in namespaces under real city-pair delays.
//!
//! Nothing here sends a packet outside 127.0.0.0/8 or the namespaces a lab
//! creates and removes.

pub mod cluster;
pub mod flood;
pub mod lean;
pub mod netns;
pub mod procstat;
pub mod raw;
pub mod wan;
pub mod wss;

pub use cluster::*;
