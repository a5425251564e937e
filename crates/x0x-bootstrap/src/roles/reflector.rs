//! The reflector role: tell every connecting peer the address it was seen
//! from. Behind a NAT this is the peer's public mapping, the first thing an
//! agent needs before anyone can reach it.

use std::net::SocketAddr;

use x0x_proto::addr::canonical;

/// The address to report to the peer on `conn`, if the role is on.
pub fn observed_address(enabled: bool, conn: &quinn::Connection) -> Option<SocketAddr> {
    enabled.then(|| canonical(conn.remote_address()))
}
