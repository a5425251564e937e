//! Agents working together: signed gossip pub/sub, presence, friend-of-a-friend
//! discovery and CRDT task lists, as sans-IO protocol machines.
//!
//! Every protocol is a state machine with no sockets, no tasks and no clock
//! of its own: the driver feeds it messages (`handle(from, message, now)`),
//! timer ticks (`handle_timer(now)`) and commands, and drains a queue of
//! [`Output`]s (`Send`, `Publish`, `Event`, `SetTimer`, `Disconnect`) with
//! `poll()`. Given the same inputs and seed a machine does the same thing,
//! which is how the simulator tests below run 100 agents deterministically.
//!
//! | module | machine | what it does |
//! |---|---|---|
//! | [`envelope`] | [`envelope::Verifier`] | Signed, versioned envelopes (author, topic, channel, seq, timestamp, payload); message id = SHA-256 of the signed envelope; size, signature, clock-window and replay checks, each rejection counted. |
//! | [`gossip`] | [`gossip::Gossip`] | Per-topic overlay: HyParView membership (active 5 / passive 30) and PlumTree broadcast with one tree per author; duplicate suppression by message id; [`gossip::OutboundQueues`] for backpressure. |
//! | [`presence`] | [`presence::Presence`] | Signed announcements with a TTL every second on each topic and to direct peers; phi-accrual failure detector; `presence(topic)`, Online/Offline events. |
//! | [`foaf`] | [`foaf::Foaf`] | Friend-of-a-friend lookup: ttl ≤ 3, fan-out ≤ 3, fresh query id per hop, hop-signed queries and replies back along the path, seen-cache, token bucket per neighbour, self-signed records. |
//! | [`crdt`] | [`crdt::TaskSync`] | Task lists: signed operations, add-wins OR-set, `(Lamport, author)` LWW fields, forward-only status with the earliest claim winning, version-vector delta sync, atomic persistence ([`crdt::TaskStore`]). |
//! | [`wire`] | | Frames: length, version byte, postcard [`wire::CollabMessage`], a size limit per kind. |
//! | [`service`] | [`service::Collab`] | A thin async driver running all four in one tokio task over an abstract [`service::Link`]. |
//!
//! # What the simulator measured
//!
//! Deterministic discrete-event simulation (`src/collab/sim.rs`), one-way
//! link latency 10–50 ms per pair, links that fail reported after 3 s
//! (a QUIC idle timeout); `cargo test -p x0x --lib collab -- --nocapture`
//! prints these lines:
//!
//! - gossip, 100 agents, 10 publishers × 10 msg/s × 30 s: 297,000
//!   deliveries, each exactly once; latency p50 80 ms, p95 112 ms, p99
//!   124 ms; RMR 0.027.
//! - gossip with 5 of 100 crashing mid-run: every survivor gets every later
//!   message exactly once; p95 109 ms after the crash.
//! - presence, 5 of 100 crashed: all 475 (observer, crashed) pairs detected,
//!   no false positive; detection p50 2.3 s, p95 2.5 s; ~32 kB/s per agent.
//! - FOAF, random 100-agent graph, targets 3 hops away: all found; p95 162 ms.
//! - partition 3/3 of 24 agents in 6 groups, 10,953 task operations: all
//!   replicas equal 350 ms after healing; delta sync shipped 1.3 MB per
//!   agent against 2.1 MB of full state.
//!
//! # How the machines fit together
//!
//! ```text
//!                  Publish{Presence}            Publish{Tasks}
//!   Presence ───────────────────────┐      ┌──────────────── TaskSync
//!      ▲  handle_gossip              ▼      ▼    handle_published ▲
//!      └───────────────────────── Gossip ─────────────────────────┘
//!        Received{channel: Presence}  │  Received{channel: Tasks}
//!                                     │  NeighborUp/Down → TaskSync::add_peer/remove_peer
//!        Received{channel: App} → subscribers
//!   Foaf: independent; its neighbours are the agent's direct connections.
//! ```
//!
//! The routing loop in [`service`] (`State::route`, and the simulator's
//! `AgentNode::drain` in `src/collab/tests.rs`) is the whole of it: poll every machine, hand `Publish`
//! outputs to [`gossip::Gossip::publish`], gossip deliveries to the machine
//! of their [`envelope::Channel`], until all queues are empty.
//!
//! # Driving the machines from the agent
//!
//! - **Clock and seed.** Build each machine with [`WallClock::system()`]
//!   (an `Instant` anchored to the Unix time) and a random seed
//!   (`rand::random()`). Pass `Instant::now()` as `now` to every call.
//! - **Timers.** Each machine has `next_timeout()`; sleep until the minimum,
//!   then call `handle_timer(Instant::now())` on all of them (early calls
//!   are harmless). `SetTimer` outputs say the minimum may have moved.
//! - **Peers.** When a QUIC connection to a peer comes up: `foaf.add_neighbor(peer, None)`
//!   (the machine sends its own record; the peer's arrives as
//!   `FoafMessage::Record`) and `presence.add_direct_peer(peer, now)`. When it
//!   closes or a dial fails: `gossip.peer_down(peer, now)`,
//!   `foaf.remove_neighbor(&peer)`, `presence.remove_direct_peer(peer, now)`.
//!   A `Send` to a peer without a connection means "connect by PeerId"
//!   (`Agent::connect`); if that fails, report `peer_down`. A `Disconnect`
//!   output means gossip no longer needs the link (close it if nothing
//!   else uses it, after its queue drained).
//! - **Identity.** All machines sign with the agent's [`Identity`](x0x_proto::Identity)
//!   and identify peers by the PeerId the TLS handshake authenticated; pass
//!   that PeerId as `from`.
//!
//! # Streams and framing
//!
//! Every message is a [`wire::CollabMessage`] in a frame: 4-byte big-endian
//! length, a version byte ([`wire::COLLAB_WIRE_VERSION`]), the postcard
//! encoding; the byte after the version is the kind, and each kind has its
//! maximum ([`wire::max_len`]: gossip 65 KiB, presence 1 KiB, FOAF 2 KiB,
//! task sync 72 KiB). A reader checks the length with [`wire::check_len`]
//! before reading the body, then calls [`wire::decode`]; a peer that sends
//! malformed frames is disconnected. Nested formats carry their own
//! version: envelopes ([`envelope::ENVELOPE_VERSION`]), announcements,
//! task operations and batches, FOAF records, the store file.
//!
//! Per peer connection, open lazily two unidirectional streams in each
//! direction, first byte a stream tag the lead reserves in `x0x-proto`
//! (e.g. `0xC0` control, `0xC1` bulk): **bulk** carries
//! [`wire::CollabMessage::is_bulk`] messages (gossip payloads, task
//! `SyncOps`), **control** everything else (membership, `IHave`/`Graft`/
//! `Prune`, presence, FOAF, `SyncRequest`), so repairs and heartbeats never
//! wait behind a large payload. One writer task per peer drains that peer's
//! queues; QUIC flow control blocks only that writer.
//!
//! **Backpressure.** Put gossip messages into [`gossip::OutboundQueues`]
//! (bounded per peer, control before payload; a full payload queue drops
//! its oldest payload and queues an `IHave` for it, so the slow peer can
//! graft it back later); other kinds into a bounded per-peer channel that
//! drops when full (they are small, and FOAF and presence tolerate loss;
//! task sync repairs itself at the next anti-entropy round). Count the
//! drops ([`gossip::QueueStats`]). The machines never block, so a slow
//! peer costs memory bounded by its queues and nothing else.
//!
//! # Bootstrap: the first members of a topic
//!
//! Gossip needs a few members to join through; bootstrap nodes are not
//! brokers. The node directory (`x0x-proto::wire`) has `TopicJoin { topic }`
//! and `TopicLeave` (the node registers the requesting connection's own
//! identity, nobody else) and `TopicMembers { topic }` →
//! `TopicMembersList { peers }` (up to 8 random members registered at that
//! node, never the asker), bounded by the node's `topics_per_agent`,
//! `members_per_topic` and `topics` limits. The agent asks every linked
//! node and joins through the union; see `src/agent/collab.rs` for the
//! refresh rules.
//!
//! # The `Agent` API
//!
//! [`crate::Agent::subscribe`], [`crate::Agent::publish`],
//! [`crate::Agent::presence`], [`crate::Agent::presence_events`],
//! [`crate::Agent::find`], [`crate::Agent::task_list`] drive a
//! [`service::Collab`] over the agent's own QUIC connections (direct or
//! relayed); unidirectional streams tagged
//! `x0x_proto::wire::stream_tag::COLLAB_CONTROL` / `COLLAB_BULK` carry the
//! frames. [`service::Message::received_ms`] minus
//! [`service::Message::timestamp_ms`] is the CLI's `latency_ms`;
//! [`crdt::TaskId`] prints as `<author hex>-<counter>` and parses back.
//!
//! **Persistence.** On [`crdt::TaskEvent::Changed`], save the list with
//! [`crdt::TaskStore::save`] (debounced, e.g. at most once a second) into
//! `<state_dir>/tasks/`; at start, [`crdt::TaskStore::load`] each list and
//! [`crdt::TaskSync::open_with`] it (operations are re-verified on load).
//! Keep [`gossip::GossipConfig::first_seq`] at its default (derived from
//! the clock) so a restarted agent's envelopes are not taken for replays.
//!
//! **Metrics.** Every machine's stats have `counters()` with stable names
//! (`envelope_rejected_replay`, `gossip_duplicates`, `gossip_queue_dropped_payload`,
//! `presence_offline`, `foaf_dropped_replayed`, `tasks_rejected_bad_signature`, …)
//! ready for a Prometheus exporter.
#![deny(missing_docs)]
pub mod crdt;
pub mod envelope;
pub mod foaf;
pub mod gossip;
pub mod presence;
pub mod service;
#[cfg(test)]
pub(crate) mod testutil;
pub(crate) mod util;
pub mod wire;

pub use util::{SignatureCheck, WallClock};

use bytes::Bytes;
use envelope::{Channel, TopicId};
use std::time::Instant;
use x0x_proto::PeerId;

/// What a protocol machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<M, E> {
    /// Carry `message` to `to`.
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: M,
    },
    /// Publish `payload` on `topic`'s gossip overlay on `channel`.
    Publish {
        /// The topic.
        topic: TopicId,
        /// The channel.
        channel: Channel,
        /// The payload.
        payload: Bytes,
    },
    /// Something happened.
    Event(E),
    /// Call `handle_timer` at or after `at`.
    SetTimer {
        /// When.
        at: Instant,
    },
    /// The machine no longer needs a link to `peer`.
    Disconnect {
        /// The peer.
        peer: PeerId,
    },
}
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
