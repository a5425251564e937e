//! Keeping the bootstrap mesh connected: one task per configured peer
//! dials it (in parallel with all the others), retries with capped
//! exponential backoff plus jitter, and redials when the connection dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Shared, session};
use crate::config::MeshPeer;
use x0x_proto::addr::PeerAddr;
use x0x_proto::backoff::Backoff;
use x0x_proto::transport;

/// Delay before the first retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay between two dials of one peer.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How long one dial may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that lived less than this is treated as a failed attempt.
const STABLE_AFTER: Duration = Duration::from_secs(2);

/// Keep the configured peer at `addr` connected until shutdown.
pub async fn maintain(shared: Arc<Shared>, peer: MeshPeer) {
    let addr = peer.addr.clone();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut changes = shared.registry.subscribe();
    loop {
        changes.borrow_and_update();
        if let Some(peer) = shared.mesh_id(&addr)
            && shared.registry.is_connected(&peer)
        {
            // Connected (in either direction): wait until that changes.
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        }
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = dial(&shared, &addr, peer.id) => r,
        };
        let retry_in = match attempt {
            Ok((conn, peer)) if peer == shared.peer_id => {
                warn!(%addr, "configured peer is this node itself; not dialing it again");
                conn.close(x0x_proto::wire::close::NORMAL, b"self");
                shared.mark_self(&addr);
                return;
            }
            Ok((conn, found)) if peer.id.is_some_and(|pin| pin != found) => {
                warn!(%addr, %found, "configured peer answered with another identity than the pinned one");
                conn.close(
                    x0x_proto::wire::close::WRONG_PEER,
                    b"not the pinned identity",
                );
                shared.metrics.dial_failures.inc();
                backoff.next_delay()
            }
            Ok((conn, peer)) => {
                shared.learn_mesh_id(&addr, peer);
                shared.metrics.connections_dialed.inc();
                let started = Instant::now();
                session::outbound(shared.clone(), conn, peer).await;
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                    Duration::ZERO
                } else if shared.registry.is_connected(&peer) {
                    Duration::ZERO // lost a simultaneous open; the other connection lives
                } else {
                    backoff.next_delay()
                }
            }
            Err(e) => {
                shared.metrics.dial_failures.inc();
                debug!(%addr, "dial failed: {e}");
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry_in) => {}
        }
    }
}

async fn dial(
    shared: &Shared,
    addr: &PeerAddr,
    pin: Option<x0x_proto::PeerId>,
) -> Result<(quinn::Connection, x0x_proto::PeerId), String> {
    let resolved = addr
        .resolve()
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?;
    shared.learn_mesh_addrs(&resolved, pin);
    transport::dial_any(
        &shared.endpoint,
        &shared.mesh_client,
        &resolved,
        DIAL_TIMEOUT,
        None,
    )
    .await
    .map_err(|e| e.to_string())
}
