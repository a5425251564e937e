//! The relayed-datagram format, shared by agents and the relay role.
//!
//! A relayed datagram is a QUIC datagram on an agent's connection to a
//! bootstrap node whose first [`PEER_ID_LEN`] bytes name a peer: from an
//! agent, the destination; from the node, the source. The rest is the
//! payload, which the node never parses. Its first byte is a tag saying what
//! the payload carries ([`TAG_QUIC`] or [`TAG_APP`]).

use bytes::{Bytes, BytesMut};

use crate::identity::{PEER_ID_LEN, PeerId};

/// Payload tag: an agent-to-agent QUIC packet.
pub const TAG_QUIC: u8 = b'Q';
/// Payload tag: an application datagram.
pub const TAG_APP: u8 = b'A';

/// The smallest payload a relay must carry for relayed agent connections:
/// a 1200-byte QUIC packet and its tag byte.
pub const MIN_RELAYED_QUIC_PACKET: usize = 1201;

/// Split a relayed datagram into the peer it names and its payload.
pub fn split(datagram: &Bytes) -> Option<(PeerId, Bytes)> {
    if datagram.len() < PEER_ID_LEN {
        return None;
    }
    let mut id = [0u8; PEER_ID_LEN];
    id.copy_from_slice(&datagram[..PEER_ID_LEN]);
    Some((PeerId::from_bytes(id), datagram.slice(PEER_ID_LEN..)))
}

/// Build a relayed datagram: `peer` followed by `payload`.
pub fn join(peer: &PeerId, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(PEER_ID_LEN + payload.len());
    b.extend_from_slice(peer.as_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        let peer = PeerId::from_bytes([3; 32]);
        let d = join(&peer, b"hello");
        assert_eq!(split(&d), Some((peer, Bytes::from_static(b"hello"))));
        assert_eq!(split(&Bytes::from_static(b"short")), None);
    }
}
