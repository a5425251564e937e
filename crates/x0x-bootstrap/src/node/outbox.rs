//! What a node has to send on one peer's control stream.
//!
//! For a mesh peer, directory changes coalesce per agent (only the latest
//! upsert or removal of an agent waits), so a slow peer costs memory
//! bounded by the directory, never a closed link and a full resync. Other
//! frames queue up to a limit; beyond it they are dropped and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use x0x_proto::identity::PeerId;
use x0x_proto::wire::Message;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Message>,
    /// Agents with a directory change waiting, in the order they changed.
    order: VecDeque<PeerId>,
    latest: HashMap<PeerId, Message>,
    closed: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limit: usize,
}

impl Outbox {
    /// An outbox holding at most `limit` frames besides coalesced directory changes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a frame. Returns false if it was dropped (queue full or closed).
    pub fn push(&self, msg: Message) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        match &msg {
            Message::DirectoryUpsert { record } => {
                let agent = record.peer;
                Self::coalesce(&mut s, agent, msg);
            }
            Message::DirectoryRemove { peer } => {
                let agent = *peer;
                Self::coalesce(&mut s, agent, msg);
            }
            _ if s.queue.len() >= self.limit => return false,
            _ => s.queue.push_back(msg),
        }
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Queue frames that must all go out, in order, ahead of any directory
    /// change queued later (a snapshot; bounded by the directory's size).
    pub fn push_all(&self, msgs: impl IntoIterator<Item = Message>) {
        let mut s = self.lock();
        s.queue.extend(msgs);
        drop(s);
        self.notify.notify_one();
    }

    fn coalesce(s: &mut State, agent: PeerId, msg: Message) {
        if s.latest.insert(agent, msg).is_none() {
            s.order.push_back(agent);
        }
    }

    /// Frames waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.queue.len() + s.latest.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop accepting frames; `next` returns `None` once drained.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// The next frame to send, waiting for one. `None` once closed and empty.
    pub async fn next(&self) -> Option<Message> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(m) = s.queue.pop_front() {
                    return Some(m);
                }
                while let Some(agent) = s.order.pop_front() {
                    if let Some(m) = s.latest.remove(&agent) {
                        return Some(m);
                    }
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x0x_proto::wire::AgentRecord;

    fn upsert(agent: u8, port: u16) -> Message {
        Message::DirectoryUpsert {
            record: AgentRecord {
                peer: PeerId::from_bytes([agent; 32]),
                addrs: vec![format!("10.0.0.1:{port}").parse().unwrap()],
                home: PeerId::from_bytes([0; 32]),
            },
        }
    }

    #[tokio::test]
    async fn directory_changes_coalesce_per_agent_so_a_slow_peer_costs_bounded_memory() {
        let o = Outbox::new(4);
        for round in 0..1000u16 {
            for agent in 0..10 {
                assert!(o.push(upsert(agent, round + 1)));
            }
        }
        // 10 000 changes of 10 agents: 10 frames wait, each the latest.
        assert_eq!(o.len(), 10);
        let first = o.next().await.unwrap();
        assert_eq!(first, upsert(0, 1000));
        o.push(Message::DirectoryRemove {
            peer: PeerId::from_bytes([5; 32]),
        });
        let mut rest = Vec::new();
        while !o.is_empty() {
            rest.push(o.next().await.unwrap());
        }
        assert_eq!(rest.len(), 9);
        assert!(rest.contains(&Message::DirectoryRemove {
            peer: PeerId::from_bytes([5; 32])
        }));
    }

    #[tokio::test]
    async fn other_frames_are_bounded_and_snapshots_go_first() {
        let o = Outbox::new(2);
        let intro = |n: u8| Message::CircuitClosed {
            cid: n as u64,
            reason: x0x_proto::wire::CircuitEnd::Idle,
        };
        o.push(upsert(1, 1));
        assert!(o.push(intro(1)));
        assert!(o.push(intro(2)));
        assert!(!o.push(intro(3)), "the third frame is dropped");
        o.push_all([Message::DirectorySnapshot { records: vec![] }]);
        assert_eq!(o.next().await, Some(intro(1)));
        assert_eq!(o.next().await, Some(intro(2)));
        assert_eq!(
            o.next().await,
            Some(Message::DirectorySnapshot { records: vec![] })
        );
        assert_eq!(o.next().await, Some(upsert(1, 1)));
        o.close();
        assert!(!o.push(intro(4)));
        assert_eq!(o.next().await, None);
    }
}
