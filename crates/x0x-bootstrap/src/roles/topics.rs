//! The topic directory: which agents registered with this node joined
//! which collab topic, so a newcomer finds a few members to join the
//! topic's gossip overlay through. The node is not a broker: it never sees
//! a topic's messages, only the 32-byte topic ids agents joined.
//!
//! Hostile-peer safe by construction: an agent can only register itself
//! (the node takes the connection's authenticated id), entries go when its
//! connection ends, and three limits bound the memory
//! (`topics_per_agent`, `members_per_topic`, `topics`).

use std::collections::{HashMap, HashSet};

use rand::seq::IndexedRandom;
use x0x_proto::PeerId;
use x0x_proto::wire::MAX_TOPIC_MEMBERS;

/// A topic id (SHA-256 of the topic name).
pub type Topic = [u8; 32];

/// The limits of the topic directory (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub topics_per_agent: usize,
    pub members_per_topic: usize,
    pub topics: usize,
}

/// Why a join was refused: the `[limits]` key that was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRefused {
    TopicsPerAgent,
    MembersPerTopic,
    Topics,
}

impl TopicRefused {
    /// The `[limits]` key, also the metrics reason.
    pub fn label(self) -> &'static str {
        match self {
            Self::TopicsPerAgent => "topics_per_agent",
            Self::MembersPerTopic => "members_per_topic",
            Self::Topics => "topics",
        }
    }
}

/// Members per topic, topics per agent.
#[derive(Debug, Default)]
pub struct Topics {
    members: HashMap<Topic, Vec<PeerId>>,
    joined: HashMap<PeerId, HashSet<Topic>>,
}

impl Topics {
    /// Register `agent` in `topic`. Joining again is a no-op.
    pub fn join(
        &mut self,
        agent: PeerId,
        topic: Topic,
        limits: &TopicLimits,
    ) -> Result<(), TopicRefused> {
        let mine = self.joined.get(&agent);
        if mine.is_some_and(|t| t.contains(&topic)) {
            return Ok(());
        }
        if mine.is_some_and(|t| t.len() >= limits.topics_per_agent) {
            return Err(TopicRefused::TopicsPerAgent);
        }
        match self.members.get(&topic) {
            Some(m) if m.len() >= limits.members_per_topic => {
                return Err(TopicRefused::MembersPerTopic);
            }
            None if self.members.len() >= limits.topics => return Err(TopicRefused::Topics),
            _ => {}
        }
        self.members.entry(topic).or_default().push(agent);
        self.joined.entry(agent).or_default().insert(topic);
        Ok(())
    }

    /// `agent` leaves `topic`.
    pub fn leave(&mut self, agent: &PeerId, topic: &Topic) {
        if let Some(t) = self.joined.get_mut(agent) {
            t.remove(topic);
            if t.is_empty() {
                self.joined.remove(agent);
            }
        }
        if let Some(m) = self.members.get_mut(topic) {
            m.retain(|p| p != agent);
            if m.is_empty() {
                self.members.remove(topic);
            }
        }
    }

    /// `agent`'s connection ended: it leaves every topic.
    pub fn forget(&mut self, agent: &PeerId) {
        for topic in self.joined.remove(agent).unwrap_or_default() {
            if let Some(m) = self.members.get_mut(&topic) {
                m.retain(|p| p != agent);
                if m.is_empty() {
                    self.members.remove(&topic);
                }
            }
        }
    }

    /// Up to [`MAX_TOPIC_MEMBERS`] random members of `topic`, not `asker`.
    pub fn sample(&self, topic: &Topic, asker: &PeerId) -> Vec<PeerId> {
        let Some(m) = self.members.get(topic) else {
            return Vec::new();
        };
        let mut rng = rand::rng();
        let mut v: Vec<PeerId> = m
            .choose_multiple(&mut rng, MAX_TOPIC_MEMBERS + 1)
            .filter(|p| *p != asker)
            .copied()
            .collect();
        v.truncate(MAX_TOPIC_MEMBERS);
        v
    }

    /// Topics with at least one member.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no topic has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Memberships, in all.
    pub fn memberships(&self) -> usize {
        self.joined.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> PeerId {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&n.to_be_bytes());
        PeerId::from_bytes(b)
    }

    const LIMITS: TopicLimits = TopicLimits {
        topics_per_agent: 2,
        members_per_topic: 20,
        topics: 3,
    };

    #[test]
    fn topics_are_bounded_per_agent_per_topic_and_in_all() {
        let mut t = Topics::default();
        t.join(id(1), [1; 32], &LIMITS).unwrap();
        t.join(id(1), [1; 32], &LIMITS).unwrap(); // again: no-op
        t.join(id(1), [2; 32], &LIMITS).unwrap();
        assert_eq!(
            t.join(id(1), [3; 32], &LIMITS),
            Err(TopicRefused::TopicsPerAgent)
        );
        t.join(id(2), [3; 32], &LIMITS).unwrap();
        assert_eq!(t.join(id(2), [4; 32], &LIMITS), Err(TopicRefused::Topics));
        // id(2) and 3..=21: twenty members, the limit.
        for n in 3..22 {
            t.join(id(n), [3; 32], &LIMITS).unwrap();
        }
        assert_eq!(
            t.join(id(22), [3; 32], &LIMITS),
            Err(TopicRefused::MembersPerTopic)
        );
        assert_eq!(t.len(), 3);
        assert_eq!(t.memberships(), 2 + 20);
    }

    #[test]
    fn samples_are_at_most_eight_never_the_asker_and_members_leave() {
        let mut t = Topics::default();
        for n in 0..20 {
            t.join(id(n), [7; 32], &LIMITS).unwrap();
        }
        for _ in 0..50 {
            let s = t.sample(&[7; 32], &id(0));
            assert_eq!(s.len(), MAX_TOPIC_MEMBERS);
            assert!(!s.contains(&id(0)));
            let distinct: HashSet<_> = s.iter().collect();
            assert_eq!(distinct.len(), s.len());
        }
        for n in 1..20 {
            t.forget(&id(n));
        }
        assert!(t.sample(&[7; 32], &id(0)).is_empty());
        assert_eq!(t.sample(&[7; 32], &id(9)), vec![id(0)]);
        t.leave(&id(0), &[7; 32]);
        assert_eq!(t.len(), 0);
        assert!(t.sample(&[9; 32], &id(0)).is_empty());
    }
}
