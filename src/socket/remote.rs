//! What an agent knows about each path to one remote agent, and which one
//! it sends on.
//!
//! A [`Remote`] has direct paths (candidate UDP addresses) and relay paths
//! (a circuit through a bootstrap node both agents are registered with).
//! A direct path becomes usable only when one of our authenticated pings
//! sent to it is answered from it ([`Remote::on_pong`]); a relay path is
//! usable from the moment its circuit opens until its pings stop being
//! answered. The path in use is pinged every [`ACTIVE_PING`], and at once
//! when packets go out on it but nothing came back for a few RTTs; it fails
//! after [`MISSES_TO_FAIL`] pings in a row go unanswered (each waits
//! [`Health::ping_timeout`]). Only authenticated pongs count, so forged
//! packets can keep nothing alive. The choice ([`Remote::select`]): the lowest-RTT usable direct
//! path, else the lowest-RTT usable relay, and a change of path within a
//! kind needs a clear RTT gain.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use x0x_proto::identity::PeerId;
use x0x_proto::policy;

use super::probe::{ProbeKey, Tx};

/// How often the path in use is pinged.
pub const ACTIVE_PING: Duration = Duration::from_millis(1000);
/// How often paths kept in reserve are pinged.
pub const BACKUP_PING: Duration = Duration::from_secs(5);
/// Pings in a row that may go unanswered before a path has failed.
pub const MISSES_TO_FAIL: u32 = 2;
/// A ping on a reserve path is answered within this, or missed.
const BACKUP_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Floor of the wait for a pong on the path in use.
const MIN_PING_TIMEOUT: Duration = Duration::from_millis(300);
/// While no key is known (the QUIC handshake is under way), packets go on
/// every path for at most this long.
pub const SPRAY_FOR: Duration = Duration::from_secs(3);
/// A switch between two paths of the same kind needs this much RTT gain.
const SWITCH_GAIN: f64 = 0.8;

/// Which paths a connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PathPolicy {
    /// Direct when possible, relayed otherwise (the default).
    #[default]
    Any,
    /// Never through a relay.
    DirectOnly,
    /// Never direct.
    RelayOnly,
}

/// One path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathId {
    Direct(SocketAddr),
    /// Through the bootstrap node with this id.
    Relay(PeerId),
}

/// How a direct candidate became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a node's directory record.
    Directory,
    /// From the peer's own `Call`, accepted by the address policy.
    Call,
    /// The source of an authenticated ping from the peer.
    Reflexive,
}

/// Liveness bookkeeping shared by both kinds of path.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub rtt: Option<Duration>,
    pub last_pong: Option<Instant>,
    /// Last packet of any kind received on the path.
    pub last_recv: Option<Instant>,
    /// Last packet of the connection sent on the path.
    pub last_send: Option<Instant>,
    /// The ping waiting for its pong.
    pub ping: Option<(Tx, Instant)>,
    pub last_ping: Option<Instant>,
    /// Pings in a row that went unanswered.
    pub missed: u32,
    pub failed: bool,
}

impl Health {
    fn pong(&mut self, tx: &Tx, now: Instant) -> bool {
        match self.ping {
            Some((sent_tx, sent)) if &sent_tx == tx => {
                let sample = now.saturating_duration_since(sent);
                self.rtt = Some(match self.rtt {
                    Some(r) => (r * 7 + sample) / 8,
                    None => sample,
                });
                self.last_pong = Some(now);
                self.ping = None;
                self.missed = 0;
                self.failed = false;
                true
            }
            _ => false,
        }
    }

    /// How long a ping on the path in use may wait for its pong.
    pub fn ping_timeout(&self) -> Duration {
        self.rtt
            .map_or(Duration::from_secs(1), |r| r * 3)
            .max(MIN_PING_TIMEOUT)
    }

    /// Whether a ping should go out now on this path: none outstanding,
    /// and either `every` passed since the last, or (for the path in use)
    /// packets went out but nothing came back for a while.
    pub fn ping_due(&self, every: Duration, active: bool, now: Instant) -> bool {
        if self.ping.is_some() {
            return false;
        }
        let periodic = self
            .last_ping
            .is_none_or(|t| now.saturating_duration_since(t) >= every);
        let silent = active
            && self.last_send.is_some_and(|sent| {
                let heard = self.last_recv.max(self.last_pong);
                heard.is_none_or(|h| {
                    sent > h && now.saturating_duration_since(h) >= self.ping_timeout()
                })
            })
            && self
                .last_ping
                .is_none_or(|t| now.saturating_duration_since(t) >= self.ping_timeout());
        periodic || silent
    }

    /// Count an unanswered ping as missed. Returns whether the path just failed.
    fn check(&mut self, active: bool, now: Instant) -> bool {
        let timeout = if active {
            self.ping_timeout()
        } else {
            BACKUP_PING_TIMEOUT
        };
        match self.ping {
            Some((_, sent)) if now.saturating_duration_since(sent) >= timeout => {
                self.ping = None;
                self.missed += 1;
                if !self.failed && self.missed >= MISSES_TO_FAIL {
                    self.failed = true;
                    return true;
                }
                false
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DirectPath {
    pub addr: SocketAddr,
    pub health: Health,
}

impl DirectPath {
    /// Validated by a pong and not failed since.
    pub fn usable(&self) -> bool {
        self.health.last_pong.is_some() && !self.health.failed
    }
}

#[derive(Debug, Clone)]
pub struct RelayPath {
    pub node: PeerId,
    /// The node's UDP address (where relay packets go).
    pub node_addr: SocketAddr,
    pub cid: u64,
    pub health: Health,
}

impl RelayPath {
    pub fn usable(&self) -> bool {
        !self.health.failed
    }
}

/// Why the path in use changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathReason {
    /// The first path of the connection.
    Initial,
    /// A direct path was validated.
    DirectValidated,
    /// The direct path in use stopped answering.
    DirectFailed,
    /// The relay in use stopped answering, or its node went away.
    RelayFailed,
    /// Another path of the same kind is clearly faster.
    LowerRtt,
}

/// Hole punching toward a remote (DCUtR-style rounds through the relay).
#[derive(Debug, Clone)]
pub struct Punch {
    pub round: u8,
    /// When the next round may start.
    pub next_round: Instant,
    pub interval: Duration,
    /// Our `Call` waiting for the peer's answer: its tx and when it left.
    pub awaiting: Option<(Tx, Instant)>,
    /// When to ping every candidate (after a `Sync`).
    pub ping_all_at: Option<Instant>,
    pub last_ping_all: Option<Instant>,
    /// When the current attempt started (for its outcome).
    pub attempt: Option<Instant>,
}

/// First pause between punching rounds; it grows to [`MAX_ROUND_INTERVAL`].
pub const FIRST_ROUND_INTERVAL: Duration = Duration::from_millis(1000);
pub const MAX_ROUND_INTERVAL: Duration = Duration::from_secs(8);
/// A `Call` not answered within this is sent again.
pub const CALL_RETRY: Duration = Duration::from_millis(500);
/// A round that validated no direct path within this failed.
pub const ROUND_OUTCOME_AFTER: Duration = Duration::from_secs(3);

impl Punch {
    fn new(now: Instant) -> Self {
        Self {
            round: 0,
            next_round: now,
            interval: FIRST_ROUND_INTERVAL,
            awaiting: None,
            ping_all_at: None,
            last_ping_all: None,
            attempt: None,
        }
    }

    /// Start over quickly (a network change).
    pub fn reset(&mut self, now: Instant) {
        self.next_round = now;
        self.interval = FIRST_ROUND_INTERVAL;
    }

    /// Schedule the next round after this one.
    pub fn next(&mut self, now: Instant) {
        self.round = self.round.wrapping_add(1);
        self.next_round = now + self.interval;
        self.interval = (self.interval * 3 / 2).min(MAX_ROUND_INTERVAL);
    }
}

/// Everything about one remote agent.
#[derive(Debug)]
pub struct Remote {
    pub peer: PeerId,
    /// The stable address quinn sees for this peer.
    pub mapped: SocketAddr,
    /// Probe keys of our connections with the peer (newest last).
    pub keys: Vec<ProbeKey>,
    pub direct: Vec<DirectPath>,
    pub relays: Vec<RelayPath>,
    pub selected: Option<PathId>,
    pub policy: PathPolicy,
    /// Addresses nodes vouched for (the peer's directory record).
    pub vouched: Vec<SocketAddr>,
    /// Live QUIC connections using `mapped`.
    pub connections: usize,
    pub created: Instant,
    pub last_active: Instant,
    /// We dialed: we start punching rounds.
    pub initiator: bool,
    pub punch: Punch,
    /// When the first direct path was validated.
    pub direct_at: Option<Instant>,
    /// Probes that arrived before our connection gave us the key (the
    /// peer's handshake can finish first): replayed once it does.
    pub early_probes: Vec<EarlyProbe>,
    /// When we last asked for the peer's record again (see `Signal::Unvouched`).
    pub relookup_at: Option<Instant>,
}

/// A probe kept until the key to check it is known.
#[derive(Debug, Clone)]
pub struct EarlyProbe {
    pub packet: Vec<u8>,
    pub source: SocketAddr,
    pub via: Option<(SocketAddr, u64)>,
}

/// Early probes kept per remote.
pub const MAX_EARLY_PROBES: usize = 4;

/// Most direct candidates kept per remote.
pub const MAX_DIRECT: usize = 16;

impl Remote {
    pub fn new(peer: PeerId, mapped: SocketAddr, now: Instant) -> Self {
        Self {
            peer,
            mapped,
            keys: Vec::new(),
            direct: Vec::new(),
            relays: Vec::new(),
            selected: None,
            policy: PathPolicy::Any,
            vouched: Vec::new(),
            connections: 0,
            created: now,
            last_active: now,
            initiator: false,
            punch: Punch::new(now),
            direct_at: None,
            early_probes: Vec::new(),
            relookup_at: None,
        }
    }

    /// Add a candidate direct address if the policy lets us send to it.
    /// Returns whether it is new.
    pub fn add_direct(&mut self, addr: SocketAddr, origin: Origin) -> bool {
        let addr = x0x_proto::canonical(addr);
        let allowed = match origin {
            Origin::Directory => policy::is_dialable(&addr),
            Origin::Call => policy::may_dial(&addr, &self.vouched),
            // A port-changing NAT answers from another port of a vouched IP.
            Origin::Reflexive => {
                policy::may_dial(&addr, &self.vouched)
                    || (policy::is_dialable(&addr)
                        && self.vouched.iter().any(|v| v.ip() == addr.ip()))
            }
        };
        if !allowed || self.direct.len() >= MAX_DIRECT || self.direct.iter().any(|d| d.addr == addr)
        {
            return false;
        }
        self.direct.push(DirectPath {
            addr,
            health: Health::default(),
        });
        true
    }

    /// Add (or renew) the relay path through `node`.
    pub fn add_relay(&mut self, node: PeerId, node_addr: SocketAddr, cid: u64) {
        self.relays.retain(|r| r.node != node);
        self.relays.push(RelayPath {
            node,
            node_addr,
            cid,
            health: Health::default(),
        });
    }

    /// Remove the relay path through `node` (its circuit closed or the node is gone).
    pub fn remove_relay(&mut self, node: &PeerId) -> bool {
        let before = self.relays.len();
        self.relays.retain(|r| r.node != *node);
        before != self.relays.len()
    }

    pub fn direct_mut(&mut self, addr: &SocketAddr) -> Option<&mut DirectPath> {
        let addr = x0x_proto::canonical(*addr);
        self.direct.iter_mut().find(|d| d.addr == addr)
    }

    pub fn relay_mut(&mut self, node: &PeerId) -> Option<&mut RelayPath> {
        self.relays.iter_mut().find(|r| r.node == *node)
    }

    /// A pong for `tx` arrived on `path`. Returns whether it answered our ping.
    pub fn on_pong(&mut self, path: PathId, tx: &Tx, now: Instant) -> bool {
        match path {
            PathId::Direct(addr) => self
                .direct_mut(&addr)
                .is_some_and(|d| d.health.pong(tx, now)),
            PathId::Relay(node) => self
                .relay_mut(&node)
                .is_some_and(|r| r.health.pong(tx, now)),
        }
    }

    /// Whether we are still in the handshake phase: no key yet, and not for long.
    pub fn spraying(&self, now: Instant) -> bool {
        self.keys.is_empty() && now.saturating_duration_since(self.created) < SPRAY_FOR
    }

    /// Where a packet to this peer goes now: the selected path, or every
    /// path while spraying.
    pub fn destinations(&self, now: Instant) -> Vec<PathId> {
        let direct_ok = self.policy != PathPolicy::RelayOnly;
        let relay_ok = self.policy != PathPolicy::DirectOnly;
        if let Some(p) = self.selected
            && !self.spraying(now)
        {
            return vec![p];
        }
        let mut all = Vec::new();
        if relay_ok {
            all.extend(self.relays.iter().map(|r| PathId::Relay(r.node)));
        }
        if direct_ok {
            all.extend(self.direct.iter().map(|d| PathId::Direct(d.addr)));
        }
        if let Some(p) = self.selected
            && !all.contains(&p)
        {
            all.push(p);
        }
        all
    }

    fn rtt_of(&self, p: &PathId) -> Option<Duration> {
        match p {
            PathId::Direct(a) => self
                .direct
                .iter()
                .find(|d| d.addr == *a)
                .and_then(|d| d.health.rtt),
            PathId::Relay(n) => self
                .relays
                .iter()
                .find(|r| r.node == *n)
                .and_then(|r| r.health.rtt),
        }
    }

    fn usable(&self, p: &PathId) -> bool {
        match p {
            PathId::Direct(a) => self.direct.iter().any(|d| d.addr == *a && d.usable()),
            PathId::Relay(n) => self.relays.iter().any(|r| r.node == *n && r.usable()),
        }
    }

    /// The best usable path of one kind, keeping `current` unless another
    /// is clearly faster.
    fn best(&self, candidates: Vec<PathId>) -> Option<PathId> {
        let rtt = |p: &PathId| self.rtt_of(p).unwrap_or(Duration::from_secs(3600));
        let best = candidates.iter().min_by_key(|p| rtt(p)).copied()?;
        match self.selected {
            Some(cur) if candidates.contains(&cur) => {
                if rtt(&best).as_secs_f64() < rtt(&cur).as_secs_f64() * SWITCH_GAIN {
                    Some(best)
                } else {
                    Some(cur)
                }
            }
            _ => Some(best),
        }
    }

    /// Choose the path to send on. Returns the new choice and why, if it changed.
    pub fn select(&mut self) -> Option<(Option<PathId>, PathReason)> {
        let direct: Vec<PathId> = if self.policy == PathPolicy::RelayOnly {
            Vec::new()
        } else {
            self.direct
                .iter()
                .filter(|d| d.usable())
                .map(|d| PathId::Direct(d.addr))
                .collect()
        };
        let relays: Vec<PathId> = if self.policy == PathPolicy::DirectOnly {
            Vec::new()
        } else {
            self.relays
                .iter()
                .filter(|r| r.usable())
                .map(|r| PathId::Relay(r.node))
                .collect()
        };
        let choice = self.best(direct).or_else(|| self.best(relays));
        if choice == self.selected {
            return None;
        }
        let old = self.selected;
        let reason = match (old, choice) {
            (None, _) => PathReason::Initial,
            (Some(PathId::Relay(_)), Some(PathId::Direct(_))) => PathReason::DirectValidated,
            (Some(o), _) if !self.usable(&o) => match o {
                PathId::Direct(_) => PathReason::DirectFailed,
                PathId::Relay(_) => PathReason::RelayFailed,
            },
            _ => PathReason::LowerRtt,
        };
        self.selected = choice;
        Some((choice, reason))
    }

    /// Count unanswered pings; mark paths that stopped answering as
    /// failed. Returns whether any did.
    pub fn check_health(&mut self, now: Instant) -> bool {
        let selected = self.selected;
        let mut any = false;
        for d in &mut self.direct {
            // Unvalidated candidates never fail: they were never usable.
            if d.health.last_pong.is_some() {
                any |= d
                    .health
                    .check(selected == Some(PathId::Direct(d.addr)), now);
            }
        }
        for r in &mut self.relays {
            any |= r.health.check(selected == Some(PathId::Relay(r.node)), now);
        }
        any
    }

    /// Note a packet of the connection sent on `path`.
    pub fn sent_on(&mut self, path: PathId, now: Instant) {
        let h = match path {
            PathId::Direct(a) => self.direct_mut(&a).map(|d| &mut d.health),
            PathId::Relay(n) => self.relay_mut(&n).map(|r| &mut r.health),
        };
        if let Some(h) = h {
            h.last_send = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn remote() -> Remote {
        let mut r = Remote::new(id(1), a("[fd58:3078::1]:1"), Instant::now());
        r.vouched = vec![a("198.51.100.7:4000")];
        r
    }

    fn ping_and_pong(r: &mut Remote, p: PathId, rtt_ms: u64, now: Instant) {
        let tx = [rtt_ms as u8; 12];
        let h = match p {
            PathId::Direct(addr) => &mut r.direct_mut(&addr).unwrap().health,
            PathId::Relay(n) => &mut r.relay_mut(&n).unwrap().health,
        };
        h.ping = Some((tx, now));
        assert!(r.on_pong(p, &tx, now + Duration::from_millis(rtt_ms)));
    }

    #[test]
    fn candidates_follow_the_address_policy() {
        let mut r = remote();
        assert!(r.add_direct(a("198.51.100.7:4000"), Origin::Call));
        assert!(
            !r.add_direct(a("203.0.113.1:4000"), Origin::Call),
            "unvouched public"
        );
        assert!(
            r.add_direct(a("192.168.1.5:4000"), Origin::Call),
            "local scope"
        );
        assert!(
            r.add_direct(a("198.51.100.7:5999"), Origin::Reflexive),
            "same IP, new port"
        );
        assert!(!r.add_direct(a("203.0.113.1:1"), Origin::Reflexive));
        assert!(
            !r.add_direct(a("198.51.100.7:4000"), Origin::Directory),
            "duplicate"
        );
    }

    #[test]
    fn relayed_first_then_direct_once_a_pong_validates_it() {
        let now = Instant::now();
        let mut r = remote();
        r.add_direct(a("198.51.100.7:4000"), Origin::Directory);
        r.add_relay(id(9), a("192.0.2.1:12000"), 77);
        // While spraying (no key), packets go on every path.
        assert_eq!(r.destinations(now).len(), 2);
        assert_eq!(
            r.select(),
            Some((Some(PathId::Relay(id(9))), PathReason::Initial))
        );
        r.keys.push(ProbeKey::from_bytes(&[1; 32]));
        assert_eq!(r.destinations(now), vec![PathId::Relay(id(9))]);
        // A pong from the direct address that answers none of our pings changes nothing.
        assert!(!r.on_pong(PathId::Direct(a("198.51.100.7:4000")), &[5; 12], now));
        assert_eq!(r.select(), None);
        ping_and_pong(&mut r, PathId::Direct(a("198.51.100.7:4000")), 10, now);
        assert_eq!(
            r.select(),
            Some((
                Some(PathId::Direct(a("198.51.100.7:4000"))),
                PathReason::DirectValidated
            ))
        );
    }

    #[test]
    fn a_silent_path_fails_and_the_relay_takes_over() {
        let t0 = Instant::now();
        let mut r = remote();
        r.keys.push(ProbeKey::from_bytes(&[1; 32]));
        let d = a("198.51.100.7:4000");
        r.add_direct(d, Origin::Directory);
        r.add_relay(id(9), a("192.0.2.1:12000"), 77);
        ping_and_pong(&mut r, PathId::Direct(d), 10, t0);
        r.select();
        let timeout = r.direct_mut(&d).unwrap().health.ping_timeout();
        assert_eq!(
            timeout,
            Duration::from_millis(300),
            "3 x 10 ms, at least 300 ms"
        );
        // One ping goes unanswered: missed, not failed (1% loss must not flap).
        r.direct_mut(&d).unwrap().health.ping = Some(([1; 12], t0));
        assert!(!r.check_health(t0 + timeout / 2));
        assert!(!r.check_health(t0 + timeout));
        assert_eq!(r.direct_mut(&d).unwrap().health.missed, 1);
        // Packets go out, nothing comes back: the next ping goes at once.
        r.sent_on(PathId::Direct(d), t0 + timeout);
        assert!(
            r.direct_mut(&d)
                .unwrap()
                .health
                .ping_due(ACTIVE_PING, true, t0 + timeout * 2)
        );
        // The second one is missed too: failed.
        let t1 = t0 + timeout * 2;
        r.direct_mut(&d).unwrap().health.ping = Some(([2; 12], t1));
        assert!(r.check_health(t1 + timeout));
        assert_eq!(
            r.select(),
            Some((Some(PathId::Relay(id(9))), PathReason::DirectFailed))
        );
    }

    #[test]
    fn the_lowest_rtt_relay_is_chosen_and_switching_needs_a_clear_gain() {
        let now = Instant::now();
        let mut r = remote();
        r.keys.push(ProbeKey::from_bytes(&[1; 32]));
        r.add_relay(id(8), a("192.0.2.8:1"), 1);
        r.add_relay(id(9), a("192.0.2.9:1"), 2);
        ping_and_pong(&mut r, PathId::Relay(id(8)), 100, now);
        ping_and_pong(&mut r, PathId::Relay(id(9)), 40, now);
        assert_eq!(r.select().unwrap().0, Some(PathId::Relay(id(9))));
        // 8 becomes a little faster than 9: no switch.
        for _ in 0..20 {
            ping_and_pong(&mut r, PathId::Relay(id(8)), 38, now);
        }
        assert_eq!(r.select(), None);
        // Much faster: switch.
        for _ in 0..40 {
            ping_and_pong(&mut r, PathId::Relay(id(8)), 5, now);
        }
        assert_eq!(
            r.select(),
            Some((Some(PathId::Relay(id(8))), PathReason::LowerRtt))
        );
        // The node in use goes away.
        r.remove_relay(&id(8));
        assert_eq!(r.select().unwrap().0, Some(PathId::Relay(id(9))));
    }

    #[test]
    fn policies_restrict_the_paths() {
        let now = Instant::now();
        let mut r = remote();
        r.keys.push(ProbeKey::from_bytes(&[1; 32]));
        let d = a("198.51.100.7:4000");
        r.add_direct(d, Origin::Directory);
        r.add_relay(id(9), a("192.0.2.1:12000"), 77);
        ping_and_pong(&mut r, PathId::Direct(d), 10, now);
        r.policy = PathPolicy::RelayOnly;
        assert_eq!(r.select().unwrap().0, Some(PathId::Relay(id(9))));
        r.policy = PathPolicy::DirectOnly;
        assert_eq!(r.select().unwrap().0, Some(PathId::Direct(d)));
        r.keys.clear();
        assert_eq!(r.destinations(now), vec![PathId::Direct(d)]);
    }
}
