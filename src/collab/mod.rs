//! Agents working together: signed gossip pub/sub, presence, friend-of-a-friend discovery, CRDT task lists.
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
