//! Fuzz targets for x0x's parsers, shared by the libFuzzer binaries
//! (`fuzz_targets/*.rs`, nightly, `cargo fuzz run`) and the stable-toolchain
//! replay of every committed input (`tests/replay.rs`).
//!
//! Each target calls a public parse entry point of the real crates, never a
//! copy of it, and checks properties beyond "does not panic":
//!
//! | target    | entry point                              | property checked |
//! |-----------|------------------------------------------|------------------|
//! | `frame`   | `wire::read_frame` on a byte stream      | frames come out in order, each re-encodes and decodes to itself, length limit honoured |
//! | `decode`  | `wire::decode` on one frame body         | never panics; what decodes re-encodes and decodes to the same message; no strict prefix decodes |
//! | `message` | `arbitrary` messages of every kind       | `encode` → `decode` / `read_frame` is the identity; truncations never decode |
//! | `relay`   | `relay::split` / `relay::join`           | `join(split(d)) == d`, `split(join(p, x)) == (p, x)` |
//! | `config`  | `Config::parse` on UTF-8 text            | never panics; an error's line exists and is the one printed; an accepted config round-trips through `to_toml` |
//! | `pem`     | `Identity::from_pem`, `from_pkcs8`       | never panics; an accepted key re-exports to a PEM of the same identity |
//!
//! A property violation panics, which libFuzzer reports as a crash.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use arbitrary::{Arbitrary, Unstructured};
use x0x_proto::identity::PeerId;
use x0x_proto::wire::{
    self, AgentRecord, CircuitEnd, MeshLinkStatus, Message, NodeStatus, PeerInfo, PeerKind,
    ReadLimits, Refusal, RoleSet,
};

/// A fuzz target: takes any bytes, panics on a property violation.
pub type Target = fn(&[u8]);

/// Every target, by name (the directory names under `seeds/`,
/// `regressions/` and `corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", targets::frame),
    ("decode", targets::decode),
    ("message", targets::message),
    ("relay", targets::relay),
    ("config", targets::config),
    ("pem", targets::pem),
];

/// Drive a future over an in-memory reader to completion. `wire::read_frame`
/// bounds a started frame with `tokio::time::timeout`, so this needs a
/// runtime with a timer: one current-thread runtime per thread, reused.
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

// --- structure-aware generation of every message kind -----------------------
//
// `wire::Message` does not derive `Arbitrary` (the fuzz crate must not change
// the protocol crate), so these mirror types do. `ArbMessage::from_message`
// matches every variant without a wildcard: a new message kind added to
// `wire::Message` fails to compile here until it is mirrored.

#[derive(Debug, Clone, Arbitrary)]
pub struct ArbPeerId([u8; 32]);

impl From<&ArbPeerId> for PeerId {
    fn from(p: &ArbPeerId) -> Self {
        PeerId::from_bytes(p.0)
    }
}

/// A socket address as the wire carries it. serde's encoding of
/// `SocketAddrV6` keeps only the address and port (flow info and scope id
/// are dropped), so the generated V6 addresses have neither.
#[derive(Debug, Clone, Arbitrary)]
pub enum ArbAddr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl From<&ArbAddr> for SocketAddr {
    fn from(a: &ArbAddr) -> Self {
        match a {
            ArbAddr::V4(ip, port) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(*ip), *port)),
            ArbAddr::V6(ip, port) => {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(*ip), *port, 0, 0))
            }
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct ArbRecord {
    peer: ArbPeerId,
    addrs: Vec<ArbAddr>,
    home: ArbPeerId,
}

impl From<&ArbRecord> for AgentRecord {
    fn from(r: &ArbRecord) -> Self {
        AgentRecord {
            peer: (&r.peer).into(),
            addrs: r.addrs.iter().map(SocketAddr::from).collect(),
            home: (&r.home).into(),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct ArbInfo {
    peer: ArbPeerId,
    addrs: Vec<ArbAddr>,
    homes: Vec<ArbPeerId>,
}

impl From<&ArbInfo> for PeerInfo {
    fn from(i: &ArbInfo) -> Self {
        PeerInfo {
            peer: (&i.peer).into(),
            addrs: i.addrs.iter().map(SocketAddr::from).collect(),
            homes: i.homes.iter().map(PeerId::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum ArbRefusal {
    CoordinatorDisabled,
    RelayDisabled,
    NotRegistered,
    UnknownPeer,
    NotHere,
    NoConsent,
    RateLimited,
    CircuitLimit(String),
    BadAddress(String),
    NotARequest,
    TopicLimit(String),
}

impl From<&ArbRefusal> for Refusal {
    fn from(r: &ArbRefusal) -> Self {
        match r {
            ArbRefusal::CoordinatorDisabled => Refusal::CoordinatorDisabled,
            ArbRefusal::RelayDisabled => Refusal::RelayDisabled,
            ArbRefusal::NotRegistered => Refusal::NotRegistered,
            ArbRefusal::UnknownPeer => Refusal::UnknownPeer,
            ArbRefusal::NotHere => Refusal::NotHere,
            ArbRefusal::NoConsent => Refusal::NoConsent,
            ArbRefusal::RateLimited => Refusal::RateLimited,
            ArbRefusal::CircuitLimit(s) => Refusal::CircuitLimit(s.clone()),
            ArbRefusal::BadAddress(s) => Refusal::BadAddress(s.clone()),
            ArbRefusal::NotARequest => Refusal::NotARequest,
            ArbRefusal::TopicLimit(s) => Refusal::TopicLimit(s.clone()),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct ArbMeshLink {
    addr: String,
    peer_id: Option<ArbPeerId>,
    connected: bool,
    rtt_us: Option<u32>,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct ArbStatus {
    version: String,
    uptime_s: u64,
    roles: (bool, bool, bool),
    agents: u32,
    directory_agents: u32,
    expected_peers: u32,
    mesh: Vec<ArbMeshLink>,
}

fn roles(r: &(bool, bool, bool)) -> RoleSet {
    RoleSet {
        coordinator: r.0,
        reflector: r.1,
        relay: r.2,
    }
}

impl From<&ArbStatus> for NodeStatus {
    fn from(s: &ArbStatus) -> Self {
        NodeStatus {
            version: s.version.clone(),
            uptime_s: s.uptime_s,
            roles: roles(&s.roles),
            agents: s.agents,
            directory_agents: s.directory_agents,
            expected_peers: s.expected_peers,
            mesh: s
                .mesh
                .iter()
                .map(|m| MeshLinkStatus {
                    addr: m.addr.clone(),
                    peer_id: m.peer_id.as_ref().map(PeerId::from),
                    connected: m.connected,
                    rtt_us: m.rtt_us,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum ArbMessage {
    Hello {
        kind: u8,
        incarnation: u64,
    },
    Welcome {
        incarnation: u64,
        roles: (bool, bool, bool),
        observed: Option<ArbAddr>,
    },
    Register {
        addrs: Vec<ArbAddr>,
        accept_relay: bool,
    },
    Registered {
        record: ArbRecord,
    },
    Lookup {
        peer: ArbPeerId,
    },
    Found {
        info: Option<ArbInfo>,
    },
    Introduce {
        peer: ArbPeerId,
    },
    Introduced {
        info: ArbInfo,
    },
    OpenCircuit {
        peer: ArbPeerId,
    },
    CircuitOpened {
        peer: ArbPeerId,
        cid: u64,
    },
    Vouch {
        addr: ArbAddr,
    },
    VouchSent,
    VouchProof {
        nonce: [u8; 16],
    },
    Vouched {
        addr: ArbAddr,
    },
    Status,
    StatusReport {
        status: ArbStatus,
    },
    Refused {
        reason: ArbRefusal,
    },
    Introduction {
        info: ArbInfo,
    },
    CircuitNotice {
        peer: ArbPeerId,
        cid: u64,
    },
    CircuitClosed {
        cid: u64,
        reason: u8,
    },
    DirectorySnapshot {
        records: Vec<ArbRecord>,
    },
    DirectorySnapshotMore {
        records: Vec<ArbRecord>,
    },
    DirectoryUpsert {
        record: ArbRecord,
    },
    DirectoryRemove {
        peer: ArbPeerId,
    },
    ForwardIntroduction {
        from: ArbInfo,
        to: ArbPeerId,
    },
    Ping,
    Pong {
        observed: Option<ArbAddr>,
    },
    TopicJoin {
        topic: [u8; 32],
    },
    TopicLeave {
        topic: [u8; 32],
    },
    TopicMembers {
        topic: [u8; 32],
    },
    TopicMembersList {
        topic: [u8; 32],
        peers: Vec<ArbPeerId>,
    },
    TopicOk,
}

fn records(r: &[ArbRecord]) -> Vec<AgentRecord> {
    r.iter().map(AgentRecord::from).collect()
}

impl ArbMessage {
    pub fn to_message(&self) -> Message {
        use ArbMessage as A;
        let addr = SocketAddr::from;
        match self {
            A::Hello { kind, incarnation } => Message::Hello {
                kind: match kind % 3 {
                    0 => PeerKind::Node,
                    1 => PeerKind::Agent,
                    _ => PeerKind::Probe,
                },
                incarnation: *incarnation,
            },
            A::Welcome {
                incarnation,
                roles: r,
                observed,
            } => Message::Welcome {
                incarnation: *incarnation,
                roles: roles(r),
                observed: observed.as_ref().map(addr),
            },
            A::Register {
                addrs,
                accept_relay,
            } => Message::Register {
                addrs: addrs.iter().map(addr).collect(),
                accept_relay: *accept_relay,
            },
            A::Registered { record } => Message::Registered {
                record: record.into(),
            },
            A::Lookup { peer } => Message::Lookup { peer: peer.into() },
            A::Found { info } => Message::Found {
                info: info.as_ref().map(PeerInfo::from),
            },
            A::Introduce { peer } => Message::Introduce { peer: peer.into() },
            A::Introduced { info } => Message::Introduced { info: info.into() },
            A::OpenCircuit { peer } => Message::OpenCircuit { peer: peer.into() },
            A::CircuitOpened { peer, cid } => Message::CircuitOpened {
                peer: peer.into(),
                cid: *cid,
            },
            A::Vouch { addr: a } => Message::Vouch { addr: a.into() },
            A::VouchSent => Message::VouchSent,
            A::VouchProof { nonce } => Message::VouchProof { nonce: *nonce },
            A::Vouched { addr: a } => Message::Vouched { addr: a.into() },
            A::Status => Message::Status,
            A::StatusReport { status } => Message::StatusReport {
                status: status.into(),
            },
            A::Refused { reason } => Message::Refused {
                reason: reason.into(),
            },
            A::Introduction { info } => Message::Introduction { info: info.into() },
            A::CircuitNotice { peer, cid } => Message::CircuitNotice {
                peer: peer.into(),
                cid: *cid,
            },
            A::CircuitClosed { cid, reason } => Message::CircuitClosed {
                cid: *cid,
                reason: match reason % 4 {
                    0 => CircuitEnd::Idle,
                    1 => CircuitEnd::Lifetime,
                    2 => CircuitEnd::Bytes,
                    _ => CircuitEnd::PeerLeft,
                },
            },
            A::DirectorySnapshot { records: r } => Message::DirectorySnapshot {
                records: records(r),
            },
            A::DirectorySnapshotMore { records: r } => Message::DirectorySnapshotMore {
                records: records(r),
            },
            A::DirectoryUpsert { record } => Message::DirectoryUpsert {
                record: record.into(),
            },
            A::DirectoryRemove { peer } => Message::DirectoryRemove { peer: peer.into() },
            A::ForwardIntroduction { from, to } => Message::ForwardIntroduction {
                from: from.into(),
                to: to.into(),
            },
            A::Ping => Message::Ping,
            A::Pong { observed } => Message::Pong {
                observed: observed.as_ref().map(addr),
            },
            A::TopicJoin { topic } => Message::TopicJoin { topic: *topic },
            A::TopicLeave { topic } => Message::TopicLeave { topic: *topic },
            A::TopicMembers { topic } => Message::TopicMembers { topic: *topic },
            A::TopicMembersList { topic, peers } => Message::TopicMembersList {
                topic: *topic,
                peers: peers.iter().map(PeerId::from).collect(),
            },
            A::TopicOk => Message::TopicOk,
        }
    }

    /// The name of a message's kind. Exhaustive on purpose (see above): a
    /// new variant of `wire::Message` does not compile until it is mirrored.
    pub fn kind_of(m: &Message) -> &'static str {
        match m {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Register { .. } => "Register",
            Message::Registered { .. } => "Registered",
            Message::Lookup { .. } => "Lookup",
            Message::Found { .. } => "Found",
            Message::Introduce { .. } => "Introduce",
            Message::Introduced { .. } => "Introduced",
            Message::OpenCircuit { .. } => "OpenCircuit",
            Message::CircuitOpened { .. } => "CircuitOpened",
            Message::Vouch { .. } => "Vouch",
            Message::VouchSent => "VouchSent",
            Message::VouchProof { .. } => "VouchProof",
            Message::Vouched { .. } => "Vouched",
            Message::Status => "Status",
            Message::StatusReport { .. } => "StatusReport",
            Message::Refused { .. } => "Refused",
            Message::Introduction { .. } => "Introduction",
            Message::CircuitNotice { .. } => "CircuitNotice",
            Message::CircuitClosed { .. } => "CircuitClosed",
            Message::DirectorySnapshot { .. } => "DirectorySnapshot",
            Message::DirectorySnapshotMore { .. } => "DirectorySnapshotMore",
            Message::DirectoryUpsert { .. } => "DirectoryUpsert",
            Message::DirectoryRemove { .. } => "DirectoryRemove",
            Message::ForwardIntroduction { .. } => "ForwardIntroduction",
            Message::Ping => "Ping",
            Message::Pong { .. } => "Pong",
            Message::TopicJoin { .. } => "TopicJoin",
            Message::TopicLeave { .. } => "TopicLeave",
            Message::TopicMembers { .. } => "TopicMembers",
            Message::TopicMembersList { .. } => "TopicMembersList",
            Message::TopicOk => "TopicOk",
        }
    }
}

/// Every kind of `wire::Message`, by `ArbMessage::kind_of` name.
pub const MESSAGE_KINDS: &[&str] = &[
    "Hello",
    "Welcome",
    "Register",
    "Registered",
    "Lookup",
    "Found",
    "Introduce",
    "Introduced",
    "OpenCircuit",
    "CircuitOpened",
    "Vouch",
    "VouchSent",
    "VouchProof",
    "Vouched",
    "Status",
    "StatusReport",
    "Refused",
    "Introduction",
    "CircuitNotice",
    "CircuitClosed",
    "DirectorySnapshot",
    "DirectorySnapshotMore",
    "DirectoryUpsert",
    "DirectoryRemove",
    "ForwardIntroduction",
    "Ping",
    "Pong",
    "TopicJoin",
    "TopicLeave",
    "TopicMembers",
    "TopicMembersList",
    "TopicOk",
];

// --- the seed corpus ---------------------------------------------------------
//
// One sample of every message kind, built by the real encoder (not recorded
// bytes, which go stale when the wire format changes): `scripts/fuzz.sh gen`
// writes them to `seeds/`, and the replay test
// `seeds_are_current_and_cover_every_message_kind` checks that the committed
// files are exactly what this produces today.

/// A deterministic byte stream (splitmix64) to draw samples from.
fn sample_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    out.truncate(len);
    out
}

/// The first message of each kind that `ArbMessage` draws from
/// `sample_bytes(0..)`, in `MESSAGE_KINDS` order. Deterministic.
pub fn message_samples() -> Vec<Message> {
    let mut found: Vec<Option<Message>> = vec![None; MESSAGE_KINDS.len()];
    for seed in 0..1_000_000u64 {
        if found.iter().all(Option::is_some) {
            break;
        }
        let bytes = sample_bytes(seed, 512);
        let Ok(arb) = ArbMessage::arbitrary(&mut Unstructured::new(&bytes)) else {
            continue;
        };
        let msg = arb.to_message();
        let i = MESSAGE_KINDS
            .iter()
            .position(|k| *k == ArbMessage::kind_of(&msg))
            .expect("MESSAGE_KINDS names every kind");
        if found[i].is_none() && wire::encode(&msg).is_ok() {
            found[i] = Some(msg);
        }
    }
    found
        .into_iter()
        .zip(MESSAGE_KINDS)
        .map(|(m, k)| m.unwrap_or_else(|| panic!("no {k} sample drawn")))
        .collect()
}

/// The generated seed files, as (path under `seeds/`, contents):
/// `decode/sample-KIND` (a frame body), `frame/sample-KIND` (the stream-limits
/// byte, then the frame), `frame/sample-stream-{request,agent,mesh}` (every
/// sample within that stream type's limit, in one stream), and `relay/sample-*`
/// (relay packets with empty, short and QUIC-sized payloads, a vouch packet,
/// a short header and a QUIC long-header packet).
pub fn seed_files() -> Vec<(String, Vec<u8>)> {
    use x0x_proto::relay;
    let mut out = Vec::new();
    let samples = message_samples();
    let limits = [
        ("request", 0u8, ReadLimits::REQUEST),
        ("agent", 1, ReadLimits::TO_AGENT),
        ("mesh", 2, ReadLimits::MESH),
    ];
    let mut streams: Vec<Vec<u8>> = limits.iter().map(|(_, b, _)| vec![*b]).collect();
    for msg in &samples {
        let kind = ArbMessage::kind_of(msg);
        let frame = wire::encode(msg).expect("samples encode");
        out.push((format!("decode/sample-{kind}"), frame[4..].to_vec()));
        let body = frame.len() - 4;
        // The first stream type whose limit admits it (what the frame target
        // picks by the first byte).
        let (_, pick, _) = limits
            .iter()
            .find(|(_, _, l)| body <= l.max_len)
            .expect("a sample fits the mesh limit");
        let mut f = vec![*pick];
        f.extend_from_slice(&frame);
        out.push((format!("frame/sample-{kind}"), f));
        for ((_, _, l), stream) in limits.iter().zip(&mut streams) {
            if body <= l.max_len {
                stream.extend_from_slice(&frame);
            }
        }
    }
    for ((name, _, _), stream) in limits.iter().zip(streams) {
        out.push((format!("frame/sample-stream-{name}"), stream));
    }
    let quic = sample_bytes(u64::MAX, 1200);
    for (name, cid, payload) in [
        ("relay-empty", 1u64, &[][..]),
        ("relay-short", 0x0102_0304_0506_0708, &quic[..40]),
        ("relay-quic-1200", u64::MAX, &quic[..]),
    ] {
        let mut p = relay::relay_header(cid).to_vec();
        p.extend_from_slice(payload);
        out.push((format!("relay/sample-{name}"), p));
    }
    let nonce: [u8; 16] = quic[..16].try_into().expect("16 bytes");
    out.push((
        "relay/sample-vouch".into(),
        relay::encode_vouch(&nonce).to_vec(),
    ));
    out.push((
        "relay/sample-short-header".into(),
        relay::relay_header(7)[..relay::RELAY_HEADER_LEN - 1].to_vec(),
    ));
    let mut long = quic[..64].to_vec();
    long[0] = 0xc0;
    out.push(("relay/sample-quic-long-header".into(), long));
    out
}

/// Check that a message the decoder produced encodes and decodes to itself.
fn assert_round_trip(msg: &Message) {
    match wire::encode(msg) {
        Ok(frame) => {
            let body_len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            assert_eq!(body_len, frame.len() - 4, "length prefix of {msg:?}");
            let again = wire::decode(&frame[4..]).expect("an encoded message decodes");
            assert_eq!(&again, msg, "decode(encode(m)) != m");
        }
        // A decoded body was at most MAX_FRAME_LEN, and encoding is
        // canonical (never longer than what was decoded), so this is only
        // possible for generated messages.
        Err(wire::WireError::TooLarge { len, limit }) => {
            assert!(len > limit && limit == msg.kind().max_len())
        }
        Err(e) => panic!("encode failed with {e} for {msg:?}"),
    }
}

pub mod targets {
    use super::*;
    use std::path::Path;

    use x0x_bootstrap::config::{Config, ConfigError};
    use x0x_proto::identity::Identity;
    use x0x_proto::relay;

    /// Frames read off a byte stream, as a node reads a control or request
    /// stream: length prefix, limit, version, body.
    pub fn frame(data: &[u8]) {
        // The first byte picks the stream's limits, as the node has one per
        // stream: a request stream, what an agent reads, a mesh link.
        let Some((&pick, mut rest)) = data.split_first() else {
            return;
        };
        let limits = match pick % 3 {
            0 => ReadLimits::REQUEST,
            1 => ReadLimits::TO_AGENT,
            _ => ReadLimits::MESH,
        };
        // A stream of at most |data| / 6 frames; bound it anyway.
        for _ in 0..4096 {
            let before = rest.len();
            let result = block_on(wire::read_frame(&mut rest, &limits));
            let consumed = before - rest.len();
            match result {
                Ok(Some(msg)) => {
                    assert!(consumed >= 6, "a frame has a header and a body");
                    let body = consumed - 4;
                    assert!(body <= limits.max_len, "over the stream's limit");
                    assert!(body <= msg.kind().max_len(), "over the kind's limit");
                    assert_round_trip(&msg);
                    // Encoding is canonical: never longer than the frame read.
                    if let Ok(enc) = wire::encode(&msg) {
                        assert!(enc.len() <= consumed, "re-encoding grew {msg:?}");
                    }
                }
                Ok(None) => {
                    assert_eq!(before, 0, "clean end with {before} bytes left");
                    return;
                }
                Err(e) => {
                    // Every error maps to a close code and a metrics label.
                    let _ = e.close_code();
                    assert!(!e.label().is_empty());
                    assert!(!e.to_string().is_empty());
                    if let wire::WireError::TooLarge { len, limit } = e {
                        assert!(len > limit && limit <= limits.max_len);
                    }
                    return;
                }
            }
        }
    }

    /// One frame body (what follows the length prefix).
    pub fn decode(data: &[u8]) {
        let Ok(msg) = wire::decode(data) else {
            return;
        };
        assert_round_trip(&msg);
        // postcard is self-delimiting: no strict prefix of a valid body is
        // itself a complete message.
        for cut in [data.len() - 1, data.len() / 2, 1] {
            if cut < data.len() {
                assert!(
                    wire::decode(&data[..cut]).is_err(),
                    "a {cut}-byte prefix of a {}-byte body decoded",
                    data.len()
                );
            }
        }
    }

    /// Structure-aware: messages of every kind, generated by `arbitrary`.
    pub fn message(data: &[u8]) {
        let mut u = Unstructured::new(data);
        let Ok(msgs) = Vec::<ArbMessage>::arbitrary(&mut u) else {
            return;
        };
        let msgs: Vec<Message> = msgs.iter().map(ArbMessage::to_message).collect();
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for msg in &msgs {
            let frame = match wire::encode(msg) {
                Ok(f) => f,
                Err(wire::WireError::TooLarge { len, limit }) => {
                    assert!(len > limit && limit == msg.kind().max_len());
                    continue;
                }
                Err(e) => panic!("encode failed with {e} for {msg:?}"),
            };
            let body = &frame[4..];
            assert_eq!(&wire::decode(body).expect("decodes"), msg);
            for cut in [body.len() - 1, body.len() / 2] {
                assert!(
                    wire::decode(&body[..cut]).is_err(),
                    "truncated body decoded"
                );
            }
            // A frame cut short is an error, never a message or a clean end.
            let cut = &frame[..frame.len() - 1];
            assert!(block_on(wire::read_frame(&mut &cut[..], &ReadLimits::MESH)).is_err());
            stream.extend_from_slice(&frame);
            expected.push(msg.clone());
        }
        // The frames of one stream come out in order, then a clean end.
        let mut r = stream.as_slice();
        for msg in &expected {
            let got = block_on(wire::read_frame(&mut r, &ReadLimits::MESH)).expect("reads");
            assert_eq!(got.as_ref(), Some(msg));
        }
        assert!(matches!(
            block_on(wire::read_frame(&mut r, &ReadLimits::MESH)),
            Ok(None)
        ));
    }

    /// The raw relay data plane's packets (wire v2): relay packets (type
    /// byte, 8-byte circuit id, opaque payload) and vouch packets.
    pub fn relay(data: &[u8]) {
        let Some(&first) = data.first() else {
            return;
        };
        let _ = relay::is_x0x(first);
        match relay::parse_relay(data) {
            Some((cid, payload)) => {
                assert_eq!(first, relay::TYPE_RELAY);
                assert_eq!(payload.len(), data.len() - relay::RELAY_HEADER_LEN);
                let mut again = relay::relay_header(cid).to_vec();
                again.extend_from_slice(payload);
                assert_eq!(again, data, "header(parse(p)) ++ payload != p");
                // Rewriting the circuit id changes nothing else.
                let mut moved = data.to_vec();
                relay::set_relay_cid(&mut moved, cid ^ 0x5a5a);
                let (c2, p2) = relay::parse_relay(&moved).expect("still a relay packet");
                assert_eq!((c2, p2), (cid ^ 0x5a5a, payload));
            }
            None => assert!(data.len() < relay::RELAY_HEADER_LEN || first != relay::TYPE_RELAY),
        }
        match relay::parse_vouch(data) {
            Some(nonce) => assert_eq!(&relay::encode_vouch(&nonce)[..], data),
            None => assert!(data.len() != relay::VOUCH_LEN || first != relay::TYPE_VOUCH),
        }
        // And the other way: any circuit id and payload survive.
        if data.len() >= 8 {
            let cid = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
            let mut p = relay::relay_header(cid).to_vec();
            p.extend_from_slice(&data[8..]);
            assert_eq!(relay::parse_relay(&p), Some((cid, &data[8..])));
        }
    }

    /// The node's configuration file.
    pub fn config(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let path = Path::new("fuzz.toml");
        match Config::parse(text, path) {
            Ok(config) => {
                // What `x0x-bootstrap --check` prints is itself a valid
                // configuration, and the same one.
                let rendered = config.to_toml();
                let again = Config::parse(&rendered, path).unwrap_or_else(|e| {
                    panic!("the effective config does not parse: {e}\n{rendered}")
                });
                assert_eq!(again, config, "to_toml round trip changed the config");
                let _ = config.warnings();
                let _ = config.key_path();
            }
            Err(e @ ConfigError::Invalid { .. }) => {
                let shown = e.to_string();
                let ConfigError::Invalid {
                    line,
                    message,
                    snippet,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert!(!message.is_empty(), "an error says what is wrong");
                let lines = text.lines().count();
                match line {
                    Some(l) => {
                        assert!(
                            (1..=lines.max(1) + 1).contains(&l),
                            "line {l} of a {lines}-line file"
                        );
                        assert!(
                            shown.starts_with(&format!("fuzz.toml:{l}: ")),
                            "the error names its line: {shown}"
                        );
                        if let Some(s) = snippet {
                            let at = text.lines().nth(l - 1).expect("the line exists");
                            assert_eq!(s, at.trim(), "the snippet is the named line");
                        }
                    }
                    None => {
                        assert!(shown.starts_with("fuzz.toml:?: "), "{shown}");
                        // Only a validation error (a value that parsed but
                        // is not allowed) may lack a line: a TOML syntax or
                        // type error always has a position.
                        assert!(
                            message.starts_with("key `"),
                            "a parse error without a line: {shown}"
                        );
                    }
                }
            }
            Err(e) => panic!("Config::parse returned a non-parse error: {e}"),
        }
    }

    /// PEM key loading, and the PKCS#8 parser under it.
    pub fn pem(data: &[u8]) {
        if let Ok(id) = Identity::from_pem(data) {
            let pem = id.to_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let again = Identity::from_pem(pem.as_bytes()).expect("an exported key loads");
            assert_eq!(again.peer_id(), id.peer_id());
            let der = Identity::from_pkcs8(id.pkcs8_der()).expect("its DER loads");
            assert_eq!(der.peer_id(), id.peer_id());
        }
        if let Ok(id) = Identity::from_pkcs8(data) {
            let again =
                Identity::from_pem(id.to_pem().as_bytes()).expect("an accepted DER exports");
            assert_eq!(again.peer_id(), id.peer_id());
        }
    }
}
