//! Agent requests: one per stream, each answered on its stream.
//!
//! Requests are read with the small request limits ([`ReadLimits::REQUEST`]),
//! rate-limited per connection (`requests_per_sec`) and answered with a
//! typed [`Refusal`] when they cannot be served; every refusal is counted.

use std::sync::Arc;
use std::time::Instant;

use quinn::{RecvStream, SendStream};
use x0x_proto::addr::canonical;
use x0x_proto::identity::PeerId;
use x0x_proto::policy;
use x0x_proto::relay::encode_vouch;
use x0x_proto::wire::{self, AgentRecord, MAX_ADDRS, Message, ReadLimits, Refusal, WireError};

use super::{SessionError, Shared, read_message};
use crate::bucket::Bucket;
use crate::metrics::Metrics;
use crate::node::vouch::VouchRefused;
use crate::roles::relay::Refuse;

/// Accept request streams until the connection ends.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    agent: PeerId,
) -> Result<(), SessionError> {
    let mut rate = Bucket::new(shared.config.limits.requests_per_sec, Instant::now());
    loop {
        let (mut send, recv) = conn.accept_bi().await?;
        if !rate.take(1.0, Instant::now()) {
            shared.metrics.refuse_request("requests_per_sec");
            let refusal = Message::Refused {
                reason: Refusal::RateLimited,
            };
            let _ = wire::write_frame(&mut send, &refusal).await;
            let _ = send.finish();
            continue;
        }
        let shared = shared.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(&shared, &conn, agent, send, recv).await {
                e.close(&shared, &conn);
            }
        });
    }
}

pub(super) fn count_introduction(shared: &Shared, delivered: bool) {
    Metrics::outcome(
        &shared.metrics.coordinator_introductions,
        if delivered {
            "delivered"
        } else {
            "undeliverable"
        },
    );
}

fn refuse(shared: &Shared, reason: Refusal, label: &str) -> Message {
    shared.metrics.refuse_request(label);
    Message::Refused { reason }
}

/// One request on its own stream.
async fn answer(
    shared: &Shared,
    conn: &quinn::Connection,
    agent: PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), SessionError> {
    let within = ReadLimits::REQUEST.complete_within;
    // A request that does not arrive in time is a stalled frame (the
    // stream is opened for it), whether or not its first byte came.
    let msg = match read_message(&mut recv, &ReadLimits::REQUEST, within).await {
        Err(SessionError::Timeout) => Err(SessionError::Wire(WireError::Stalled(within))),
        r => r,
    }?;
    let reply = match msg {
        Message::Status => {
            shared.metrics.status_requests.inc();
            Message::StatusReport {
                status: shared.status(),
            }
        }
        Message::Ping => Message::Pong {
            observed: shared.reflect(conn),
        },
        _ if !shared.config.roles.coordinator => {
            refuse(shared, Refusal::CoordinatorDisabled, "coordinator_disabled")
        }
        Message::Register {
            addrs,
            accept_relay,
        } => register(shared, conn, agent, addrs, accept_relay)?,
        Message::Lookup { peer } => {
            let info = shared.directory().lookup(&peer);
            Metrics::outcome(
                &shared.metrics.coordinator_lookups,
                if info.is_some() { "found" } else { "missing" },
            );
            Message::Found { info }
        }
        Message::Introduce { peer } => introduce(shared, agent, peer),
        Message::OpenCircuit { peer } => open_circuit(shared, agent, peer),
        Message::Vouch { addr } => vouch(shared, agent, addr),
        Message::VouchProof { nonce } => {
            match shared.vouches.prove(agent, &nonce, Instant::now()) {
                Some(addr) => {
                    Metrics::outcome(&shared.metrics.vouches, "proven");
                    refresh_record(shared, conn, agent);
                    Message::Vouched { addr }
                }
                None => {
                    Metrics::outcome(&shared.metrics.vouches, "bad_proof");
                    refuse(
                        shared,
                        Refusal::BadAddress("unknown or expired nonce".into()),
                        "bad_proof",
                    )
                }
            }
        }
        _ => refuse(shared, Refusal::NotARequest, "not_a_request"),
    };
    wire::write_frame(&mut send, &reply).await?;
    let _ = send.finish();
    Ok(())
}

/// The agent's record: the observed address first, then self-reported
/// local-scope addresses, then addresses this node vouched for.
fn record_for(
    shared: &Shared,
    conn: &quinn::Connection,
    agent: PeerId,
    reported: &[std::net::SocketAddr],
) -> AgentRecord {
    // The observed address first; over TCP there is no UDP address to give.
    let mut addrs = if shared.over_tcp(conn) {
        Vec::new()
    } else {
        vec![canonical(conn.remote_address())]
    };
    let candidates = reported
        .iter()
        .copied()
        .filter(policy::accept_unvouched)
        .chain(shared.vouches.vouched(&agent));
    for a in candidates {
        let a = canonical(a);
        if !addrs.contains(&a) && addrs.len() < MAX_ADDRS {
            addrs.push(a);
        }
    }
    AgentRecord {
        peer: agent,
        addrs,
        home: shared.peer_id,
    }
}

fn register(
    shared: &Shared,
    conn: &quinn::Connection,
    agent: PeerId,
    addrs: Vec<std::net::SocketAddr>,
    accept_relay: bool,
) -> Result<Message, SessionError> {
    let record = record_for(shared, conn, agent, &addrs);
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
    shared.relay.register_conn(agent, conn, accept_relay);
    shared.metrics.coordinator_registrations.inc();
    shared.update_gauges();
    Ok(Message::Registered { record })
}

/// Rebuild a registered agent's record after a vouch, keeping the
/// self-reported local addresses it had.
fn refresh_record(shared: &Shared, conn: &quinn::Connection, agent: PeerId) {
    shared.update_directory(|d| {
        let reported: Vec<_> = d.local(&agent)?.addrs.clone();
        Some(d.register(record_for(shared, conn, agent, &reported)))
    });
}

fn introduce(shared: &Shared, agent: PeerId, peer: PeerId) -> Message {
    let (me, target) = {
        let dir = shared.directory();
        (dir.lookup(&agent), dir.lookup(&peer))
    };
    match (me, target) {
        (Some(me), Some(target)) => {
            // Tell the target through one of its nodes: this one if it is
            // registered here, else the first of its homes we reach.
            let delivered = if target.homes.contains(&shared.peer_id) {
                shared.deliver_introduction(&peer, me)
            } else {
                target
                    .homes
                    .iter()
                    .any(|home| shared.forward_introduction(home, me.clone(), peer))
            };
            count_introduction(shared, delivered);
            Message::Introduced { info: target }
        }
        (None, _) => refuse(shared, Refusal::NotRegistered, "not_registered"),
        (_, None) => {
            count_introduction(shared, false);
            refuse(shared, Refusal::UnknownPeer, "unknown_peer")
        }
    }
}

fn open_circuit(shared: &Shared, agent: PeerId, peer: PeerId) -> Message {
    if !shared.config.roles.relay {
        return refuse(shared, Refusal::RelayDisabled, "relay_disabled");
    }
    match shared.relay.open(agent, peer) {
        Ok((mine, theirs)) => {
            shared.metrics.relay_circuits_opened.inc();
            shared.push_to_agent(
                &peer,
                Message::CircuitNotice {
                    peer: agent,
                    cid: theirs,
                },
            );
            Message::CircuitOpened { peer, cid: mine }
        }
        Err(r) => {
            shared.metrics.refuse_circuit(r.label());
            let reason = match r {
                Refuse::NotHere => Refusal::NotHere,
                Refuse::NoConsent => Refusal::NoConsent,
                Refuse::NotRegistered => Refusal::NotRegistered,
                limit => Refusal::CircuitLimit(limit.label().into()),
            };
            Message::Refused { reason }
        }
    }
}

fn vouch(shared: &Shared, agent: PeerId, addr: std::net::SocketAddr) -> Message {
    if !policy::is_dialable(&addr) || policy::is_local_scope(&addr) {
        Metrics::outcome(&shared.metrics.vouches, "bad_address");
        return refuse(
            shared,
            Refusal::BadAddress(format!(
                "{addr} is not a public unicast address (local addresses need no vouching)"
            )),
            "bad_address",
        );
    }
    let per_agent = shared.config.limits.vouches_per_agent;
    match shared.vouches.begin(agent, addr, per_agent, Instant::now()) {
        Ok(nonce) => {
            shared.socket.send_to(addr, &encode_vouch(&nonce));
            Metrics::outcome(&shared.metrics.vouches, "sent");
            Message::VouchSent
        }
        Err(VouchRefused::TooMany) => refuse(
            shared,
            Refusal::BadAddress(format!("at most {per_agent} vouches per agent")),
            "vouches_per_agent",
        ),
        Err(VouchRefused::Busy) => refuse(shared, Refusal::RateLimited, "vouches_busy"),
    }
}
