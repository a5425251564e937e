//! Gossip pub/sub: one overlay per topic among its subscribers, HyParView
//! membership ([`hyparview`]) and PlumTree broadcast ([`plumtree`]), as a
//! sans-IO state machine ([`Gossip`]).
//!
//! # Why this design, and why not iroh-gossip's `proto`
//!
//! HyParView keeps a small symmetric active view (5) that is the overlay's
//! links and a passive view (30) of replacements; it heals in a few
//! round trips after mass failures and needs only the connections of the
//! active view, which matters in x0x where a new connection may cost an
//! introduction, hole punching or a relay. PlumTree sends each payload once
//! per tree link (relative message redundancy near 0 once the tree has
//! formed, against `D−1` copies per hop in a gossipsub mesh of degree `D`)
//! while the lazy `IHave` announcements over the remaining active links
//! repair the tree in one `Graft` when a link or a node fails.
//!
//! iroh-gossip's `proto` module implements the same two papers, sans-IO,
//! and was the first candidate. It is not used because, at version 0.101:
//! it needs Rust 1.91 (the workspace promises 1.88); its identities are
//! iroh's (`iroh-base` keys built on `ed25519-dalek`, a second Ed25519
//! implementation beside aws-lc-rs) and it brings blake3, `rand` 0.10 (the
//! SDK uses 0.9), `derive_more`, `indexmap`, `iroh-metrics` and n0 error
//! crates into an SDK whose dependency list is deliberately short; and it
//! gossips opaque bytes whose "sender" is the previous hop, while x0x
//! needs every message signed by its author with replay and size checks
//! before it is forwarded, which belongs inside the machine (a forged
//! message must not travel one hop). Writing the two protocols against
//! x0x's `PeerId` and [`Envelope`] is a few hundred lines, tested here in
//! the simulator ([`crate::collab`] tests).
//!
//! # Driving it
//!
//! Inputs: [`Gossip::join`] / [`Gossip::leave`] / [`Gossip::publish`]
//! (commands), [`Gossip::handle`] (a [`GossipMessage`] from a peer; the
//! transport authenticates `from`), [`Gossip::handle_timer`] (at or after a
//! [`Output::SetTimer`] instant; calling it early is harmless) and
//! [`Gossip::peer_down`] (a connection to the peer closed or could not be
//! made). Outputs, from [`Gossip::poll`]: `Send` (carry the message to the
//! peer, dialing it by PeerId if needed), `Event` ([`GossipEvent`]: a
//! verified message to hand to subscribers, neighbour changes), `SetTimer`
//! and `Disconnect` (no topic needs a link to the peer any more).
//!
//! # Backpressure
//!
//! The machine never waits for the network. The driver puts each `Send`
//! into that peer's bounded [`OutboundQueues`] and one writer task per peer
//! drains it onto the peer's stream; a slow peer (QUIC flow control stops
//! its writer) fills only its own queue, whose oldest payloads are then
//! dropped and counted and replaced by an `IHave` for the same message, so
//! the slow peer can still `Graft` what it missed from whichever neighbour
//! has it. Control messages are never dropped before payloads.
//!
//! # Bootstrap
//!
//! The first members of a topic come from outside: the driver asks the
//! bootstrap nodes' directory and calls [`Gossip::join`] with a few of
//! them. Calling it again on a joined topic contacts peers not already
//! neighbours; the driver should do so when the directory shows topic
//! members the overlay has not met (e.g. after a network partition heals,
//! when each side's overlay has forgotten the other).

pub mod hyparview;
pub mod plumtree;
pub mod proto;
pub mod queue;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use x0x_proto::{Identity, PeerId};

pub use proto::{GossipBody, GossipMessage};
pub use queue::{OutboundQueues, QueueConfig, QueueStats};

use super::Output;
use super::envelope::{
    Channel, Envelope, EnvelopeStats, MessageId, TopicId, Verifier, VerifierConfig,
};
use super::util::{TimedSet, Timers, WallClock};

/// What [`Gossip::poll`] returns.
pub type GossipOutput = Output<GossipMessage, GossipEvent>;

/// Things the application or the driver learns from the gossip machine.
// `Received` carries the envelope inline: events are moved once, boxing
// would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A new, verified message on a joined topic (delivered once).
    Received {
        /// The topic.
        topic: TopicId,
        /// Its id.
        id: MessageId,
        /// The signed message; `envelope.author` is who published it.
        envelope: Envelope,
        /// The neighbour it came from (not the author, in general).
        from: PeerId,
        /// Hops from the author.
        hops: u16,
    },
    /// `peer` joined this agent's active view of `topic`.
    NeighborUp {
        /// The topic.
        topic: TopicId,
        /// The neighbour.
        peer: PeerId,
    },
    /// `peer` left this agent's active view of `topic`.
    NeighborDown {
        /// The topic.
        topic: TopicId,
        /// The former neighbour.
        peer: PeerId,
    },
}

/// Tuning of the gossip machine. The defaults follow the papers and
/// iroh-gossip's experience, sized for topics of hundreds of agents.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Active view size (overlay degree).
    pub active_view: usize,
    /// Passive view size.
    pub passive_view: usize,
    /// Random walk length of a `ForwardJoin`.
    pub active_walk: u8,
    /// Step of the walk at which the joiner is added to passive views; also
    /// the walk length of a shuffle.
    pub passive_walk: u8,
    /// Active peers sampled into a shuffle.
    pub shuffle_active: usize,
    /// Passive peers sampled into a shuffle.
    pub shuffle_passive: usize,
    /// Time between shuffles.
    pub shuffle_interval: Duration,
    /// Time between checks that the active view is full.
    pub maintain_interval: Duration,
    /// How long a low-priority `Neighbor` request may stay unanswered.
    pub neighbor_timeout: Duration,
    /// Contacts a `join` sends `Join` to (the others become passive peers).
    pub join_contacts: usize,
    /// Delay before queued `IHave`s are sent (batching).
    pub ihave_delay: Duration,
    /// How long an announced message may be missing before the first `Graft`.
    pub graft_timeout: Duration,
    /// Time between `Graft`s to further announcers.
    pub graft_retry: Duration,
    /// Hops by which a lazy path must beat the tree to reshape it.
    pub optimization_threshold: u16,
    /// Authors whose broadcast tree is remembered per topic.
    pub max_roots: usize,
    /// How long messages are kept to answer `Graft`s.
    pub cache_ttl: Duration,
    /// Most messages kept to answer `Graft`s per topic.
    pub cache_capacity: usize,
    /// Message ids remembered for duplicate suppression, per topic.
    pub seen_capacity: usize,
    /// How long message ids are remembered.
    pub seen_ttl: Duration,
    /// Envelope limits (payload size, replay window, clock skew).
    pub verifier: VerifierConfig,
    /// The first sequence number this agent publishes with on each
    /// `(topic, channel)`. `None` derives it from the wall clock
    /// (`unix_ms << 12`), so a restarted agent never reuses a number its
    /// peers have seen (as long as it published fewer than 4096 messages
    /// per millisecond on average).
    pub first_seq: Option<u64>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            active_view: 5,
            passive_view: 30,
            active_walk: 6,
            passive_walk: 3,
            shuffle_active: 3,
            shuffle_passive: 4,
            shuffle_interval: Duration::from_secs(30),
            maintain_interval: Duration::from_millis(500),
            neighbor_timeout: Duration::from_secs(2),
            join_contacts: 3,
            ihave_delay: Duration::from_millis(30),
            graft_timeout: Duration::from_millis(100),
            graft_retry: Duration::from_millis(60),
            optimization_threshold: 4,
            max_roots: 1024,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 64 * 1024,
            seen_capacity: 256 * 1024,
            seen_ttl: Duration::from_secs(5 * 60),
            verifier: VerifierConfig::default(),
            first_seq: None,
        }
    }
}

/// Counters of the gossip machine (envelope rejections included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Envelope checks, by result.
    pub envelopes: EnvelopeStats,
    /// Messages this agent published.
    pub published: u64,
    /// New messages delivered to the application.
    pub delivered: u64,
    /// Payload copies received for messages already seen.
    pub duplicates: u64,
    /// Messages for topics this agent has not joined.
    pub unknown_topic: u64,
    /// `IHave` messages sent.
    pub ihave_sent: u64,
    /// `Graft`s sent.
    pub grafts_sent: u64,
    /// `Prune`s sent.
    pub prunes_sent: u64,
    /// `Graft`s for messages no longer cached.
    pub graft_misses: u64,
}

impl GossipStats {
    /// Every counter with its stable metric name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("gossip_published", self.published),
            ("gossip_delivered", self.delivered),
            ("gossip_duplicates", self.duplicates),
            ("gossip_unknown_topic", self.unknown_topic),
            ("gossip_ihave_sent", self.ihave_sent),
            ("gossip_grafts_sent", self.grafts_sent),
            ("gossip_prunes_sent", self.prunes_sent),
            ("gossip_graft_misses", self.graft_misses),
        ];
        v.extend(self.envelopes.counters());
        v
    }
}

/// Why a message could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// `join` the topic first.
    #[error("topic {0} not joined")]
    NotJoined(TopicId),
    /// Payload over the configured maximum.
    #[error("payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timer {
    Maintain(TopicId),
    Shuffle(TopicId),
    FlushIHave(TopicId),
    Graft(TopicId, MessageId),
}

/// The tree of one author: the neighbours pruned from it (lazy).
#[derive(Debug)]
struct Root {
    pruned: BTreeSet<PeerId>,
    last_used: u64,
}

#[derive(Debug)]
struct Cached {
    envelope: Envelope,
}

/// The state of one joined topic.
#[derive(Debug)]
pub(crate) struct Topic {
    active: BTreeSet<PeerId>,
    passive: BTreeSet<PeerId>,
    pending: BTreeMap<PeerId, Instant>,
    roots: HashMap<PeerId, Root>,
    tick: u64,
    seen: TimedSet<MessageId>,
    cache: HashMap<MessageId, Cached>,
    cache_order: VecDeque<(Instant, MessageId)>,
    missing: HashMap<MessageId, VecDeque<(PeerId, u16)>>,
    lazy_queue: BTreeMap<PeerId, Vec<(MessageId, u16)>>,
    flush_scheduled: bool,
}

impl Topic {
    fn new(config: &GossipConfig) -> Self {
        Self {
            active: BTreeSet::new(),
            passive: BTreeSet::new(),
            pending: BTreeMap::new(),
            roots: HashMap::new(),
            tick: 0,
            seen: TimedSet::new(config.seen_capacity, config.seen_ttl),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            missing: HashMap::new(),
            lazy_queue: BTreeMap::new(),
            flush_scheduled: false,
        }
    }
}

/// What a topic's handlers may touch: split borrows of the machine.
pub(crate) struct Io<'a> {
    now: Instant,
    topic: TopicId,
    me: PeerId,
    config: &'a GossipConfig,
    out: &'a mut VecDeque<GossipOutput>,
    timers: &'a mut Timers<Timer>,
    rng: &'a mut StdRng,
    stats: &'a mut GossipStats,
    downs: &'a mut Vec<PeerId>,
}

impl Io<'_> {
    fn send(&mut self, to: PeerId, body: GossipBody) {
        self.out.push_back(Output::Send {
            to,
            message: GossipMessage {
                topic: self.topic,
                body,
            },
        });
    }

    fn timer(&mut self, at: Instant, t: Timer) {
        self.timers.insert(at, t);
        self.out.push_back(Output::SetTimer { at });
    }

    /// `now + d`, ±10 % so agents started together do not act in lockstep.
    fn jitter(&mut self, d: Duration) -> Instant {
        let f = self.rng.random_range(0.9..1.1);
        self.now + d.mul_f64(f)
    }

    fn neighbor_up(&mut self, peer: PeerId) {
        self.out.push_back(Output::Event(GossipEvent::NeighborUp {
            topic: self.topic,
            peer,
        }));
    }

    fn neighbor_down(&mut self, peer: PeerId) {
        self.out.push_back(Output::Event(GossipEvent::NeighborDown {
            topic: self.topic,
            peer,
        }));
        self.downs.push(peer);
    }
}

/// The gossip state machine of one agent, for all its topics.
#[derive(Debug)]
pub struct Gossip {
    identity: Identity,
    me: PeerId,
    config: GossipConfig,
    clock: WallClock,
    rng: StdRng,
    topics: BTreeMap<TopicId, Topic>,
    verifier: Verifier,
    seqs: HashMap<(TopicId, Channel), u64>,
    out: VecDeque<GossipOutput>,
    timers: Timers<Timer>,
    stats: GossipStats,
    downs: Vec<PeerId>,
}

impl Gossip {
    /// A machine for `identity`; `seed` makes its random choices
    /// reproducible; `clock` maps the `Instant`s it is driven with to wall
    /// time (for envelope timestamps).
    pub fn new(identity: Identity, config: GossipConfig, clock: WallClock, seed: u64) -> Self {
        let verifier = Verifier::new(config.verifier.clone());
        Self {
            me: identity.peer_id(),
            identity,
            config,
            clock,
            rng: StdRng::seed_from_u64(seed),
            topics: BTreeMap::new(),
            verifier,
            seqs: HashMap::new(),
            out: VecDeque::new(),
            timers: Timers::default(),
            stats: GossipStats::default(),
            downs: Vec::new(),
        }
    }

    /// This agent's id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Join `topic` through `bootstrap` (members found in the directory).
    /// Joining again contacts those not already neighbours.
    pub fn join(&mut self, topic: TopicId, bootstrap: &[PeerId], now: Instant) {
        let fresh = !self.topics.contains_key(&topic);
        let t = self
            .topics
            .entry(topic)
            .or_insert_with(|| Topic::new(&self.config));
        let mut io = Io {
            now,
            topic,
            me: self.me,
            config: &self.config,
            out: &mut self.out,
            timers: &mut self.timers,
            rng: &mut self.rng,
            stats: &mut self.stats,
            downs: &mut self.downs,
        };
        if fresh {
            t.start_timers(&mut io);
        }
        t.join(&mut io, bootstrap);
        self.after(now);
    }

    /// Leave `topic`: neighbours are told, the state is dropped.
    pub fn leave(&mut self, topic: TopicId, now: Instant) {
        let Some(t) = self.topics.remove(&topic) else {
            return;
        };
        for p in t.active {
            self.out.push_back(Output::Send {
                to: p,
                message: GossipMessage {
                    topic,
                    body: GossipBody::Disconnect { alive: false },
                },
            });
            self.out
                .push_back(Output::Event(GossipEvent::NeighborDown { topic, peer: p }));
            self.downs.push(p);
        }
        self.timers.retain(|t| match t {
            Timer::Maintain(x) | Timer::Shuffle(x) | Timer::FlushIHave(x) | Timer::Graft(x, _) => {
                *x != topic
            }
        });
        self.after(now);
    }

    /// Whether `topic` is joined.
    pub fn is_joined(&self, topic: &TopicId) -> bool {
        self.topics.contains_key(topic)
    }

    /// Sign and broadcast `payload` on `topic`. The author does not receive
    /// its own message as an event.
    pub fn publish(
        &mut self,
        topic: TopicId,
        channel: Channel,
        payload: Bytes,
        now: Instant,
    ) -> Result<MessageId, PublishError> {
        if payload.len() > self.config.verifier.max_payload {
            return Err(PublishError::TooLarge(payload.len()));
        }
        let Some(t) = self.topics.get_mut(&topic) else {
            return Err(PublishError::NotJoined(topic));
        };
        let wall = self.clock.unix_ms(now);
        let first = self.config.first_seq.unwrap_or(wall << 12);
        let seq = self.seqs.entry((topic, channel)).or_insert(first);
        let envelope = Envelope::sign(&self.identity, topic, channel, *seq, wall, payload);
        *seq += 1;
        let id = envelope.id();
        t.seen.insert(id, now);
        self.stats.published += 1;
        let mut io = Io {
            now,
            topic,
            me: self.me,
            config: &self.config,
            out: &mut self.out,
            timers: &mut self.timers,
            rng: &mut self.rng,
            stats: &mut self.stats,
            downs: &mut self.downs,
        };
        t.broadcast(&mut io, id, &envelope, 0, None);
        Ok(id)
    }

    /// A message from `from` (authenticated by the transport).
    pub fn handle(&mut self, from: PeerId, message: GossipMessage, now: Instant) {
        if from == self.me {
            return;
        }
        let topic = message.topic;
        let Some(t) = self.topics.get_mut(&topic) else {
            self.stats.unknown_topic += 1;
            // Tell a would-be neighbour we are not in this topic.
            if matches!(
                message.body,
                GossipBody::Join | GossipBody::Neighbor { .. } | GossipBody::ForwardJoin { .. }
            ) {
                self.out.push_back(Output::Send {
                    to: from,
                    message: GossipMessage {
                        topic,
                        body: GossipBody::Disconnect { alive: false },
                    },
                });
            }
            return;
        };
        let mut io = Io {
            now,
            topic,
            me: self.me,
            config: &self.config,
            out: &mut self.out,
            timers: &mut self.timers,
            rng: &mut self.rng,
            stats: &mut self.stats,
            downs: &mut self.downs,
        };
        match message.body {
            GossipBody::Join => t.on_join(&mut io, from),
            GossipBody::ForwardJoin { peer, ttl } => t.on_forward_join(&mut io, from, peer, ttl),
            GossipBody::Neighbor { high_priority } => t.on_neighbor(&mut io, from, high_priority),
            GossipBody::NeighborAccept => t.on_neighbor_accept(&mut io, from),
            GossipBody::Disconnect { alive } => t.on_disconnect(&mut io, from, alive),
            GossipBody::Shuffle { origin, ttl, peers } => {
                t.on_shuffle(&mut io, from, origin, ttl, peers)
            }
            GossipBody::ShuffleReply { peers } => t.on_shuffle_reply(&mut io, peers),
            GossipBody::Gossip { round, envelope } => {
                let id = envelope.id();
                if t.seen.contains(&id) {
                    io.stats.duplicates += 1;
                    t.on_duplicate_gossip(&mut io, from, envelope.author);
                } else {
                    t.seen.insert(id, now);
                    let wall = self.clock.unix_ms(now);
                    // A rejected envelope is counted by the verifier and
                    // goes no further.
                    if self
                        .verifier
                        .verify_on(&envelope, Some(topic), wall)
                        .is_ok()
                    {
                        io.stats.delivered += 1;
                        io.out.push_back(Output::Event(GossipEvent::Received {
                            topic,
                            id,
                            envelope: envelope.clone(),
                            from,
                            hops: round,
                        }));
                        t.on_new_gossip(&mut io, from, id, &envelope, round);
                    }
                }
            }
            GossipBody::IHave { entries } => t.on_ihave(&mut io, from, entries),
            GossipBody::Graft { id, round, send } => t.on_graft(&mut io, from, id, round, send),
            GossipBody::Prune { root } => t.on_prune(&mut io, from, root),
        }
        self.after(now);
    }

    /// The transport lost `peer`: its connection closed or could not be made.
    pub fn peer_down(&mut self, peer: PeerId, now: Instant) {
        for (&topic, t) in self.topics.iter_mut() {
            let mut io = Io {
                now,
                topic,
                me: self.me,
                config: &self.config,
                out: &mut self.out,
                timers: &mut self.timers,
                rng: &mut self.rng,
                stats: &mut self.stats,
                downs: &mut self.downs,
            };
            t.on_peer_down(&mut io, peer);
        }
        self.after(now);
    }

    /// Run the timers due at `now`.
    pub fn handle_timer(&mut self, now: Instant) {
        while let Some((_, timer)) = self.timers.pop_due(now) {
            let topic = match &timer {
                Timer::Maintain(t)
                | Timer::Shuffle(t)
                | Timer::FlushIHave(t)
                | Timer::Graft(t, _) => *t,
            };
            let Some(t) = self.topics.get_mut(&topic) else {
                continue;
            };
            let mut io = Io {
                now,
                topic,
                me: self.me,
                config: &self.config,
                out: &mut self.out,
                timers: &mut self.timers,
                rng: &mut self.rng,
                stats: &mut self.stats,
                downs: &mut self.downs,
            };
            match timer {
                Timer::Maintain(_) => {
                    t.maintain(&mut io);
                    t.expire_cache(&mut io);
                    t.seen.expire(now);
                    let at = io.jitter(io.config.maintain_interval);
                    io.timer(at, Timer::Maintain(topic));
                }
                Timer::Shuffle(_) => {
                    t.shuffle(&mut io);
                    let at = io.jitter(io.config.shuffle_interval);
                    io.timer(at, Timer::Shuffle(topic));
                }
                Timer::FlushIHave(_) => t.flush_ihave(&mut io),
                Timer::Graft(_, id) => t.on_graft_timer(&mut io, id),
            }
        }
        self.after(now);
    }

    /// The earliest pending timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<GossipOutput> {
        self.out.pop_front()
    }

    /// The counters.
    pub fn stats(&self) -> GossipStats {
        let mut s = self.stats;
        s.envelopes = *self.verifier.stats();
        s
    }

    /// The active view (neighbours) of `topic`.
    pub fn neighbors(&self, topic: &TopicId) -> Vec<PeerId> {
        self.topics
            .get(topic)
            .map(|t| t.active.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every peer some topic keeps a link to: its active view and the
    /// peers asked to become neighbours. A transport may close a link it
    /// opened to any other peer once it is idle.
    pub fn linked_peers(&self) -> BTreeSet<PeerId> {
        self.topics
            .values()
            .flat_map(|t| t.active.iter().chain(t.pending.keys()))
            .copied()
            .collect()
    }

    /// The passive view of `topic`.
    pub fn passive(&self, topic: &TopicId) -> Vec<PeerId> {
        self.topics
            .get(topic)
            .map(|t| t.passive.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The eager peers of `root`'s tree in `topic` (where this agent
    /// pushes `root`'s messages in full).
    pub fn eager_peers(&self, topic: &TopicId, root: &PeerId) -> Vec<PeerId> {
        self.topics
            .get(topic)
            .map(|t| t.eager_for(root))
            .unwrap_or_default()
    }

    /// Emit `Disconnect` hints for peers no topic keeps as a neighbour.
    fn after(&mut self, _now: Instant) {
        for peer in std::mem::take(&mut self.downs) {
            if !self.topics.values().any(|t| t.active.contains(&peer)) {
                self.out.push_back(Output::Disconnect { peer });
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
