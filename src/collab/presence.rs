//! Presence: who is online in a topic, with a phi-accrual failure detector.
//!
//! Every agent announces itself every `interval` (1 s by default) on each
//! topic it joined, as a signed envelope on the topic's gossip overlay
//! ([`Channel::Presence`]; the machine emits [`Output::Publish`] and the
//! driver hands it to [`Gossip::publish`](super::gossip::Gossip::publish)),
//! and directly to each of its direct peers ([`PresenceMessage::Announce`],
//! signed by this machine, scope [`Presence::direct_scope`]). An
//! announcement carries the announcer's interval and a TTL; one with
//! `leaving` set takes the agent offline at once.
//!
//! # Failure detector: phi accrual over the announcements
//!
//! For every member of every scope the detector keeps the last `history`
//! inter-arrival times and computes, at each check, φ = −log10 P(an
//! announcement arrives later than now), with the inter-arrival times
//! modelled as normal (mean, standard deviation floored at
//! `min_std_dev`; the logistic approximation of Hayashibara et al. as in
//! Akka and Cassandra). A member goes offline when φ exceeds
//! `phi_threshold` (8), or when its announced TTL passes without an
//! announcement (a hard bound whatever the history says).
//!
//! With a 1 s interval, a floor of 250 ms and φ = 8 (P ≈ 10⁻⁸, z ≈ 5.2),
//! a member is declared offline about 2.3 s after its last announcement,
//! so between 1.3 s and 2.3 s after it crashed, plus gossip latency and
//! the 100 ms check period: p95 under 3 s, while one lost announcement
//! (a 2 s gap) does not trip it.
//!
//! *Why not SWIM?* SWIM's load per agent is constant, but it probes random
//! members directly and asks others to probe indirectly; in x0x a
//! connection to a random agent may need an introduction through a
//! coordinator, hole punching or a relay, so every probe could cost a
//! connection setup. Phi accrual needs only the announcements, which travel
//! over the overlay links that already exist, adapts to each member's
//! jitter, and gives every member the same view without a dissemination
//! protocol for suspicions.
//!
//! *Cost.* An announcement is ~190 bytes on the wire (envelope with a
//! 64-byte signature, gossip framing). Each agent receives one per member
//! per interval over the tree, plus a 34-byte `IHave` entry on each lazy
//! link: at 100 members and 1 s, ~20–30 kB/s in per agent (measured in the
//! simulator test `sim_presence_detects_5_of_100_crashes`). It grows with
//! the topic size; for topics of thousands, raise `interval` (detection
//! time scales with it) or announce on a dedicated presence topic.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use x0x_proto::{Identity, PeerId};

use super::Output;
use super::envelope::{Channel, Envelope, EnvelopeStats, TopicId, Verifier, VerifierConfig};
use super::util::{Timers, WallClock};

/// Version of the announcement payload.
pub const ANNOUNCEMENT_VERSION: u8 = 1;

/// What [`Presence::poll`] returns.
pub type PresenceOutput = Output<PresenceMessage, PresenceEvent>;

/// The payload of a presence envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Payload version ([`ANNOUNCEMENT_VERSION`]).
    pub version: u8,
    /// Time until the next announcement, ms.
    pub interval_ms: u32,
    /// Consider the agent offline if nothing is heard for this long, ms.
    pub ttl_ms: u32,
    /// The agent is leaving: offline now.
    pub leaving: bool,
}

impl Announcement {
    /// Encode as an envelope payload.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("announcement encoding cannot fail"))
    }

    /// Decode an envelope payload.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        match postcard::take_from_bytes::<Self>(b) {
            Ok((a, [])) if a.version == ANNOUNCEMENT_VERSION => Some(a),
            _ => None,
        }
    }
}

/// Presence messages sent directly to a peer (topic announcements travel
/// by gossip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceMessage {
    /// A signed announcement of the sender, scope [`Presence::direct_scope`].
    Announce(Envelope),
}

/// Why a member went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// The failure detector's φ passed the threshold.
    Suspected,
    /// Its TTL passed without an announcement.
    Expired,
    /// It announced that it leaves.
    Left,
}

/// A change in who is online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// `peer` is online in `topic` (or, with the direct scope, as a direct peer).
    Online {
        /// The topic or [`Presence::direct_scope`].
        topic: TopicId,
        /// The agent.
        peer: PeerId,
    },
    /// `peer` went offline.
    Offline {
        /// The topic or [`Presence::direct_scope`].
        topic: TopicId,
        /// The agent.
        peer: PeerId,
        /// Why.
        reason: OfflineReason,
    },
}

/// Tuning of presence and the failure detector.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Time between announcements.
    pub interval: Duration,
    /// TTL put in announcements.
    pub ttl: Duration,
    /// φ above which a member is offline.
    pub phi_threshold: f64,
    /// Floor of the inter-arrival standard deviation.
    pub min_std_dev: Duration,
    /// Inter-arrival times remembered per member.
    pub history: usize,
    /// Time between failure-detector checks.
    pub check_interval: Duration,
    /// Members tracked per scope.
    pub max_members: usize,
    /// Offline members are forgotten after this long.
    pub forget_after: Duration,
    /// Limits for direct announcements (topic ones are checked by gossip).
    pub verifier: VerifierConfig,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            phi_threshold: 8.0,
            min_std_dev: Duration::from_millis(250),
            history: 32,
            check_interval: Duration::from_millis(100),
            max_members: 10_000,
            forget_after: Duration::from_secs(60),
            verifier: VerifierConfig::default(),
        }
    }
}

/// Counters of the presence machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Announcements sent (per topic publish and per direct peer).
    pub announced: u64,
    /// Valid announcements received.
    pub received: u64,
    /// Payloads that are not announcements.
    pub invalid_payload: u64,
    /// Direct announcements whose author is not the sending peer.
    pub wrong_sender: u64,
    /// Members refused because a scope was full.
    pub scope_full: u64,
    /// Online events.
    pub online: u64,
    /// Offline events.
    pub offline: u64,
    /// Direct announcement envelope checks.
    pub envelopes: EnvelopeStats,
}

impl PresenceStats {
    /// Every counter with its stable metric name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("presence_announced", self.announced),
            ("presence_received", self.received),
            ("presence_invalid_payload", self.invalid_payload),
            ("presence_wrong_sender", self.wrong_sender),
            ("presence_scope_full", self.scope_full),
            ("presence_online", self.online),
            ("presence_offline", self.offline),
        ];
        v.extend(self.envelopes.counters().iter().map(|(n, c)| (*n, *c)));
        v
    }
}

#[derive(Debug)]
struct Member {
    online: bool,
    last: Instant,
    /// Inter-arrival times, ms.
    history: VecDeque<f64>,
    interval_hint_ms: f64,
    expires: Instant,
    offline_since: Option<Instant>,
}

impl Member {
    fn phi(&self, now: Instant, min_std_ms: f64) -> f64 {
        let dt = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        let (mean, std) = if self.history.is_empty() {
            (self.interval_hint_ms, self.interval_hint_ms / 4.0)
        } else {
            let n = self.history.len() as f64;
            let mean = self.history.iter().sum::<f64>() / n;
            let var = self.history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt())
        };
        let std = std.max(min_std_ms);
        let y = (dt - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if dt > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        -p_later.log10()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Announce,
    Check,
}

/// The presence state machine of one agent.
#[derive(Debug)]
pub struct Presence {
    identity: Identity,
    me: PeerId,
    config: PresenceConfig,
    clock: WallClock,
    rng: StdRng,
    joined: BTreeSet<TopicId>,
    scopes: BTreeMap<TopicId, BTreeMap<PeerId, Member>>,
    direct_peers: BTreeSet<PeerId>,
    verifier: Verifier,
    seq: u64,
    out: VecDeque<PresenceOutput>,
    timers: Timers<Timer>,
    announcing: bool,
    checking: bool,
    stats: PresenceStats,
}

impl Presence {
    /// A machine for `identity` (`seed`: jitter of the announcements).
    pub fn new(identity: Identity, config: PresenceConfig, clock: WallClock, seed: u64) -> Self {
        let verifier = Verifier::new(config.verifier.clone());
        Self {
            me: identity.peer_id(),
            identity,
            seq: clock.unix_ms(clock.anchor()) << 12,
            config,
            clock,
            rng: StdRng::seed_from_u64(seed),
            joined: BTreeSet::new(),
            scopes: BTreeMap::new(),
            direct_peers: BTreeSet::new(),
            verifier,
            out: VecDeque::new(),
            timers: Timers::default(),
            announcing: false,
            checking: false,
            stats: PresenceStats::default(),
        }
    }

    /// The scope of direct-peer presence (a topic id no topic name hashes to
    /// by accident).
    pub fn direct_scope() -> TopicId {
        TopicId::new("x0x-presence-direct").derive("direct")
    }

    /// Start announcing on `topic` and tracking its members.
    pub fn join(&mut self, topic: TopicId, now: Instant) {
        if self.joined.insert(topic) {
            self.scopes.entry(topic).or_default();
            self.publish(topic, false);
            self.ensure_timers(now);
        }
    }

    /// Announce departure from `topic` and stop tracking it.
    pub fn leave(&mut self, topic: TopicId, _now: Instant) {
        if self.joined.remove(&topic) {
            self.publish(topic, true);
            self.scopes.remove(&topic);
        }
    }

    /// Announce to `peer` directly from now on, and track it.
    pub fn add_direct_peer(&mut self, peer: PeerId, now: Instant) {
        if peer != self.me && self.direct_peers.insert(peer) {
            self.scopes.entry(Self::direct_scope()).or_default();
            self.send_direct(peer, now, false);
            self.ensure_timers(now);
        }
    }

    /// Stop announcing to `peer` (tells it we leave).
    pub fn remove_direct_peer(&mut self, peer: PeerId, now: Instant) {
        if self.direct_peers.remove(&peer) {
            self.send_direct(peer, now, true);
        }
    }

    /// A presence envelope delivered by gossip on `topic` (gossip has
    /// verified signature, size and replay).
    pub fn handle_gossip(&mut self, topic: TopicId, envelope: &Envelope, now: Instant) {
        if envelope.author == self.me || envelope.channel != Channel::Presence {
            return;
        }
        if !self.joined.contains(&topic) {
            return;
        }
        self.observe(topic, envelope, now);
    }

    /// A direct presence message from `from`.
    pub fn handle(&mut self, from: PeerId, message: PresenceMessage, now: Instant) {
        let PresenceMessage::Announce(env) = message;
        if env.author != from {
            self.stats.wrong_sender += 1;
            return;
        }
        let wall = self.clock.unix_ms(now);
        if self
            .verifier
            .verify_on(&env, Some(Self::direct_scope()), wall)
            .is_err()
            || env.channel != Channel::Presence
        {
            return;
        }
        self.scopes.entry(Self::direct_scope()).or_default();
        self.observe(Self::direct_scope(), &env, now);
        self.ensure_timers(now);
    }

    fn observe(&mut self, topic: TopicId, env: &Envelope, now: Instant) {
        let Some(ann) = Announcement::from_bytes(&env.payload) else {
            self.stats.invalid_payload += 1;
            return;
        };
        self.stats.received += 1;
        let peer = env.author;
        let Some(scope) = self.scopes.get_mut(&topic) else {
            return;
        };
        if ann.leaving {
            if let Some(m) = scope.remove(&peer)
                && m.online
            {
                self.stats.offline += 1;
                self.out.push_back(Output::Event(PresenceEvent::Offline {
                    topic,
                    peer,
                    reason: OfflineReason::Left,
                }));
            }
            return;
        }
        let ttl = Duration::from_millis(u64::from(ann.ttl_ms).max(1));
        if !scope.contains_key(&peer) && scope.len() >= self.config.max_members {
            self.stats.scope_full += 1;
            return;
        }
        let m = scope.entry(peer).or_insert_with(|| Member {
            online: false,
            last: now,
            history: VecDeque::new(),
            interval_hint_ms: f64::from(ann.interval_ms.max(1)),
            expires: now + ttl,
            offline_since: None,
        });
        if m.online {
            let dt = now.saturating_duration_since(m.last).as_secs_f64() * 1000.0;
            m.history.push_back(dt);
            while m.history.len() > self.config.history {
                m.history.pop_front();
            }
        } else {
            // (Back) online: start a fresh history.
            m.online = true;
            m.history.clear();
            m.offline_since = None;
            self.stats.online += 1;
            self.out
                .push_back(Output::Event(PresenceEvent::Online { topic, peer }));
        }
        m.interval_hint_ms = f64::from(ann.interval_ms.max(1));
        m.last = now;
        m.expires = now + ttl;
    }

    /// Run the timers due at `now`.
    pub fn handle_timer(&mut self, now: Instant) {
        while let Some((_, t)) = self.timers.pop_due(now) {
            match t {
                Timer::Announce => {
                    for topic in self.joined.clone() {
                        self.publish(topic, false);
                    }
                    for peer in self.direct_peers.clone() {
                        self.send_direct(peer, now, false);
                    }
                    let f = self.rng.random_range(0.95..1.05);
                    let at = now + self.config.interval.mul_f64(f);
                    self.set_timer(at, Timer::Announce);
                }
                Timer::Check => {
                    self.check(now);
                    let at = now + self.config.check_interval;
                    self.set_timer(at, Timer::Check);
                }
            }
        }
    }

    fn check(&mut self, now: Instant) {
        let min_std = self.config.min_std_dev.as_secs_f64() * 1000.0;
        for (&topic, scope) in self.scopes.iter_mut() {
            scope.retain(|_, m| {
                m.offline_since
                    .is_none_or(|t| now.saturating_duration_since(t) < self.config.forget_after)
            });
            for (&peer, m) in scope.iter_mut() {
                if !m.online {
                    continue;
                }
                let reason = if now >= m.expires {
                    Some(OfflineReason::Expired)
                } else if m.phi(now, min_std) > self.config.phi_threshold {
                    Some(OfflineReason::Suspected)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    m.online = false;
                    m.offline_since = Some(now);
                    self.stats.offline += 1;
                    self.out.push_back(Output::Event(PresenceEvent::Offline {
                        topic,
                        peer,
                        reason,
                    }));
                }
            }
        }
    }

    fn announcement(&self, leaving: bool) -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            interval_ms: self.config.interval.as_millis().min(u32::MAX as u128) as u32,
            ttl_ms: self.config.ttl.as_millis().min(u32::MAX as u128) as u32,
            leaving,
        }
    }

    fn publish(&mut self, topic: TopicId, leaving: bool) {
        self.stats.announced += 1;
        let payload = self.announcement(leaving).to_bytes();
        self.out.push_back(Output::Publish {
            topic,
            channel: Channel::Presence,
            payload,
        });
    }

    fn send_direct(&mut self, peer: PeerId, now: Instant, leaving: bool) {
        self.stats.announced += 1;
        let env = Envelope::sign(
            &self.identity,
            Self::direct_scope(),
            Channel::Presence,
            self.seq,
            self.clock.unix_ms(now),
            self.announcement(leaving).to_bytes(),
        );
        self.seq += 1;
        self.out.push_back(Output::Send {
            to: peer,
            message: PresenceMessage::Announce(env),
        });
    }

    fn ensure_timers(&mut self, now: Instant) {
        if !self.announcing {
            self.announcing = true;
            let f = self.rng.random_range(0.5..1.0);
            let at = now + self.config.interval.mul_f64(f);
            self.set_timer(at, Timer::Announce);
        }
        if !self.checking {
            self.checking = true;
            let at = now + self.config.check_interval;
            self.set_timer(at, Timer::Check);
        }
    }

    fn set_timer(&mut self, at: Instant, t: Timer) {
        self.timers.insert(at, t);
        self.out.push_back(Output::SetTimer { at });
    }

    /// The agents online in `topic` (or [`Presence::direct_scope`]), in id order.
    pub fn presence(&self, topic: &TopicId) -> Vec<PeerId> {
        self.scopes
            .get(topic)
            .map(|s| {
                s.iter()
                    .filter(|(_, m)| m.online)
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current φ of `peer` in `topic`, if tracked and online.
    pub fn phi(&self, topic: &TopicId, peer: &PeerId, now: Instant) -> Option<f64> {
        let m = self.scopes.get(topic)?.get(peer)?;
        m.online
            .then(|| m.phi(now, self.config.min_std_dev.as_secs_f64() * 1000.0))
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<PresenceOutput> {
        self.out.pop_front()
    }

    /// The earliest pending timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The counters.
    pub fn stats(&self) -> PresenceStats {
        let mut s = self.stats;
        s.envelopes = *self.verifier.stats();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::testutil::identity;

    const T0: u64 = 1_700_000_000_000;

    fn machine(n: u64, start: Instant) -> Presence {
        Presence::new(
            identity(n),
            PresenceConfig::default(),
            WallClock::new(start, T0),
            n,
        )
    }

    fn announce(p: &Presence, seq: u64, at: Instant, leaving: bool) -> Envelope {
        Envelope::sign(
            &p.identity,
            TopicId::new("t"),
            Channel::Presence,
            seq,
            p.clock.unix_ms(at),
            p.announcement(leaving).to_bytes(),
        )
    }

    fn events(p: &mut Presence) -> Vec<PresenceEvent> {
        let mut v = vec![];
        while let Some(o) = p.poll() {
            if let Output::Event(e) = o {
                v.push(e);
            }
        }
        v
    }

    #[test]
    fn regular_announcements_keep_a_member_online_and_silence_takes_it_offline() {
        let t0 = Instant::now();
        let topic = TopicId::new("t");
        let mut me = machine(1, t0);
        let other = machine(2, t0);
        me.join(topic, t0);
        for k in 0..20u64 {
            let at = t0 + Duration::from_millis(1000 * k + (k * 37) % 80);
            me.handle_gossip(topic, &announce(&other, k, at, false), at);
            me.handle_timer(at);
        }
        let ev = events(&mut me);
        assert_eq!(
            ev,
            vec![PresenceEvent::Online {
                topic,
                peer: other.me
            }]
        );
        assert_eq!(me.presence(&topic), vec![other.me]);
        let last = t0 + Duration::from_millis(19_000 + (19 * 37) % 80);
        // One missed announcement is tolerated...
        me.handle_timer(last + Duration::from_millis(2000));
        assert!(events(&mut me).is_empty(), "2 s gap must not trip phi");
        assert!(
            me.phi(&topic, &other.me, last + Duration::from_millis(2000))
                .unwrap()
                < 8.0
        );
        // ... a crash is detected within 2.5 s of the last announcement.
        let mut detected = None;
        for ms in (2000..5000).step_by(100) {
            me.handle_timer(last + Duration::from_millis(ms));
            if !events(&mut me).is_empty() {
                detected = Some(ms);
                break;
            }
        }
        let ms = detected.expect("detected");
        assert!((2000..=2600).contains(&ms), "detected after {ms} ms");
        assert!(me.presence(&topic).is_empty());
        assert_eq!(me.stats().offline, 1);
    }

    #[test]
    fn leaving_is_immediate_and_a_returning_member_is_online_again() {
        let t0 = Instant::now();
        let topic = TopicId::new("t");
        let mut me = machine(1, t0);
        let other = machine(2, t0);
        me.join(topic, t0);
        me.handle_gossip(topic, &announce(&other, 1, t0, false), t0);
        me.handle_gossip(topic, &announce(&other, 2, t0, true), t0);
        let ev = events(&mut me);
        assert_eq!(
            ev.last(),
            Some(&PresenceEvent::Offline {
                topic,
                peer: other.me,
                reason: OfflineReason::Left
            })
        );
        let t1 = t0 + Duration::from_secs(1);
        me.handle_gossip(topic, &announce(&other, 3, t1, false), t1);
        assert_eq!(
            events(&mut me),
            vec![PresenceEvent::Online {
                topic,
                peer: other.me
            }]
        );
    }

    #[test]
    fn ttl_bounds_silence_even_with_a_slow_history() {
        let t0 = Instant::now();
        let topic = TopicId::new("t");
        let mut me = Presence::new(
            identity(1),
            PresenceConfig {
                phi_threshold: 1e9,
                ..PresenceConfig::default()
            },
            WallClock::new(t0, T0),
            1,
        );
        let other = machine(2, t0);
        me.join(topic, t0);
        me.handle_gossip(topic, &announce(&other, 1, t0, false), t0);
        me.handle_timer(t0 + Duration::from_millis(4900));
        assert_eq!(me.presence(&topic).len(), 1);
        me.handle_timer(t0 + Duration::from_millis(5000));
        assert!(me.presence(&topic).is_empty());
        assert!(events(&mut me).contains(&PresenceEvent::Offline {
            topic,
            peer: other.me,
            reason: OfflineReason::Expired
        }));
    }

    #[test]
    fn direct_announcements_are_verified_and_bound_to_the_sender() {
        let t0 = Instant::now();
        let mut a = machine(1, t0);
        let mut b = machine(2, t0);
        a.add_direct_peer(b.me, t0);
        let msg = loop {
            match a.poll() {
                Some(Output::Send { to, message }) => {
                    assert_eq!(to, b.me);
                    break message;
                }
                Some(_) => continue,
                None => panic!("no direct announcement"),
            }
        };
        // Relayed by a third party: refused.
        b.handle(identity(3).peer_id(), msg.clone(), t0);
        assert_eq!(b.stats().wrong_sender, 1);
        // Tampered: refused.
        let PresenceMessage::Announce(mut env) = msg.clone();
        env.seq += 1;
        b.handle(a.me, PresenceMessage::Announce(env), t0);
        assert_eq!(b.stats().envelopes.bad_signature, 1);
        // Genuine: accepted once, replay refused.
        b.handle(a.me, msg.clone(), t0);
        b.handle(a.me, msg, t0);
        assert_eq!(b.stats().envelopes.replay, 1);
        assert_eq!(b.presence(&Presence::direct_scope()), vec![a.me]);
        // A garbage payload is counted.
        let bad = Envelope::sign(
            &a.identity,
            Presence::direct_scope(),
            Channel::Presence,
            a.seq + 10,
            T0,
            Bytes::from_static(b"\xff\xff"),
        );
        b.handle(a.me, PresenceMessage::Announce(bad), t0);
        assert_eq!(b.stats().invalid_payload, 1);
    }

    #[test]
    fn random_payloads_never_panic() {
        for n in 0..2000u32 {
            let b = n.to_le_bytes();
            let _ = Announcement::from_bytes(&b[..(n % 5) as usize]);
        }
    }
}
