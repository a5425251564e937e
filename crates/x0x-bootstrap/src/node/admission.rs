//! Who gets a handshake: the node's first line of defence.
//!
//! Every inbound connection attempt (`quinn::Incoming`) passes, in order:
//!
//! 1. **Address validation.** A source that has not proven it receives
//!    packets at its address gets a stateless Retry (no state kept) when
//!    the handshakes in flight exceed `retry_above_handshakes`, and always
//!    when it claims a configured mesh peer's address. Spoofed floods so
//!    cost the node one small packet each and never a handshake.
//! 2. **Validated mesh peers** are then exempt from the limits below (an
//!    agent flood cannot lock the mesh out), and get the mesh transport.
//! 3. **Limits**: handshakes in flight (`max_handshakes`), connections and
//!    handshakes per source IPv4 address or IPv6 /64
//!    (`connections_per_ip`), new connections per second per source
//!    (`accept_per_sec`), and connections in all (`max_connections`).
//!
//! Each refusal is counted in `x0x_connections_rejected_total{reason}`
//! with the limit's key as the reason. A [`Ticket`] holds the source's
//! connection slot for the connection's life.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bucket::Bucket;
use crate::config::Limits;
use crate::ipkey::IpKey;

/// Source addresses tracked before idle ones are pruned.
const TRACKED_SOURCES: usize = 4096;

#[derive(Debug)]
struct Source {
    /// Connections and handshakes from this source now.
    held: usize,
    bucket: Bucket,
}

/// What to do with an incoming connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send a stateless Retry.
    Retry,
    /// Accept it as a (validated) mesh peer.
    Mesh,
    /// Accept it, holding a slot of its source.
    Accept,
    /// Refuse it; the reason is the limit's key.
    Refuse(&'static str),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    handshakes: AtomicUsize,
    sources: Mutex<HashMap<IpKey, Source>>,
}

/// A source's slot, held while its connection lives.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    key: Option<IpKey>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut sources = self.admission.lock();
            if let Some(s) = sources.get_mut(&key) {
                s.held = s.held.saturating_sub(1);
            }
        }
    }
}

/// Counts one handshake in flight until dropped.
#[derive(Debug)]
pub struct Handshake(Arc<Admission>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            limits: *limits,
            handshakes: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpKey, Source>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handshakes in flight now.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Decide about an attempt from `remote`. `validated`: the source
    /// proved its address (a Retry token); `may_retry`: a Retry is still
    /// possible; `mesh`: the source is a configured mesh peer's address;
    /// `connections`: connections held now.
    pub fn judge(
        &self,
        remote: SocketAddr,
        validated: bool,
        may_retry: bool,
        mesh: bool,
        connections: usize,
        now: Instant,
    ) -> Verdict {
        let l = &self.limits;
        let busy = self.handshakes() >= l.retry_above_handshakes;
        if !validated && may_retry && (mesh || busy) {
            return Verdict::Retry;
        }
        if mesh && validated {
            return Verdict::Mesh;
        }
        if self.handshakes() >= l.max_handshakes {
            return Verdict::Refuse("max_handshakes");
        }
        if connections >= l.max_connections {
            return Verdict::Refuse("max_connections");
        }
        let mut sources = self.lock();
        if sources.len() >= TRACKED_SOURCES {
            sources.retain(|_, s| s.held > 0 || !s.bucket.is_full(now));
        }
        let source = sources.entry(IpKey::of(&remote)).or_insert_with(|| Source {
            held: 0,
            bucket: Bucket::new(l.accept_per_sec, now),
        });
        if source.held >= l.connections_per_ip {
            return Verdict::Refuse("connections_per_ip");
        }
        if !source.bucket.take(1.0, now) {
            return Verdict::Refuse("accept_per_sec");
        }
        Verdict::Accept
    }

    /// Start a handshake admitted by [`Self::judge`]: its counter, and
    /// (unless `mesh`) its source's slot.
    pub fn start(self: &Arc<Self>, remote: SocketAddr, mesh: bool) -> (Handshake, Ticket) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let key = (!mesh).then(|| IpKey::of(&remote));
        if let Some(key) = key
            && let Some(s) = self.lock().get_mut(&key)
        {
            s.held += 1;
        }
        (
            Handshake(self.clone()),
            Ticket {
                admission: self.clone(),
                key,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn admission(f: impl FnOnce(&mut Limits)) -> Arc<Admission> {
        let mut l = Limits::default();
        f(&mut l);
        Admission::new(&l)
    }

    #[test]
    fn unvalidated_sources_get_a_retry_when_busy_and_mesh_claims_always() {
        let a = admission(|l| l.retry_above_handshakes = 2);
        let now = Instant::now();
        let src = addr("198.51.100.1:5");
        assert_eq!(a.judge(src, false, true, false, 0, now), Verdict::Accept);
        // A source claiming a mesh peer's address must prove it.
        assert_eq!(a.judge(src, false, true, true, 0, now), Verdict::Retry);
        assert_eq!(a.judge(src, true, false, true, 0, now), Verdict::Mesh);
        // Busy: everyone unvalidated is asked to prove its address.
        let _h: Vec<_> = (0..2).map(|_| a.start(src, false)).collect();
        assert_eq!(a.judge(src, false, true, false, 0, now), Verdict::Retry);
        assert_eq!(a.judge(src, true, false, false, 0, now), Verdict::Accept);
        // 0 means always.
        let a = admission(|l| l.retry_above_handshakes = 0);
        assert_eq!(a.judge(src, false, true, false, 0, now), Verdict::Retry);
    }

    #[test]
    fn handshakes_in_flight_are_capped_and_released() {
        let a = admission(|l| {
            l.max_handshakes = 2;
            l.retry_above_handshakes = 100;
        });
        let now = Instant::now();
        let h1 = a.start(addr("10.0.0.1:1"), false);
        let _h2 = a.start(addr("10.0.0.2:1"), false);
        assert_eq!(
            a.judge(addr("10.0.0.3:1"), true, false, false, 0, now),
            Verdict::Refuse("max_handshakes")
        );
        drop(h1);
        assert_eq!(a.handshakes(), 1);
        assert_eq!(
            a.judge(addr("10.0.0.3:1"), true, false, false, 0, now),
            Verdict::Accept
        );
    }

    #[test]
    fn one_source_is_held_at_its_cap_others_are_not() {
        let a = admission(|l| {
            l.connections_per_ip = 3;
            l.retry_above_handshakes = 100;
        });
        let now = Instant::now();
        let mut held = Vec::new();
        for port in 0..3 {
            let src = addr(&format!("[2001:db8:1:2::{port}]:9"));
            assert_eq!(a.judge(src, true, false, false, 0, now), Verdict::Accept);
            held.push(a.start(src, false));
        }
        // Same /64, another address: still the same source.
        let same = addr("[2001:db8:1:2::99]:9");
        assert_eq!(
            a.judge(same, true, false, false, 0, now),
            Verdict::Refuse("connections_per_ip")
        );
        assert_eq!(
            a.judge(addr("[2001:db8:1:3::1]:9"), true, false, false, 0, now),
            Verdict::Accept
        );
        // A connection ends (handshake and ticket dropped): the slot frees.
        held.pop();
        assert_eq!(a.judge(same, true, false, false, 0, now), Verdict::Accept);
    }

    #[test]
    fn accept_rate_per_source_and_total_connections() {
        let a = admission(|l| {
            l.accept_per_sec = 2;
            l.max_connections = 10;
        });
        let now = Instant::now();
        let src = addr("10.0.0.1:1");
        assert_eq!(a.judge(src, true, false, false, 0, now), Verdict::Accept);
        assert_eq!(a.judge(src, true, false, false, 0, now), Verdict::Accept);
        assert_eq!(
            a.judge(src, true, false, false, 0, now),
            Verdict::Refuse("accept_per_sec")
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(a.judge(src, true, false, false, 0, later), Verdict::Accept);
        assert_eq!(
            a.judge(addr("10.0.0.2:1"), true, false, false, 10, now),
            Verdict::Refuse("max_connections")
        );
        // Mesh peers are exempt from all of it.
        assert_eq!(a.judge(src, true, false, true, 10, now), Verdict::Mesh);
    }
}
