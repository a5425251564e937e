//! Framing of the collaboration messages on a QUIC stream.
//!
//! A frame is a 4-byte big-endian length, then that many bytes: one byte of
//! version ([`COLLAB_WIRE_VERSION`]) and a postcard-encoded
//! [`CollabMessage`]. The byte after the version is the message kind (the
//! postcard variant index), and each kind has its own size limit
//! ([`max_len`]), checked from the length prefix and that byte before the
//! body is decoded (a reader should read the 4-byte length, refuse
//! anything over [`MAX_FRAME_LEN`], read the body, then call [`decode`]).
//! Errors never panic; a peer sending malformed frames should be
//! disconnected.

use serde::{Deserialize, Serialize};

use super::crdt::TaskMessage;
use super::envelope::DEFAULT_MAX_PAYLOAD;
use super::foaf::FoafMessage;
use super::gossip::GossipMessage;
use super::presence::PresenceMessage;

/// Version byte at the start of every frame body.
pub const COLLAB_WIRE_VERSION: u8 = 1;

/// Largest frame body of any kind.
pub const MAX_FRAME_LEN: usize = 72 * 1024;

/// Every message of the collaboration protocols.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollabMessage {
    /// Gossip membership and broadcast ([`super::gossip`]).
    Gossip(GossipMessage),
    /// Direct presence announcements ([`super::presence`]).
    Presence(PresenceMessage),
    /// Friend-of-a-friend lookups ([`super::foaf`]).
    Foaf(FoafMessage),
    /// Task-list anti-entropy ([`super::crdt`]).
    Tasks(TaskMessage),
}

/// Kinds of [`CollabMessage`], as the byte after the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`CollabMessage::Gossip`].
    Gossip = 0,
    /// [`CollabMessage::Presence`].
    Presence = 1,
    /// [`CollabMessage::Foaf`].
    Foaf = 2,
    /// [`CollabMessage::Tasks`].
    Tasks = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Gossip,
            1 => Self::Presence,
            2 => Self::Foaf,
            3 => Self::Tasks,
            _ => return None,
        })
    }
}

impl CollabMessage {
    /// The kind of this message.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Gossip(_) => Kind::Gossip,
            Self::Presence(_) => Kind::Presence,
            Self::Foaf(_) => Kind::Foaf,
            Self::Tasks(_) => Kind::Tasks,
        }
    }

    /// Whether a slow peer's queue may drop it first (gossip payloads).
    pub fn is_bulk(&self) -> bool {
        match self {
            Self::Gossip(g) => g.body.is_payload(),
            Self::Tasks(TaskMessage::SyncOps { .. }) => true,
            _ => false,
        }
    }
}

/// Largest frame body (version byte included) accepted for `kind`.
pub fn max_len(kind: Kind) -> usize {
    match kind {
        // A 64 KiB payload plus the envelope (~150 B) and gossip header.
        Kind::Gossip => DEFAULT_MAX_PAYLOAD + 1024,
        // One announcement envelope.
        Kind::Presence => 1024,
        // A hop-signed query or reply with one record of 8 addresses.
        Kind::Foaf => 2048,
        // Sync chunks are cut at 48 KiB of operations; one operation is at
        // most ~17.5 KiB.
        Kind::Tasks => MAX_FRAME_LEN,
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Over the limit of its kind.
    #[error("{len}-byte frame exceeds the limit of its kind")]
    TooLarge {
        /// The frame body length.
        len: usize,
    },
    /// Unknown version byte.
    #[error("unsupported collab wire version {0}")]
    Version(u8),
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Not decodable.
    #[error("malformed frame")]
    Malformed,
}

impl WireError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Version(_) => "version",
            Self::UnknownKind(_) => "unknown_kind",
            Self::Malformed => "malformed",
        }
    }
}

/// Encode `msg` as one frame (length prefix included).
pub fn encode(msg: &CollabMessage) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0, 0, 0, 0, COLLAB_WIRE_VERSION];
    frame = postcard::to_extend(msg, frame).map_err(|_| WireError::Malformed)?;
    let len = frame.len() - 4;
    if len > max_len(msg.kind()) {
        return Err(WireError::TooLarge { len });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Check a frame's length prefix before reading the body.
pub fn check_len(len: u32) -> Result<usize, WireError> {
    let len = len as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge { len });
    }
    Ok(len)
}

/// Decode a frame body (without the length prefix).
pub fn decode(body: &[u8]) -> Result<CollabMessage, WireError> {
    let (&version, rest) = body.split_first().ok_or(WireError::Malformed)?;
    if version != COLLAB_WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let &kind = rest.first().ok_or(WireError::Malformed)?;
    let kind = Kind::from_byte(kind).ok_or(WireError::UnknownKind(kind))?;
    if body.len() > max_len(kind) {
        return Err(WireError::TooLarge { len: body.len() });
    }
    match postcard::take_from_bytes::<CollabMessage>(rest) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(WireError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::envelope::{Channel, Envelope, TopicId};
    use crate::collab::gossip::GossipBody;
    use crate::collab::testutil::identity;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn gossip(payload: usize) -> CollabMessage {
        CollabMessage::Gossip(GossipMessage {
            topic: TopicId::new("t"),
            body: GossipBody::Gossip {
                round: 3,
                envelope: Envelope::sign(
                    &identity(1),
                    TopicId::new("t"),
                    Channel::App,
                    1,
                    0,
                    Bytes::from(vec![7; payload]),
                ),
            },
        })
    }

    #[test]
    fn frames_round_trip_with_version_and_kind() {
        let m = gossip(100);
        let f = encode(&m).unwrap();
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(f[4], COLLAB_WIRE_VERSION);
        assert_eq!(f[5], Kind::Gossip as u8);
        assert_eq!(decode(&f[4..]).unwrap(), m);
        // The largest payload fits its kind's limit.
        assert!(encode(&gossip(DEFAULT_MAX_PAYLOAD)).is_ok());
    }

    #[test]
    fn bad_frames_are_errors() {
        let f = encode(&gossip(10)).unwrap();
        let mut v = f[4..].to_vec();
        v[0] = 9;
        assert_eq!(decode(&v), Err(WireError::Version(9)));
        let mut k = f[4..].to_vec();
        k[1] = 77;
        assert_eq!(decode(&k), Err(WireError::UnknownKind(77)));
        let mut t = f[4..].to_vec();
        t.push(0);
        assert_eq!(decode(&t), Err(WireError::Malformed));
        assert_eq!(decode(&[]), Err(WireError::Malformed));
        // A presence frame may not be large.
        let mut p = vec![COLLAB_WIRE_VERSION, Kind::Presence as u8];
        p.resize(2000, 0);
        assert_eq!(decode(&p), Err(WireError::TooLarge { len: 2000 }));
        assert!(check_len(MAX_FRAME_LEN as u32 + 1).is_err());
    }

    proptest! {
        /// Random bytes never panic the decoder, whatever kind byte they claim.
        #[test]
        fn random_bodies_never_panic(kind in 0u8..5, bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut body = vec![COLLAB_WIRE_VERSION, kind];
            body.extend_from_slice(&bytes);
            let _ = decode(&body);
            let _ = decode(&bytes);
        }
    }
}
