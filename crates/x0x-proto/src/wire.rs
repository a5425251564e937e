//! The x0x wire protocol: framed, versioned messages on QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes: one
//! byte of protocol version ([`WIRE_VERSION`]) and a postcard-encoded
//! [`Message`]. Frames over [`MAX_FRAME_LEN`] are refused before reading
//! their body. A malformed or oversized frame closes the connection with an
//! application error code ([`close`]); it never panics the node.
//!
//! Streams on one connection:
//! - the *control stream*: the first bidirectional stream, opened by the
//!   dialer. It starts with `Hello`/`Welcome` and then carries pushes in both
//!   directions (directory sync between nodes, introductions to agents).
//! - *request streams*: every later bidirectional stream an agent opens
//!   carries one request and one response.
//! - QUIC datagrams carry relayed traffic (see [`crate::relay`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::identity::PeerId;

/// Version byte at the start of every frame.
pub const WIRE_VERSION: u8 = 1;

/// Largest frame body accepted or sent (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Most addresses kept in one agent record.
pub const MAX_ADDRS: usize = 8;

/// QUIC application close codes used by x0x.
pub mod close {
    use quinn::VarInt;

    /// Normal close by an agent or a node's client.
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0x10);
    /// Another connection between the same two peers was kept.
    pub const DUPLICATE: VarInt = VarInt::from_u32(0x11);
    /// A frame could not be decoded, or a message was not valid here.
    pub const PROTOCOL: VarInt = VarInt::from_u32(0x12);
    /// A frame exceeded [`super::MAX_FRAME_LEN`].
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(0x13);
    /// The peer speaks an unsupported wire version.
    pub const VERSION: VarInt = VarInt::from_u32(0x14);
    /// The peer restarted; its new connection replaced this one.
    pub const REPLACED: VarInt = VarInt::from_u32(0x15);
    /// The node is at its connection limit.
    pub const OVERLOADED: VarInt = VarInt::from_u32(0x16);
    /// The peer is not the identity that was dialed.
    pub const WRONG_PEER: VarInt = VarInt::from_u32(0x17);
    /// A peer claimed to be a bootstrap node but is not in this node's `peers`.
    pub const NOT_MEMBER: VarInt = VarInt::from_u32(0x18);
}

/// What kind of peer opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerKind {
    /// A bootstrap node (member of the mesh).
    Node,
    /// An agent using the network.
    Agent,
}

/// The roles a node has switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSet {
    pub coordinator: bool,
    pub reflector: bool,
    pub relay: bool,
}

/// An agent's entry in the coordinators' shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub peer: PeerId,
    /// Addresses the agent can be reached at: observed first, then self-reported.
    pub addrs: Vec<SocketAddr>,
    /// The bootstrap node the agent is registered with (and can be relayed through).
    pub home: PeerId,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    // --- control stream handshake ---
    /// First frame from the dialer.
    Hello {
        kind: PeerKind,
        /// Random per-process value: a new one means the peer restarted.
        incarnation: u64,
    },
    /// Reply from the node: its roles and, with the reflector role, the
    /// address the dialer was observed from.
    Welcome {
        incarnation: u64,
        roles: RoleSet,
        observed: Option<SocketAddr>,
    },

    // --- agent requests (one per request stream) and responses ---
    Register {
        addrs: Vec<SocketAddr>,
    },
    Registered {
        record: AgentRecord,
    },
    Lookup {
        peer: PeerId,
    },
    Found {
        record: Option<AgentRecord>,
    },
    /// Ask the coordinator to introduce the sender to `peer`.
    Introduce {
        peer: PeerId,
    },
    /// Sent to both sides of an introduction: the record of the other agent.
    Introduction {
        record: AgentRecord,
    },
    /// A request failed.
    Refused {
        reason: String,
    },

    // --- node to node, on the control stream ---
    /// The first part of the sender's full set of locally registered agents
    /// (replaces what the receiver had from the sender).
    DirectorySnapshot {
        records: Vec<AgentRecord>,
    },
    /// More records of the same snapshot (a snapshot can exceed one frame).
    DirectorySnapshotMore {
        records: Vec<AgentRecord>,
    },
    DirectoryUpsert {
        record: AgentRecord,
    },
    DirectoryRemove {
        peer: PeerId,
    },
    /// Deliver an introduction of `from` to the agent `to`, registered with the receiver.
    ForwardIntroduction {
        from: AgentRecord,
        to: PeerId,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The close code a connection gets when this error happens on it.
    pub fn close_code(&self) -> quinn::VarInt {
        match self {
            Self::TooLarge(_) => close::FRAME_TOO_LARGE,
            Self::Version(_) => close::VERSION,
            Self::Malformed(_) | Self::Io(_) => close::PROTOCOL,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Version(_) => "version",
            Self::Malformed(_) => "malformed",
            Self::Io(_) => "io",
        }
    }
}

/// Encode a message as one frame (length prefix included).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut body = vec![WIRE_VERSION];
    body = postcard::to_extend(msg, body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decode a frame body (without the length prefix).
pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    let (&version, rest) = body
        .split_first()
        .ok_or_else(|| WireError::Malformed("empty frame".into()))?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, trailing) =
        postcard::take_from_bytes(rest).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            trailing.len()
        )));
    }
    Ok(msg)
}

/// Write one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), WireError> {
    w.write_all(&encode(msg)?).await?;
    Ok(())
}

/// Read one frame. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Message {
        Message::Registered {
            record: AgentRecord {
                peer: PeerId::from_bytes([7; 32]),
                addrs: vec!["127.0.0.1:5".parse().unwrap(), "[::1]:6".parse().unwrap()],
                home: PeerId::from_bytes([9; 32]),
            },
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &sample()).await.unwrap();
        write_frame(
            &mut buf,
            &Message::Lookup {
                peer: PeerId::from_bytes([1; 32]),
            },
        )
        .await
        .unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r).await.unwrap(), Some(sample()));
        assert!(matches!(
            read_frame(&mut r).await.unwrap(),
            Some(Message::Lookup { .. })
        ));
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_body() {
        let mut frame = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        frame.push(WIRE_VERSION);
        let err = read_frame(&mut frame.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge(_)));
        assert_eq!(err.close_code(), close::FRAME_TOO_LARGE);
    }

    #[tokio::test]
    async fn wrong_version_and_garbage_are_errors() {
        let mut frame = encode(&sample()).unwrap();
        frame[4] = 99;
        assert!(matches!(
            read_frame(&mut frame.as_slice()).await,
            Err(WireError::Version(99))
        ));
        let garbage = [0, 0, 0, 3, WIRE_VERSION, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut garbage.as_slice()).await,
            Err(WireError::Malformed(_))
        ));
        let mut trailing = encode(&sample()).unwrap();
        trailing.push(0);
        let n = trailing.len() as u32 - 4;
        trailing[..4].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(
            read_frame(&mut trailing.as_slice()).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_not_a_clean_end() {
        let frame = encode(&sample()).unwrap();
        let cut = &frame[..frame.len() - 2];
        assert!(read_frame(&mut &cut[..]).await.is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&body);
        }

        #[test]
        fn lookup_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let msg = Message::Lookup { peer: PeerId::from_bytes(bytes) };
            let frame = encode(&msg).unwrap();
            prop_assert_eq!(decode(&frame[4..]).unwrap(), msg);
        }
    }
}
