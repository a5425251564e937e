//! The relay role: forwards opaque datagrams between two agents connected to
//! the same node, addressed by [`PeerId`].
//!
//! A relayed datagram is a QUIC datagram whose first 32 bytes name a peer:
//! from an agent, the destination; from the node, the source. The payload is
//! never parsed (agents encrypt it end to end). Every datagram passes a size
//! limit, a per-peer token bucket and a global token bucket; what does not
//! fit is dropped and counted by reason.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::config::Limits;
use crate::identity::{PEER_ID_LEN, PeerId};

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

/// A token bucket holding at most one second of `rate` bytes.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    TooLarge,
    PeerRate,
    GlobalRate,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::PeerRate => "peer_rate",
            Self::GlobalRate => "global_rate",
        }
    }
}

/// Size and rate limits for relayed traffic.
#[derive(Debug)]
pub struct Limiter {
    max_payload: usize,
    peer_rate: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    global: Bucket,
    peers: HashMap<PeerId, Bucket>,
}

impl Limiter {
    pub fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        Self {
            max_payload: limits.relay_datagram_bytes,
            peer_rate: limits.relay_peer_bytes_per_sec,
            state: Mutex::new(State {
                global: Bucket::new(limits.relay_global_bytes_per_sec, now),
                peers: HashMap::new(),
            }),
        }
    }

    /// Charge `len` payload bytes sent by `peer`, or say why not.
    pub fn admit(&self, peer: &PeerId, len: usize, now: Instant) -> Result<(), Drop> {
        if len > self.max_payload {
            return Err(Drop::TooLarge);
        }
        let cost = len as f64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { global, peers } = &mut *state;
        let bucket = peers
            .entry(*peer)
            .or_insert_with(|| Bucket::new(self.peer_rate, now));
        bucket.refill(now);
        if bucket.tokens < cost {
            return Err(Drop::PeerRate);
        }
        global.refill(now);
        if global.tokens < cost {
            return Err(Drop::GlobalRate);
        }
        bucket.tokens -= cost;
        global.tokens -= cost;
        Ok(())
    }

    /// Forget a disconnected peer's bucket.
    pub fn forget(&self, peer: &PeerId) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.peers.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(peer: u64, global: u64) -> Limits {
        Limits {
            relay_datagram_bytes: 1000,
            relay_peer_bytes_per_sec: peer,
            relay_global_bytes_per_sec: global,
            ..Limits::default()
        }
    }

    #[test]
    fn framing_round_trips() {
        let peer = PeerId::from_bytes([3; 32]);
        let d = join(&peer, b"hello");
        assert_eq!(split(&d), Some((peer, Bytes::from_static(b"hello"))));
        assert_eq!(split(&Bytes::from_static(b"short")), None);
    }

    #[test]
    fn a_peer_over_its_quota_is_throttled_and_others_are_not() {
        let l = Limiter::new(&limits(2000, 1_000_000));
        let (a, b) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
        let t0 = Instant::now();
        assert_eq!(l.admit(&a, 1000, t0), Ok(()));
        assert_eq!(l.admit(&a, 1000, t0), Ok(()));
        assert_eq!(l.admit(&a, 1000, t0), Err(Drop::PeerRate));
        assert_eq!(l.admit(&b, 1000, t0), Ok(()));
        // Half a second later a has 1000 bytes of budget again.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.admit(&a, 1000, t1), Ok(()));
        assert_eq!(l.admit(&a, 1000, t1), Err(Drop::PeerRate));
    }

    #[test]
    fn the_global_limit_applies_across_peers() {
        let l = Limiter::new(&limits(1_000_000, 1500));
        let t0 = Instant::now();
        assert_eq!(l.admit(&PeerId::from_bytes([1; 32]), 1000, t0), Ok(()));
        assert_eq!(
            l.admit(&PeerId::from_bytes([2; 32]), 1000, t0),
            Err(Drop::GlobalRate)
        );
    }

    #[test]
    fn oversized_payloads_are_dropped() {
        let l = Limiter::new(&limits(1_000_000, 1_000_000));
        assert_eq!(
            l.admit(&PeerId::from_bytes([1; 32]), 1001, Instant::now()),
            Err(Drop::TooLarge)
        );
    }
}
