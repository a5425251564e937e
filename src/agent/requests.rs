//! Requests to bootstrap nodes, and how they are spread over several.
//!
//! A request that any node can answer never waits serially on a dead
//! link: lookups go to every connected node at once (the first that knows
//! the peer wins; "not found" returns once every node answered, or a short
//! grace after the first one did), introductions go to the fastest node
//! first and to the next one if it has not answered within a hedge delay.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use x0x_proto::PeerId;
use x0x_proto::wire::{self, Message, PeerInfo, ReadLimits, Refusal};

use super::Inner;
use super::links::STEP_TIMEOUT;
use crate::error::AgentError;

/// After the first "not found", how long other nodes may still answer.
const NEGATIVE_GRACE: Duration = Duration::from_millis(250);
/// An introduction not answered within this goes to the next node too.
const HEDGE_AFTER: Duration = Duration::from_millis(300);

/// One request/response on its own stream.
pub(crate) async fn request(
    conn: &quinn::Connection,
    msg: &Message,
) -> Result<Message, AgentError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        wire::write_frame(&mut send, msg).await?;
        let _ = send.finish();
        wire::read_frame(&mut recv, &ReadLimits::TO_AGENT)
            .await?
            .ok_or_else(|| AgentError::Protocol("stream ended without a reply".into()))
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| AgentError::Timeout {
            what: "bootstrap request",
            after: STEP_TIMEOUT,
        })?
}

/// A request to one node, tagged with the node.
async fn ask(
    node: PeerId,
    conn: &quinn::Connection,
    msg: &Message,
) -> (PeerId, Result<Message, AgentError>) {
    (node, request(conn, msg).await)
}

fn refused(node: PeerId, msg: Message) -> AgentError {
    match msg {
        Message::Refused { reason } => AgentError::Refused { node, reason },
        other => AgentError::Protocol(format!("unexpected reply {other:?}")),
    }
}

/// See [`crate::Agent::lookup`].
pub(super) async fn lookup(inner: &Inner, peer: PeerId) -> Result<Option<PeerInfo>, AgentError> {
    let links = inner.links_by_rtt();
    if links.is_empty() {
        return Err(AgentError::NotJoined);
    }
    let msg = Message::Lookup { peer };
    let mut asks: FuturesUnordered<_> = links
        .iter()
        .map(|(node, conn)| ask(*node, conn, &msg))
        .collect();
    let mut negative = false;
    let mut last_err = None;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = asks.next() => match next {
                None => break,
                Some((_, Ok(Message::Found { info: Some(info) }))) => {
                    inner.remember(&info);
                    return Ok(Some(info));
                }
                Some((_, Ok(Message::Found { info: None }))) => {
                    if !negative {
                        negative = true;
                        grace.as_mut().reset(tokio::time::Instant::now() + NEGATIVE_GRACE);
                    }
                }
                Some((node, Ok(other))) => last_err = Some(refused(node, other)),
                Some((_, Err(e))) => last_err = Some(e),
            },
            _ = &mut grace, if negative => break,
        }
    }
    if negative {
        return Ok(None);
    }
    Err(last_err.unwrap_or(AgentError::NotJoined))
}

/// Ask a coordinator to introduce us to `peer`: fastest node first,
/// hedged to the next ones. Returns what the directory knows about it.
pub(super) async fn introduce(inner: &Inner, peer: PeerId) -> Result<PeerInfo, AgentError> {
    let links = inner.links_by_rtt();
    if links.is_empty() {
        return Err(AgentError::NotJoined);
    }
    let msg = Message::Introduce { peer };
    let mut asks = FuturesUnordered::new();
    let mut next = links.iter();
    let mut unknown = 0;
    let mut last_err = None;
    loop {
        if asks.is_empty()
            && let Some((node, conn)) = next.next()
        {
            asks.push(ask(*node, conn, &msg));
        }
        if asks.is_empty() {
            break;
        }
        let hedge = tokio::time::sleep(HEDGE_AFTER);
        tokio::select! {
            r = asks.next() => {
                let Some((node, r)) = r else { continue };
                match r {
                    Ok(Message::Introduced { info }) => {
                        inner.remember(&info);
                        return Ok(info);
                    }
                    Ok(Message::Refused { reason: Refusal::UnknownPeer }) => unknown += 1,
                    Ok(other) => last_err = Some(refused(node, other)),
                    Err(e) => last_err = Some(e),
                }
                // Move on to the next node right away.
                if let Some((node, conn)) = next.next() {
                    asks.push(ask(*node, conn, &msg));
                }
            }
            _ = hedge => {
                if let Some((node, conn)) = next.next() {
                    asks.push(ask(*node, conn, &msg));
                }
            }
        }
    }
    // Nodes that answered "unknown" outweigh nodes that failed to answer.
    if unknown > 0 {
        return Err(AgentError::NotFound(peer));
    }
    Err(last_err.unwrap_or(AgentError::NotJoined))
}

/// Ask `node` for a relay circuit to `peer`. Returns its circuit id.
pub(super) async fn open_circuit(
    conn: &quinn::Connection,
    node: PeerId,
    peer: PeerId,
) -> Result<u64, AgentError> {
    match request(conn, &Message::OpenCircuit { peer }).await? {
        Message::CircuitOpened { cid, peer: p } if p == peer => Ok(cid),
        other => Err(refused(node, other)),
    }
}
