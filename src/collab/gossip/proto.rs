//! The gossip wire messages (one topic per message).

use serde::{Deserialize, Serialize};
use x0x_proto::PeerId;

use crate::collab::envelope::{Envelope, MessageId, TopicId};

/// Most peers listed in one shuffle message.
pub const MAX_SHUFFLE_PEERS: usize = 16;
/// Most message ids in one `IHave`.
pub const MAX_IHAVE: usize = 64;

/// One gossip message: the topic whose overlay it belongs to and the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMessage {
    /// The topic overlay.
    pub topic: TopicId,
    /// What it says.
    pub body: GossipBody,
}

/// The HyParView membership and PlumTree broadcast messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipBody {
    // --- HyParView membership ---
    /// "Take me into your active view": sent by a joining agent to a
    /// contact given by the bootstrap directory.
    Join,
    /// A random walk announcing a joining `peer`; whoever ends the walk
    /// (ttl 0, or a lone active view) takes `peer` as a neighbour.
    ForwardJoin {
        /// The agent that joined.
        peer: PeerId,
        /// Steps left.
        ttl: u8,
    },
    /// "Take me as a neighbour." A high-priority request (the sender has no
    /// neighbour left, or ends a join walk) is always accepted and the
    /// sender counts the link as up at once; a low-priority one is accepted
    /// only with a free slot, answered by `NeighborAccept` or by a refusal,
    /// `Disconnect { alive: true }`.
    Neighbor {
        /// The sender's active view is empty.
        high_priority: bool,
    },
    /// The answer to an accepted low-priority `Neighbor`.
    NeighborAccept,
    /// "You are no longer my neighbour." `alive: false` means the sender
    /// leaves the topic (forget it); `true` keeps it as a passive peer.
    Disconnect {
        /// The sender stays in the topic.
        alive: bool,
    },
    /// A random walk carrying a sample of `origin`'s views; whoever ends
    /// it replies to `origin` with a sample of its passive view.
    Shuffle {
        /// The agent that started the shuffle.
        origin: PeerId,
        /// Steps left.
        ttl: u8,
        /// Its sample (itself included).
        peers: Vec<PeerId>,
    },
    /// The reply to a shuffle.
    ShuffleReply {
        /// A sample of the replier's passive view.
        peers: Vec<PeerId>,
    },
    // --- PlumTree broadcast ---
    /// A published envelope, pushed eagerly along the tree.
    Gossip {
        /// Hops from the publisher.
        round: u16,
        /// The signed message.
        envelope: Envelope,
    },
    /// Lazy push: "I have these messages" (id, round).
    IHave {
        /// Announced messages.
        entries: Vec<(MessageId, u16)>,
    },
    /// "Push messages of the tree of message `id`'s author to me eagerly
    /// again", and, if `send`, send message `id` (the repair of a missing
    /// message; without `send` it only reshapes the tree).
    Graft {
        /// The message missing (or just received, to name the tree).
        id: MessageId,
        /// Its round as announced.
        round: u16,
        /// Whether to send the message.
        send: bool,
    },
    /// "Stop pushing messages by `root` to me eagerly; announce them
    /// lazily instead."
    Prune {
        /// The author whose tree the link leaves.
        root: PeerId,
    },
}

impl GossipBody {
    /// Whether this message carries a payload (the only kind a slow peer's
    /// queue may drop first).
    pub fn is_payload(&self) -> bool {
        matches!(self, Self::Gossip { .. })
    }

    /// A short name for metrics and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::ForwardJoin { .. } => "forward_join",
            Self::Neighbor { .. } => "neighbor",
            Self::NeighborAccept => "neighbor_accept",
            Self::Disconnect { .. } => "disconnect",
            Self::Shuffle { .. } => "shuffle",
            Self::ShuffleReply { .. } => "shuffle_reply",
            Self::Gossip { .. } => "gossip",
            Self::IHave { .. } => "ihave",
            Self::Graft { .. } => "graft",
            Self::Prune { .. } => "prune",
        }
    }
}
