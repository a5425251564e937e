//! The x0x wire protocol: framed, versioned messages on QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes: one
//! byte of protocol version ([`WIRE_VERSION`]) and a postcard-encoded
//! [`Message`], whose first byte names its kind. A reader knows the kind
//! after the first two body bytes and refuses a frame longer than that
//! kind's limit ([`Kind::max_len`]) before reading the rest; the body is
//! then read incrementally, so memory follows the bytes that really
//! arrived, never the length a peer announced. A malformed or oversized
//! frame closes the connection with an application error code ([`close`]);
//! it never panics the node.
//!
//! Streams on one connection:
//! - the *control stream*: the first bidirectional stream, opened by the
//!   dialer. It starts with `Hello`/`Welcome` and then carries pushes in both
//!   directions (directory sync between nodes; introductions and circuit
//!   notices to agents).
//! - *request streams*: every later bidirectional stream an agent opens
//!   carries one request and one response.
//!
//! Relayed agent traffic does not use streams: see [`crate::relay`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::identity::PeerId;

/// Version byte at the start of every frame.
pub const WIRE_VERSION: u8 = 2;

/// Largest frame body of any kind (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Most addresses kept in one agent record.
pub const MAX_ADDRS: usize = 8;

/// Most bootstrap nodes named in one [`PeerInfo`].
pub const MAX_HOMES: usize = 16;

/// Most agent records in one directory snapshot frame.
pub const MAX_SNAPSHOT_RECORDS: usize = 200;

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
    /// A frame exceeded the limit of its kind.
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(0x13);
    /// The peer speaks an unsupported wire version.
    pub const VERSION: VarInt = VarInt::from_u32(0x14);
    /// The peer restarted; its new connection replaced this one.
    pub const REPLACED: VarInt = VarInt::from_u32(0x15);
    /// The node is at a connection limit.
    pub const OVERLOADED: VarInt = VarInt::from_u32(0x16);
    /// The peer is not the identity that was dialed.
    pub const WRONG_PEER: VarInt = VarInt::from_u32(0x17);
    /// A peer claimed to be a bootstrap node but is not in this node's `peers`.
    pub const NOT_MEMBER: VarInt = VarInt::from_u32(0x18);
    /// The peer did not say `Hello`, or did not register, in time.
    pub const TOO_SLOW: VarInt = VarInt::from_u32(0x19);
}

/// What kind of peer opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerKind {
    /// A bootstrap node (member of the mesh).
    Node,
    /// An agent using the network.
    Agent,
    /// A one-shot probe: the node answers `Welcome` (with the observed
    /// address) and admits nothing. Agents use it on a node's other
    /// address family to learn their address there without displacing
    /// their link to the node.
    Probe,
}

/// The roles a node has switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSet {
    pub coordinator: bool,
    pub reflector: bool,
    pub relay: bool,
}

/// An agent's entry in one node's part of the shared directory: the
/// addresses that node vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub peer: PeerId,
    /// Addresses the agent can be reached at: observed first, then
    /// self-reported ones the address policy accepts ([`crate::policy`]).
    pub addrs: Vec<SocketAddr>,
    /// The bootstrap node the agent is registered with (and can be relayed through).
    pub home: PeerId,
}

/// What the directory knows about an agent across the mesh: the union of
/// its records, and every node it is registered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer: PeerId,
    /// Candidate addresses, observed ones first (at most [`MAX_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
    /// Nodes the agent is registered with (at most [`MAX_HOMES`]).
    pub homes: Vec<PeerId>,
}

/// Why a node refused a request. Stable: agents match on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("the coordinator role is disabled on this node")]
    CoordinatorDisabled,
    #[error("the relay role is disabled on this node")]
    RelayDisabled,
    #[error("register before making this request")]
    NotRegistered,
    #[error("the peer is not in the directory")]
    UnknownPeer,
    #[error("the peer is not registered with this node")]
    NotHere,
    #[error("the peer does not accept relayed connections")]
    NoConsent,
    #[error("too many requests; slow down")]
    RateLimited,
    #[error("a relay circuit limit is reached: {0}")]
    CircuitLimit(String),
    #[error("the address is not acceptable: {0}")]
    BadAddress(String),
    #[error("not a request")]
    NotARequest,
}

/// Why a node closed a relay circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CircuitEnd {
    /// No traffic for the idle timeout.
    Idle,
    /// The circuit reached its lifetime.
    Lifetime,
    /// The circuit carried its byte allowance.
    Bytes,
    /// The other agent left.
    PeerLeft,
}

/// A node's view of one configured mesh peer, in a [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshLinkStatus {
    /// The configured address (`peers` entry).
    pub addr: String,
    /// The identity found there (or pinned), if known.
    pub peer_id: Option<PeerId>,
    pub connected: bool,
    /// Smoothed RTT in microseconds, while connected.
    pub rtt_us: Option<u32>,
}

/// What a node says about itself to a `Status` request (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub version: String,
    pub uptime_s: u64,
    pub roles: RoleSet,
    pub agents: u32,
    pub directory_agents: u32,
    pub expected_peers: u32,
    pub mesh: Vec<MeshLinkStatus>,
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

    // --- agent requests (one per request stream) and their replies ---
    /// Enter the directory. `accept_relay` consents to relay circuits.
    Register {
        addrs: Vec<SocketAddr>,
        accept_relay: bool,
    },
    Registered {
        record: AgentRecord,
    },
    Lookup {
        peer: PeerId,
    },
    Found {
        info: Option<PeerInfo>,
    },
    /// Ask the coordinator to introduce the sender to `peer`.
    Introduce {
        peer: PeerId,
    },
    /// Reply to `Introduce`: the peer, whose nodes now tell it about us.
    Introduced {
        info: PeerInfo,
    },
    /// Ask for a relay circuit to `peer` through this node.
    OpenCircuit {
        peer: PeerId,
    },
    /// Reply to `OpenCircuit`: send relay packets tagged `cid` to this node.
    CircuitOpened {
        peer: PeerId,
        cid: u64,
    },
    /// Ask the node to check that a self-reported public address is ours:
    /// it sends a nonce there ([`crate::relay::encode_vouch`]).
    Vouch {
        addr: SocketAddr,
    },
    /// Reply to `Vouch`: the nonce was sent.
    VouchSent,
    /// The nonce that arrived at the address: the node adds the address.
    VouchProof {
        nonce: [u8; 16],
    },
    /// Reply to `VouchProof`.
    Vouched {
        addr: SocketAddr,
    },
    /// Ask for the node's status (allowed before registering).
    Status,
    StatusReport {
        status: NodeStatus,
    },
    /// A request failed.
    Refused {
        reason: Refusal,
    },

    // --- node to agent, on the control stream ---
    /// Another agent asked to be introduced to the receiver.
    Introduction {
        info: PeerInfo,
    },
    /// A relay circuit from `peer` reaches the receiver through this node, tagged `cid`.
    CircuitNotice {
        peer: PeerId,
        cid: u64,
    },
    /// The circuit tagged `cid` is closed.
    CircuitClosed {
        cid: u64,
        reason: CircuitEnd,
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
        from: PeerInfo,
        to: PeerId,
    },

    // --- agent requests added in wire version 2 ---
    /// A cheap request: keeps the link's address current at the node (QUIC
    /// follows a NAT rebinding when a packet goes out) and asks again
    /// where the node sees us from.
    Ping,
    /// Reply to `Ping`: the address the node sees now (with the reflector role).
    Pong {
        observed: Option<SocketAddr>,
    },
}

/// The kind of a message: its postcard variant index (the first body byte
/// after the version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind(pub u8);

/// Size of an encoded address, at most (tag, 16 bytes, port varint).
const ADDR: usize = 1 + 16 + 3;
/// Size of an encoded [`AgentRecord`], at most.
pub const RECORD_MAX: usize = 32 + 1 + MAX_ADDRS * ADDR + 32;
/// Size of an encoded [`PeerInfo`], at most.
pub const INFO_MAX: usize = 32 + 1 + MAX_ADDRS * ADDR + 1 + MAX_HOMES * 32;

impl Kind {
    /// The largest body (version byte included) a frame of this kind may
    /// have. Requests are small; only mesh snapshots need large frames.
    pub fn max_len(self) -> usize {
        let small = 64;
        match self.0 {
            0 | 1 => small,                                   // Hello, Welcome
            2 => 16 + MAX_ADDRS * ADDR,                       // Register
            3 => 8 + RECORD_MAX,                              // Registered
            4 | 6 | 8 => small,                               // Lookup, Introduce, OpenCircuit
            5 | 7 => 8 + INFO_MAX,                            // Found, Introduced
            9..=14 => small,                                  // circuits, vouching, Status
            15 => 512 + 64 * (160 + 40),                      // StatusReport (64 peers)
            16 => 256,                                        // Refused
            17 => 8 + INFO_MAX,                               // Introduction
            18 | 19 => small,                                 // CircuitNotice/Closed
            20 | 21 => 8 + MAX_SNAPSHOT_RECORDS * RECORD_MAX, // snapshots
            22 => 8 + RECORD_MAX,                             // Upsert
            23 => small,                                      // Remove
            24 => 40 + INFO_MAX,                              // ForwardIntroduction
            25 | 26 => small,                                 // Ping, Pong
            _ => 0,
        }
        .min(MAX_FRAME_LEN)
    }
}

impl Message {
    /// This message's [`Kind`]: its variant index, which postcard writes
    /// as the first byte (a test checks the two agree).
    pub fn kind(&self) -> Kind {
        use Message::*;
        Kind(match self {
            Hello { .. } => 0,
            Welcome { .. } => 1,
            Register { .. } => 2,
            Registered { .. } => 3,
            Lookup { .. } => 4,
            Found { .. } => 5,
            Introduce { .. } => 6,
            Introduced { .. } => 7,
            OpenCircuit { .. } => 8,
            CircuitOpened { .. } => 9,
            Vouch { .. } => 10,
            VouchSent => 11,
            VouchProof { .. } => 12,
            Vouched { .. } => 13,
            Status => 14,
            StatusReport { .. } => 15,
            Refused { .. } => 16,
            Introduction { .. } => 17,
            CircuitNotice { .. } => 18,
            CircuitClosed { .. } => 19,
            DirectorySnapshot { .. } => 20,
            DirectorySnapshotMore { .. } => 21,
            DirectoryUpsert { .. } => 22,
            DirectoryRemove { .. } => 23,
            ForwardIntroduction { .. } => 24,
            Ping => 25,
            Pong { .. } => 26,
        })
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The announced length exceeds the limit of the message kind or stream.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit for its kind")]
    TooLarge { len: usize, limit: usize },
    #[error("unsupported wire version {0} (this peer speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The rest of a started frame did not arrive in time.
    #[error("frame not completed within {} ms", .0.as_millis())]
    Stalled(Duration),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The close code a connection gets when this error happens on it.
    pub fn close_code(&self) -> quinn::VarInt {
        match self {
            Self::TooLarge { .. } => close::FRAME_TOO_LARGE,
            Self::Version(_) => close::VERSION,
            Self::Stalled(_) => close::TOO_SLOW,
            Self::Malformed(_) | Self::Io(_) => close::PROTOCOL,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Version(_) => "version",
            Self::Malformed(_) => "malformed",
            Self::Stalled(_) => "stalled",
            Self::Io(_) => "io",
        }
    }
}

/// How a reader bounds the frames of one stream.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// No frame on this stream may exceed this many body bytes, whatever its kind.
    pub max_len: usize,
    /// Once the first byte of a frame arrived, the rest must arrive within this.
    pub complete_within: Duration,
}

impl ReadLimits {
    /// A request stream: one small request.
    pub const REQUEST: Self = Self {
        max_len: 1024,
        complete_within: Duration::from_secs(5),
    };
    /// Replies and pushes to an agent.
    pub const TO_AGENT: Self = Self {
        max_len: 16 * 1024,
        complete_within: Duration::from_secs(10),
    };
    /// A mesh control stream (directory snapshots).
    pub const MESH: Self = Self {
        max_len: MAX_FRAME_LEN,
        complete_within: Duration::from_secs(30),
    };
}

/// Encode a message as one frame (length prefix included).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0, 0, 0, 0, WIRE_VERSION];
    frame = postcard::to_extend(msg, frame).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = frame.len() - 4;
    let limit = msg.kind().max_len();
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
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
    let (msg, trailing) = postcard::take_from_bytes::<Message>(rest)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            trailing.len()
        )));
    }
    let limit = msg.kind().max_len();
    if body.len() > limit {
        return Err(WireError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    Ok(msg)
}

/// Write one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), WireError> {
    w.write_all(&encode(msg)?).await?;
    Ok(())
}

/// Check a frame header: the announced body length, the version and the
/// kind byte. Returns the body length.
pub fn check_header(header: &[u8; 6], limits: &ReadLimits) -> Result<usize, WireError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len < 2 {
        return Err(WireError::Malformed(format!("frame of {len} bytes")));
    }
    if header[4] != WIRE_VERSION {
        return Err(WireError::Version(header[4]));
    }
    let limit = Kind(header[5]).max_len().min(limits.max_len);
    if limit == 0 {
        return Err(WireError::Malformed(format!(
            "unknown message kind {}",
            header[5]
        )));
    }
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Read one frame within `limits`. `Ok(None)` means the stream ended
/// cleanly between frames. Waiting for a frame to *start* is unbounded
/// (an idle control stream is normal); a started frame must complete
/// within `limits.complete_within`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &ReadLimits,
) -> Result<Option<Message>, WireError> {
    let mut header = [0u8; 6];
    if r.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    let rest = async {
        r.read_exact(&mut header[1..]).await?;
        let len = check_header(&header, limits)?;
        // Memory grows with what arrives, not with what was announced.
        let mut body = Vec::with_capacity(len.min(4096));
        body.extend_from_slice(&header[4..]);
        let want = (len - 2) as u64;
        let got = (&mut *r).take(want).read_to_end(&mut body).await?;
        if got as u64 != want {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        decode(&body)
    };
    match tokio::time::timeout(limits.complete_within, rest).await {
        Ok(r) => r.map(Some),
        Err(_) => Err(WireError::Stalled(limits.complete_within)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn sample() -> Message {
        Message::Registered {
            record: AgentRecord {
                peer: id(7),
                addrs: vec!["127.0.0.1:5".parse().unwrap(), "[::1]:6".parse().unwrap()],
                home: id(9),
            },
        }
    }

    fn full_record(i: u16) -> AgentRecord {
        let mut peer = [0xffu8; 32];
        peer[..2].copy_from_slice(&i.to_be_bytes());
        AgentRecord {
            peer: PeerId::from_bytes(peer),
            addrs: (0..MAX_ADDRS as u16)
                .map(|p| {
                    format!("[2001:db8:ffff:ffff:ffff:ffff:ffff:{p:x}]:65535")
                        .parse()
                        .unwrap()
                })
                .collect(),
            home: id(0xff),
        }
    }

    /// One value of every message kind, each as large as the protocol allows.
    fn every_kind() -> Vec<Message> {
        let info = PeerInfo {
            peer: id(1),
            addrs: full_record(1).addrs,
            homes: (0..MAX_HOMES as u8).map(id).collect(),
        };
        let addr: SocketAddr = "[2001:db8::ffff]:65535".parse().unwrap();
        let roles = RoleSet {
            coordinator: true,
            reflector: true,
            relay: true,
        };
        vec![
            Message::Hello {
                kind: PeerKind::Agent,
                incarnation: u64::MAX,
            },
            Message::Welcome {
                incarnation: u64::MAX,
                roles,
                observed: Some(addr),
            },
            Message::Register {
                addrs: full_record(1).addrs,
                accept_relay: true,
            },
            Message::Registered {
                record: full_record(1),
            },
            Message::Lookup { peer: id(2) },
            Message::Found {
                info: Some(info.clone()),
            },
            Message::Introduce { peer: id(2) },
            Message::Introduced { info: info.clone() },
            Message::OpenCircuit { peer: id(2) },
            Message::CircuitOpened {
                peer: id(2),
                cid: u64::MAX,
            },
            Message::Vouch { addr },
            Message::VouchSent,
            Message::VouchProof { nonce: [0xff; 16] },
            Message::Vouched { addr },
            Message::Status,
            Message::StatusReport {
                status: NodeStatus {
                    version: "0.1.0".into(),
                    uptime_s: u64::MAX,
                    roles,
                    agents: u32::MAX,
                    directory_agents: u32::MAX,
                    expected_peers: 63,
                    mesh: (0..64)
                        .map(|i| MeshLinkStatus {
                            addr: format!("{}:65535", "a".repeat(100)),
                            peer_id: Some(id(i)),
                            connected: true,
                            rtt_us: Some(u32::MAX),
                        })
                        .collect(),
                },
            },
            Message::Refused {
                reason: Refusal::CircuitLimit("x".repeat(200)),
            },
            Message::Introduction { info: info.clone() },
            Message::CircuitNotice {
                peer: id(2),
                cid: u64::MAX,
            },
            Message::CircuitClosed {
                cid: u64::MAX,
                reason: CircuitEnd::PeerLeft,
            },
            Message::DirectorySnapshot {
                records: (0..MAX_SNAPSHOT_RECORDS as u16).map(full_record).collect(),
            },
            Message::DirectorySnapshotMore {
                records: (0..MAX_SNAPSHOT_RECORDS as u16).map(full_record).collect(),
            },
            Message::DirectoryUpsert {
                record: full_record(3),
            },
            Message::DirectoryRemove { peer: id(3) },
            Message::ForwardIntroduction {
                from: info,
                to: id(4),
            },
            Message::Ping,
            Message::Pong {
                observed: Some(addr),
            },
        ]
    }

    #[test]
    fn every_kind_fits_its_limit_at_its_largest_and_round_trips() {
        let all = every_kind();
        for msg in &all {
            let frame = encode(msg).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
            // The kind byte on the wire is the one the reader checks against.
            assert_eq!(Kind(frame[5]), msg.kind(), "{msg:?}");
            assert_eq!(&decode(&frame[4..]).unwrap(), msg);
        }
        // Every variant is covered (the kind indices are contiguous).
        let mut kinds: Vec<u8> = all.iter().map(|m| m.kind().0).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), all.len());
    }

    #[test]
    fn requests_are_small_and_only_snapshots_are_large() {
        for msg in every_kind() {
            let limit = msg.kind().max_len();
            match msg {
                Message::DirectorySnapshot { .. } | Message::DirectorySnapshotMore { .. } => {
                    assert!(limit > 16 * 1024)
                }
                Message::Register { .. }
                | Message::Lookup { .. }
                | Message::Introduce { .. }
                | Message::OpenCircuit { .. }
                | Message::Vouch { .. }
                | Message::VouchProof { .. }
                | Message::Ping
                | Message::Status => {
                    assert!(limit <= ReadLimits::REQUEST.max_len, "{msg:?}: {limit}")
                }
                _ => assert!(limit <= ReadLimits::TO_AGENT.max_len, "{msg:?}: {limit}"),
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &sample()).await.unwrap();
        write_frame(&mut buf, &Message::Lookup { peer: id(1) })
            .await
            .unwrap();
        let mut r = buf.as_slice();
        let l = ReadLimits::TO_AGENT;
        assert_eq!(read_frame(&mut r, &l).await.unwrap(), Some(sample()));
        assert!(matches!(
            read_frame(&mut r, &l).await.unwrap(),
            Some(Message::Lookup { .. })
        ));
        assert_eq!(read_frame(&mut r, &l).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_length_over_the_kind_limit_is_refused_before_the_body() {
        // A Lookup (kind 4) announcing 60 KiB: refused from the 6-byte header.
        let mut frame = (60_000u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[WIRE_VERSION, 4]);
        let err = read_frame(&mut frame.as_slice(), &ReadLimits::MESH)
            .await
            .unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { limit: 64, .. }),
            "{err}"
        );
        assert_eq!(err.close_code(), close::FRAME_TOO_LARGE);
        // A snapshot is fine on a mesh stream but not on a request stream.
        let mut snap = (30_000u32).to_be_bytes().to_vec();
        snap.extend_from_slice(&[WIRE_VERSION, 20]);
        let err = read_frame(&mut snap.as_slice(), &ReadLimits::REQUEST)
            .await
            .unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { limit: 1024, .. }),
            "{err}"
        );
        // An unknown kind is malformed.
        let mut odd = (10u32).to_be_bytes().to_vec();
        odd.extend_from_slice(&[WIRE_VERSION, 99]);
        assert!(matches!(
            read_frame(&mut odd.as_slice(), &ReadLimits::MESH).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_started_frame_must_complete_in_time() {
        let (mut w, mut r) = tokio::io::duplex(1024);
        let mut frame = encode(&sample()).unwrap();
        frame.truncate(10);
        w.write_all(&frame).await.unwrap();
        let limits = ReadLimits {
            max_len: 1024,
            complete_within: Duration::from_millis(50),
        };
        let err = read_frame(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, WireError::Stalled(_)), "{err}");
    }

    #[tokio::test]
    async fn wrong_version_and_garbage_are_errors() {
        let mut frame = encode(&sample()).unwrap();
        frame[4] = 99;
        let l = ReadLimits::TO_AGENT;
        assert!(matches!(
            read_frame(&mut frame.as_slice(), &l).await,
            Err(WireError::Version(99))
        ));
        let garbage = [0, 0, 0, 3, WIRE_VERSION, 0x03, 0xff];
        assert!(matches!(
            read_frame(&mut garbage.as_slice(), &l).await,
            Err(WireError::Malformed(_))
        ));
        let mut trailing = encode(&sample()).unwrap();
        trailing.push(0);
        let n = trailing.len() as u32 - 4;
        trailing[..4].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(
            read_frame(&mut trailing.as_slice(), &l).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_not_a_clean_end() {
        let frame = encode(&sample()).unwrap();
        let cut = &frame[..frame.len() - 2];
        assert!(
            read_frame(&mut &cut[..], &ReadLimits::TO_AGENT)
                .await
                .is_err()
        );
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
