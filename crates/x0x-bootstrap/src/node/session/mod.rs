//! One connection's life on a node: handshake (`Hello`/`Welcome`),
//! admission to the registry, then the control stream and agent requests
//! until the connection ends; one node-wide task tracks agents' addresses.

mod requests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use tracing::{debug, info, warn};
use x0x_proto::addr::canonical;
use x0x_proto::identity::PeerId;
use x0x_proto::tls;
use x0x_proto::wire::{self, Message, PeerKind, ReadLimits, WireError, close};

use super::Shared;
use super::admission::{Handshake, Ticket};
use super::outbox::Outbox;
use super::registry::{Admission, Entry};

/// How often an agent's connection is checked for a changed address.
const MIGRATION_CHECK: Duration = Duration::from_secs(1);

/// Frames queued for one mesh peer besides coalesced directory changes.
const MESH_QUEUE: usize = 4096;
/// How long the losing connection of a simultaneous open stays open, so
/// the peer has admitted the winner before it sees the loser close.
const SIMULTANEOUS_GRACE: Duration = Duration::from_secs(2);

/// Flow-control windows a connection gets once it proved to be a mesh peer.
const MESH_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;

/// A protocol failure that ends the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("did not register within {0:?}")]
    NotRegistered(Duration),
    #[error("not a configured mesh peer")]
    NotMember,
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl SessionError {
    /// Close `conn` for this error and count it, unless the connection is
    /// already closed (then this error is a consequence, not a cause: the
    /// other streams of a connection closed for a stalled frame fail too).
    pub(crate) fn close(&self, shared: &Shared, conn: &quinn::Connection) {
        if conn.close_reason().is_some() {
            return;
        }
        let (code, label) = match self {
            Self::Wire(e) => (e.close_code(), e.label()),
            Self::Unexpected(_) => (close::PROTOCOL, "unexpected"),
            Self::Timeout => (close::TOO_SLOW, "hello_timeout_ms"),
            Self::NotRegistered(_) => (close::TOO_SLOW, "register_timeout_ms"),
            Self::NotMember => (close::NOT_MEMBER, "not_member"),
            Self::Connection(_) => return,
        };
        shared.metrics.reject_frame(label);
        conn.close(code, self.to_string().as_bytes());
    }
}

async fn read_message(
    recv: &mut RecvStream,
    limits: &ReadLimits,
    within: Duration,
) -> Result<Message, SessionError> {
    match tokio::time::timeout(within, wire::read_frame(recv, limits)).await {
        Err(_) => Err(SessionError::Timeout),
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(SessionError::Unexpected("stream ended")),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Serve an inbound connection admitted by [`super::admission`].
pub async fn inbound(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    mesh: bool,
    (handshake, ticket): (Handshake, Ticket),
) {
    let hello_within = Duration::from_millis(shared.config.limits.hello_timeout_ms);
    let connecting = match if mesh {
        incoming.accept_with(shared.mesh_server.clone())
    } else {
        incoming.accept()
    } {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.handshake_failures.inc();
            debug!("inbound connection failed: {e}");
            return;
        }
    };
    // A handshake that does not finish in time is dropped (and with it the
    // connection), so spoofed or stalled handshakes hold no slot for long.
    let conn = match tokio::time::timeout(hello_within, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.metrics.handshake_failures.inc();
            debug!("inbound handshake failed: {e}");
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failures.inc();
            shared.metrics.reject_connection("hello_timeout_ms");
            return;
        }
    };
    drop(handshake);
    let Some(peer) = tls::remote_peer_id(&conn) else {
        conn.close(close::PROTOCOL, b"no identity");
        return;
    };
    shared.metrics.connections_accepted.inc();
    let result = async {
        let (mut send, mut recv) = tokio::time::timeout(hello_within, conn.accept_bi())
            .await
            .map_err(|_| SessionError::Timeout)??;
        let Message::Hello { kind, incarnation } =
            read_message(&mut recv, &ReadLimits::REQUEST, hello_within).await?
        else {
            return Err(SessionError::Unexpected("first frame must be Hello"));
        };
        if kind == PeerKind::Node {
            if !shared.is_mesh_member(&peer, conn.remote_address()) {
                return Err(SessionError::NotMember);
            }
            shared.learn_inbound_mesh_id(peer, conn.remote_address());
            conn.set_receive_window(VarInt::from_u32(MESH_RECEIVE_WINDOW));
        }
        let observed = shared.reflect(&conn);
        if observed.is_some() {
            shared.metrics.reflector_observations.inc();
        }
        let welcome = Message::Welcome {
            incarnation: shared.incarnation,
            roles: shared.role_set(),
            observed,
        };
        wire::write_frame(&mut send, &welcome).await?;
        Ok((kind, incarnation, send, recv))
    }
    .await;
    match result {
        Ok((PeerKind::Probe, ..)) => {
            // Answered: the dialer closes; a prober that lingers is closed
            // for it, so probes never hold a connection slot for long.
            shared.metrics.probes_answered.inc();
            let _ = tokio::time::timeout(hello_within, conn.closed()).await;
            conn.close(close::NORMAL, b"probe answered");
        }
        Ok((kind, incarnation, send, recv)) => {
            let link = Link {
                conn,
                peer,
                kind,
                incarnation,
                dialer: peer,
            };
            serve(shared, link, send, recv, Some(ticket)).await
        }
        Err(e) => {
            debug!(peer = %peer.short(), "inbound session refused: {e}");
            e.close(&shared, &conn);
        }
    }
}

/// Run the node side of an outbound mesh connection until it ends.
pub async fn outbound(shared: Arc<Shared>, conn: quinn::Connection, peer: PeerId) {
    let hello_within = Duration::from_millis(shared.config.limits.hello_timeout_ms);
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Message::Hello {
            kind: PeerKind::Node,
            incarnation: shared.incarnation,
        };
        wire::write_frame(&mut send, &hello).await?;
        let Message::Welcome { incarnation, .. } =
            read_message(&mut recv, &ReadLimits::TO_AGENT, hello_within).await?
        else {
            return Err(SessionError::Unexpected("expected Welcome"));
        };
        Ok((incarnation, send, recv))
    }
    .await;
    match result {
        Ok((incarnation, send, recv)) => {
            let link = Link {
                conn,
                peer,
                kind: PeerKind::Node,
                incarnation,
                dialer: shared.peer_id,
            };
            serve(shared, link, send, recv, None).await
        }
        Err(e) => {
            debug!(peer = %peer.short(), "outbound session failed: {e}");
            e.close(&shared, &conn);
        }
    }
}

/// An established, identified connection.
struct Link {
    conn: quinn::Connection,
    peer: PeerId,
    kind: PeerKind,
    incarnation: u64,
    /// Who opened the connection.
    dialer: PeerId,
}

async fn serve(
    shared: Arc<Shared>,
    link: Link,
    mut send: SendStream,
    mut recv: RecvStream,
    _ticket: Option<Ticket>,
) {
    let Link {
        conn,
        peer,
        kind,
        incarnation,
        dialer,
    } = link;
    let outbox = Arc::new(Outbox::new(match kind {
        PeerKind::Node => MESH_QUEUE,
        PeerKind::Agent | PeerKind::Probe => shared.config.limits.agent_push_queue,
    }));
    let entry = Entry {
        conn: conn.clone(),
        kind,
        incarnation,
        dialer,
        outbox: outbox.clone(),
        admitted_addr: conn.remote_address(),
    };
    match shared.registry.admit(peer, entry) {
        Admission::Duplicate => {
            // Simultaneous open: the peer may have admitted this one and
            // not yet the other; closing it now would take its link down
            // for a moment. Keep it (and its streams) open for a grace
            // period: the peer replaces it itself once it has both.
            shared.metrics.reject_connection("duplicate");
            debug!(peer = %peer.short(), "duplicate connection: closing after the grace period");
            tokio::spawn(async move {
                let _streams = (send, recv);
                tokio::select! {
                    _ = tokio::time::sleep(SIMULTANEOUS_GRACE) => {}
                    _ = conn.closed() => {}
                }
                conn.close(close::DUPLICATE, b"duplicate connection");
            });
            return;
        }
        Admission::Accepted {
            replaced: Some(old),
            simultaneous,
        } if old.stable_id() != conn.stable_id() => {
            if simultaneous {
                // As for a duplicate: the peer may still use the old one.
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(SIMULTANEOUS_GRACE) => {}
                        _ = old.closed() => {}
                    }
                    old.close(close::REPLACED, b"replaced by a newer connection");
                });
            } else {
                old.close(close::REPLACED, b"replaced by a newer connection");
            }
        }
        Admission::Accepted { .. } => {}
    }
    shared.update_gauges();
    info!(peer = %peer, ?kind, remote = %canonical(conn.remote_address()), "peer connected");

    if kind == PeerKind::Node && shared.config.roles.coordinator {
        // Under the directory lock: no update can be queued before the snapshot.
        let directory = shared.directory();
        outbox.push_all(directory.snapshot());
        drop(directory);
    }

    let writer = async {
        while let Some(msg) = outbox.next().await {
            wire::write_frame(&mut send, &msg).await?;
        }
        Ok::<_, WireError>(())
    };
    let reader = async {
        let limits = match kind {
            PeerKind::Node => ReadLimits::MESH,
            // Agents send nothing after Hello: any frame is refused.
            PeerKind::Agent | PeerKind::Probe => ReadLimits::REQUEST,
        };
        loop {
            match wire::read_frame(&mut recv, &limits).await {
                Ok(Some(msg)) => on_control(&shared, peer, kind, msg)?,
                Ok(None) => return Ok(()),
                Err(WireError::Io(_)) => return Ok(()), // the connection is going away
                Err(e) => return Err(SessionError::from(e)),
            }
        }
    };
    let agent = async {
        if kind != PeerKind::Agent {
            return std::future::pending().await;
        }
        tokio::select! {
            r = requests::serve(&shared, &conn, peer) => r,
            r = register_deadline(&shared, peer) => r,
        }
    };

    let outcome: Result<(), SessionError> = tokio::select! {
        r = writer => r.map_err(SessionError::from),
        r = reader => r,
        r = agent => r,
        _ = conn.closed() => Ok(()),
    };
    outbox.close();
    match outcome {
        Err(SessionError::Connection(_)) | Ok(()) => {}
        Err(e) => {
            warn!(peer = %peer, "closing connection: {e}");
            e.close(&shared, &conn);
        }
    }
    let reason = conn.close_reason();
    if shared.registry.remove(&peer, conn.stable_id()).is_some() {
        info!(peer = %peer, ?kind, reason = ?reason, "peer disconnected");
        shared.forget(peer, kind);
    }
    shared.metrics.connections_closed.inc();
}

/// QUIC follows an agent whose NAT rebinds; keep its directory record and
/// relay lane on its current address. One task checks every agent
/// connection each [`MIGRATION_CHECK`]: a timer in each session woke every
/// session's whole `select!` once a second, most of an idle node's CPU
/// with 10,000 agents (docs/BENCHMARKS.md).
pub(crate) async fn track_addresses(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(MIGRATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The address last seen per connection (stable id).
    let mut last: HashMap<usize, SocketAddr> = HashMap::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let agents = shared.registry.of_kind(PeerKind::Agent);
        let mut seen = HashMap::with_capacity(agents.len());
        for (peer, entry) in agents {
            let id = entry.conn.stable_id();
            let before = last.get(&id).copied().unwrap_or(entry.admitted_addr);
            let now = entry.conn.remote_address();
            seen.insert(id, now);
            if now != before {
                address_moved(&shared, &entry.conn, peer, now);
            }
        }
        last = seen;
    }
}

fn address_moved(shared: &Shared, conn: &quinn::Connection, peer: PeerId, now: SocketAddr) {
    shared.relay.moved(&peer, now);
    if shared.over_tcp(conn) {
        return; // a TCP session's address is no UDP candidate
    }
    shared.update_directory(|d| {
        let update = d.observed_moved(&peer, canonical(now));
        if update.is_some() {
            info!(peer = %peer, observed = %now, "agent address changed");
        }
        update
    });
}

/// An agent that has not registered within the deadline is closed (when
/// it could register at all).
async fn register_deadline(shared: &Shared, peer: PeerId) -> Result<(), SessionError> {
    if !shared.config.roles.coordinator {
        return std::future::pending().await;
    }
    let within = Duration::from_millis(shared.config.limits.register_timeout_ms);
    tokio::time::sleep(within).await;
    if shared.directory().local(&peer).is_some() {
        return std::future::pending().await;
    }
    Err(SessionError::NotRegistered(within))
}

/// A frame on the control stream.
fn on_control(
    shared: &Shared,
    from: PeerId,
    kind: PeerKind,
    msg: Message,
) -> Result<(), SessionError> {
    if kind != PeerKind::Node {
        return Err(SessionError::Unexpected(
            "agents send requests on their own streams",
        ));
    }
    if !shared.config.roles.coordinator {
        return Ok(()); // directory traffic is ignored without the role
    }
    if let Message::ForwardIntroduction { from: info, to } = msg {
        let delivered = shared.deliver_introduction(&to, info);
        requests::count_introduction(shared, delivered);
        return Ok(());
    }
    let rejected = shared
        .directory()
        .apply(from, &msg)
        .map_err(|_| SessionError::Unexpected("not a mesh message"))?;
    for r in rejected {
        shared.metrics.reject_record(r.label());
    }
    shared.update_gauges();
    Ok(())
}
