//! The coordinator role: a directory of agents shared across the mesh.
//!
//! Each node owns the records of agents registered with it (`local`). It
//! sends those to every mesh peer (a snapshot on connect, then upserts and
//! removals) and keeps the records it hears from each peer (`remote`), so
//! any node can answer a lookup for any agent. Records learned from a peer
//! are dropped when that peer disconnects, and re-sent when it comes back:
//! during a partition each side keeps exactly what it can reach.
//!
//! A mesh member is believed only about its own agents: a record whose
//! `home` is not the peer that sent it, with too many addresses, or beyond
//! the per-peer record limit is rejected and counted ([`Rejected`]), and
//! addresses that fail the address policy are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;

use x0x_proto::identity::PeerId;
use x0x_proto::policy;
use x0x_proto::wire::{AgentRecord, MAX_HOMES, MAX_SNAPSHOT_RECORDS, Message, PeerInfo};

pub use x0x_proto::wire::MAX_ADDRS;

/// Records per snapshot message (each part fits in one frame).
pub const SNAPSHOT_CHUNK: usize = MAX_SNAPSHOT_RECORDS;

/// Why a directory message from a mesh peer was not (fully) applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// A record naming another node as its home.
    ForeignHome,
    /// A record with more than [`MAX_ADDRS`] addresses.
    TooManyAddrs,
    /// The peer already holds its limit of records here.
    PeerFull,
    /// Not a directory message.
    NotDirectory,
}

impl Rejected {
    /// The label counted in `x0x_directory_rejected_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::ForeignHome => "foreign_home",
            Self::TooManyAddrs => "too_many_addrs",
            Self::PeerFull => "peer_full",
            Self::NotDirectory => "not_directory",
        }
    }
}

#[derive(Debug)]
pub struct Directory {
    local: HashMap<PeerId, AgentRecord>,
    remote: HashMap<PeerId, HashMap<PeerId, AgentRecord>>,
    /// How many tables (local and each peer's) hold each agent: `len()`
    /// without a scan.
    holders: HashMap<PeerId, u32>,
    per_peer_limit: usize,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Directory {
    /// A directory that holds at most `per_peer_limit` records from each mesh peer.
    pub fn new(per_peer_limit: usize) -> Self {
        Self {
            local: HashMap::new(),
            remote: HashMap::new(),
            holders: HashMap::new(),
            per_peer_limit,
        }
    }

    fn hold(&mut self, agent: PeerId) {
        *self.holders.entry(agent).or_default() += 1;
    }

    fn release(&mut self, agent: &PeerId) {
        if let Some(n) = self.holders.get_mut(agent) {
            *n -= 1;
            if *n == 0 {
                self.holders.remove(agent);
            }
        }
    }

    /// Record an agent registered with this node; returns the update for mesh peers.
    pub fn register(&mut self, record: AgentRecord) -> Message {
        if self.local.insert(record.peer, record.clone()).is_none() {
            self.hold(record.peer);
        }
        Message::DirectoryUpsert { record }
    }

    /// Forget a local agent; returns the update for mesh peers, if it was known.
    pub fn unregister(&mut self, agent: &PeerId) -> Option<Message> {
        self.local.remove(agent)?;
        self.release(agent);
        Some(Message::DirectoryRemove { peer: *agent })
    }

    /// The record of a local agent.
    pub fn local(&self, agent: &PeerId) -> Option<&AgentRecord> {
        self.local.get(agent)
    }

    /// A local agent's connection now comes from `observed` (its NAT
    /// rebound, or it moved). Returns the update for mesh peers if its record changed.
    pub fn observed_moved(&mut self, agent: &PeerId, observed: SocketAddr) -> Option<Message> {
        let record = self.local.get_mut(agent)?;
        if record.addrs.first() == Some(&observed) {
            return None;
        }
        record.addrs.retain(|a| *a != observed);
        record.addrs.insert(0, observed);
        record.addrs.truncate(MAX_ADDRS);
        Some(Message::DirectoryUpsert {
            record: record.clone(),
        })
    }

    /// The snapshot a mesh peer receives when it connects.
    ///
    /// Sent as a `DirectorySnapshot` then `DirectorySnapshotMore`s, each
    /// small enough for one frame.
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

    /// Apply a directory message from mesh peer `from`. Records that break
    /// the rules are skipped; the returned list says which and why.
    pub fn apply(&mut self, from: PeerId, msg: &Message) -> Result<Vec<Rejected>, Rejected> {
        let mut rejected = Vec::new();
        match msg {
            Message::DirectorySnapshot { records } => {
                let old = self.remote.remove(&from).unwrap_or_default();
                for agent in old.keys() {
                    self.release(agent);
                }
                for r in records {
                    self.insert_remote(from, r, &mut rejected);
                }
            }
            Message::DirectorySnapshotMore { records } => {
                for r in records {
                    self.insert_remote(from, r, &mut rejected);
                }
            }
            Message::DirectoryUpsert { record } => self.insert_remote(from, record, &mut rejected),
            Message::DirectoryRemove { peer } => {
                if self
                    .remote
                    .get_mut(&from)
                    .and_then(|t| t.remove(peer))
                    .is_some()
                {
                    self.release(peer);
                }
            }
            _ => return Err(Rejected::NotDirectory),
        }
        Ok(rejected)
    }

    fn insert_remote(&mut self, from: PeerId, record: &AgentRecord, rejected: &mut Vec<Rejected>) {
        if record.home != from {
            return rejected.push(Rejected::ForeignHome);
        }
        if record.addrs.len() > MAX_ADDRS {
            return rejected.push(Rejected::TooManyAddrs);
        }
        let limit = self.per_peer_limit;
        let table = self.remote.entry(from).or_default();
        if !table.contains_key(&record.peer) && table.len() >= limit {
            return rejected.push(Rejected::PeerFull);
        }
        let mut clean = record.clone();
        clean.addrs.retain(policy::is_dialable);
        if table.insert(record.peer, clean).is_none() {
            self.hold(record.peer);
        }
    }

    /// Forget everything learned from mesh peer `from` (it disconnected).
    pub fn drop_peer(&mut self, from: &PeerId) {
        if let Some(table) = self.remote.remove(from) {
            for agent in table.keys() {
                self.release(agent);
            }
        }
    }

    /// What the mesh knows about an agent: every node it is registered
    /// with (this node first) and the union of their addresses, each
    /// node's observed address first.
    pub fn lookup(&self, agent: &PeerId) -> Option<PeerInfo> {
        let records: Vec<&AgentRecord> = self
            .local
            .get(agent)
            .into_iter()
            .chain(self.remote.values().filter_map(|t| t.get(agent)))
            .collect();
        if records.is_empty() {
            return None;
        }
        let mut addrs = Vec::new();
        let push = |a: &SocketAddr, addrs: &mut Vec<SocketAddr>| {
            if !addrs.contains(a) && addrs.len() < MAX_ADDRS {
                addrs.push(*a);
            }
        };
        // Observed addresses (first of each record), then the rest.
        for r in &records {
            if let Some(a) = r.addrs.first() {
                push(a, &mut addrs);
            }
        }
        for r in &records {
            for a in r.addrs.iter().skip(1) {
                push(a, &mut addrs);
            }
        }
        Some(PeerInfo {
            peer: *agent,
            addrs,
            homes: records.iter().map(|r| r.home).take(MAX_HOMES).collect(),
        })
    }

    /// Distinct agents known (local and remote).
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
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
        assert_eq!(n2.apply(id(1), &upsert), Ok(vec![]));
        let info = n2.lookup(&id(10)).unwrap();
        assert_eq!(info.homes, vec![id(1)]);
        assert_eq!(info.addrs, record(10, 1).addrs);

        let removal = n1.unregister(&id(10)).unwrap();
        n2.apply(id(1), &removal).unwrap();
        assert_eq!(n2.lookup(&id(10)), None);

        n1.register(record(11, 1));
        for msg in n1.snapshot() {
            n2.apply(id(1), &msg).unwrap();
        }
        assert_eq!(n2.len(), 1);
        n2.drop_peer(&id(1));
        assert_eq!(n2.lookup(&id(11)), None);
        assert!(n2.is_empty());
    }

    #[test]
    fn an_agent_on_several_nodes_is_one_entry_with_every_home() {
        let mut d = Directory::default();
        d.register(record(10, 0));
        let mut other = record(10, 1);
        other.addrs = vec!["198.51.100.1:9".parse().unwrap()];
        d.apply(
            id(1),
            &Message::DirectoryUpsert {
                record: other.clone(),
            },
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        let info = d.lookup(&id(10)).unwrap();
        assert_eq!(info.homes, vec![id(0), id(1)]);
        assert_eq!(info.addrs, vec![record(10, 0).addrs[0], other.addrs[0]]);
        d.unregister(&id(10));
        assert_eq!(d.len(), 1);
        d.drop_peer(&id(1));
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn a_mesh_member_is_believed_only_about_its_own_agents() {
        let mut d = Directory::new(2);
        // Node 1 claims an agent whose home is node 2: rejected.
        let lie = Message::DirectoryUpsert {
            record: record(10, 2),
        };
        assert_eq!(d.apply(id(1), &lie), Ok(vec![Rejected::ForeignHome]));
        assert_eq!(d.lookup(&id(10)), None);
        // Too many addresses.
        let mut fat = record(11, 1);
        fat.addrs = (0..=MAX_ADDRS as u16)
            .map(|p| format!("10.0.0.1:{}", p + 1).parse().unwrap())
            .collect();
        assert_eq!(
            d.apply(id(1), &Message::DirectoryUpsert { record: fat }),
            Ok(vec![Rejected::TooManyAddrs])
        );
        // The per-peer limit, within a snapshot.
        let snap = Message::DirectorySnapshot {
            records: vec![record(12, 1), record(13, 1), record(14, 1), record(15, 2)],
        };
        assert_eq!(
            d.apply(id(1), &snap),
            Ok(vec![Rejected::PeerFull, Rejected::ForeignHome])
        );
        assert_eq!(d.len(), 2);
        // Undialable addresses are dropped from an accepted record.
        let mut odd = record(12, 1);
        odd.addrs = vec!["0.0.0.0:5".parse().unwrap(), "10.0.0.1:5".parse().unwrap()];
        d.apply(id(1), &Message::DirectoryUpsert { record: odd })
            .unwrap();
        assert_eq!(
            d.lookup(&id(12)).unwrap().addrs,
            vec!["10.0.0.1:5".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            d.apply(id(1), &Message::Lookup { peer: id(1) }),
            Err(Rejected::NotDirectory)
        );
    }

    #[test]
    fn a_moved_agent_gets_its_new_observed_address_first() {
        let mut d = Directory::default();
        d.register(record(10, 1));
        let old = record(10, 1).addrs[0];
        assert_eq!(d.observed_moved(&id(10), old), None);
        let new: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        let Some(Message::DirectoryUpsert { record: r }) = d.observed_moved(&id(10), new) else {
            panic!("expected an update");
        };
        assert_eq!(r.addrs, vec![new, old]);
        assert_eq!(d.lookup(&id(10)).unwrap().addrs[0], new);
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
        )
        .unwrap();
        d.apply(
            id(1),
            &Message::DirectorySnapshot {
                records: vec![record(11, 1)],
            },
        )
        .unwrap();
        assert_eq!(d.lookup(&id(10)), None);
        assert!(d.lookup(&id(11)).is_some());
        assert_eq!(d.len(), 1);
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
            assert_eq!(other.apply(id(1), m), Ok(vec![]));
        }
        assert_eq!(other.len(), 1000);
    }
}
