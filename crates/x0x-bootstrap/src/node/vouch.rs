//! Vouching for agents' public addresses.
//!
//! An agent may report a public address the node did not observe (its
//! global IPv6 address, a port its router mapped for it). Before the node
//! lists it in the agent's record, it sends a random nonce there from its
//! UDP socket; only an agent that receives packets at that address can
//! return the nonce (`VouchProof`). So no agent can get another host's
//! address into the directory and have every other agent send packets
//! there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use x0x_proto::identity::PeerId;

/// How long a nonce stays valid.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(10);
/// Nonces outstanding at once, node-wide.
const MAX_PENDING: usize = 4096;

#[derive(Debug)]
struct Pending {
    agent: PeerId,
    addr: SocketAddr,
    sent: Instant,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<[u8; 16], Pending>,
    /// Vouched addresses per agent, and how many it asked for.
    agents: HashMap<PeerId, (Vec<SocketAddr>, usize)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Vouches {
    state: Mutex<State>,
}

/// Why a vouch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VouchRefused {
    TooMany,
    Busy,
}

impl Vouches {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A nonce for `agent` to prove `addr` with, if it may ask for one more.
    pub fn begin(
        &self,
        agent: PeerId,
        addr: SocketAddr,
        per_agent: usize,
        now: Instant,
    ) -> Result<[u8; 16], VouchRefused> {
        let mut s = self.lock();
        if s.pending.len() >= MAX_PENDING {
            return Err(VouchRefused::Busy);
        }
        let asked = &mut s.agents.entry(agent).or_default().1;
        if *asked >= per_agent {
            return Err(VouchRefused::TooMany);
        }
        *asked += 1;
        let nonce: [u8; 16] = rand::random();
        s.pending.insert(
            nonce,
            Pending {
                agent,
                addr,
                sent: now,
            },
        );
        Ok(nonce)
    }

    /// The address `agent` proved with `nonce`, now vouched for.
    pub fn prove(&self, agent: PeerId, nonce: &[u8; 16], now: Instant) -> Option<SocketAddr> {
        let mut s = self.lock();
        let p = s.pending.get(nonce)?;
        if p.agent != agent || now.saturating_duration_since(p.sent) > NONCE_LIFETIME {
            return None;
        }
        let addr = s.pending.remove(nonce)?.addr;
        let list = &mut s.agents.entry(agent).or_default().0;
        if !list.contains(&addr) {
            list.push(addr);
        }
        Some(addr)
    }

    /// Addresses vouched for `agent`.
    pub fn vouched(&self, agent: &PeerId) -> Vec<SocketAddr> {
        self.lock()
            .agents
            .get(agent)
            .map(|(v, _)| v.clone())
            .unwrap_or_default()
    }

    /// The agent left.
    pub fn forget(&self, agent: &PeerId) {
        let mut s = self.lock();
        s.agents.remove(agent);
        s.pending.retain(|_, p| p.agent != *agent);
    }

    /// Drop nonces older than their lifetime.
    pub fn expire(&self, now: Instant) {
        self.lock()
            .pending
            .retain(|_, p| now.saturating_duration_since(p.sent) <= NONCE_LIFETIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_that_got_the_nonce_in_time_gets_the_address() {
        let v = Vouches::default();
        let (a, b) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
        let addr: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let now = Instant::now();
        let nonce = v.begin(a, addr, 2, now).unwrap();
        assert_eq!(v.prove(b, &nonce, now), None, "another agent");
        assert_eq!(v.prove(a, &[0; 16], now), None, "a made-up nonce");
        assert_eq!(v.prove(a, &nonce, now), Some(addr));
        assert_eq!(v.prove(a, &nonce, now), None, "nonces are single-use");
        assert_eq!(v.vouched(&a), vec![addr]);
        let late = v.begin(a, addr, 2, now).unwrap();
        assert_eq!(v.prove(a, &late, now + NONCE_LIFETIME * 2), None);
        assert_eq!(v.begin(a, addr, 2, now), Err(VouchRefused::TooMany));
        v.forget(&a);
        assert!(v.vouched(&a).is_empty());
    }
}
