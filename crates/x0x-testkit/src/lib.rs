//! Test harness shared by the x0x crates' integration tests (not published).
//!
//! - [`cluster`]: real `x0x-bootstrap` processes on `127.<net>.0.0/24`.
//! - [`netns`]: a lab of Linux network namespaces (routers, NATs, hosts).
//! - [`wan`]: the six-node fleet in namespaces under real city-pair delays.
//!
//! Nothing here sends a packet outside 127.0.0.0/8 or the namespaces a lab
//! creates and removes.

pub mod cluster;
pub mod netns;
pub mod raw;
pub mod wan;

pub use cluster::*;
