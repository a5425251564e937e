//! Bounded per-peer outbound queues, so a slow peer never stalls the others.
//!
//! The driver pushes every `Send` of the gossip machine here and runs one
//! writer per peer that pops and writes to that peer's stream. Each peer
//! has two bounded queues: control messages (membership, `IHave`, `Graft`,
//! `Prune`) and payloads (`Gossip`), popped control first. When a peer's
//! payload queue is full the *oldest* payload is dropped, counted, and an
//! `IHave` for it takes its place in the control queue: the peer learns
//! that it missed the message and grafts it from any neighbour (PlumTree's
//! repair path), so a temporarily slow peer loses latency, not messages.
//! When the control queue is full too, the new control message is dropped
//! and counted; a peer that far behind should be disconnected by the
//! driver (HyParView then replaces it).

use std::collections::{HashMap, VecDeque};

use x0x_proto::PeerId;

use super::proto::{GossipBody, GossipMessage};

/// Limits of each peer's queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Payload (`Gossip`) messages queued per peer.
    pub max_payload: usize,
    /// Control messages queued per peer.
    pub max_control: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_payload: 128,
            max_control: 1024,
        }
    }
}

/// Drop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages accepted into a queue.
    pub queued: u64,
    /// Payloads dropped (each replaced by an `IHave`).
    pub dropped_payload: u64,
    /// Control messages dropped.
    pub dropped_control: u64,
}

impl QueueStats {
    /// Every counter with its stable metric name.
    pub fn counters(&self) -> [(&'static str, u64); 3] {
        [
            ("gossip_queue_queued", self.queued),
            ("gossip_queue_dropped_payload", self.dropped_payload),
            ("gossip_queue_dropped_control", self.dropped_control),
        ]
    }
}

#[derive(Debug, Default)]
struct PeerQueue {
    control: VecDeque<GossipMessage>,
    payload: VecDeque<GossipMessage>,
    dropped: u64,
}

/// One bounded queue pair per peer (see the module docs).
#[derive(Debug, Default)]
pub struct OutboundQueues {
    config: QueueConfig,
    peers: HashMap<PeerId, PeerQueue>,
    stats: QueueStats,
}

impl OutboundQueues {
    /// Queues with these limits.
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            stats: QueueStats::default(),
        }
    }

    /// Queue `message` for `to`. Returns `false` if something was dropped.
    pub fn push(&mut self, to: PeerId, message: GossipMessage) -> bool {
        let q = self.peers.entry(to).or_default();
        let mut clean = true;
        if message.body.is_payload() {
            if q.payload.len() >= self.config.max_payload {
                clean = false;
                if let Some(old) = q.payload.pop_front() {
                    self.stats.dropped_payload += 1;
                    q.dropped += 1;
                    if let GossipBody::Gossip { round, envelope } = old.body {
                        let ihave = GossipMessage {
                            topic: old.topic,
                            body: GossipBody::IHave {
                                entries: vec![(envelope.id(), round)],
                            },
                        };
                        if q.control.len() < self.config.max_control {
                            q.control.push_back(ihave);
                        } else {
                            self.stats.dropped_control += 1;
                        }
                    }
                }
            }
            q.payload.push_back(message);
        } else if q.control.len() >= self.config.max_control {
            self.stats.dropped_control += 1;
            q.dropped += 1;
            return false;
        } else {
            q.control.push_back(message);
        }
        self.stats.queued += 1;
        clean
    }

    /// The next message for `peer`, control first.
    pub fn pop(&mut self, peer: &PeerId) -> Option<GossipMessage> {
        let q = self.peers.get_mut(peer)?;
        q.control.pop_front().or_else(|| q.payload.pop_front())
    }

    /// Messages waiting for `peer`.
    pub fn len(&self, peer: &PeerId) -> usize {
        self.peers
            .get(peer)
            .map_or(0, |q| q.control.len() + q.payload.len())
    }

    /// Whether nothing waits for `peer`.
    pub fn is_empty(&self, peer: &PeerId) -> bool {
        self.len(peer) == 0
    }

    /// Messages dropped for `peer` so far.
    pub fn dropped(&self, peer: &PeerId) -> u64 {
        self.peers.get(peer).map_or(0, |q| q.dropped)
    }

    /// Forget `peer`'s queue (its connection is gone).
    pub fn remove(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::envelope::{Channel, Envelope, TopicId};
    use crate::collab::testutil::identity;
    use bytes::Bytes;

    fn gossip(n: u64) -> GossipMessage {
        let id = identity(1);
        GossipMessage {
            topic: TopicId::new("t"),
            body: GossipBody::Gossip {
                round: 1,
                envelope: Envelope::sign(&id, TopicId::new("t"), Channel::App, n, 0, Bytes::new()),
            },
        }
    }

    #[test]
    fn slow_peer_drops_its_own_oldest_payloads_and_gets_ihaves_instead() {
        let (slow, fast) = (identity(2).peer_id(), identity(3).peer_id());
        let mut q = OutboundQueues::new(QueueConfig {
            max_payload: 4,
            max_control: 8,
        });
        for n in 0..10 {
            assert_eq!(q.push(slow, gossip(n)), n < 4);
            assert!(q.push(fast, gossip(n)));
            // The fast peer's writer keeps up.
            assert!(q.pop(&fast).is_some());
        }
        assert_eq!(q.stats().dropped_payload, 6);
        assert_eq!(q.dropped(&fast), 0);
        assert_eq!(q.dropped(&slow), 6);
        // The slow peer gets IHaves for the 6 dropped, then the newest 4 payloads.
        let mut ihaves = 0;
        let mut payload_seqs = vec![];
        while let Some(m) = q.pop(&slow) {
            match m.body {
                GossipBody::IHave { entries } => {
                    assert_eq!(entries.len(), 1);
                    assert_eq!(
                        entries[0].0,
                        match gossip(ihaves).body {
                            GossipBody::Gossip { envelope, .. } => envelope.id(),
                            _ => unreachable!(),
                        }
                    );
                    ihaves += 1;
                }
                GossipBody::Gossip { envelope, .. } => payload_seqs.push(envelope.seq),
                _ => unreachable!(),
            }
        }
        assert_eq!(ihaves, 6);
        assert_eq!(payload_seqs, vec![6, 7, 8, 9]);
    }

    #[test]
    fn control_queue_is_bounded_and_counted() {
        let p = identity(2).peer_id();
        let mut q = OutboundQueues::new(QueueConfig {
            max_payload: 1,
            max_control: 2,
        });
        let prune = GossipMessage {
            topic: TopicId::new("t"),
            body: GossipBody::Prune { root: p },
        };
        assert!(q.push(p, prune.clone()));
        assert!(q.push(p, prune.clone()));
        assert!(!q.push(p, prune));
        assert_eq!(q.stats().dropped_control, 1);
        assert_eq!(q.len(&p), 2);
        q.remove(&p);
        assert!(q.is_empty(&p));
    }
}
