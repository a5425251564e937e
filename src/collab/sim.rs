//! A deterministic discrete-event simulator for the sans-IO machines.
//!
//! Agents are [`SimNode`]s in one process. Every ordered pair of agents has
//! a fixed one-way latency drawn from `[min_latency, max_latency]` by a
//! seeded hash, and a link delivers in order (like one QUIC stream per
//! peer). A crashed agent receives nothing and runs no timers; a
//! partition drops what crosses it. Like a QUIC connection timing out, a
//! peer that had a link to a crashed or partitioned agent is told
//! (`on_peer_down`) after `conn_timeout`, and sending to an unreachable
//! agent reports it down after the same delay (a failed dial).
//!
//! Time is a base `Instant` plus simulated offsets, so every run with the
//! same seeds produces the same events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use x0x_proto::PeerId;

use super::util::sha256;

/// What a node asks the simulator to do.
pub enum SimAction<M> {
    /// Deliver `msg` to `to`.
    Send {
        /// Recipient.
        to: PeerId,
        /// Message.
        msg: M,
    },
    /// Wake the node at this instant.
    Timer(Instant),
}

/// A simulated agent: one or more machines behind one interface.
pub trait SimNode {
    /// The message type on the links.
    type Msg: Clone;
    /// The agent's id.
    fn peer_id(&self) -> PeerId;
    /// A message arrived.
    fn on_message(&mut self, from: PeerId, msg: Self::Msg, now: Instant);
    /// A timer fired.
    fn on_timer(&mut self, now: Instant);
    /// The link to `peer` is gone.
    fn on_peer_down(&mut self, peer: PeerId, now: Instant);
    /// Move pending outputs into `out`.
    fn drain(&mut self, now: Instant, out: &mut Vec<SimAction<Self::Msg>>);
}

enum Event<M> {
    Deliver { from: usize, to: usize, msg: M },
    Timer { node: usize },
    PeerDown { node: usize, peer: usize },
}

/// Hook called for every message delivered to a live agent: `(from, to, msg, now)`.
pub type Observer<M> = Box<dyn FnMut(usize, usize, &M, Instant)>;

/// The simulator.
pub struct Sim<N: SimNode> {
    /// The agents, by index.
    pub nodes: Vec<N>,
    index: HashMap<PeerId, usize>,
    alive: Vec<bool>,
    now: Instant,
    seq: u64,
    events: BTreeMap<(Instant, u64), Event<N::Msg>>,
    timers: Vec<BTreeSet<Instant>>,
    link_free: HashMap<(usize, usize), Instant>,
    connected: HashSet<(usize, usize)>,
    down_pending: HashSet<(usize, usize)>,
    seed: u64,
    /// Smallest one-way latency.
    pub min_latency: Duration,
    /// Largest one-way latency.
    pub max_latency: Duration,
    /// Delay before a lost link is reported down.
    pub conn_timeout: Duration,
    /// Partition side of each agent; messages between sides are dropped.
    pub side: Option<Vec<u8>>,
    /// Called on every delivery.
    pub observer: Option<Observer<N::Msg>>,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped (dead recipient or partition).
    pub dropped: u64,
}

impl<N: SimNode> Sim<N> {
    /// A simulator over `nodes`, latencies 10–50 ms, links reported down after 3 s.
    pub fn new(nodes: Vec<N>, seed: u64, start: Instant) -> Self {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.peer_id(), i))
            .collect();
        let n = nodes.len();
        Self {
            nodes,
            index,
            alive: vec![true; n],
            now: start,
            seq: 0,
            events: BTreeMap::new(),
            timers: vec![BTreeSet::new(); n],
            link_free: HashMap::new(),
            connected: HashSet::new(),
            down_pending: HashSet::new(),
            seed,
            min_latency: Duration::from_millis(10),
            max_latency: Duration::from_millis(50),
            conn_timeout: Duration::from_secs(3),
            side: None,
            observer: None,
            delivered: 0,
            dropped: 0,
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The fixed one-way latency from `a` to `b` (symmetric).
    pub fn latency(&self, a: usize, b: usize) -> Duration {
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let h = sha256(&[&self.seed.to_be_bytes(), &x.to_be_bytes(), &y.to_be_bytes()]);
        let span = (self.max_latency - self.min_latency).as_micros() as u64;
        let r = u64::from_be_bytes(h[..8].try_into().unwrap()) % (span + 1);
        self.min_latency + Duration::from_micros(r)
    }

    fn push(&mut self, at: Instant, e: Event<N::Msg>) {
        self.events.insert((at, self.seq), e);
        self.seq += 1;
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.alive[b] && self.alive[a] && self.side.as_ref().is_none_or(|s| s[a] == s[b])
    }

    /// Run `f` on agent `i` now, then route what it produced.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut N, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[i], now);
        self.flush(i);
        r
    }

    /// Route the pending outputs of agent `i`.
    pub fn flush(&mut self, i: usize) {
        let mut out = Vec::new();
        self.nodes[i].drain(self.now, &mut out);
        for a in out {
            match a {
                SimAction::Send { to, msg } => {
                    let Some(&j) = self.index.get(&to) else {
                        continue;
                    };
                    if !self.reachable(i, j) {
                        self.dropped += 1;
                        if self.down_pending.insert((i, j)) {
                            let at = self.now + self.conn_timeout;
                            self.push(at, Event::PeerDown { node: i, peer: j });
                        }
                        continue;
                    }
                    let at = (self.now + self.latency(i, j))
                        .max(self.link_free.get(&(i, j)).copied().unwrap_or(self.now));
                    self.link_free.insert((i, j), at);
                    self.push(
                        at,
                        Event::Deliver {
                            from: i,
                            to: j,
                            msg,
                        },
                    );
                }
                SimAction::Timer(at) => {
                    let at = at.max(self.now);
                    if self.timers[i].insert(at) {
                        self.push(at, Event::Timer { node: i });
                    }
                }
            }
        }
    }

    /// Crash agent `i` (like `kill -9`): it stops at once; peers linked to
    /// it learn after `conn_timeout`.
    pub fn crash(&mut self, i: usize) {
        self.alive[i] = false;
        let mut peers: Vec<usize> = self
            .connected
            .iter()
            .filter(|(a, b)| *b == i && *a != i)
            .map(|(a, _)| *a)
            .collect();
        // Hash-set order is random per process: sort to stay deterministic.
        peers.sort_unstable();
        for a in peers {
            if self.down_pending.insert((a, i)) {
                let at = self.now + self.conn_timeout;
                self.push(at, Event::PeerDown { node: a, peer: i });
            }
        }
    }

    /// Split the agents by `side` (agents on different sides cannot talk).
    pub fn partition(&mut self, side: Vec<u8>) {
        let mut cross: Vec<(usize, usize)> = self
            .connected
            .iter()
            .copied()
            .filter(|(a, b)| side[*a] != side[*b])
            .collect();
        cross.sort_unstable();
        self.side = Some(side);
        for (a, b) in cross {
            if self.down_pending.insert((a, b)) {
                let at = self.now + self.conn_timeout;
                self.push(at, Event::PeerDown { node: a, peer: b });
            }
        }
    }

    /// Remove the partition.
    pub fn heal(&mut self) {
        self.side = None;
    }

    /// Process events up to and including `until`.
    pub fn run_until(&mut self, until: Instant) {
        while let Some((&(at, seq), _)) = self.events.first_key_value() {
            if at > until {
                break;
            }
            let e = self.events.remove(&(at, seq)).unwrap();
            self.now = at;
            match e {
                Event::Deliver { from, to, msg } => {
                    if !self.alive[to] {
                        self.dropped += 1;
                        continue;
                    }
                    self.delivered += 1;
                    self.connected.insert((to, from));
                    self.connected.insert((from, to));
                    if let Some(obs) = self.observer.as_mut() {
                        obs(from, to, &msg, at);
                    }
                    let from_id = self.nodes[from].peer_id();
                    self.nodes[to].on_message(from_id, msg, at);
                    self.flush(to);
                }
                Event::Timer { node } => {
                    self.timers[node].remove(&at);
                    if !self.alive[node] {
                        continue;
                    }
                    self.nodes[node].on_timer(at);
                    self.flush(node);
                }
                Event::PeerDown { node, peer } => {
                    self.down_pending.remove(&(node, peer));
                    if !self.alive[node] || self.reachable(node, peer) {
                        continue;
                    }
                    self.connected.remove(&(node, peer));
                    self.connected.remove(&(peer, node));
                    let pid = self.nodes[peer].peer_id();
                    self.nodes[node].on_peer_down(pid, at);
                    self.flush(node);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Run for `d` more simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }
}

/// Percentile `p` (0–100) of `v` (sorted in place); `None` if empty.
pub fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    Some(v[rank.min(v.len() - 1)])
}
