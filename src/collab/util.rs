//! Small building blocks shared by the protocol machines: hashing, the wall
//! clock anchor, a timer queue, a bounded expiring set, a token bucket and
//! the signature check hook.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use x0x_proto::PeerId;
use x0x_proto::identity::Signature;

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse lowercase or uppercase hex into exactly `N` bytes.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim().as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

/// Maps the monotonic [`Instant`]s the machines are driven with to
/// milliseconds since the Unix epoch, from one anchor taken by the driver
/// (`Instant::now()` and `SystemTime::now()` read together).
///
/// The machines never read a clock themselves: this keeps them
/// deterministic in the simulator and lets a test backdate an agent's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    anchor: Instant,
    anchor_unix_ms: u64,
}

impl WallClock {
    /// A clock where `anchor` corresponds to `anchor_unix_ms`.
    pub fn new(anchor: Instant, anchor_unix_ms: u64) -> Self {
        Self {
            anchor,
            anchor_unix_ms,
        }
    }

    /// The system clock, anchored now.
    pub fn system() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::new(Instant::now(), ms)
    }

    /// The instant the clock was anchored at.
    pub fn anchor(&self) -> Instant {
        self.anchor
    }

    /// Milliseconds since the Unix epoch at `at`.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        if at >= self.anchor {
            self.anchor_unix_ms
                .saturating_add(at.duration_since(self.anchor).as_millis() as u64)
        } else {
            self.anchor_unix_ms
                .saturating_sub(self.anchor.duration_since(at).as_millis() as u64)
        }
    }
}

/// The function used to check an Ed25519 signature: `(signer, message,
/// signature) -> valid`.
///
/// The default is [`PeerId::verify`]. The in-process simulator replaces it
/// with one that verifies each distinct `(signer, message, signature)` once
/// for real and shares the result among the simulated agents (they live in
/// one process); production code has no reason to change it.
#[derive(Clone, Copy)]
pub struct SignatureCheck(pub fn(&PeerId, &[u8], &Signature) -> bool);

impl SignatureCheck {
    /// Whether `signature` is `signer`'s signature of `message`.
    pub fn check(&self, signer: &PeerId, message: &[u8], signature: &Signature) -> bool {
        (self.0)(signer, message, signature)
    }
}

impl Default for SignatureCheck {
    fn default() -> Self {
        Self(|p, m, s| p.verify(m, s))
    }
}

impl fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignatureCheck")
    }
}

/// A queue of timers ordered by deadline; ties keep insertion order.
#[derive(Debug)]
pub(crate) struct Timers<T> {
    queue: BTreeMap<(Instant, u64), T>,
    next: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Self {
            queue: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Schedule `timer` at `at`.
    pub fn insert(&mut self, at: Instant, timer: T) {
        self.queue.insert((at, self.next), timer);
        self.next += 1;
    }

    /// Remove and return the earliest timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        let (&(at, _), _) = self.queue.first_key_value()?;
        if at > now {
            return None;
        }
        self.queue.pop_first().map(|((at, _), t)| (at, t))
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Drop every timer `keep` rejects.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.queue.retain(|_, t| keep(t));
    }
}

/// A set remembering each key for `ttl`, holding at most `capacity` keys
/// (the oldest go first).
#[derive(Debug)]
pub(crate) struct TimedSet<K> {
    set: HashSet<K>,
    order: VecDeque<(Instant, K)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone> TimedSet<K> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Insert `key`; `false` if it was already there (its age is kept).
    pub fn insert(&mut self, key: K, now: Instant) -> bool {
        self.expire(now);
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back((now, key));
        while self.order.len() > self.capacity {
            if let Some((_, k)) = self.order.pop_front() {
                self.set.remove(&k);
            }
        }
        true
    }

    pub fn contains(&self, key: &K) -> bool {
        self.set.contains(key)
    }

    /// Forget keys older than the ttl.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.set.remove(&k);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.set.len()
    }
}

/// A token bucket: `burst` tokens, refilled at `rate_per_s`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate_per_s: f64,
    burst: f64,
}

impl TokenBucket {
    pub fn new(rate_per_s: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate_per_s,
            burst,
        }
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate_per_s).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Pick a uniformly random element of an ordered iterator of known length.
pub(crate) fn pick<'a, T, R: rand::Rng>(
    items: impl IntoIterator<Item = &'a T>,
    len: usize,
    rng: &mut R,
) -> Option<&'a T>
where
    T: 'a,
{
    if len == 0 {
        return None;
    }
    items.into_iter().nth(rng.random_range(0..len))
}

/// Up to `n` distinct random elements of `items`, in random order.
pub(crate) fn sample<T: Clone, R: rand::Rng>(items: &[T], n: usize, rng: &mut R) -> Vec<T> {
    use rand::seq::SliceRandom;
    let mut v: Vec<T> = items.to_vec();
    v.shuffle(rng);
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_set_expires_and_is_bounded() {
        let t0 = Instant::now();
        let mut s = TimedSet::new(3, Duration::from_secs(10));
        assert!(s.insert(1, t0));
        assert!(!s.insert(1, t0));
        s.insert(2, t0);
        s.insert(3, t0);
        s.insert(4, t0);
        assert!(!s.contains(&1), "oldest evicted at capacity");
        assert_eq!(s.len(), 3);
        s.expire(t0 + Duration::from_secs(10));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 2.0, t0);
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn timers_pop_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.insert(t0 + Duration::from_millis(5), "b");
        t.insert(t0 + Duration::from_millis(1), "a");
        t.insert(t0 + Duration::from_millis(9), "c");
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_millis(5);
        assert_eq!(t.pop_due(now).map(|x| x.1), Some("a"));
        assert_eq!(t.pop_due(now).map(|x| x.1), Some("b"));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(9)));
    }

    #[test]
    fn wall_clock_maps_instants() {
        let t0 = Instant::now();
        let c = WallClock::new(t0, 1_000_000);
        assert_eq!(c.unix_ms(t0 + Duration::from_millis(250)), 1_000_250);
        assert_eq!(c.unix_ms(t0), 1_000_000);
    }

    #[test]
    fn hex_round_trips() {
        let b = [0xab, 0x01, 0xff];
        assert_eq!(hex(&b), "ab01ff");
        assert_eq!(unhex::<3>("ab01ff"), Some(b));
        assert_eq!(unhex::<3>("ab01f"), None);
        assert_eq!(unhex::<3>("zz01ff"), None);
    }
}
