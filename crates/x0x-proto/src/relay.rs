//! Packets that share a UDP socket with QUIC but are not QUIC.
//!
//! Every x0x endpoint disables QUIC bit greasing, so every QUIC packet it
//! receives has the fixed bit (`0x40`) set, and long-header packets have
//! `0x80` set. A first byte with both clear is one of ours ([`is_x0x`]):
//!
//! | type | name | layout | between |
//! |---|---|---|---|
//! | `0x01` | relay | `[0x01][cid: u64 BE][payload]` | agent ⇄ node |
//! | `0x02` | probe | see the SDK's path layer | agent ⇄ agent |
//! | `0x03` | vouch | `[0x03][nonce: 16]` | node → agent |
//! | `0x04` | UDP check | `[0x04][nonce: 8]` | agent → node |
//! | `0x05` | UDP echo | `[0x05][nonce: 8]` | node → agent |
//! | `0x06` | hairpin check | `[0x06][nonce: 8]` | agent → its own public address |
//!
//! **Over TCP** (networks that block UDP) the same datagrams, QUIC and
//! these, travel as binary WebSocket messages inside TLS 1.3 to a node's
//! TCP listener (path [`WS_PATH`]); a UDP check tells an agent on TCP that
//! UDP works again.
//!
//! **Relay packets** are the relay's data plane: the payload is an
//! agent-to-agent QUIC packet, already encrypted and authenticated end to
//! end. The node never parses it; it looks up the circuit `cid`, checks the
//! packet came from the address of the agent that owns that end, charges
//! the limits, rewrites the cid to the other end's and sends it on
//! (TURN channel-data style). No QUIC termination at the node.

/// First byte of a relay packet.
pub const TYPE_RELAY: u8 = 0x01;
/// First byte of an agent-to-agent path probe.
pub const TYPE_PROBE: u8 = 0x02;
/// First byte of a vouch packet.
pub const TYPE_VOUCH: u8 = 0x03;

/// First byte of a UDP check (the node echoes it back).
pub const TYPE_UDP_CHECK: u8 = 0x04;
/// First byte of a node's answer to a UDP check.
pub const TYPE_UDP_ECHO: u8 = 0x05;
/// First byte of a hairpin check: sent to our own public address, it comes
/// back only through a NAT that hairpins.
pub const TYPE_HAIRPIN: u8 = 0x06;
/// Length of a UDP check and its echo.
pub const UDP_CHECK_LEN: usize = 9;

/// The WebSocket path of a node's TCP relay.
pub const WS_PATH: &str = "/x0x/v1";

/// Largest datagram carried in one WebSocket message.
pub const MAX_WS_DATAGRAM: usize = 2048;

/// Bytes a relay packet adds in front of its payload.
pub const RELAY_HEADER_LEN: usize = 9;

/// Length of a vouch packet.
pub const VOUCH_LEN: usize = 17;

/// The smallest payload a relay must carry for relayed agent connections:
/// a 1200-byte QUIC packet.
pub const MIN_RELAYED_QUIC_PACKET: usize = 1200;

/// Largest UDP payload x0x endpoints send to each other directly; a
/// relayed copy is [`RELAY_HEADER_LEN`] bytes longer and still fits the
/// 1452 bytes of an IPv6 packet on a 1500-byte link.
pub const MAX_PEER_UDP_PAYLOAD: u16 = 1452 - RELAY_HEADER_LEN as u16;

/// Whether a datagram starting with `first` is an x0x packet, not QUIC.
pub fn is_x0x(first: u8) -> bool {
    first & 0xc0 == 0
}

/// The circuit id and payload of a relay packet.
pub fn parse_relay(packet: &[u8]) -> Option<(u64, &[u8])> {
    if packet.len() < RELAY_HEADER_LEN || packet[0] != TYPE_RELAY {
        return None;
    }
    let cid = u64::from_be_bytes(packet[1..RELAY_HEADER_LEN].try_into().ok()?);
    Some((cid, &packet[RELAY_HEADER_LEN..]))
}

/// The header of a relay packet for circuit `cid`.
pub fn relay_header(cid: u64) -> [u8; RELAY_HEADER_LEN] {
    let mut h = [0u8; RELAY_HEADER_LEN];
    h[0] = TYPE_RELAY;
    h[1..].copy_from_slice(&cid.to_be_bytes());
    h
}

/// Rewrite the circuit id of a relay packet in place.
pub fn set_relay_cid(packet: &mut [u8], cid: u64) {
    packet[1..RELAY_HEADER_LEN].copy_from_slice(&cid.to_be_bytes());
}

/// A vouch packet carrying `nonce`.
pub fn encode_vouch(nonce: &[u8; 16]) -> [u8; VOUCH_LEN] {
    let mut p = [0u8; VOUCH_LEN];
    p[0] = TYPE_VOUCH;
    p[1..].copy_from_slice(nonce);
    p
}

/// The nonce of a vouch packet.
pub fn parse_vouch(packet: &[u8]) -> Option<[u8; 16]> {
    if packet.len() != VOUCH_LEN || packet[0] != TYPE_VOUCH {
        return None;
    }
    packet[1..].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_packets_round_trip_and_are_not_quic() {
        let mut p = relay_header(0x0102_0304_0506_0708).to_vec();
        p.extend_from_slice(b"payload");
        assert!(is_x0x(p[0]));
        assert_eq!(
            parse_relay(&p),
            Some((0x0102_0304_0506_0708, &b"payload"[..]))
        );
        set_relay_cid(&mut p, 7);
        assert_eq!(parse_relay(&p), Some((7, &b"payload"[..])));
        assert_eq!(parse_relay(&p[..8]), None);
        assert_eq!(parse_relay(&encode_vouch(&[1; 16])), None);
    }

    #[test]
    fn quic_first_bytes_are_never_taken_for_ours() {
        // Short header (fixed bit set) and long header (0x80 set, any fixed bit:
        // version negotiation) packets.
        for b in [0x40u8, 0x41, 0x7f, 0x80, 0x8f, 0xc0, 0xff] {
            assert!(!is_x0x(b), "{b:#x}");
        }
        for t in [TYPE_RELAY, TYPE_PROBE, TYPE_VOUCH] {
            assert!(is_x0x(t));
        }
    }

    #[test]
    fn vouch_packets_round_trip() {
        let v = encode_vouch(&[9; 16]);
        assert_eq!(parse_vouch(&v), Some([9; 16]));
        assert_eq!(parse_vouch(&v[..16]), None);
    }
}
