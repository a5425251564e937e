//! HyParView membership for one topic: a small symmetric *active view*
//! (the overlay's links, over which PlumTree pushes) and a larger *passive
//! view* (known members kept as replacements).
//!
//! Leitão, Pereira, Rodrigues, "HyParView: a membership protocol for
//! reliable gossip-based broadcast" (DSN 2007). Departures from the paper:
//! a join may name several contacts (the bootstrap directory returns a
//! few); a `Neighbor` request is accepted implicitly (the requester adds
//! the peer to its active view when it sends the request, a refusal is a
//! `Disconnect { alive: true }`), which saves a reply message; and a failed
//! link is reported by the driver ([`super::Gossip::peer_down`]) instead of
//! a TCP reset.

use x0x_proto::PeerId;

use super::proto::{GossipBody, MAX_SHUFFLE_PEERS};
use super::{Io, Timer, Topic};
use crate::collab::util::{pick, sample};

impl Topic {
    /// Contact up to `join_contacts` of `contacts` with `Join`, keep the
    /// rest as passive peers.
    pub(super) fn join(&mut self, io: &mut Io<'_>, contacts: &[PeerId]) {
        let contacts: Vec<PeerId> = contacts
            .iter()
            .copied()
            .filter(|p| *p != io.me && !self.active.contains(p))
            .collect();
        let chosen = sample(&contacts, io.config.join_contacts, io.rng);
        for &p in &chosen {
            self.add_active(io, p);
            io.send(p, GossipBody::Join);
        }
        for p in contacts {
            if !chosen.contains(&p) {
                self.add_passive(io, p);
            }
        }
    }

    pub(super) fn on_join(&mut self, io: &mut Io<'_>, from: PeerId) {
        if self.active.contains(&from) {
            return;
        }
        self.add_active(io, from);
        let ttl = io.config.active_walk;
        let others: Vec<PeerId> = self.active.iter().copied().filter(|p| *p != from).collect();
        for p in others {
            io.send(p, GossipBody::ForwardJoin { peer: from, ttl });
        }
    }

    pub(super) fn on_forward_join(&mut self, io: &mut Io<'_>, from: PeerId, peer: PeerId, ttl: u8) {
        if peer == io.me {
            return;
        }
        let ttl = ttl.min(io.config.active_walk);
        if ttl == 0 || self.active.len() <= 1 {
            self.accept_walk_end(io, peer);
            return;
        }
        if ttl == io.config.passive_walk {
            self.add_passive(io, peer);
        }
        let candidates: Vec<PeerId> = self
            .active
            .iter()
            .copied()
            .filter(|p| *p != from && *p != peer)
            .collect();
        match pick(&candidates, candidates.len(), io.rng) {
            Some(&next) => io.send(next, GossipBody::ForwardJoin { peer, ttl: ttl - 1 }),
            None => self.accept_walk_end(io, peer),
        }
    }

    fn accept_walk_end(&mut self, io: &mut Io<'_>, peer: PeerId) {
        if !self.active.contains(&peer) {
            self.add_active(io, peer);
            io.send(
                peer,
                GossipBody::Neighbor {
                    high_priority: true,
                },
            );
        }
    }

    pub(super) fn on_neighbor(&mut self, io: &mut Io<'_>, from: PeerId, high_priority: bool) {
        self.pending.remove(&from);
        if self.active.contains(&from) {
            if !high_priority {
                io.send(from, GossipBody::NeighborAccept);
            }
            return;
        }
        if high_priority || self.active.len() < io.config.active_view {
            self.add_active(io, from);
            if !high_priority {
                io.send(from, GossipBody::NeighborAccept);
            }
        } else {
            self.add_passive(io, from);
            io.send(from, GossipBody::Disconnect { alive: true });
        }
    }

    pub(super) fn on_neighbor_accept(&mut self, io: &mut Io<'_>, from: PeerId) {
        self.pending.remove(&from);
        if self.active.contains(&from) {
            return;
        }
        if self.active.len() < io.config.active_view {
            self.add_active(io, from);
        } else {
            // Filled up meanwhile: undo the peer's side.
            self.add_passive(io, from);
            io.send(from, GossipBody::Disconnect { alive: true });
        }
    }

    pub(super) fn on_disconnect(&mut self, io: &mut Io<'_>, from: PeerId, alive: bool) {
        let was_pending = self.pending.remove(&from).is_some();
        let was_active = self.remove_active(io, from);
        if alive {
            self.add_passive(io, from);
        } else {
            self.passive.remove(&from);
        }
        if was_active || was_pending {
            self.refill(io, Some(from));
        }
    }

    pub(super) fn on_shuffle(
        &mut self,
        io: &mut Io<'_>,
        from: PeerId,
        origin: PeerId,
        ttl: u8,
        peers: Vec<PeerId>,
    ) {
        if origin == io.me {
            return;
        }
        let peers: Vec<PeerId> = peers.into_iter().take(MAX_SHUFFLE_PEERS).collect();
        if ttl > 0 && self.active.len() > 1 {
            let candidates: Vec<PeerId> = self
                .active
                .iter()
                .copied()
                .filter(|p| *p != from && *p != origin)
                .collect();
            if let Some(&next) = pick(&candidates, candidates.len(), io.rng) {
                io.send(
                    next,
                    GossipBody::Shuffle {
                        origin,
                        ttl: ttl - 1,
                        peers,
                    },
                );
                return;
            }
        }
        let passive: Vec<PeerId> = self.passive.iter().copied().collect();
        let reply = sample(&passive, peers.len(), io.rng);
        io.send(origin, GossipBody::ShuffleReply { peers: reply });
        for p in peers {
            self.add_passive(io, p);
        }
    }

    pub(super) fn on_shuffle_reply(&mut self, io: &mut Io<'_>, peers: Vec<PeerId>) {
        for p in peers.into_iter().take(MAX_SHUFFLE_PEERS) {
            self.add_passive(io, p);
        }
    }

    /// Start a shuffle with a random neighbour.
    pub(super) fn shuffle(&mut self, io: &mut Io<'_>) {
        let active: Vec<PeerId> = self.active.iter().copied().collect();
        let Some(&target) = pick(&active, active.len(), io.rng) else {
            return;
        };
        let others: Vec<PeerId> = active.into_iter().filter(|p| *p != target).collect();
        let passive: Vec<PeerId> = self.passive.iter().copied().collect();
        let mut peers = vec![io.me];
        peers.extend(sample(&others, io.config.shuffle_active, io.rng));
        peers.extend(sample(&passive, io.config.shuffle_passive, io.rng));
        let ttl = io.config.passive_walk;
        io.send(
            target,
            GossipBody::Shuffle {
                origin: io.me,
                ttl,
                peers,
            },
        );
    }

    /// The transport lost `peer` (connection closed, dial failed).
    pub(super) fn on_peer_down(&mut self, io: &mut Io<'_>, peer: PeerId) {
        let was_pending = self.pending.remove(&peer).is_some();
        let was_active = self.remove_active(io, peer);
        self.passive.remove(&peer);
        if was_active || was_pending {
            self.refill(io, None);
        }
    }

    /// Periodic: promote a passive peer if the active view is short.
    pub(super) fn maintain(&mut self, io: &mut Io<'_>) {
        let now = io.now;
        let expired: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            // No answer: forget it as a candidate.
            self.pending.remove(&p);
            self.passive.remove(&p);
        }
        if self.active.len() < io.config.active_view {
            self.refill(io, None);
        }
    }

    /// Ask one random passive peer (not `except`) to become a neighbour.
    /// With no neighbour left the request has high priority and the link
    /// counts as up at once; otherwise it waits for `NeighborAccept`.
    fn refill(&mut self, io: &mut Io<'_>, except: Option<PeerId>) {
        if self.active.len() + self.pending.len() >= io.config.active_view {
            return;
        }
        let candidates: Vec<PeerId> = self
            .passive
            .iter()
            .copied()
            .filter(|p| Some(*p) != except && !self.pending.contains_key(p))
            .collect();
        let Some(&p) = pick(&candidates, candidates.len(), io.rng) else {
            return;
        };
        if self.active.is_empty() {
            self.add_active(io, p);
            io.send(
                p,
                GossipBody::Neighbor {
                    high_priority: true,
                },
            );
        } else {
            self.pending.insert(p, io.now + io.config.neighbor_timeout);
            io.send(
                p,
                GossipBody::Neighbor {
                    high_priority: false,
                },
            );
        }
    }

    /// Add `peer` to the active view, dropping a random neighbour if full.
    pub(super) fn add_active(&mut self, io: &mut Io<'_>, peer: PeerId) {
        if peer == io.me || self.active.contains(&peer) {
            return;
        }
        self.passive.remove(&peer);
        self.pending.remove(&peer);
        if self.active.len() >= io.config.active_view {
            let current: Vec<PeerId> = self.active.iter().copied().collect();
            if let Some(&drop) = pick(&current, current.len(), io.rng) {
                self.remove_active(io, drop);
                io.send(drop, GossipBody::Disconnect { alive: true });
                self.add_passive(io, drop);
            }
        }
        self.active.insert(peer);
        self.tree_neighbor_up(peer);
        io.neighbor_up(peer);
    }

    /// Remove `peer` from the active view; whether it was there.
    pub(super) fn remove_active(&mut self, io: &mut Io<'_>, peer: PeerId) -> bool {
        if !self.active.remove(&peer) {
            return false;
        }
        self.tree_neighbor_down(peer);
        io.neighbor_down(peer);
        true
    }

    pub(super) fn add_passive(&mut self, io: &mut Io<'_>, peer: PeerId) {
        if peer == io.me || self.active.contains(&peer) || self.passive.contains(&peer) {
            return;
        }
        if self.passive.len() >= io.config.passive_view {
            let current: Vec<PeerId> = self.passive.iter().copied().collect();
            if let Some(&drop) = pick(&current, current.len(), io.rng) {
                self.passive.remove(&drop);
            }
        }
        self.passive.insert(peer);
    }

    /// Schedule the periodic timers of this topic.
    pub(super) fn start_timers(&self, io: &mut Io<'_>) {
        let topic = io.topic;
        let m = io.jitter(io.config.maintain_interval);
        io.timer(m, Timer::Maintain(topic));
        let s = io.jitter(io.config.shuffle_interval);
        io.timer(s, Timer::Shuffle(topic));
    }
}
