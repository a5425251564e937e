//! The relay role: forwards opaque datagrams between two agents connected to
//! the same node, addressed by [`PeerId`].
//!
//! A relayed datagram is a QUIC datagram whose first 32 bytes name a peer:
//! from an agent, the destination; from the node, the source. The payload is
//! never parsed (agents encrypt it end to end). Every datagram passes a size
//! limit, a per-peer token bucket and a global token bucket, and a new
//! *circuit* (a source and destination pair) must fit the per-peer and
//! global circuit limits; what does not fit is dropped and counted by reason.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use x0x_proto::identity::PeerId;

use crate::config::Limits;

/// A circuit with no traffic for this long no longer counts against limits.
pub const CIRCUIT_IDLE: Duration = Duration::from_secs(30);

/// A token bucket holding at most one second of `rate` tokens.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Self {
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

    /// Whether the bucket has refilled completely (its owner has been idle).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate
    }

    /// Take `cost` tokens if there are enough.
    pub fn take(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
        true
    }
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    TooLarge,
    PeerRate,
    GlobalRate,
    PeerCircuits,
    GlobalCircuits,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::PeerRate => "peer_rate",
            Self::GlobalRate => "global_rate",
            Self::PeerCircuits => "peer_circuits",
            Self::GlobalCircuits => "global_circuits",
        }
    }
}

/// Size and rate limits for relayed traffic.
#[derive(Debug)]
pub struct Limiter {
    max_payload: usize,
    peer_rate: u64,
    peer_circuits: usize,
    global_circuits: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    global: Bucket,
    peers: HashMap<PeerId, Bucket>,
    /// (source, destination) -> last use.
    circuits: HashMap<(PeerId, PeerId), Instant>,
    /// Open circuits per source.
    per_source: HashMap<PeerId, usize>,
}

impl State {
    fn expire_circuits(&mut self, now: Instant) {
        let per_source = &mut self.per_source;
        self.circuits.retain(|(src, _), last| {
            let keep = now.saturating_duration_since(*last) < CIRCUIT_IDLE;
            if !keep && let Some(n) = per_source.get_mut(src) {
                *n -= 1;
            }
            keep
        });
        per_source.retain(|_, n| *n > 0);
    }

    /// Admit the circuit `from -> to`, opening it if the limits allow.
    fn circuit(
        &mut self,
        from: PeerId,
        to: PeerId,
        now: Instant,
        per_peer: usize,
        global: usize,
    ) -> Result<(), Drop> {
        if let Some(last) = self.circuits.get_mut(&(from, to)) {
            *last = now;
            return Ok(());
        }
        let open = |s: &Self| s.per_source.get(&from).copied().unwrap_or(0);
        if open(self) >= per_peer || self.circuits.len() >= global {
            self.expire_circuits(now);
        }
        if open(self) >= per_peer {
            return Err(Drop::PeerCircuits);
        }
        if self.circuits.len() >= global {
            return Err(Drop::GlobalCircuits);
        }
        self.circuits.insert((from, to), now);
        *self.per_source.entry(from).or_default() += 1;
        Ok(())
    }
}

impl Limiter {
    pub fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        Self {
            max_payload: limits.relay_datagram_bytes,
            peer_rate: limits.relay_peer_bytes_per_sec,
            peer_circuits: limits.relay_circuits_per_peer,
            global_circuits: limits.relay_circuits,
            state: Mutex::new(State {
                global: Bucket::new(limits.relay_global_bytes_per_sec, now),
                peers: HashMap::new(),
                circuits: HashMap::new(),
                per_source: HashMap::new(),
            }),
        }
    }

    /// Charge `len` payload bytes sent by `from` to `to`, or say why not.
    pub fn admit(&self, from: &PeerId, to: &PeerId, len: usize, now: Instant) -> Result<(), Drop> {
        if len > self.max_payload {
            return Err(Drop::TooLarge);
        }
        let cost = len as f64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.circuit(*from, *to, now, self.peer_circuits, self.global_circuits)?;
        let bucket = state
            .peers
            .entry(*from)
            .or_insert_with(|| Bucket::new(self.peer_rate, now));
        bucket.refill(now);
        if bucket.tokens < cost {
            return Err(Drop::PeerRate);
        }
        if !state.global.take(cost, now) {
            return Err(Drop::GlobalRate);
        }
        if let Some(bucket) = state.peers.get_mut(from) {
            bucket.tokens -= cost;
        }
        Ok(())
    }

    /// Circuits open now.
    pub fn circuits(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .circuits
            .len()
    }

    /// Forget a disconnected peer's bucket.
    pub fn forget(&self, peer: &PeerId) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.peers.remove(peer);
        state.per_source.remove(peer);
        let State {
            circuits,
            per_source,
            ..
        } = &mut *state;
        circuits.retain(|(src, dst), _| {
            if dst == peer
                && src != peer
                && let Some(n) = per_source.get_mut(src)
            {
                *n -= 1;
            }
            src != peer && dst != peer
        });
        per_source.retain(|_, n| *n > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(peer: u64, global: u64) -> Limits {
        Limits {
            relay_datagram_bytes: 1000,
            relay_peer_bytes_per_sec: peer,
            relay_global_bytes_per_sec: global,
            ..Limits::default()
        }
    }

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[test]
    fn circuits_are_limited_per_peer_and_globally_and_expire() {
        let l = Limiter::new(&Limits {
            relay_circuits_per_peer: 2,
            relay_circuits: 3,
            ..Limits::default()
        });
        let t0 = Instant::now();
        assert_eq!(l.admit(&id(1), &id(10), 10, t0), Ok(()));
        assert_eq!(l.admit(&id(1), &id(11), 10, t0), Ok(()));
        // Existing circuits keep working; a third destination does not.
        assert_eq!(l.admit(&id(1), &id(10), 10, t0), Ok(()));
        assert_eq!(l.admit(&id(1), &id(12), 10, t0), Err(Drop::PeerCircuits));
        // Another peer is not affected by peer 1's quota...
        assert_eq!(l.admit(&id(2), &id(12), 10, t0), Ok(()));
        // ...until the global limit is reached.
        assert_eq!(l.admit(&id(3), &id(12), 10, t0), Err(Drop::GlobalCircuits));
        assert_eq!(l.circuits(), 3);
        // Idle circuits expire; a departed peer's circuits close at once.
        let later = t0 + CIRCUIT_IDLE + Duration::from_secs(1);
        assert_eq!(l.admit(&id(1), &id(12), 10, later), Ok(()));
        l.forget(&id(1));
        assert_eq!(l.circuits(), 0);
    }

    #[test]
    fn a_peer_over_its_quota_is_throttled_and_others_are_not() {
        let l = Limiter::new(&limits(2000, 1_000_000));
        let (a, b, to) = (id(1), id(2), id(9));
        let t0 = Instant::now();
        assert_eq!(l.admit(&a, &to, 1000, t0), Ok(()));
        assert_eq!(l.admit(&a, &to, 1000, t0), Ok(()));
        assert_eq!(l.admit(&a, &to, 1000, t0), Err(Drop::PeerRate));
        assert_eq!(l.admit(&b, &to, 1000, t0), Ok(()));
        // Half a second later a has 1000 bytes of budget again.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.admit(&a, &to, 1000, t1), Ok(()));
        assert_eq!(l.admit(&a, &to, 1000, t1), Err(Drop::PeerRate));
    }

    #[test]
    fn the_global_limit_applies_across_peers() {
        let l = Limiter::new(&limits(1_000_000, 1500));
        let t0 = Instant::now();
        assert_eq!(l.admit(&id(1), &id(9), 1000, t0), Ok(()));
        assert_eq!(l.admit(&id(2), &id(9), 1000, t0), Err(Drop::GlobalRate));
    }

    #[test]
    fn oversized_payloads_are_dropped() {
        let l = Limiter::new(&limits(1_000_000, 1_000_000));
        let err = l.admit(&id(1), &id(9), 1001, Instant::now());
        assert_eq!(err, Err(Drop::TooLarge));
    }
}
