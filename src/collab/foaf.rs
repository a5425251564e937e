//! Friend-of-a-friend discovery: find an agent's signed record by asking
//! neighbours, who ask theirs.
//!
//! [`Foaf::find`] sends a [`FoafMessage::Query`] to up to `fanout` (≤ 3)
//! random neighbours with `ttl` (≤ 3); an agent that is the target, or has
//! it as a neighbour, answers with the target's [`SignedAgentRecord`];
//! otherwise it forwards to up to 3 of its own neighbours with `ttl − 1`,
//! so at most 3 + 9 + 27 = 39 agents are asked. Replies travel back along
//! the query's path, hop by hop.
//!
//! Privacy and abuse resistance, unlike upstream's design (the asker's id
//! in clear, replies straight to it, so anyone could make 39 responders
//! flood a victim):
//!
//! - **Fresh ids per hop.** Each hop draws a new random query id and keeps
//!   `new id → (previous hop, previous id)`; a query names only its
//!   target, ttl, and the hop that sent it. The asker's id is seen by its
//!   first hop only (which knows it anyway: it is the connection's peer).
//! - **Hop signatures.** Every query and reply is signed by the hop that
//!   sends it, over its recipient and a timestamp: a message cannot be
//!   forged for another sender, reflected to another recipient, or replayed
//!   later (a seen-cache of `(sender, id)` within the timestamp window).
//! - **Neighbours only, rate limited.** Queries are accepted only from
//!   neighbours, at most `rate_per_s` (burst `burst`) per neighbour (token
//!   bucket); replies only for an id this agent sent to that very peer.
//! - **Self-signed records.** A record is accepted only when signed by the
//!   agent it describes and it is the target asked for.
//! - **Aggregation.** A query for a target already being searched (with at
//!   least as much ttl left) joins that search instead of fanning out
//!   again, which also stops loops.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use x0x_proto::identity::Signature;
use x0x_proto::{Identity, PeerId};

use super::Output;
use super::util::{SignatureCheck, TimedSet, Timers, TokenBucket, WallClock, sample};

/// Largest ttl of a query.
pub const MAX_TTL: u8 = 3;
/// Largest number of neighbours asked per hop.
pub const MAX_FANOUT: usize = 3;
/// Most addresses in a record.
pub const MAX_RECORD_ADDRS: usize = 8;
/// Version of [`AgentRecordBody`].
pub const RECORD_VERSION: u8 = 1;

const RECORD_DOMAIN: &[u8] = b"x0x-foaf-record-v1\0";
const QUERY_DOMAIN: &[u8] = b"x0x-foaf-query-v1\0";
const REPLY_DOMAIN: &[u8] = b"x0x-foaf-reply-v1\0";

/// What [`Foaf::poll`] returns.
pub type FoafOutput = Output<FoafMessage, FoafEvent>;

/// Where an agent can be reached, as it says itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecordBody {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u8,
    /// The agent described (and signer).
    pub peer: PeerId,
    /// Its addresses (at most [`MAX_RECORD_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
    /// When it signed this, ms since the Unix epoch (its clock).
    pub timestamp_ms: u64,
}

/// An [`AgentRecordBody`] signed by the agent it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAgentRecord {
    /// The record.
    pub body: AgentRecordBody,
    /// `body.peer`'s signature.
    pub signature: Signature,
}

impl SignedAgentRecord {
    /// A record of `identity` at `addrs`, signed now.
    pub fn sign(identity: &Identity, mut addrs: Vec<SocketAddr>, timestamp_ms: u64) -> Self {
        addrs.truncate(MAX_RECORD_ADDRS);
        let body = AgentRecordBody {
            version: RECORD_VERSION,
            peer: identity.peer_id(),
            addrs,
            timestamp_ms,
        };
        let signature = identity.sign(&signed(RECORD_DOMAIN, &body));
        Self { body, signature }
    }

    /// Whether the record is well formed and signed by the agent it describes.
    pub fn verify(&self, check: &SignatureCheck) -> bool {
        self.body.version == RECORD_VERSION
            && self.body.addrs.len() <= MAX_RECORD_ADDRS
            && check.check(
                &self.body.peer,
                &signed(RECORD_DOMAIN, &self.body),
                &self.signature,
            )
    }
}

fn signed<T: Serialize>(domain: &[u8], body: &T) -> Vec<u8> {
    postcard::to_extend(body, domain.to_vec()).expect("encoding cannot fail")
}

/// A query, as one hop sends it to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryBody {
    /// Random id chosen by `sender` for this hop.
    pub qid: u64,
    /// The agent looked for.
    pub target: PeerId,
    /// Hops left, 1..=[`MAX_TTL`].
    pub ttl: u8,
    /// The hop sending this (the signer).
    pub sender: PeerId,
    /// The hop it is for.
    pub recipient: PeerId,
    /// `sender`'s clock, ms since the Unix epoch.
    pub sent_ms: u64,
}

/// A reply, as one hop sends it back to the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyBody {
    /// The id the recipient used in its query to the sender.
    pub qid: u64,
    /// The target's record, if found.
    pub record: Option<SignedAgentRecord>,
    /// Hops from the sender to the target.
    pub distance: u8,
    /// The hop sending this (the signer).
    pub sender: PeerId,
    /// The hop it is for.
    pub recipient: PeerId,
    /// `sender`'s clock, ms since the Unix epoch.
    pub sent_ms: u64,
}

/// FOAF wire messages, each signed by the hop that sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FoafMessage {
    /// A lookup.
    Query {
        /// What is asked.
        body: QueryBody,
        /// `body.sender`'s signature.
        signature: Signature,
    },
    /// The answer to a lookup.
    Reply {
        /// What is answered.
        body: ReplyBody,
        /// `body.sender`'s signature.
        signature: Signature,
    },
    /// The sender's own record, sent to each new neighbour (and again when
    /// its addresses change); kept only if signed by the sender itself.
    Record(SignedAgentRecord),
}

/// The result of a [`Foaf::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoafEvent {
    /// The target's record (verified: signed by the target).
    Found {
        /// Who was looked for.
        target: PeerId,
        /// Its record.
        record: SignedAgentRecord,
        /// Hops from this agent to the target along the path found.
        distance: u8,
    },
    /// Nobody within reach answered with the target's record.
    NotFound {
        /// Who was looked for.
        target: PeerId,
    },
}

/// Tuning of FOAF discovery.
#[derive(Debug, Clone)]
pub struct FoafConfig {
    /// Ttl of a query this agent starts (capped at [`MAX_TTL`]).
    pub ttl: u8,
    /// Neighbours asked per hop (capped at [`MAX_FANOUT`]).
    pub fanout: usize,
    /// Wait per hop of ttl left before giving up on a search.
    pub hop_timeout: Duration,
    /// Queries accepted per second per neighbour.
    pub rate_per_s: f64,
    /// Burst of queries accepted per neighbour.
    pub burst: f64,
    /// Accepted clock difference for hop timestamps (ms); also how long
    /// `(sender, id)` pairs are remembered.
    pub max_skew_ms: u64,
    /// Most `(sender, id)` pairs remembered.
    pub seen_capacity: usize,
    /// Most searches in progress (beyond, queries are answered "not found").
    pub max_searches: usize,
    /// Oldest record accepted (ms).
    pub max_record_age_ms: u64,
    /// The signature check.
    pub signature_check: SignatureCheck,
}

impl Default for FoafConfig {
    fn default() -> Self {
        Self {
            ttl: MAX_TTL,
            fanout: MAX_FANOUT,
            hop_timeout: Duration::from_millis(500),
            rate_per_s: 5.0,
            burst: 10.0,
            max_skew_ms: 60_000,
            seen_capacity: 64 * 1024,
            max_searches: 1024,
            max_record_age_ms: 24 * 3600 * 1000,
            signature_check: SignatureCheck::default(),
        }
    }
}

/// Counters of FOAF discovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoafStats {
    /// Valid queries handled.
    pub queries: u64,
    /// Queries forwarded to further neighbours (one per search).
    pub forwarded: u64,
    /// Queries answered from this agent's own knowledge.
    pub answered: u64,
    /// Queries joined to a search already in progress.
    pub merged: u64,
    /// Valid replies handled.
    pub replies: u64,
    /// Queries or replies whose hop signature does not verify.
    pub bad_signature: u64,
    /// Queries or replies whose sender is not the transport peer, or whose
    /// recipient is not this agent.
    pub misdirected: u64,
    /// Hop timestamps outside the accepted window.
    pub stale: u64,
    /// Queries with a ttl of 0 or over [`MAX_TTL`].
    pub bad_ttl: u64,
    /// Queries seen before (`(sender, id)` in the seen-cache).
    pub replayed: u64,
    /// Queries over a neighbour's rate.
    pub rate_limited: u64,
    /// Queries from an agent that is not a neighbour.
    pub not_neighbor: u64,
    /// Replies to no query sent to that peer (replays included).
    pub unsolicited: u64,
    /// Replies to a search already finished.
    pub late: u64,
    /// Records not signed by the target, or not the target's.
    pub bad_record: u64,
    /// Lookups of this agent that found the target.
    pub found: u64,
    /// Lookups of this agent that did not.
    pub not_found: u64,
}

impl FoafStats {
    /// Every counter with its stable metric name.
    pub fn counters(&self) -> [(&'static str, u64); 17] {
        [
            ("foaf_queries", self.queries),
            ("foaf_forwarded", self.forwarded),
            ("foaf_answered", self.answered),
            ("foaf_merged", self.merged),
            ("foaf_replies", self.replies),
            ("foaf_dropped_bad_signature", self.bad_signature),
            ("foaf_dropped_misdirected", self.misdirected),
            ("foaf_dropped_stale", self.stale),
            ("foaf_dropped_bad_ttl", self.bad_ttl),
            ("foaf_dropped_replayed", self.replayed),
            ("foaf_dropped_rate_limited", self.rate_limited),
            ("foaf_dropped_not_neighbor", self.not_neighbor),
            ("foaf_dropped_unsolicited", self.unsolicited),
            ("foaf_late_replies", self.late),
            ("foaf_bad_record", self.bad_record),
            ("foaf_found", self.found),
            ("foaf_not_found", self.not_found),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requester {
    Local,
    Remote { peer: PeerId, qid: u64 },
}

#[derive(Debug)]
struct Search {
    target: PeerId,
    /// Ttl of the queries this search sent.
    ttl: u8,
    requesters: Vec<Requester>,
    outstanding: BTreeSet<u64>,
    sent: Vec<u64>,
    done: bool,
}

/// The FOAF state machine of one agent.
#[derive(Debug)]
pub struct Foaf {
    identity: Identity,
    me: PeerId,
    config: FoafConfig,
    clock: WallClock,
    rng: StdRng,
    neighbors: BTreeSet<PeerId>,
    records: HashMap<PeerId, SignedAgentRecord>,
    own: Option<SignedAgentRecord>,
    buckets: HashMap<PeerId, TokenBucket>,
    seen: TimedSet<(PeerId, u64)>,
    searches: HashMap<u64, Search>,
    by_target: HashMap<PeerId, u64>,
    downstream: HashMap<u64, (u64, PeerId)>,
    next_key: u64,
    out: VecDeque<FoafOutput>,
    timers: Timers<u64>,
    stats: FoafStats,
}

impl Foaf {
    /// A machine for `identity`; `seed` drives the random choices (query
    /// ids, neighbours asked).
    pub fn new(identity: Identity, config: FoafConfig, clock: WallClock, seed: u64) -> Self {
        let seen = TimedSet::new(
            config.seen_capacity,
            Duration::from_millis(config.max_skew_ms.saturating_mul(2)),
        );
        Self {
            me: identity.peer_id(),
            identity,
            config,
            clock,
            rng: StdRng::seed_from_u64(seed),
            neighbors: BTreeSet::new(),
            records: HashMap::new(),
            own: None,
            buckets: HashMap::new(),
            seen,
            searches: HashMap::new(),
            by_target: HashMap::new(),
            downstream: HashMap::new(),
            next_key: 0,
            out: VecDeque::new(),
            timers: Timers::default(),
            stats: FoafStats::default(),
        }
    }

    /// Sign this agent's own record (given when it is the target, and sent
    /// to every neighbour).
    pub fn set_own_addrs(&mut self, addrs: Vec<SocketAddr>, now: Instant) {
        let own = SignedAgentRecord::sign(&self.identity, addrs, self.clock.unix_ms(now));
        for &peer in &self.neighbors {
            self.out.push_back(Output::Send {
                to: peer,
                message: FoafMessage::Record(own.clone()),
            });
        }
        self.own = Some(own);
    }

    /// This agent's signed record, if set.
    pub fn own_record(&self) -> Option<&SignedAgentRecord> {
        self.own.as_ref()
    }

    /// `peer` is now a neighbour (a direct connection), with its record if
    /// known. This agent's own record (if set) is sent to it.
    pub fn add_neighbor(&mut self, peer: PeerId, record: Option<SignedAgentRecord>) {
        if peer == self.me {
            return;
        }
        if self.neighbors.insert(peer)
            && let Some(own) = self.own.clone()
        {
            self.out.push_back(Output::Send {
                to: peer,
                message: FoafMessage::Record(own),
            });
        }
        if let Some(r) = record {
            self.learn_record(r);
        }
    }

    /// `peer` is no longer a neighbour.
    pub fn remove_neighbor(&mut self, peer: &PeerId) {
        self.neighbors.remove(peer);
        self.records.remove(peer);
        self.buckets.remove(peer);
    }

    /// Keep a neighbour's self-signed record (newest wins); `false` if refused.
    pub fn learn_record(&mut self, record: SignedAgentRecord) -> bool {
        if !record.verify(&self.config.signature_check) {
            self.stats.bad_record += 1;
            return false;
        }
        let peer = record.body.peer;
        if self
            .records
            .get(&peer)
            .is_some_and(|r| r.body.timestamp_ms >= record.body.timestamp_ms)
        {
            return true;
        }
        self.records.insert(peer, record);
        true
    }

    /// The current neighbours.
    pub fn neighbors(&self) -> Vec<PeerId> {
        self.neighbors.iter().copied().collect()
    }

    fn known(&self, target: &PeerId) -> Option<(SignedAgentRecord, u8)> {
        if *target == self.me {
            return self.own.clone().map(|r| (r, 0));
        }
        if self.neighbors.contains(target) {
            return self.records.get(target).cloned().map(|r| (r, 1));
        }
        None
    }

    /// Look for `target`. The answer is a [`FoafEvent`].
    pub fn find(&mut self, target: PeerId, now: Instant) {
        if let Some((record, distance)) = self.known(&target) {
            self.stats.found += 1;
            self.out.push_back(Output::Event(FoafEvent::Found {
                target,
                record,
                distance,
            }));
            return;
        }
        let ttl = self.config.ttl.clamp(1, MAX_TTL);
        if let Some(&key) = self.by_target.get(&target)
            && self
                .searches
                .get(&key)
                .is_some_and(|s| !s.done && s.ttl >= ttl)
        {
            self.searches
                .get_mut(&key)
                .unwrap()
                .requesters
                .push(Requester::Local);
            return;
        }
        self.start_search(target, ttl, Requester::Local, None, now);
    }

    fn start_search(
        &mut self,
        target: PeerId,
        ttl: u8,
        requester: Requester,
        exclude: Option<PeerId>,
        now: Instant,
    ) {
        let candidates: Vec<PeerId> = self
            .neighbors
            .iter()
            .copied()
            .filter(|p| Some(*p) != exclude && *p != target)
            .collect();
        let chosen = sample(
            &candidates,
            self.config.fanout.min(MAX_FANOUT),
            &mut self.rng,
        );
        if chosen.is_empty() || self.searches.len() >= self.config.max_searches {
            self.answer(requester, None, target, self.clock.unix_ms(now));
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let mut search = Search {
            target,
            ttl,
            requesters: vec![requester],
            outstanding: BTreeSet::new(),
            sent: Vec::new(),
            done: false,
        };
        let sent_ms = self.clock.unix_ms(now);
        for peer in chosen {
            let qid = loop {
                let q: u64 = self.rng.random();
                if !self.downstream.contains_key(&q) {
                    break q;
                }
            };
            self.downstream.insert(qid, (key, peer));
            search.outstanding.insert(qid);
            search.sent.push(qid);
            let body = QueryBody {
                qid,
                target,
                ttl,
                sender: self.me,
                recipient: peer,
                sent_ms,
            };
            let signature = self.identity.sign(&signed(QUERY_DOMAIN, &body));
            self.out.push_back(Output::Send {
                to: peer,
                message: FoafMessage::Query { body, signature },
            });
        }
        if requester != Requester::Local {
            self.stats.forwarded += 1;
        }
        self.searches.insert(key, search);
        self.by_target.insert(target, key);
        // The requester's own deadline is one hop longer than ours.
        let at = now + self.config.hop_timeout * u32::from(ttl);
        self.timers.insert(at, key);
        self.out.push_back(Output::SetTimer { at });
    }

    fn answer(
        &mut self,
        requester: Requester,
        found: Option<(SignedAgentRecord, u8)>,
        target: PeerId,
        now_ms: u64,
    ) {
        match requester {
            Requester::Local => match found {
                Some((record, distance)) => {
                    self.stats.found += 1;
                    self.out.push_back(Output::Event(FoafEvent::Found {
                        target,
                        record,
                        distance,
                    }));
                }
                None => {
                    self.stats.not_found += 1;
                    self.out
                        .push_back(Output::Event(FoafEvent::NotFound { target }));
                }
            },
            Requester::Remote { peer, qid } => {
                let (record, distance) = match found {
                    Some((r, d)) => (Some(r), d),
                    None => (None, 0),
                };
                let body = ReplyBody {
                    qid,
                    record,
                    distance,
                    sender: self.me,
                    recipient: peer,
                    sent_ms: now_ms,
                };
                let signature = self.identity.sign(&signed(REPLY_DOMAIN, &body));
                self.out.push_back(Output::Send {
                    to: peer,
                    message: FoafMessage::Reply { body, signature },
                });
            }
        }
    }

    /// Common checks of a hop message; `true` if it may be processed.
    #[allow(clippy::too_many_arguments)]
    fn check_hop(
        &mut self,
        from: PeerId,
        sender: PeerId,
        recipient: PeerId,
        sent_ms: u64,
        bytes: Vec<u8>,
        signature: &Signature,
        now_ms: u64,
    ) -> bool {
        if sender != from || recipient != self.me {
            self.stats.misdirected += 1;
            return false;
        }
        if !self
            .config
            .signature_check
            .check(&sender, &bytes, signature)
        {
            self.stats.bad_signature += 1;
            return false;
        }
        if sent_ms.abs_diff(now_ms) > self.config.max_skew_ms {
            self.stats.stale += 1;
            return false;
        }
        true
    }

    /// A message from `from` (authenticated by the transport).
    pub fn handle(&mut self, from: PeerId, message: FoafMessage, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        match message {
            FoafMessage::Query { body, signature } => {
                let bytes = signed(QUERY_DOMAIN, &body);
                if !self.check_hop(
                    from,
                    body.sender,
                    body.recipient,
                    body.sent_ms,
                    bytes,
                    &signature,
                    now_ms,
                ) {
                    return;
                }
                self.on_query(from, body, now);
            }
            FoafMessage::Reply { body, signature } => {
                let bytes = signed(REPLY_DOMAIN, &body);
                if !self.check_hop(
                    from,
                    body.sender,
                    body.recipient,
                    body.sent_ms,
                    bytes,
                    &signature,
                    now_ms,
                ) {
                    return;
                }
                self.on_reply(from, body, now_ms);
            }
            FoafMessage::Record(record) => {
                if record.body.peer != from || !self.neighbors.contains(&from) {
                    self.stats.misdirected += 1;
                    return;
                }
                self.learn_record(record);
            }
        }
    }

    fn on_query(&mut self, from: PeerId, q: QueryBody, now: Instant) {
        if q.ttl == 0 || q.ttl > MAX_TTL {
            self.stats.bad_ttl += 1;
            return;
        }
        if !self.neighbors.contains(&from) {
            self.stats.not_neighbor += 1;
            return;
        }
        if !self.seen.insert((from, q.qid), now) {
            self.stats.replayed += 1;
            return;
        }
        let (rate, burst) = (self.config.rate_per_s, self.config.burst);
        if !self
            .buckets
            .entry(from)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(now)
        {
            self.stats.rate_limited += 1;
            return;
        }
        self.stats.queries += 1;
        let requester = Requester::Remote {
            peer: from,
            qid: q.qid,
        };
        let now_ms = self.clock.unix_ms(now);
        if let Some(found) = self.known(&q.target) {
            self.stats.answered += 1;
            self.answer(requester, Some(found), q.target, now_ms);
            return;
        }
        if q.ttl == 1 {
            self.answer(requester, None, q.target, now_ms);
            return;
        }
        let ttl = q.ttl - 1;
        if let Some(&key) = self.by_target.get(&q.target)
            && let Some(s) = self.searches.get_mut(&key)
            && !s.done
            && s.ttl >= ttl
        {
            self.stats.merged += 1;
            s.requesters.push(requester);
            return;
        }
        self.start_search(q.target, ttl, requester, Some(from), now);
    }

    fn on_reply(&mut self, from: PeerId, r: ReplyBody, now_ms: u64) {
        let Some(&(key, asked)) = self.downstream.get(&r.qid) else {
            self.stats.unsolicited += 1;
            return;
        };
        if asked != from {
            self.stats.unsolicited += 1;
            return;
        }
        self.downstream.remove(&r.qid);
        let Some(search) = self.searches.get_mut(&key) else {
            self.stats.late += 1;
            return;
        };
        self.stats.replies += 1;
        search.outstanding.remove(&r.qid);
        if search.done {
            self.stats.late += 1;
            return;
        }
        let target = search.target;
        let found = match r.record {
            Some(rec)
                if rec.body.peer == target
                    && rec.verify(&self.config.signature_check)
                    && rec.body.timestamp_ms
                        >= now_ms.saturating_sub(self.config.max_record_age_ms)
                    && rec.body.timestamp_ms <= now_ms.saturating_add(self.config.max_skew_ms) =>
            {
                Some((rec, r.distance.saturating_add(1)))
            }
            Some(_) => {
                self.stats.bad_record += 1;
                None
            }
            None => None,
        };
        if found.is_some() || search.outstanding.is_empty() {
            self.finish(key, found, now_ms);
        }
    }

    fn finish(&mut self, key: u64, found: Option<(SignedAgentRecord, u8)>, now_ms: u64) {
        let Some(search) = self.searches.get_mut(&key) else {
            return;
        };
        if search.done {
            return;
        }
        search.done = true;
        let target = search.target;
        let requesters = std::mem::take(&mut search.requesters);
        if self.by_target.get(&target) == Some(&key) {
            self.by_target.remove(&target);
        }
        for req in requesters {
            self.answer(req, found.clone(), target, now_ms);
        }
    }

    /// Run the timers due at `now`: searches past their deadline finish
    /// "not found" and are forgotten.
    pub fn handle_timer(&mut self, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        while let Some((_, key)) = self.timers.pop_due(now) {
            self.finish(key, None, now_ms);
            if let Some(s) = self.searches.remove(&key) {
                for q in s.sent {
                    self.downstream.remove(&q);
                }
            }
        }
        self.seen.expire(now);
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<FoafOutput> {
        self.out.pop_front()
    }

    /// The earliest pending timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The counters.
    pub fn stats(&self) -> FoafStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::sim::{Sim, SimAction, SimNode, percentile};
    use crate::collab::testutil::{identity, memo_check};
    use std::cell::RefCell;
    use std::rc::Rc;

    const T0: u64 = 1_700_000_000_000;

    struct FNode {
        f: Foaf,
        events: Vec<(FoafEvent, Instant)>,
    }

    impl SimNode for FNode {
        type Msg = FoafMessage;
        fn peer_id(&self) -> PeerId {
            self.f.me
        }
        fn on_message(&mut self, from: PeerId, msg: FoafMessage, now: Instant) {
            self.f.handle(from, msg, now);
        }
        fn on_timer(&mut self, now: Instant) {
            self.f.handle_timer(now);
        }
        fn on_peer_down(&mut self, peer: PeerId, _now: Instant) {
            self.f.remove_neighbor(&peer);
        }
        fn drain(&mut self, now: Instant, out: &mut Vec<SimAction<FoafMessage>>) {
            while let Some(o) = self.f.poll() {
                match o {
                    Output::Send { to, message } => out.push(SimAction::Send { to, msg: message }),
                    Output::SetTimer { at } => out.push(SimAction::Timer(at)),
                    Output::Event(e) => self.events.push((e, now)),
                    _ => {}
                }
            }
        }
    }

    fn config() -> FoafConfig {
        FoafConfig {
            signature_check: memo_check(),
            ..FoafConfig::default()
        }
    }

    /// A message log: (from, to, encoded message).
    type Log = Rc<RefCell<Vec<(usize, usize, Vec<u8>)>>>;

    fn network(n: usize, edges: &[(usize, usize)], seed: u64) -> (Sim<FNode>, Log) {
        let start = Instant::now();
        let mut nodes: Vec<FNode> = (0..n as u64)
            .map(|i| FNode {
                f: Foaf::new(identity(i), config(), WallClock::new(start, T0), i ^ seed),
                events: vec![],
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.f.set_own_addrs(
                vec![SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16))],
                start,
            );
        }
        let ids: Vec<PeerId> = nodes.iter().map(|n| n.f.me).collect();
        for &(a, b) in edges {
            // Records are exchanged on the wire (`FoafMessage::Record`).
            nodes[a].f.add_neighbor(ids[b], None);
            nodes[b].f.add_neighbor(ids[a], None);
        }
        let mut sim = Sim::new(nodes, seed, start);
        for i in 0..n {
            sim.flush(i);
        }
        sim.run_for(Duration::from_secs(1));
        for node in &sim.nodes {
            assert_eq!(node.f.records.len(), node.f.neighbors.len());
        }
        let log: Log = Rc::default();
        let l = log.clone();
        sim.observer = Some(Box::new(move |from, to, m: &FoafMessage, _| {
            l.borrow_mut()
                .push((from, to, postcard::to_stdvec(m).unwrap()));
        }));
        (sim, log)
    }

    /// Run a lookup from `asker` for `target`; returns the result, its
    /// latency, and checks what the wire revealed.
    fn lookup(
        sim: &mut Sim<FNode>,
        log: &Log,
        asker: usize,
        target: usize,
    ) -> (FoafEvent, Duration) {
        log.borrow_mut().clear();
        let t = sim.nodes[target].f.me;
        let asker_id = sim.nodes[asker].f.me;
        let before = sim.nodes[asker].events.len();
        let start = sim.now();
        sim.with_node(asker, |n, now| n.f.find(t, now));
        sim.run_for(Duration::from_secs(3));
        let (ev, at) = sim.nodes[asker].events[before].clone();
        assert_eq!(sim.nodes[asker].events.len(), before + 1, "one answer");
        // Instrumented wire: the asker's id appears only in messages
        // between the asker and its first hops.
        let first_hops: BTreeSet<usize> = log
            .borrow()
            .iter()
            .filter(|(from, _, _)| *from == asker)
            .map(|(_, to, _)| *to)
            .collect();
        assert!(first_hops.len() <= MAX_FANOUT);
        let mut asked = BTreeSet::new();
        for (from, to, bytes) in log.borrow().iter() {
            if let Ok(FoafMessage::Query { .. }) = postcard::from_bytes::<FoafMessage>(bytes) {
                asked.insert(*to);
            }
            if *to == asker || *from == asker {
                continue;
            }
            assert!(
                !bytes.windows(32).any(|w| w == asker_id.as_bytes()),
                "agent {to} (not a first hop of {asker}) saw the asker's id in a message from {from}"
            );
        }
        assert!(asked.len() <= 39, "{} agents asked", asked.len());
        (ev, at - start)
    }

    #[test]
    fn chain_lookup_finds_a_peer_three_hops_away_and_no_further_than_ttl_allows() {
        let edges: Vec<(usize, usize)> = (0..99).map(|i| (i, i + 1)).collect();
        let (mut sim, log) = network(100, &edges, 1);
        let (ev, _) = lookup(&mut sim, &log, 10, 13);
        match ev {
            FoafEvent::Found {
                target,
                record,
                distance,
            } => {
                assert_eq!(target, sim.nodes[13].f.me);
                assert_eq!(record.body.peer, target);
                assert_eq!(distance, 3);
            }
            e => panic!("{e:?}"),
        }
        // The last hop (ttl 1) still answers for its own neighbour.
        assert!(matches!(
            lookup(&mut sim, &log, 10, 14).0,
            FoafEvent::Found { distance: 4, .. }
        ));
        assert!(matches!(
            lookup(&mut sim, &log, 10, 15).0,
            FoafEvent::NotFound { .. }
        ));
        assert!(matches!(
            lookup(&mut sim, &log, 50, 47).0,
            FoafEvent::Found { distance: 3, .. }
        ));
        // Direct neighbours and oneself need no query.
        assert!(matches!(
            lookup(&mut sim, &log, 50, 51).0,
            FoafEvent::Found { distance: 1, .. }
        ));

        // Replaying a captured query (and reply) on the wire changes nothing.
        lookup(&mut sim, &log, 30, 33);
        let captured: Vec<(usize, usize, FoafMessage)> = log
            .borrow()
            .iter()
            .map(|(f, t, b)| (*f, *t, postcard::from_bytes(b).unwrap()))
            .collect();
        let (qf, qt, q) = captured
            .iter()
            .find(|(_, _, m)| matches!(m, FoafMessage::Query { .. }))
            .cloned()
            .unwrap();
        let (rf, rt, r) = captured
            .iter()
            .find(|(_, _, m)| matches!(m, FoafMessage::Reply { .. }))
            .cloned()
            .unwrap();
        let delivered = sim.delivered;
        let from = sim.nodes[qf].f.me;
        sim.with_node(qt, |n, now| n.f.handle(from, q.clone(), now));
        let from = sim.nodes[rf].f.me;
        sim.with_node(rt, |n, now| n.f.handle(from, r, now));
        // A forged copy (signature of another agent) is dropped too.
        let FoafMessage::Query { body, .. } = q else {
            unreachable!()
        };
        let forged = FoafMessage::Query {
            signature: identity(999).sign(&signed(QUERY_DOMAIN, &body)),
            body,
        };
        let from = sim.nodes[qf].f.me;
        sim.with_node(qt, |n, now| n.f.handle(from, forged, now));
        sim.run_for(Duration::from_secs(3));
        assert_eq!(sim.delivered, delivered, "nothing was sent in response");
        assert_eq!(sim.nodes[qt].f.stats().replayed, 1);
        assert_eq!(sim.nodes[qt].f.stats().bad_signature, 1);
        assert_eq!(sim.nodes[rt].f.stats().unsolicited, 1);
    }

    fn bfs(n: usize, edges: &[(usize, usize)], from: usize) -> Vec<usize> {
        let mut adj = vec![vec![]; n];
        for &(a, b) in edges {
            adj[a].push(b);
            adj[b].push(a);
        }
        let mut d = vec![usize::MAX; n];
        d[from] = 0;
        let mut q = VecDeque::from([from]);
        while let Some(x) = q.pop_front() {
            for &y in &adj[x] {
                if d[y] == usize::MAX {
                    d[y] = d[x] + 1;
                    q.push_back(y);
                }
            }
        }
        d
    }

    /// A connected random graph of `n` agents with degree at most 3 (so a
    /// fan-out of 3 reaches every neighbour but the one asking).
    fn random_graph(n: usize, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut deg = vec![0usize; n];
        let mut edges = BTreeSet::new();
        // A random tree with degree ≤ 3 first (connected).
        for i in 1..n {
            loop {
                let j = rng.random_range(0..i);
                if deg[j] < 3 {
                    edges.insert((j, i));
                    deg[i] += 1;
                    deg[j] += 1;
                    break;
                }
            }
        }
        for _ in 0..n * 4 {
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            let e = (a.min(b), a.max(b));
            if a != b && deg[a] < 3 && deg[b] < 3 && edges.insert(e) {
                deg[a] += 1;
                deg[b] += 1;
            }
        }
        edges.into_iter().collect()
    }

    #[test]
    fn random_graph_lookups_find_peers_three_hops_away() {
        let n = 100;
        let edges = random_graph(n, 5);
        let (mut sim, log) = network(n, &edges, 5);
        let mut rng = StdRng::seed_from_u64(9);
        let mut latencies = vec![];
        let mut lookups = 0;
        while lookups < 25 {
            let asker = rng.random_range(0..n);
            let d = bfs(n, &edges, asker);
            let at3: Vec<usize> = (0..n).filter(|&t| d[t] == 3).collect();
            let Some(&target) = at3.get(rng.random_range(0..at3.len().max(1))) else {
                continue;
            };
            let (ev, lat) = lookup(&mut sim, &log, asker, target);
            match ev {
                FoafEvent::Found {
                    distance, record, ..
                } => {
                    assert!((3..=4).contains(&distance), "distance {distance}");
                    assert_eq!(record.body.peer, sim.nodes[target].f.me);
                }
                e => panic!("lookup {asker} -> {target} at distance 3: {e:?}"),
            }
            latencies.push(lat.as_secs_f64() * 1000.0);
            lookups += 1;
        }
        let p50 = percentile(&mut latencies, 50.0).unwrap();
        let p95 = percentile(&mut latencies, 95.0).unwrap();
        println!(
            "foaf: {lookups} lookups at distance 3 in a random 100-agent graph: p50 {p50:.0} ms, p95 {p95:.0} ms"
        );
        let total: FoafStats = sim.nodes.iter().fold(FoafStats::default(), |mut acc, n| {
            let s = n.f.stats();
            acc.bad_signature += s.bad_signature;
            acc.replayed += s.replayed;
            acc.unsolicited += s.unsolicited;
            acc.merged += s.merged;
            acc
        });
        assert_eq!(total.bad_signature + total.replayed + total.unsolicited, 0);
    }

    fn take_sends(f: &mut Foaf) -> Vec<(PeerId, FoafMessage)> {
        let mut v = vec![];
        while let Some(o) = f.poll() {
            if let Output::Send { to, message } = o {
                v.push((to, message));
            }
        }
        v
    }

    fn events(f: &mut Foaf) -> Vec<FoafEvent> {
        let mut v = vec![];
        while let Some(o) = f.poll() {
            if let Output::Event(e) = o {
                v.push(e);
            }
        }
        v
    }

    fn query(
        from: &Identity,
        to: PeerId,
        qid: u64,
        target: PeerId,
        ttl: u8,
        sent_ms: u64,
    ) -> FoafMessage {
        let body = QueryBody {
            qid,
            target,
            ttl,
            sender: from.peer_id(),
            recipient: to,
            sent_ms,
        };
        let signature = from.sign(&signed(QUERY_DOMAIN, &body));
        FoafMessage::Query { body, signature }
    }

    #[test]
    fn forged_replayed_misdirected_stale_and_excess_queries_are_dropped_and_counted() {
        let t0 = Instant::now();
        let (a, b, mallory) = (identity(1), identity(2), identity(3));
        let target = identity(4).peer_id();
        let mut fb = Foaf::new(b.clone(), FoafConfig::default(), WallClock::new(t0, T0), 2);
        fb.add_neighbor(a.peer_id(), None);
        fb.add_neighbor(mallory.peer_id(), None);
        fb.add_neighbor(identity(5).peer_id(), None);
        let me = b.peer_id();
        // Forged: claims to be from a, signed by mallory.
        let FoafMessage::Query { body, .. } = query(&a, me, 1, target, 3, T0) else {
            unreachable!()
        };
        let forged_sig = mallory.sign(&signed(QUERY_DOMAIN, &body));
        fb.handle(
            a.peer_id(),
            FoafMessage::Query {
                body,
                signature: forged_sig,
            },
            t0,
        );
        assert_eq!(fb.stats().bad_signature, 1);
        // Sent by mallory but naming a as sender (reflection).
        fb.handle(mallory.peer_id(), query(&a, me, 2, target, 3, T0), t0);
        assert_eq!(fb.stats().misdirected, 1);
        // Addressed to another recipient.
        fb.handle(a.peer_id(), query(&a, target, 3, target, 3, T0), t0);
        assert_eq!(fb.stats().misdirected, 2);
        // Ttl over the maximum.
        fb.handle(a.peer_id(), query(&a, me, 4, target, 4, T0), t0);
        assert_eq!(fb.stats().bad_ttl, 1);
        // Stale timestamp.
        fb.handle(a.peer_id(), query(&a, me, 5, target, 3, T0 - 120_000), t0);
        assert_eq!(fb.stats().stale, 1);
        // Not a neighbour.
        let stranger = identity(6);
        fb.handle(
            stranger.peer_id(),
            query(&stranger, me, 6, target, 3, T0),
            t0,
        );
        assert_eq!(fb.stats().not_neighbor, 1);
        // Genuine, then replayed.
        let q = query(&a, me, 7, target, 3, T0);
        fb.handle(a.peer_id(), q.clone(), t0);
        assert_eq!(fb.stats().queries, 1);
        let forwarded = take_sends(&mut fb);
        assert_eq!(forwarded.len(), 2, "to the other two neighbours");
        for (to, m) in &forwarded {
            let FoafMessage::Query { body, .. } = m else {
                panic!()
            };
            assert_ne!(*to, a.peer_id());
            assert_ne!(body.qid, 7, "fresh id at each hop");
            assert_eq!(body.sender, me);
            assert_eq!(body.ttl, 2);
        }
        fb.handle(a.peer_id(), q, t0);
        assert_eq!(fb.stats().replayed, 1);
        assert_eq!(fb.stats().queries, 1);
        // Token bucket: a burst of 10 per neighbour, then refused.
        for qid in 100..120 {
            fb.handle(
                mallory.peer_id(),
                query(&mallory, me, qid, identity(qid).peer_id(), 1, T0),
                t0,
            );
        }
        assert_eq!(fb.stats().rate_limited, 10);
    }

    #[test]
    fn replies_must_answer_a_query_sent_to_that_peer_and_carry_the_targets_own_signature() {
        let t0 = Instant::now();
        let (a, b, t, mallory) = (identity(1), identity(2), identity(4), identity(3));
        let mut fa = Foaf::new(a.clone(), FoafConfig::default(), WallClock::new(t0, T0), 1);
        fa.add_neighbor(b.peer_id(), None);
        fa.add_neighbor(mallory.peer_id(), None);
        let reply = |from: &Identity, qid: u64, record: Option<SignedAgentRecord>| {
            let body = ReplyBody {
                qid,
                record,
                distance: 1,
                sender: from.peer_id(),
                recipient: a.peer_id(),
                sent_ms: T0,
            };
            let signature = from.sign(&signed(REPLY_DOMAIN, &body));
            FoafMessage::Reply { body, signature }
        };
        // Unsolicited reply.
        fa.handle(b.peer_id(), reply(&b, 42, None), t0);
        assert_eq!(fa.stats().unsolicited, 1);
        fa.find(t.peer_id(), t0);
        let sent = take_sends(&mut fa);
        assert_eq!(sent.len(), 2);
        let qid_of = |p: PeerId| {
            sent.iter()
                .find_map(|(to, m)| match m {
                    FoafMessage::Query { body, .. } if *to == p => Some(body.qid),
                    _ => None,
                })
                .unwrap()
        };
        let (qb, qm) = (qid_of(b.peer_id()), qid_of(mallory.peer_id()));
        // Mallory answers b's query id: not sent to mallory, refused.
        fa.handle(mallory.peer_id(), reply(&mallory, qb, None), t0);
        assert_eq!(fa.stats().unsolicited, 2);
        // Mallory answers its own query with a record it signed for t: refused.
        let forged = SignedAgentRecord {
            signature: mallory.sign(&signed(
                RECORD_DOMAIN,
                &SignedAgentRecord::sign(&t, vec![], T0).body,
            )),
            ..SignedAgentRecord::sign(&t, vec![], T0)
        };
        fa.handle(mallory.peer_id(), reply(&mallory, qm, Some(forged)), t0);
        assert_eq!(fa.stats().bad_record, 1);
        let other = SignedAgentRecord::sign(&mallory, vec![], T0);
        let genuine = SignedAgentRecord::sign(&t, vec![SocketAddr::from(([1, 2, 3, 4], 5))], T0);
        let r = reply(&b, qb, Some(genuine.clone()));
        fa.handle(b.peer_id(), r.clone(), t0);
        assert_eq!(
            events(&mut fa),
            vec![FoafEvent::Found {
                target: t.peer_id(),
                record: genuine,
                distance: 2
            }]
        );
        // The same reply replayed: its id was used up.
        fa.handle(b.peer_id(), r, t0);
        assert_eq!(fa.stats().unsolicited, 3);
        // A tampered record is refused when learned from a neighbour too.
        assert!(!fa.learn_record({
            let mut x = other;
            x.body.timestamp_ms += 1;
            x
        }));
    }

    #[test]
    fn a_search_with_no_answer_times_out_as_not_found() {
        let t0 = Instant::now();
        let mut fa = Foaf::new(
            identity(1),
            FoafConfig::default(),
            WallClock::new(t0, T0),
            1,
        );
        fa.find(identity(9).peer_id(), t0);
        assert_eq!(
            events(&mut fa),
            vec![FoafEvent::NotFound {
                target: identity(9).peer_id()
            }]
        );
        fa.add_neighbor(identity(2).peer_id(), None);
        fa.find(identity(9).peer_id(), t0);
        assert!(events(&mut fa).is_empty());
        fa.handle_timer(fa.next_timeout().unwrap());
        assert_eq!(
            events(&mut fa),
            vec![FoafEvent::NotFound {
                target: identity(9).peer_id()
            }]
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let t0 = Instant::now();
            let mut f = Foaf::new(identity(1), FoafConfig::default(), WallClock::new(t0, T0), 1);
            if let Ok(m) = postcard::from_bytes::<FoafMessage>(&bytes) {
                f.handle(identity(2).peer_id(), m, t0);
            }
        }
    }
}
