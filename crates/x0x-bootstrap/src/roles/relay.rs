//! The relay role: circuits between two agents registered with this node.
//!
//! **Control.** An agent asks for a circuit to another agent
//! (`OpenCircuit`). The node opens one only if the destination consented
//! (it registered with `accept_relay`), and only within the limits: circuits
//! per opener, per destination, per opener IP and in all. The circuit has
//! one id per end; the opener gets its id in the reply, the destination in
//! a `CircuitNotice` push. Circuits close when idle, at the end of their
//! lifetime or byte allowance, or when an end leaves; a timer does that
//! ([`Relay::expire`]), never the arrival of a packet.
//!
//! **Data.** Relay packets (`[0x01][cid][payload]`, see
//! [`x0x_proto::relay`]) arrive on the node's UDP socket and are forwarded
//! by [`Relay::route`] without QUIC termination: the source must be the
//! address the end's agent is connected from (its QUIC connection proved
//! it), every packet is charged at least `relay_min_charge_bytes` against
//! the sender's bucket, its source address's bucket (all agents behind one
//! IPv4 address or IPv6 /64), the receiver's bucket and the global bucket,
//! and the circuit's byte allowance. Circuits that exist are never evicted
//! by new ones.
//!
//! **Fairness.** Identities are free, so per-agent buckets alone do not
//! protect anyone: a thousand made-up agents each within its own limits
//! would fill the global budget (the per-address bucket stops that) or a
//! victim's receive budget (anyone may open a circuit to an agent that
//! consented to relaying). So an agent's receive budget is shared among
//! the circuits reaching it in proportion to what the agent itself sent
//! back on each in the last second ([`Relay::rebalance`], on the timer):
//! the circuits it uses (its QUIC connection acknowledges what arrives)
//! keep almost all of it, circuits it never answers share the rest. A
//! circuit the agent has not answered yet (a new connection's handshake)
//! starts with an equal share of one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use x0x_proto::identity::PeerId;
use x0x_proto::wire::CircuitEnd;

use crate::bucket::Bucket;
use crate::config::Limits;
use crate::ipkey::IpKey;

/// Why a relay packet was not forwarded (`x0x_relay_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    TooLarge,
    NoCircuit,
    Spoofed,
    PeerRate,
    IpRate,
    DestRate,
    GlobalRate,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NoCircuit => "no_circuit",
            Self::Spoofed => "spoofed",
            Self::PeerRate => "peer_rate",
            Self::IpRate => "ip_rate",
            Self::DestRate => "dest_rate",
            Self::GlobalRate => "global_rate",
        }
    }
}

/// Why a circuit was not opened (`x0x_relay_circuits_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// The destination is not registered here.
    NotHere,
    /// The destination did not consent to relaying.
    NoConsent,
    /// The opener is not registered here.
    NotRegistered,
    PeerCircuits,
    DestCircuits,
    IpCircuits,
    GlobalCircuits,
}

impl Refuse {
    pub fn label(self) -> &'static str {
        match self {
            Self::NotHere => "not_here",
            Self::NoConsent => "no_consent",
            Self::NotRegistered => "not_registered",
            Self::PeerCircuits => "relay_circuits_per_peer",
            Self::DestCircuits => "relay_circuits_per_dest",
            Self::IpCircuits => "relay_circuits_per_ip",
            Self::GlobalCircuits => "relay_circuits",
        }
    }
}

/// A closed circuit end whose agent must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub agent: PeerId,
    pub cid: u64,
    pub reason: CircuitEnd,
}

/// Where a relay packet goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub to: SocketAddr,
    pub cid: u64,
}

/// The relay budget of one source address (IPv4 address or IPv6 /64),
/// shared by every agent sending from it.
#[derive(Debug)]
struct IpBudget {
    key: IpKey,
    bucket: Mutex<Bucket>,
}

/// An agent as the relay knows it.
#[derive(Debug)]
struct Lane {
    /// Where the agent's connection comes from (cached; see `current`).
    addr: Mutex<SocketAddr>,
    /// The agent's connection, whose address is the truth when it moved.
    conn: Option<quinn::Connection>,
    accepts: bool,
    out: Mutex<Bucket>,
    inbound: Mutex<Bucket>,
    /// The budget of the address the agent sends from.
    ip: Mutex<Arc<IpBudget>>,
    /// The weights of the circuit ends reaching this agent, summed at the
    /// last rebalance (a new end's share is one such weight).
    weights: AtomicU64,
}

#[derive(Debug)]
struct Circuit {
    opener: PeerId,
    target: PeerId,
    opener_ip: IpKey,
    created: Instant,
    /// Milliseconds since the relay started, of the last forwarded packet.
    last: AtomicU64,
    bytes: AtomicU64,
}

/// One end of a circuit, keyed by its cid: packets tagged with it come
/// from `agent` and go to the other end.
#[derive(Debug)]
struct End {
    lane: Arc<Lane>,
    other: Arc<Lane>,
    other_cid: u64,
    circuit: Arc<Circuit>,
    /// Packets forwarded from this end since the last rebalance: the
    /// weight of the other direction in its destination's budget.
    sent: AtomicU64,
    /// This direction's share of the destination's receive budget.
    share: Mutex<Bucket>,
}

#[derive(Debug, Default)]
struct Table {
    lanes: HashMap<PeerId, Arc<Lane>>,
    ends: HashMap<u64, End>,
    by_pair: HashMap<(PeerId, PeerId), (u64, u64)>,
    opened_by: HashMap<PeerId, usize>,
    reaching: HashMap<PeerId, usize>,
    per_ip: HashMap<IpKey, usize>,
}

impl Lane {
    /// Whether `from` is where the agent is now. A mismatch with the cache
    /// is checked against the connection itself (it may have migrated).
    fn is_at(&self, from: SocketAddr) -> bool {
        let mut cached = lock(&self.addr);
        if *cached == from {
            return true;
        }
        match &self.conn {
            Some(c) if c.remote_address() == from => {
                *cached = from;
                true
            }
            _ => false,
        }
    }

    /// Where the agent is now.
    fn current(&self) -> SocketAddr {
        match &self.conn {
            Some(c) => {
                let now = c.remote_address();
                *lock(&self.addr) = now;
                now
            }
            None => *lock(&self.addr),
        }
    }
}

fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K, up: bool) {
    let n = m.entry(k).or_default();
    if up {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
    }
}

/// How much more one packet the receiver sent back on a circuit weighs
/// than a circuit it never answered, when its receive budget is shared.
/// An answer in the last second is what tells a circuit the receiver uses
/// (its QUIC connection acknowledges what arrives) from one it does not;
/// the only answers a flood gets are the stateless resets a QUIC endpoint
/// sends (quinn: at most 50 a second), so they weigh little against a
/// connection's acknowledgements.
const ANSWER_WEIGHT: u64 = 16;

/// The least share of a receiver's budget a circuit gets: two of the
/// largest packets a second (a new connection's handshake gets through).
fn share_floor(l: &Limits) -> f64 {
    2.0 * l.relay_datagram_bytes as f64
}

/// See the module documentation.
#[derive(Debug)]
pub struct Relay {
    limits: Limits,
    started: Instant,
    table: RwLock<Table>,
    global: Mutex<Bucket>,
    /// Source-address budgets in use (pruned on the timer).
    ips: Mutex<HashMap<IpKey, Arc<IpBudget>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    pub fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        Self {
            limits: *limits,
            started: now,
            table: RwLock::new(Table::default()),
            global: Mutex::new(Bucket::new(limits.relay_global_bytes_per_sec, now)),
            ips: Mutex::new(HashMap::new()),
        }
    }

    /// The budget of source address `key`, shared by every agent there.
    fn ip_budget(&self, key: IpKey) -> Arc<IpBudget> {
        lock(&self.ips)
            .entry(key)
            .or_insert_with(|| {
                Arc::new(IpBudget {
                    key,
                    bucket: Mutex::new(Bucket::new(
                        self.limits.relay_ip_bytes_per_sec,
                        Instant::now(),
                    )),
                })
            })
            .clone()
    }

    /// A new circuit end's share of `dest`'s receive budget: one weight
    /// among those reaching it, at least one packet a second.
    fn new_share(&self, dest: &Lane, now: Instant) -> Mutex<Bucket> {
        let l = &self.limits;
        let others = dest.weights.load(Ordering::Relaxed);
        let rate = (l.relay_dest_bytes_per_sec as f64 / (others + 1) as f64).max(share_floor(l));
        let mut b = Bucket::new(0, now);
        b.set_rate(rate, now);
        b.fill();
        Mutex::new(b)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// An agent registered from `addr`; `accepts` is its consent to be
    /// reached through relay circuits.
    pub fn register(&self, agent: PeerId, addr: SocketAddr, accepts: bool) {
        self.register_lane(agent, addr, None, accepts)
    }

    /// An agent registered on `conn`: its circuits follow the connection
    /// when it migrates (NAT rebinding), without waiting for a tick.
    pub fn register_conn(&self, agent: PeerId, conn: &quinn::Connection, accepts: bool) {
        self.register_lane(agent, conn.remote_address(), Some(conn.clone()), accepts)
    }

    fn register_lane(
        &self,
        agent: PeerId,
        addr: SocketAddr,
        conn: Option<quinn::Connection>,
        accepts: bool,
    ) {
        let now = Instant::now();
        let lane = Arc::new(Lane {
            addr: Mutex::new(addr),
            conn,
            accepts,
            out: Mutex::new(Bucket::new(self.limits.relay_peer_bytes_per_sec, now)),
            inbound: Mutex::new(Bucket::new(self.limits.relay_dest_bytes_per_sec, now)),
            ip: Mutex::new(self.ip_budget(IpKey::of(&addr))),
            weights: AtomicU64::new(0),
        });
        let mut t = self.write();
        match t.lanes.get(&agent) {
            // Re-registration on the same connection: keep buckets and circuits.
            Some(old) if old.accepts == accepts => *lock(&old.addr) = addr,
            _ => {
                t.lanes.insert(agent, lane);
            }
        }
    }

    /// The agent's connection migrated to `addr`.
    pub fn moved(&self, agent: &PeerId, addr: SocketAddr) {
        if let Some(lane) = self.read().lanes.get(agent) {
            *lock(&lane.addr) = addr;
        }
    }

    /// Open (or find) the circuit `opener -> target`. Returns the opener's
    /// cid and the target's cid.
    pub fn open(&self, opener: PeerId, target: PeerId) -> Result<(u64, u64), Refuse> {
        let l = &self.limits;
        let mut t = self.write();
        if let Some(cids) = t.by_pair.get(&(opener, target)) {
            return Ok(*cids);
        }
        let opener_lane = t.lanes.get(&opener).cloned().ok_or(Refuse::NotRegistered)?;
        let target_lane = t.lanes.get(&target).cloned().ok_or(Refuse::NotHere)?;
        if !target_lane.accepts {
            return Err(Refuse::NoConsent);
        }
        let ip = IpKey::of(&lock(&opener_lane.addr));
        let count = |m: &HashMap<_, usize>, k| m.get(k).copied().unwrap_or(0);
        if count(&t.opened_by, &opener) >= l.relay_circuits_per_peer {
            return Err(Refuse::PeerCircuits);
        }
        if count(&t.reaching, &target) >= l.relay_circuits_per_dest {
            return Err(Refuse::DestCircuits);
        }
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= l.relay_circuits_per_ip {
            return Err(Refuse::IpCircuits);
        }
        if t.by_pair.len() >= l.relay_circuits {
            return Err(Refuse::GlobalCircuits);
        }
        let fresh = || loop {
            let cid = rand::random::<u64>();
            if cid != 0 && !t.ends.contains_key(&cid) {
                break cid;
            }
        };
        let (a, b) = (fresh(), fresh());
        let now = Instant::now();
        let (to_target, to_opener) = (
            self.new_share(&target_lane, now),
            self.new_share(&opener_lane, now),
        );
        let circuit = Arc::new(Circuit {
            opener,
            target,
            opener_ip: ip,
            created: Instant::now(),
            last: AtomicU64::new(self.now_ms(Instant::now())),
            bytes: AtomicU64::new(0),
        });
        t.ends.insert(
            a,
            End {
                lane: opener_lane.clone(),
                other: target_lane.clone(),
                other_cid: b,
                circuit: circuit.clone(),
                sent: AtomicU64::new(0),
                share: to_target,
            },
        );
        t.ends.insert(
            b,
            End {
                lane: target_lane,
                other: opener_lane,
                other_cid: a,
                circuit,
                sent: AtomicU64::new(0),
                share: to_opener,
            },
        );
        t.by_pair.insert((opener, target), (a, b));
        bump(&mut t.opened_by, opener, true);
        bump(&mut t.reaching, target, true);
        bump(&mut t.per_ip, ip, true);
        Ok((a, b))
    }

    /// Where a relay packet tagged `cid` from `from` goes, charging
    /// `packets` packets of `bytes` payload bytes in all. `Err` says why it
    /// is dropped.
    pub fn route(
        &self,
        from: SocketAddr,
        cid: u64,
        packets: usize,
        bytes: usize,
        now: Instant,
    ) -> Result<Route, Drop> {
        let l = &self.limits;
        let t = self.read();
        let end = t.ends.get(&cid).ok_or(Drop::NoCircuit)?;
        if !end.lane.is_at(from) {
            return Err(Drop::Spoofed);
        }
        let cost = (bytes as u64).max(packets as u64 * l.relay_min_charge_bytes) as f64;
        let ip = {
            let mut ip = lock(&end.lane.ip);
            let key = IpKey::of(&from);
            if ip.key != key {
                // The agent's connection moved to another address.
                *ip = self.ip_budget(key);
            }
            ip.clone()
        };
        {
            // Always in this order: sender, its address, this circuit's
            // share, receiver, global (no two threads wait on each other).
            let mut out = lock(&end.lane.out);
            if !out.has(cost, now) {
                return Err(Drop::PeerRate);
            }
            let mut from_ip = lock(&ip.bucket);
            if !from_ip.has(cost, now) {
                return Err(Drop::IpRate);
            }
            let mut share = lock(&end.share);
            if !share.has(cost, now) {
                return Err(Drop::DestRate);
            }
            let mut inbound = lock(&end.other.inbound);
            if !inbound.has(cost, now) {
                return Err(Drop::DestRate);
            }
            if !lock(&self.global).take(cost, now) {
                return Err(Drop::GlobalRate);
            }
            out.charge(cost);
            from_ip.charge(cost);
            share.charge(cost);
            inbound.charge(cost);
        }
        end.sent.fetch_add(packets as u64, Ordering::Relaxed);
        end.circuit.last.store(self.now_ms(now), Ordering::Relaxed);
        end.circuit.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(Route {
            to: end.other.current(),
            cid: end.other_cid,
        })
    }

    /// Share each agent's receive budget among the circuits reaching it,
    /// in proportion to the packets the agent sent back on each since the
    /// last call (plus one, so a circuit it has not answered yet still
    /// gets a little), and forget source addresses no agent uses. Called
    /// once a second.
    pub fn rebalance(&self, now: Instant) {
        let l = &self.limits;
        let t = self.read();
        let sent: HashMap<u64, u64> = t
            .ends
            .iter()
            .map(|(cid, e)| (*cid, e.sent.swap(0, Ordering::Relaxed)))
            .collect();
        // Weight of each direction: what its destination sent the other way.
        let weight = |e: &End| 1 + ANSWER_WEIGHT * sent.get(&e.other_cid).copied().unwrap_or(0);
        let mut totals: HashMap<*const Lane, u64> = HashMap::new();
        for e in t.ends.values() {
            *totals.entry(Arc::as_ptr(&e.other)).or_default() += weight(e);
        }
        let floor = share_floor(l);
        for e in t.ends.values() {
            let total = totals[&Arc::as_ptr(&e.other)];
            let rate = l.relay_dest_bytes_per_sec as f64 * weight(e) as f64 / total as f64;
            lock(&e.share).set_rate(rate.max(floor), now);
        }
        for lane in t.lanes.values() {
            let total = totals.get(&Arc::as_ptr(lane)).copied().unwrap_or(0);
            lane.weights.store(total, Ordering::Relaxed);
        }
        drop(t);
        lock(&self.ips).retain(|_, b| Arc::strong_count(b) > 1);
    }

    /// Close every circuit that is idle, too old or over its byte
    /// allowance. Returns the ends to notify.
    pub fn expire(&self, now: Instant) -> Vec<Closed> {
        let l = &self.limits;
        let idle = l.relay_circuit_idle_ms;
        let lifetime = Duration::from_secs(l.relay_circuit_lifetime_s);
        let now_ms = self.now_ms(now);
        let due: Vec<((PeerId, PeerId), CircuitEnd)> = {
            let t = self.read();
            t.by_pair
                .iter()
                .filter_map(|(pair, (a, _))| {
                    let c = &t.ends.get(a)?.circuit;
                    let reason = if now_ms.saturating_sub(c.last.load(Ordering::Relaxed)) >= idle {
                        CircuitEnd::Idle
                    } else if now.saturating_duration_since(c.created) >= lifetime {
                        CircuitEnd::Lifetime
                    } else if c.bytes.load(Ordering::Relaxed) >= l.relay_circuit_bytes {
                        CircuitEnd::Bytes
                    } else {
                        return None;
                    };
                    Some((*pair, reason))
                })
                .collect()
        };
        if due.is_empty() {
            return Vec::new();
        }
        let mut t = self.write();
        due.into_iter()
            .flat_map(|(pair, reason)| Self::close(&mut t, pair, reason))
            .collect()
    }

    fn close(t: &mut Table, pair: (PeerId, PeerId), reason: CircuitEnd) -> Vec<Closed> {
        let Some((a, b)) = t.by_pair.remove(&pair) else {
            return Vec::new();
        };
        let ip = t.ends.get(&a).map(|e| e.circuit.opener_ip);
        t.ends.remove(&a);
        t.ends.remove(&b);
        bump(&mut t.opened_by, pair.0, false);
        bump(&mut t.reaching, pair.1, false);
        if let Some(ip) = ip {
            bump(&mut t.per_ip, ip, false);
        }
        vec![
            Closed {
                agent: pair.0,
                cid: a,
                reason,
            },
            Closed {
                agent: pair.1,
                cid: b,
                reason,
            },
        ]
    }

    /// An agent disconnected: close its circuits. Returns the other ends to notify.
    pub fn forget(&self, agent: &PeerId) -> Vec<Closed> {
        let mut t = self.write();
        t.lanes.remove(agent);
        let pairs: Vec<(PeerId, PeerId)> = t
            .by_pair
            .keys()
            .filter(|(a, b)| a == agent || b == agent)
            .copied()
            .collect();
        let closed: Vec<Closed> = pairs
            .into_iter()
            .flat_map(|p| Self::close(&mut t, p, CircuitEnd::PeerLeft))
            .filter(|c| c.agent != *agent)
            .collect();
        t.opened_by.remove(agent);
        t.reaching.remove(agent);
        closed
    }

    /// Circuits open now.
    pub fn circuits(&self) -> usize {
        self.read().by_pair.len()
    }

    /// Who opened the circuit with this cid, and to whom (for tests and logs).
    pub fn endpoints(&self, cid: u64) -> Option<(PeerId, PeerId)> {
        let t = self.read();
        let c = &t.ends.get(&cid)?.circuit;
        Some((c.opener, c.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn addr(n: u8) -> SocketAddr {
        format!("10.0.{n}.1:{}", 1000 + n as u16).parse().unwrap()
    }

    fn relay(f: impl FnOnce(&mut Limits)) -> Relay {
        let mut l = Limits::default();
        f(&mut l);
        let r = Relay::new(&l);
        for n in 1..=20 {
            r.register(id(n), addr(n), true);
        }
        r
    }

    #[test]
    fn a_circuit_needs_the_destinations_consent_and_registration() {
        let r = relay(|_| {});
        r.register(id(30), addr(30), false);
        assert_eq!(r.open(id(1), id(30)), Err(Refuse::NoConsent));
        assert_eq!(r.open(id(1), id(31)), Err(Refuse::NotHere));
        assert_eq!(r.open(id(31), id(1)), Err(Refuse::NotRegistered));
        let (a, b) = r.open(id(1), id(2)).unwrap();
        assert_ne!(a, b);
        // Asking again returns the same circuit.
        assert_eq!(r.open(id(1), id(2)), Ok((a, b)));
        assert_eq!(r.endpoints(b), Some((id(1), id(2))));
    }

    #[test]
    fn packets_go_to_the_other_end_only_from_the_owners_address() {
        let r = relay(|_| {});
        let (a, b) = r.open(id(1), id(2)).unwrap();
        let now = Instant::now();
        assert_eq!(
            r.route(addr(1), a, 1, 1200, now),
            Ok(Route {
                to: addr(2),
                cid: b
            })
        );
        assert_eq!(
            r.route(addr(2), b, 1, 1200, now),
            Ok(Route {
                to: addr(1),
                cid: a
            })
        );
        // Someone else sending with a's cid (a spoofed or guessed id).
        assert_eq!(r.route(addr(3), a, 1, 100, now), Err(Drop::Spoofed));
        assert_eq!(r.route(addr(1), 12345, 1, 100, now), Err(Drop::NoCircuit));
        // The agent's connection migrated: its new address is the one accepted.
        r.moved(&id(1), addr(9));
        assert_eq!(r.route(addr(1), a, 1, 100, now), Err(Drop::Spoofed));
        assert!(r.route(addr(9), a, 1, 100, now).is_ok());
    }

    #[test]
    fn circuit_limits_per_opener_destination_ip_and_in_all() {
        let r = relay(|l| {
            l.relay_circuits_per_peer = 2;
            l.relay_circuits_per_dest = 2;
            l.relay_circuits = 5;
        });
        r.open(id(1), id(10)).unwrap();
        r.open(id(1), id(11)).unwrap();
        assert_eq!(r.open(id(1), id(12)), Err(Refuse::PeerCircuits));
        r.open(id(2), id(12)).unwrap();
        r.open(id(3), id(12)).unwrap();
        assert_eq!(r.open(id(4), id(12)), Err(Refuse::DestCircuits));
        r.open(id(4), id(13)).unwrap();
        assert_eq!(r.open(id(5), id(14)), Err(Refuse::GlobalCircuits));
        assert_eq!(r.circuits(), 5);

        // Many identities behind one address are held at the per-IP limit.
        let r = relay(|l| l.relay_circuits_per_ip = 3);
        for n in 40..50 {
            r.register(id(n), "192.0.2.1:1".parse().unwrap(), true);
        }
        for n in 40..43 {
            r.open(id(n), id(1)).unwrap();
        }
        assert_eq!(r.open(id(43), id(1)), Err(Refuse::IpCircuits));
        assert!(r.open(id(2), id(1)).is_ok());
    }

    #[test]
    fn every_packet_pays_at_least_the_minimum_against_both_ends_and_the_total() {
        // 10 KB/s per sender, 1 KB minimum charge: ten tiny packets exhaust it.
        let r = relay(|l| {
            l.relay_peer_bytes_per_sec = 10_000;
            l.relay_min_charge_bytes = 1_000;
        });
        let (a, _) = r.open(id(1), id(2)).unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            r.route(addr(1), a, 1, 1, now).unwrap();
        }
        assert_eq!(r.route(addr(1), a, 1, 1, now), Err(Drop::PeerRate));
        // Another sender is unaffected.
        let (c, _) = r.open(id(3), id(4)).unwrap();
        assert!(r.route(addr(3), c, 1, 1, now).is_ok());

        // The destination's bucket: two senders into one receiver.
        let r = relay(|l| l.relay_dest_bytes_per_sec = 3_000);
        let (a, _) = r.open(id(1), id(9)).unwrap();
        let (b, _) = r.open(id(2), id(9)).unwrap();
        assert!(r.route(addr(1), a, 1, 2_000, now).is_ok());
        assert_eq!(r.route(addr(2), b, 1, 2_000, now), Err(Drop::DestRate));

        // The global bucket.
        let r = relay(|l| l.relay_global_bytes_per_sec = 3_000);
        let (a, _) = r.open(id(1), id(9)).unwrap();
        let (b, _) = r.open(id(2), id(8)).unwrap();
        assert!(r.route(addr(1), a, 1, 2_000, now).is_ok());
        assert_eq!(r.route(addr(2), b, 1, 2_000, now), Err(Drop::GlobalRate));
        // Refilled after a second.
        let later = now + Duration::from_secs(1);
        assert!(r.route(addr(2), b, 1, 2_000, later).is_ok());
    }

    #[test]
    fn agents_behind_one_address_share_its_budget() {
        let r = relay(|l| l.relay_ip_bytes_per_sec = 5_000);
        let now = Instant::now();
        // Three identities on one address (ports differ), each within its own limit.
        let ip = |port: u16| SocketAddr::from(([192, 0, 2, 7], port));
        for n in 40..43 {
            r.register(id(n), ip(1000 + n as u16), true);
        }
        let cids: Vec<u64> = (40..43)
            .map(|n| r.open(id(n), id(n - 39)).unwrap().0)
            .collect();
        assert!(r.route(ip(1040), cids[0], 1, 2_000, now).is_ok());
        assert!(r.route(ip(1041), cids[1], 1, 2_000, now).is_ok());
        assert_eq!(r.route(ip(1042), cids[2], 1, 2_000, now), Err(Drop::IpRate));
        // Another address is unaffected.
        let (other, _) = r.open(id(10), id(11)).unwrap();
        assert!(r.route(addr(10), other, 1, 2_000, now).is_ok());
        // Budgets of addresses no agent uses any more are forgotten.
        for n in 40..43 {
            r.forget(&id(n));
        }
        r.rebalance(now);
        assert_eq!(lock(&r.ips).len(), 20);
    }

    #[test]
    fn a_receivers_budget_goes_to_the_circuits_it_answers() {
        // Receiver 9 gets 100 KB/s; a jammer (1) and a peer it talks to (2)
        // both send to it.
        let r = relay(|l| {
            l.relay_dest_bytes_per_sec = 100_000;
            l.relay_peer_bytes_per_sec = 1_000_000;
        });
        let t0 = Instant::now();
        let (jam, _) = r.open(id(1), id(9)).unwrap();
        let (peer, back) = r.open(id(2), id(9)).unwrap();
        // Before the timer has seen anything, both get an equal share.
        let mut sent = [0usize; 2];
        for i in 0..100 {
            for (k, cid) in [jam, peer].into_iter().enumerate() {
                if r.route(addr(k as u8 + 1), cid, 1, 1_000, t0).is_ok() {
                    sent[k] += 1;
                }
            }
            if i % 2 == 0 {
                // The receiver acknowledges what the peer sends.
                let _ = r.route(addr(9), back, 1, 50, t0);
            }
        }
        assert!(sent[0] >= 45 && sent[1] >= 45, "{sent:?}");
        r.rebalance(t0);
        // One second later: the jammer floods, the peer sends what it needs.
        let t1 = t0 + Duration::from_secs(1);
        let (mut jam_ok, mut peer_ok) = (0, 0);
        for _ in 0..100 {
            jam_ok += usize::from(r.route(addr(1), jam, 1, 1_000, t1).is_ok());
        }
        for _ in 0..80 {
            peer_ok += usize::from(r.route(addr(2), peer, 1, 1_000, t1).is_ok());
        }
        assert_eq!(peer_ok, 80, "the answered circuit keeps its share");
        assert!(
            jam_ok <= 5,
            "the unanswered circuit got {jam_ok} packets through"
        );
    }

    #[test]
    fn a_timer_closes_idle_old_and_spent_circuits_and_tells_both_ends() {
        let r = relay(|l| {
            l.relay_circuit_idle_ms = 1_000;
            l.relay_circuit_bytes = 5_000;
        });
        let t0 = Instant::now();
        let (a, b) = r.open(id(1), id(2)).unwrap();
        let (c, _) = r.open(id(3), id(4)).unwrap();
        assert!(r.expire(t0).is_empty());
        r.route(addr(3), c, 5, 6_000, t0).unwrap();
        let closed = r.expire(t0 + Duration::from_millis(10));
        assert_eq!(closed.len(), 2);
        assert!(closed.iter().all(|c| c.reason == CircuitEnd::Bytes));
        // Circuit a<->b idles out.
        let closed = r.expire(t0 + Duration::from_millis(1_500));
        assert_eq!(
            closed,
            vec![
                Closed {
                    agent: id(1),
                    cid: a,
                    reason: CircuitEnd::Idle
                },
                Closed {
                    agent: id(2),
                    cid: b,
                    reason: CircuitEnd::Idle
                }
            ]
        );
        assert_eq!(r.circuits(), 0);
        assert_eq!(r.route(addr(1), a, 1, 1, t0), Err(Drop::NoCircuit));
        // Counts were released: new circuits open again.
        assert!(r.open(id(1), id(2)).is_ok());
    }

    #[test]
    fn a_departed_agents_circuits_close_and_the_others_are_told() {
        let r = relay(|_| {});
        let (_, b) = r.open(id(1), id(2)).unwrap();
        let (c, _) = r.open(id(3), id(1)).unwrap();
        let mut told = r.forget(&id(1));
        told.sort_by_key(|c| c.agent);
        assert_eq!(told.len(), 2);
        assert_eq!((told[0].agent, told[0].cid), (id(2), b));
        assert_eq!((told[1].agent, told[1].cid), (id(3), c));
        assert_eq!(r.circuits(), 0);
    }
}
