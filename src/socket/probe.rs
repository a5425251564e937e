//! Path probes between two agents: authenticated, tiny, not QUIC.
//!
//! ```text
//! [0x02][kind][sender PeerId: 32][tx: 12][body][mac: 16]
//! ```
//!
//! The MAC is HMAC-SHA256 (truncated to 16 bytes) under a key both agents
//! export from the TLS session of their QUIC connection
//! ([`key_from_connection`]), so only the two ends of a connection can
//! make probes the other accepts: a third host cannot validate a path,
//! move a connection, or learn anything from a probe it saw.
//!
//! - `Ping` on a candidate path; the answer is a `Pong` echoing its `tx` and
//!   the address the ping came from. A pong to one of our pings, from the
//!   address we sent it to, validates that path and measures its RTT.
//! - `Call` (through the relay) lists the sender's candidate addresses and
//!   starts a punching round; `Sync` (through the relay) tells the other
//!   side to ping now, timed so both sides' first pings cross (DCUtR).

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::hmac;
use x0x_proto::identity::{PEER_ID_LEN, PeerId};
use x0x_proto::relay::TYPE_PROBE;
use x0x_proto::wire::MAX_ADDRS;

/// The TLS exporter label of the probe key.
const EXPORTER_LABEL: &[u8] = b"x0x path probe key v1";
const MAC_LEN: usize = 16;
const TX_LEN: usize = 12;
const HEADER_LEN: usize = 1 + 1 + PEER_ID_LEN + TX_LEN;

/// A transaction id.
pub type Tx = [u8; TX_LEN];

/// The key two agents authenticate probes with.
#[derive(Clone)]
pub struct ProbeKey(hmac::Key);

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

impl ProbeKey {
    /// A key from raw bytes (both ends must use the same).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let tag = hmac::sign(&self.0, data);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }
}

/// The probe key of a connection: exported from its TLS session, the same
/// at both ends and at no one else.
pub fn key_from_connection(conn: &quinn::Connection) -> Option<ProbeKey> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .ok()?;
    Some(ProbeKey::from_bytes(&out))
}

/// What a probe says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Ping,
    /// Answer to the ping with the same `tx`; `observed` is where it came from.
    Pong {
        observed: SocketAddr,
    },
    /// The sender's candidate addresses; starts punching round `round`.
    Call {
        round: u8,
        candidates: Vec<SocketAddr>,
    },
    /// Ping now (round `round`).
    Sync {
        round: u8,
    },
}

/// A decoded probe: who claims to send it, its transaction and body.
/// Decoding does not authenticate it: see [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: PeerId,
    pub tx: Tx,
    pub body: Body,
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip().to_canonical() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (ip, rest): (IpAddr, &[u8]) = match tag {
        4 if rest.len() >= 4 => (<[u8; 4]>::try_from(&rest[..4]).ok()?.into(), &rest[4..]),
        6 if rest.len() >= 16 => (<[u8; 16]>::try_from(&rest[..16]).ok()?.into(), &rest[16..]),
        _ => return None,
    };
    if rest.len() < 2 {
        return None;
    }
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Some((SocketAddr::new(ip, port), &rest[2..]))
}

/// Encode and authenticate a probe.
pub fn encode(key: &ProbeKey, from: &PeerId, tx: &Tx, body: &Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64 + MAC_LEN);
    out.push(TYPE_PROBE);
    out.push(match body {
        Body::Ping => 1,
        Body::Pong { .. } => 2,
        Body::Call { .. } => 3,
        Body::Sync { .. } => 4,
    });
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(tx);
    match body {
        Body::Ping => {}
        Body::Pong { observed } => put_addr(&mut out, observed),
        Body::Call { round, candidates } => {
            out.push(*round);
            let n = candidates.len().min(MAX_ADDRS);
            out.push(n as u8);
            for a in &candidates[..n] {
                put_addr(&mut out, a);
            }
        }
        Body::Sync { round } => out.push(*round),
    }
    let mac = key.mac(&out);
    out.extend_from_slice(&mac);
    out
}

/// Decode a probe without checking its MAC (to find the sender's key).
pub fn decode(packet: &[u8]) -> Option<Probe> {
    if packet.len() < HEADER_LEN + MAC_LEN || packet[0] != TYPE_PROBE {
        return None;
    }
    let body = &packet[HEADER_LEN..packet.len() - MAC_LEN];
    let from = PeerId::from_bytes(packet[2..2 + PEER_ID_LEN].try_into().ok()?);
    let tx: Tx = packet[2 + PEER_ID_LEN..HEADER_LEN].try_into().ok()?;
    let body = match packet[1] {
        1 if body.is_empty() => Body::Ping,
        2 => match get_addr(body)? {
            (observed, []) => Body::Pong { observed },
            _ => return None,
        },
        3 => {
            let (&round, rest) = body.split_first()?;
            let (&n, mut rest) = rest.split_first()?;
            if n as usize > MAX_ADDRS {
                return None;
            }
            let mut candidates = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let (a, r) = get_addr(rest)?;
                candidates.push(a);
                rest = r;
            }
            if !rest.is_empty() {
                return None;
            }
            Body::Call { round, candidates }
        }
        4 if body.len() == 1 => Body::Sync { round: body[0] },
        _ => return None,
    };
    Some(Probe { from, tx, body })
}

/// Whether `packet` carries a valid MAC under `key`.
pub fn verify(key: &ProbeKey, packet: &[u8]) -> bool {
    if packet.len() < HEADER_LEN + MAC_LEN {
        return false;
    }
    let (data, mac) = packet.split_at(packet.len() - MAC_LEN);
    let expected = key.mac(data);
    // Constant time: the comparison must not leak how many bytes matched.
    aws_lc_rs::constant_time::verify_slices_are_equal(&expected, mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> ProbeKey {
        ProbeKey::from_bytes(&[n; 32])
    }

    #[test]
    fn every_body_round_trips_and_verifies_only_under_its_key() {
        let from = PeerId::from_bytes([7; 32]);
        let tx = [3u8; 12];
        for body in [
            Body::Ping,
            Body::Pong {
                observed: "198.51.100.7:4000".parse().unwrap(),
            },
            Body::Pong {
                observed: "[2001:db8::1]:5".parse().unwrap(),
            },
            Body::Call {
                round: 2,
                candidates: vec![
                    "10.0.0.2:1".parse().unwrap(),
                    "[fd00::1]:2".parse().unwrap(),
                ],
            },
            Body::Sync { round: 9 },
        ] {
            let p = encode(&key(1), &from, &tx, &body);
            assert!(x0x_proto::relay::is_x0x(p[0]));
            assert!(verify(&key(1), &p));
            assert!(!verify(&key(2), &p));
            let d = decode(&p).unwrap();
            assert_eq!(d, Probe { from, tx, body });
            // Any flipped bit breaks the MAC.
            for i in 0..p.len() {
                let mut q = p.clone();
                q[i] ^= 1;
                assert!(!verify(&key(1), &q), "bit flip at {i} verified");
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = verify(&key(1), &bytes);
        }
    }
}
