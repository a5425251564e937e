//! The path task: drives the socket's timers and reopens relay circuits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use x0x_proto::PeerId;

use super::connect::reopen_circuits;
use super::{Inner, links, lock};

/// How often the socket's timers run.
const TICK: Duration = Duration::from_millis(100);
/// How often circuits to one peer may be asked for again.
const CIRCUIT_RETRY: Duration = Duration::from_secs(3);
/// How often one node's link may be poked.
const POKE_EVERY: Duration = Duration::from_millis(500);

pub(super) async fn maintain(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked: HashMap<PeerId, Instant> = HashMap::new();
    let mut poked: HashMap<std::net::SocketAddr, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let chores = inner.socket.maintain(now);
        asked.retain(|_, t| now.saturating_duration_since(*t) < CIRCUIT_RETRY);
        let due: Vec<PeerId> = chores
            .want_circuits
            .into_iter()
            .filter(|p| !asked.contains_key(p))
            .collect();
        for p in &due {
            asked.insert(*p, now);
        }
        if !due.is_empty() {
            reopen_circuits(&inner, due).await;
        }
        poked.retain(|_, t| now.saturating_duration_since(*t) < POKE_EVERY);
        let links: Vec<(std::net::SocketAddr, quinn::Connection)> = lock(&inner.links)
            .values()
            .map(|l| (l.conn.remote_address(), l.conn.clone()))
            .collect();
        for (addr, conn) in links {
            let wanted = chores.poke_all
                || chores
                    .poke_nodes
                    .iter()
                    .any(|a| x0x_proto::canonical(*a) == x0x_proto::canonical(addr));
            if wanted && !poked.contains_key(&addr) {
                poked.insert(addr, now);
                tokio::spawn(links::poke(inner.clone(), conn));
            }
        }
    }
}
