//! Live connections of a node, one per remote [`PeerId`].
//!
//! Two nodes that dial each other at the same moment end up with two
//! connections. Both sides keep the same one: the connection dialed by the
//! smaller `PeerId`. A connection from a *new incarnation* of a peer (it
//! restarted, its old connection may not have timed out yet) always
//! replaces the old one.

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;

use tokio::sync::watch;

use x0x_proto::identity::PeerId;
use x0x_proto::wire::PeerKind;

use super::outbox::Outbox;

/// One live, admitted connection.
#[derive(Debug, Clone)]
pub struct Entry {
    pub conn: quinn::Connection,
    pub kind: PeerKind,
    /// The remote process's incarnation (from `Hello`/`Welcome`).
    pub incarnation: u64,
    /// Who opened this connection.
    pub dialer: PeerId,
    /// Frames to send on the connection's control stream.
    pub outbox: Arc<Outbox>,
    /// The remote address when it was admitted (the address tracker's
    /// starting point).
    pub admitted_addr: std::net::SocketAddr,
}

/// Whether a newly established connection replaces the existing one.
pub fn new_wins(me: PeerId, peer: PeerId, old: (u64, PeerId), new: (u64, PeerId)) -> bool {
    let ((old_inc, old_dialer), (new_inc, new_dialer)) = (old, new);
    if old_inc != new_inc || old_dialer == new_dialer {
        // The peer restarted, or the same side redialed: the newer one is live.
        return true;
    }
    // Simultaneous open: keep the connection the smaller id dialed.
    new_dialer == me.min(peer)
}

/// What happened to a connection offered to the registry.
#[derive(Debug)]
pub enum Admission {
    /// Kept; `replaced` is the connection it displaced, to be closed.
    /// `simultaneous`: both sides dialed and the peer has not restarted,
    /// so the peer may still be using the displaced one until it admits
    /// the new one too.
    Accepted {
        replaced: Option<quinn::Connection>,
        simultaneous: bool,
    },
    /// The existing connection wins; close the new one.
    Duplicate,
}

#[derive(Debug)]
pub struct Registry {
    me: PeerId,
    map: Mutex<HashMap<PeerId, Entry>>,
    version: watch::Sender<u64>,
}

impl Registry {
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            map: Mutex::new(HashMap::new()),
            version: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn admit(&self, peer: PeerId, entry: Entry) -> Admission {
        let admission = {
            let mut map = self.lock();
            match map.get(&peer) {
                Some(old)
                    if !new_wins(
                        self.me,
                        peer,
                        (old.incarnation, old.dialer),
                        (entry.incarnation, entry.dialer),
                    ) =>
                {
                    return Admission::Duplicate;
                }
                old => {
                    let simultaneous = old.is_some_and(|o| {
                        o.incarnation == entry.incarnation && o.dialer != entry.dialer
                    });
                    Admission::Accepted {
                        replaced: map.insert(peer, entry).map(|old| old.conn),
                        simultaneous,
                    }
                }
            }
        };
        self.bump();
        admission
    }

    /// Remove `peer` if its entry is still the connection `stable_id`.
    pub fn remove(&self, peer: &PeerId, stable_id: usize) -> Option<Entry> {
        let removed = {
            let mut map = self.lock();
            match map.get(peer) {
                Some(e) if e.conn.stable_id() == stable_id => map.remove(peer),
                _ => None,
            }
        };
        if removed.is_some() {
            self.bump();
        }
        removed
    }

    pub fn get(&self, peer: &PeerId) -> Option<Entry> {
        self.lock().get(peer).cloned()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.lock().contains_key(peer)
    }

    /// Entries of one kind.
    pub fn of_kind(&self, kind: PeerKind) -> Vec<(PeerId, Entry)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(p, e)| (*p, e.clone()))
            .collect()
    }

    /// (mesh nodes, agents) connected now.
    pub fn counts(&self) -> (usize, usize) {
        let map = self.lock();
        let nodes = map.values().filter(|e| e.kind == PeerKind::Node).count();
        (nodes, map.len() - nodes)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// A receiver that changes whenever a connection is admitted or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[test]
    fn simultaneous_open_keeps_the_same_connection_on_both_sides() {
        let (a, b) = (id(1), id(2));
        // Connection dialed by a (the smaller id) and by b, same incarnations.
        let by_a = (7, a);
        let by_b = (7, b);
        // At a, whichever arrives second: the one a dialed is kept.
        assert!(new_wins(a, b, by_b, by_a));
        assert!(!new_wins(a, b, by_a, by_b));
        // At b, the same decision.
        assert!(new_wins(b, a, by_b, by_a));
        assert!(!new_wins(b, a, by_a, by_b));
    }

    #[test]
    fn a_restarted_peer_replaces_its_stale_connection() {
        let (a, b) = (id(1), id(2));
        // Old connection dialed by a (would win a tie), new one from b's new incarnation.
        assert!(new_wins(a, b, (7, a), (8, b)));
    }

    #[test]
    fn a_redial_from_the_same_side_replaces_the_old_connection() {
        let (a, b) = (id(1), id(2));
        assert!(new_wins(a, b, (7, b), (7, b)));
    }
}
