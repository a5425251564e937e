//! One connection's life on a node: handshake (`Hello`/`Welcome`),
//! admission to the registry, then the control stream, agent requests and
//! relayed datagrams until the connection ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Shared;
use super::registry::{Admission, Entry};
use crate::roles::coordinator::MAX_ADDRS;
use crate::roles::{reflector, relay};
use x0x_proto::addr::canonical;
use x0x_proto::identity::PeerId;
use x0x_proto::tls;
use x0x_proto::wire::{self, AgentRecord, Message, PeerKind, WireError, close};

/// How long a peer has to complete `Hello`/`Welcome` or send a request.
const PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests per second one agent connection may make (burst: one second's worth).
const REQUESTS_PER_SEC: u64 = 20;

/// How often an agent's connection is checked for a changed address.
const MIGRATION_CHECK: Duration = Duration::from_secs(1);

/// Frames queued for one peer's control stream before it counts as stuck.
const CONTROL_QUEUE: usize = 1024;

/// A protocol failure that ends the connection.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("{0}")]
    Refused(&'static str),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl SessionError {
    fn close(&self, shared: &Shared, conn: &quinn::Connection) {
        let (code, label) = match self {
            Self::Wire(e) => (e.close_code(), e.label()),
            Self::Unexpected(_) => (close::PROTOCOL, "unexpected"),
            Self::Timeout => (close::PROTOCOL, "timeout"),
            Self::Refused(_) => (close::NOT_MEMBER, "not_member"),
            Self::Connection(_) => return,
        };
        shared.metrics.reject_frame(label);
        conn.close(code, self.to_string().as_bytes());
    }
}

async fn read_message(recv: &mut RecvStream) -> Result<Message, SessionError> {
    match tokio::time::timeout(PROTOCOL_TIMEOUT, wire::read_frame(recv)).await {
        Err(_) => Err(SessionError::Timeout),
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(SessionError::Unexpected("stream ended")),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Serve an inbound connection.
pub async fn inbound(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.handshake_failures.inc();
            debug!("inbound handshake failed: {e}");
            return;
        }
    };
    let Some(peer) = tls::remote_peer_id(&conn) else {
        conn.close(close::PROTOCOL, b"no identity");
        return;
    };
    shared.metrics.connections_accepted.inc();
    let result = async {
        let (mut send, mut recv) = tokio::time::timeout(PROTOCOL_TIMEOUT, conn.accept_bi())
            .await
            .map_err(|_| SessionError::Timeout)??;
        let Message::Hello { kind, incarnation } = read_message(&mut recv).await? else {
            return Err(SessionError::Unexpected("first frame must be Hello"));
        };
        if kind == PeerKind::Node && !shared.is_mesh_member(&peer, conn.remote_address()) {
            return Err(SessionError::Refused("not a configured mesh peer"));
        }
        let observed = reflector::observed_address(shared.config.roles.reflector, &conn);
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
        Ok((kind, incarnation, send, recv)) => {
            serve(shared, conn, peer, kind, incarnation, peer, send, recv).await
        }
        Err(e) => {
            debug!(peer = %peer.short(), "inbound session refused: {e}");
            e.close(&shared, &conn);
        }
    }
}

/// Run the node side of an outbound mesh connection until it ends.
pub async fn outbound(shared: Arc<Shared>, conn: quinn::Connection, peer: PeerId) {
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Message::Hello {
            kind: PeerKind::Node,
            incarnation: shared.incarnation,
        };
        wire::write_frame(&mut send, &hello).await?;
        let Message::Welcome { incarnation, .. } = read_message(&mut recv).await? else {
            return Err(SessionError::Unexpected("expected Welcome"));
        };
        Ok((incarnation, send, recv))
    }
    .await;
    match result {
        Ok((incarnation, send, recv)) => {
            let me = shared.peer_id;
            serve(
                shared,
                conn,
                peer,
                PeerKind::Node,
                incarnation,
                me,
                send,
                recv,
            )
            .await
        }
        Err(e) => {
            debug!(peer = %peer.short(), "outbound session failed: {e}");
            e.close(&shared, &conn);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: PeerId,
    kind: PeerKind,
    incarnation: u64,
    dialer: PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let (tx, mut rx) = mpsc::channel(CONTROL_QUEUE);
    let entry = Entry {
        conn: conn.clone(),
        kind,
        incarnation,
        dialer,
        control: tx.clone(),
    };
    match shared.registry.admit(peer, entry) {
        Admission::Duplicate => {
            shared.metrics.reject_connection("duplicate");
            debug!(peer = %peer.short(), "duplicate connection closed");
            conn.close(close::DUPLICATE, b"duplicate connection");
            return;
        }
        Admission::Accepted { replaced } => {
            if let Some(old) = replaced {
                let code = if old.stable_id() == conn.stable_id() {
                    None
                } else {
                    Some(close::REPLACED)
                };
                if let Some(code) = code {
                    old.close(code, b"replaced by a newer connection");
                }
            }
        }
    }
    shared.update_gauges();
    info!(peer = %peer, ?kind, remote = %canonical(conn.remote_address()), "peer connected");

    if kind == PeerKind::Node && shared.config.roles.coordinator {
        // Under the directory lock: no update can be queued before the snapshot.
        let directory = shared.directory();
        for part in directory.snapshot() {
            if tx.try_send(part).is_err() {
                conn.close(close::PROTOCOL, b"control queue overflow");
                break;
            }
        }
        drop(directory);
    }
    drop(tx);

    let writer = async {
        while let Some(msg) = rx.recv().await {
            wire::write_frame(&mut send, &msg).await?;
        }
        Ok::<_, WireError>(())
    };
    let reader = async {
        loop {
            match wire::read_frame(&mut recv).await {
                Ok(Some(msg)) => on_control(&shared, peer, kind, msg)?,
                Ok(None) => return Ok(()),
                Err(WireError::Io(_)) => return Ok(()), // the connection is going away
                Err(e) => return Err(SessionError::from(e)),
            }
        }
    };
    let requests = async {
        if kind != PeerKind::Agent {
            return std::future::pending().await;
        }
        let mut rate = relay::Bucket::new(REQUESTS_PER_SEC, Instant::now());
        loop {
            let (mut send, recv) = conn.accept_bi().await?;
            if !rate.take(1.0, Instant::now()) {
                shared.metrics.reject_frame("request_rate");
                let refusal = Message::Refused {
                    reason: "too many requests; slow down".into(),
                };
                let _ = wire::write_frame(&mut send, &refusal).await;
                let _ = send.finish();
                continue;
            }
            let shared = shared.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = request(&shared, &conn, peer, send, recv).await {
                    e.close(&shared, &conn);
                }
            });
        }
    };
    let datagrams = async {
        loop {
            let datagram = conn.read_datagram().await?;
            forward(&shared, peer, datagram);
        }
    };
    let migrations = async {
        if kind != PeerKind::Agent {
            return std::future::pending().await;
        }
        // QUIC follows an agent whose NAT rebinds; keep its directory record current.
        let mut tick = tokio::time::interval(MIGRATION_CHECK);
        loop {
            tick.tick().await;
            let now = canonical(conn.remote_address());
            shared.update_directory(|d| {
                let update = d.observed_moved(&peer, now);
                if update.is_some() {
                    info!(peer = %peer, observed = %now, "agent address changed");
                }
                update
            });
        }
    };

    let outcome: Result<(), SessionError> = tokio::select! {
        r = writer => r.map_err(SessionError::from),
        r = reader => r,
        r = requests => r,
        r = datagrams => r,
        r = migrations => r,
        _ = conn.closed() => Ok(()),
    };
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
    if let Message::ForwardIntroduction { from: record, to } = msg {
        let delivered = shared.deliver_introduction(&to, record);
        count_introduction(shared, delivered);
        return Ok(());
    }
    if !shared.directory().apply(from, &msg) {
        return Err(SessionError::Unexpected("not a mesh message"));
    }
    shared.update_gauges();
    Ok(())
}

fn count_introduction(shared: &Shared, delivered: bool) {
    crate::metrics::Metrics::outcome(
        &shared.metrics.coordinator_introductions,
        if delivered {
            "delivered"
        } else {
            "undeliverable"
        },
    );
}

/// One agent request on its own stream.
async fn request(
    shared: &Shared,
    conn: &quinn::Connection,
    agent: PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), SessionError> {
    let msg = read_message(&mut recv).await?;
    let reply = match msg {
        _ if !shared.config.roles.coordinator => Message::Refused {
            reason: "the coordinator role is disabled on this node".into(),
        },
        Message::Register { addrs } => {
            let mut all = vec![canonical(conn.remote_address())];
            for a in addrs {
                if !all.contains(&a) && all.len() < MAX_ADDRS {
                    all.push(a);
                }
            }
            let record = AgentRecord {
                peer: agent,
                addrs: all,
                home: shared.peer_id,
            };
            let mut live = false;
            shared.update_directory(|d| {
                // Only while this connection is the agent's live one: a request
                // read just before a disconnect must not resurrect the record.
                live = shared
                    .registry
                    .get(&agent)
                    .is_some_and(|e| e.conn.stable_id() == conn.stable_id());
                live.then(|| d.register(record.clone()))
            });
            if !live {
                return Err(SessionError::Unexpected(
                    "request from a replaced connection",
                ));
            }
            shared.metrics.coordinator_registrations.inc();
            shared.update_gauges();
            Message::Registered { record }
        }
        Message::Lookup { peer } => {
            let record = shared.directory().lookup(&peer);
            crate::metrics::Metrics::outcome(
                &shared.metrics.coordinator_lookups,
                if record.is_some() { "found" } else { "missing" },
            );
            Message::Found { record }
        }
        Message::Introduce { peer } => {
            let (me, target) = {
                let dir = shared.directory();
                (dir.lookup(&agent), dir.lookup(&peer))
            };
            match (me, target) {
                (Some(me), Some(target)) => {
                    let delivered = if target.home == shared.peer_id {
                        shared.deliver_introduction(&peer, me)
                    } else {
                        shared.forward_introduction(&target.home, me, peer)
                    };
                    count_introduction(shared, delivered);
                    Message::Introduction { record: target }
                }
                (None, _) => Message::Refused {
                    reason: "register before asking for introductions".into(),
                },
                (_, None) => {
                    count_introduction(shared, false);
                    Message::Refused {
                        reason: format!("peer {peer} is not in the directory"),
                    }
                }
            }
        }
        _ => return Err(SessionError::Unexpected("not a request")),
    };
    wire::write_frame(&mut send, &reply).await?;
    let _ = send.finish();
    Ok(())
}

/// Relay one datagram from `from`.
fn forward(shared: &Shared, from: PeerId, datagram: bytes::Bytes) {
    let m = &shared.metrics;
    if !shared.config.roles.relay {
        return m.drop_relayed("disabled");
    }
    let Some((to, payload)) = x0x_proto::relay::split(&datagram) else {
        return m.drop_relayed("malformed");
    };
    let Some(target) = shared
        .registry
        .get(&to)
        .filter(|e| e.kind == PeerKind::Agent)
    else {
        return m.drop_relayed("no_route");
    };
    if let Err(drop) = shared
        .limiter
        .admit(&from, &to, payload.len(), Instant::now())
    {
        return m.drop_relayed(drop.label());
    }
    match target
        .conn
        .send_datagram(x0x_proto::relay::join(&from, &payload))
    {
        Ok(()) => {
            m.relay_datagrams.inc();
            m.relay_bytes.inc_by(payload.len() as u64);
        }
        Err(_) => m.drop_relayed("send_failed"),
    }
}
