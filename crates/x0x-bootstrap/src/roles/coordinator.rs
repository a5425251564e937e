//! The coordinator role: a directory of agents shared across the mesh.
//!
//! Each node owns the records of agents registered with it (`local`). It
//! sends those to every mesh peer (a snapshot on connect, then upserts and
//! removals) and keeps the records it hears from each peer (`remote`), so
//! any node can answer a lookup for any agent. Records learned from a peer
//! are dropped when that peer disconnects, and re-sent when it comes back:
//! during a partition each side keeps exactly what it can reach.

use std::collections::HashMap;

use x0x_proto::identity::PeerId;
use x0x_proto::wire::{AgentRecord, Message};

pub use x0x_proto::wire::MAX_ADDRS;

/// Records per snapshot message: 200 × ~230 bytes stays well under the frame limit.
pub const SNAPSHOT_CHUNK: usize = 200;

#[derive(Debug, Default)]
pub struct Directory {
    local: HashMap<PeerId, AgentRecord>,
    remote: HashMap<PeerId, HashMap<PeerId, AgentRecord>>,
}

impl Directory {
    /// Record an agent registered with this node; returns the update for mesh peers.
    pub fn register(&mut self, record: AgentRecord) -> Message {
        self.local.insert(record.peer, record.clone());
        Message::DirectoryUpsert { record }
    }

    /// Forget a local agent; returns the update for mesh peers, if it was known.
    pub fn unregister(&mut self, agent: &PeerId) -> Option<Message> {
        self.local
            .remove(agent)
            .map(|_| Message::DirectoryRemove { peer: *agent })
    }

    /// A local agent's connection now comes from `observed` (its NAT
    /// rebound, or it moved). Returns the update for mesh peers if its record changed.
    pub fn observed_moved(
        &mut self,
        agent: &PeerId,
        observed: std::net::SocketAddr,
    ) -> Option<Message> {
        let record = self.local.get_mut(agent)?;
        if record.addrs.first() == Some(&observed) {
            return None;
        }
        record.addrs.retain(|a| *a != observed);
        if record.addrs.is_empty() {
            record.addrs.push(observed);
        } else {
            record.addrs[0] = observed;
        }
        Some(Message::DirectoryUpsert {
            record: record.clone(),
        })
    }

    /// The snapshot a mesh peer receives when it connects.
    ///
    /// Sent as a `DirectorySnapshot` then `DirectorySnapshotMore`s, each small
    /// enough for one frame (a record is at most ~230 bytes with [`MAX_ADDRS`]
    /// IPv6 addresses).
    pub fn snapshot(&self) -> Vec<Message> {
        let records: Vec<AgentRecord> = self.local.values().cloned().collect();
        let mut chunks = records.chunks(SNAPSHOT_CHUNK);
        let first = chunks
            .next()
            .map(<[AgentRecord]>::to_vec)
            .unwrap_or_default();
        std::iter::once(Message::DirectorySnapshot { records: first })
            .chain(chunks.map(|c| Message::DirectorySnapshotMore {
                records: c.to_vec(),
            }))
            .collect()
    }

    /// Apply a directory message from mesh peer `from`. Returns false if the
    /// message is not a directory update (the caller treats that as a protocol error).
    pub fn apply(&mut self, from: PeerId, msg: &Message) -> bool {
        let table = self.remote.entry(from).or_default();
        match msg {
            Message::DirectorySnapshot { records } => {
                table.clear();
                table.extend(records.iter().map(|r| (r.peer, r.clone())));
            }
            Message::DirectorySnapshotMore { records } => {
                table.extend(records.iter().map(|r| (r.peer, r.clone())));
            }
            Message::DirectoryUpsert { record } => {
                table.insert(record.peer, record.clone());
            }
            Message::DirectoryRemove { peer } => {
                table.remove(peer);
            }
            _ => return false,
        }
        true
    }

    /// Forget everything learned from mesh peer `from` (it disconnected).
    pub fn drop_peer(&mut self, from: &PeerId) {
        self.remote.remove(from);
    }

    /// Find an agent: a local registration first, then any mesh peer's.
    pub fn lookup(&self, agent: &PeerId) -> Option<AgentRecord> {
        self.local.get(agent).cloned().or_else(|| {
            self.remote
                .values()
                .find_map(|table| table.get(agent).cloned())
        })
    }

    /// Distinct agents known (local and remote).
    pub fn len(&self) -> usize {
        let mut all: std::collections::HashSet<&PeerId> = self.local.keys().collect();
        for table in self.remote.values() {
            all.extend(table.keys());
        }
        all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn record(agent: u8, home: u8) -> AgentRecord {
        AgentRecord {
            peer: id(agent),
            addrs: vec![format!("127.0.0.{agent}:1000").parse().unwrap()],
            home: id(home),
        }
    }

    #[test]
    fn lookups_see_local_and_mesh_records_until_the_peer_leaves() {
        // Node 1 registers agent 10; node 2 learns it through the messages.
        let mut n1 = Directory::default();
        let mut n2 = Directory::default();
        let upsert = n1.register(record(10, 1));
        assert!(n2.apply(id(1), &upsert));
        assert_eq!(n2.lookup(&id(10)), Some(record(10, 1)));

        let removal = n1.unregister(&id(10)).unwrap();
        assert!(n2.apply(id(1), &removal));
        assert_eq!(n2.lookup(&id(10)), None);

        n1.register(record(11, 1));
        for msg in n1.snapshot() {
            assert!(n2.apply(id(1), &msg));
        }
        assert_eq!(n2.len(), 1);
        n2.drop_peer(&id(1));
        assert_eq!(n2.lookup(&id(11)), None);
        assert!(n2.is_empty());
    }

    #[test]
    fn a_moved_agent_gets_its_new_observed_address_first() {
        let mut d = Directory::default();
        d.register(record(10, 1));
        let old = record(10, 1).addrs[0];
        assert_eq!(d.observed_moved(&id(10), old), None);
        let new: std::net::SocketAddr = "198.51.100.9:4000".parse().unwrap();
        let Some(Message::DirectoryUpsert { record: r }) = d.observed_moved(&id(10), new) else {
            panic!("expected an update");
        };
        assert_eq!(r.addrs, vec![new]);
        assert_eq!(d.lookup(&id(10)).unwrap().addrs, vec![new]);
        // Unknown agents are ignored.
        assert_eq!(d.observed_moved(&id(99), new), None);
    }

    #[test]
    fn snapshot_replaces_what_a_peer_said_before() {
        let mut d = Directory::default();
        d.apply(
            id(1),
            &Message::DirectoryUpsert {
                record: record(10, 1),
            },
        );
        d.apply(
            id(1),
            &Message::DirectorySnapshot {
                records: vec![record(11, 1)],
            },
        );
        assert_eq!(d.lookup(&id(10)), None);
        assert!(d.lookup(&id(11)).is_some());
    }

    /// A snapshot of many records with the largest addresses fits in frames.
    #[test]
    fn large_snapshots_are_split_into_frames_that_fit() {
        let mut d = Directory::default();
        for i in 0..1000u16 {
            let mut peer = [0u8; 32];
            peer[..2].copy_from_slice(&i.to_be_bytes());
            d.register(AgentRecord {
                peer: PeerId::from_bytes(peer),
                addrs: (0..MAX_ADDRS as u16)
                    .map(|p| {
                        format!("[2001:db8:ffff:ffff:ffff:ffff:ffff:{p:x}]:65535")
                            .parse()
                            .unwrap()
                    })
                    .collect(),
                home: id(1),
            });
        }
        let msgs = d.snapshot();
        assert_eq!(msgs.len(), 5);
        let mut other = Directory::default();
        for m in &msgs {
            let frame = x0x_proto::wire::encode(m).expect("each part fits in a frame");
            assert!(frame.len() < x0x_proto::wire::MAX_FRAME_LEN);
            assert!(other.apply(id(1), m));
        }
        assert_eq!(other.len(), 1000);
    }

    #[test]
    fn non_directory_messages_are_refused() {
        let mut d = Directory::default();
        assert!(!d.apply(id(1), &Message::Lookup { peer: id(2) }));
    }
}
