//! Seed corpus from real traffic.
//!
//! Starts a real `x0x_bootstrap::Node` in this process on 127.0.0.1 and
//! drives it with real clients built from `x0x_proto::transport` and
//! `x0x_proto::wire`:
//! - agents that send `Hello`, `Register`, `Lookup`, `Introduce` (and too
//!   many requests, to be `Refused`), receive `Introduction`s, and relay
//!   datagrams to each other through the node;
//! - a mesh peer: a QUIC endpoint at the address the node is configured to
//!   keep connected (`peers`), which answers the node's `Hello` and
//!   receives its `DirectorySnapshot`(`More`), `DirectoryUpsert`,
//!   `DirectoryRemove` and `ForwardIntroduction`s, and pushes its own.
//!
//! Every frame sent or received is recorded byte for byte as it crossed the
//! QUIC stream: a frame body goes to `seeds/decode/`, the frame (length
//! prefix included) and each stream's whole transcript to `seeds/frame/`,
//! every relayed datagram (as an agent sent it and as the node delivered
//! it) to `seeds/relay/`. The configuration the node ran with and the keys
//! of every peer go to `seeds/config/` and `seeds/pem/`, next to configs and
//! keys written by hand (see [`static_seeds`]).
//!
//! Only loopback addresses are used: the node, the agents and the mesh
//! peer all bind 127.0.0.1.
//!
//! Usage: `corpus-gen [OUT_DIR]` (default: `fuzz/seeds` of this crate).
//! It replaces the `traffic-*` files and rewrites the hand-made ones.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use x0x_bootstrap::{Config, Node};
use x0x_fuzz::ArbMessage;
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::relay;
use x0x_proto::transport::{self, TransportOptions};
use x0x_proto::wire::{self, AgentRecord, Message, PeerKind, RoleSet};

const WAIT: Duration = Duration::from_secs(5);

/// Writes corpus files, skipping contents already written for a target.
struct Recorder {
    /// None: record nothing (the bulk agents).
    out: Option<PathBuf>,
    seq: usize,
    seen: HashSet<(String, Vec<u8>)>,
    kinds: HashSet<&'static str>,
    /// Frames recorded per (direction, kind): the bulk registrations
    /// would otherwise add hundreds of near-identical upserts.
    per_kind: std::collections::HashMap<(String, &'static str), usize>,
}

impl Recorder {
    fn new(out: Option<&Path>) -> Self {
        Self {
            out: out.map(Path::to_owned),
            seq: 0,
            seen: HashSet::new(),
            kinds: HashSet::new(),
            per_kind: Default::default(),
        }
    }

    fn write(&mut self, target: &str, name: &str, data: &[u8]) {
        let Some(out) = self.out.clone() else {
            return;
        };
        if !self.seen.insert((target.to_string(), data.to_vec())) {
            return;
        }
        self.seq += 1;
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        let file = dir.join(name);
        let file = if file.exists() {
            dir.join(format!("{name}-{}", self.seq))
        } else {
            file
        };
        std::fs::write(&file, data).expect("write corpus file");
    }

    /// One frame as it crossed a stream (`dir`: who sent it to whom).
    fn frame(&mut self, dir: &str, frame: &[u8], msg: &Message) {
        let kind = ArbMessage::kind_of(msg);
        self.kinds.insert(kind);
        let count = self.per_kind.entry((dir.to_string(), kind)).or_default();
        *count += 1;
        if *count > 4 {
            return;
        }
        let n = self.seq;
        self.write("frame", &format!("traffic-{n:04}-{dir}-{kind}"), frame);
        self.write(
            "decode",
            &format!("traffic-{n:04}-{dir}-{kind}"),
            &frame[4..],
        );
    }

    fn stream(&mut self, label: &str, transcript: &[u8]) {
        if !transcript.is_empty() {
            let n = self.seq;
            self.write(
                "frame",
                &format!("traffic-{n:04}-stream-{label}"),
                transcript,
            );
        }
    }

    fn datagram(&mut self, dir: &str, d: &[u8]) {
        let n = self.seq;
        self.write("relay", &format!("traffic-{n:04}-{dir}"), d);
    }
}

type Rec = Arc<Mutex<Recorder>>;

fn lock(r: &Rec) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read one frame exactly as it arrived.
async fn read_raw(recv: &mut quinn::RecvStream) -> Option<(Vec<u8>, Message)> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.ok()?;
    let n = u32::from_be_bytes(len) as usize;
    assert!(n <= wire::MAX_FRAME_LEN, "the node sent an oversized frame");
    let mut frame = len.to_vec();
    frame.resize(4 + n, 0);
    recv.read_exact(&mut frame[4..]).await.ok()?;
    let msg = wire::decode(&frame[4..]).expect("the node sends valid frames");
    Some((frame, msg))
}

/// The sending half of a stream, recording what it writes.
struct Sender {
    send: quinn::SendStream,
    label: String,
    transcript: Vec<u8>,
    rec: Rec,
}

impl Sender {
    async fn send(&mut self, msg: &Message) {
        let frame = wire::encode(msg).expect("encodable");
        self.send.write_all(&frame).await.expect("stream write");
        self.transcript.extend_from_slice(&frame);
        lock(&self.rec).frame(&self.label, &frame, msg);
    }

    fn finish(mut self) {
        let _ = self.send.finish();
        let t = std::mem::take(&mut self.transcript);
        lock(&self.rec).stream(&self.label, &t);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.transcript.is_empty() {
            let t = std::mem::take(&mut self.transcript);
            lock(&self.rec).stream(&self.label, &t);
        }
    }
}

/// Read a stream until it ends, recording every frame and the transcript;
/// messages are also handed to the returned channel.
fn reader(
    mut recv: quinn::RecvStream,
    label: String,
    rec: Rec,
) -> (
    mpsc::UnboundedReceiver<Message>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut transcript = Vec::new();
        while let Some((frame, msg)) = read_raw(&mut recv).await {
            lock(&rec).frame(&label, &frame, &msg);
            transcript.extend_from_slice(&frame);
            let _ = tx.send(msg);
        }
        lock(&rec).stream(&label, &transcript);
    });
    (rx, task)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Message>, what: &str) -> Message {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("stream ended before {what}"))
}

/// Wait for a message matching `f`, skipping others.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Message>,
    what: &str,
    f: impl Fn(&Message) -> bool,
) -> Message {
    loop {
        let m = next(rx, what).await;
        if f(&m) {
            return m;
        }
    }
}

struct Agent {
    name: String,
    id: Identity,
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    control: Sender,
    inbox: mpsc::UnboundedReceiver<Message>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    rec: Rec,
}

impl Agent {
    async fn join(name: &str, node: SocketAddr, rec: &Rec, record_it: bool) -> Self {
        let id = Identity::generate().expect("key");
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let ep = transport::endpoint(&id, bind, &TransportOptions::default()).expect("endpoint");
        let (conn, _) = transport::dial(&ep, node, WAIT).await.expect("dial node");
        let (send, recv) = conn.open_bi().await.expect("control stream");
        // Bulk agents are recorded in a throwaway recorder.
        let r = if record_it {
            rec.clone()
        } else {
            Arc::new(Mutex::new(Recorder::new(None)))
        };
        let mut control = Sender {
            send,
            label: format!("{name}-to-node-control"),
            transcript: Vec::new(),
            rec: r.clone(),
        };
        let (mut inbox, task) = reader(recv, format!("node-to-{name}-control"), r.clone());
        let hello = Message::Hello {
            kind: PeerKind::Agent,
            incarnation: rand_u64(),
        };
        control.send(&hello).await;
        let welcome = next(&mut inbox, "Welcome").await;
        assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
        Self {
            name: name.into(),
            id,
            _ep: ep,
            conn,
            control,
            inbox,
            tasks: vec![task],
            rec: r,
        }
    }

    fn peer(&self) -> PeerId {
        self.id.peer_id()
    }

    /// One request on its own stream; returns the reply.
    async fn request(&mut self, msg: &Message) -> Message {
        let (send, recv) = self.conn.open_bi().await.expect("request stream");
        let kind = ArbMessage::kind_of(msg);
        let mut s = Sender {
            send,
            label: format!("{}-to-node-{kind}", self.name),
            transcript: Vec::new(),
            rec: self.rec.clone(),
        };
        s.send(msg).await;
        s.finish();
        let (mut rx, task) = reader(
            recv,
            format!("node-to-{}-reply", self.name),
            self.rec.clone(),
        );
        let reply = next(&mut rx, "a reply").await;
        let _ = tokio::time::timeout(WAIT, task).await;
        reply
    }

    async fn close(self) {
        let Agent {
            conn,
            control,
            tasks,
            ..
        } = self;
        control.finish();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(wire::close::NORMAL, b"done");
        for t in tasks {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn record(peer: PeerId, addrs: &[&str], home: PeerId) -> AgentRecord {
    AgentRecord {
        peer,
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        home,
    }
}

/// The fake mesh peer's side of one connection the node dialed.
struct MeshLink {
    conn: quinn::Connection,
    control: Sender,
    inbox: mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

async fn accept_mesh_link(ep: &quinn::Endpoint, me: &Identity, round: u32, rec: &Rec) -> MeshLink {
    let incoming = tokio::time::timeout(WAIT, ep.accept())
        .await
        .expect("the node dials its configured peer")
        .expect("endpoint open");
    let conn = incoming.await.expect("mesh handshake");
    let (send, recv) = tokio::time::timeout(WAIT, conn.accept_bi())
        .await
        .expect("the node opens its control stream")
        .expect("control stream");
    let (mut inbox, task) = reader(recv, format!("node-to-mesh{round}-control"), rec.clone());
    let hello = next(&mut inbox, "the node's Hello").await;
    assert!(
        matches!(
            hello,
            Message::Hello {
                kind: PeerKind::Node,
                ..
            }
        ),
        "{hello:?}"
    );
    let mut control = Sender {
        send,
        label: format!("mesh{round}-to-node-control"),
        transcript: Vec::new(),
        rec: rec.clone(),
    };
    control
        .send(&Message::Welcome {
            incarnation: 0x5eed_0000 + u64::from(round),
            roles: RoleSet {
                coordinator: true,
                reflector: true,
                relay: true,
            },
            observed: None,
        })
        .await;
    let _ = me;
    MeshLink {
        conn,
        control,
        inbox,
        task,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    // Replace earlier recordings; keep everything else.
    for target in ["frame", "decode", "relay", "config", "pem", "message"] {
        let dir = out.join(target);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("traffic-") || n.starts_with("handmade-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let rec: Rec = Arc::new(Mutex::new(Recorder::new(Some(&out))));
    let state = tempfile::tempdir().expect("tempdir");

    // The mesh peer's endpoint comes first: the node is configured with it.
    let mesh_id = Identity::generate().unwrap();
    let mesh_ep = transport::endpoint(
        &mesh_id,
        "127.0.0.1:0".parse().unwrap(),
        &TransportOptions::default(),
    )
    .expect("mesh endpoint");
    let mesh_addr = mesh_ep.local_addr().unwrap();
    let config_text = format!(
        "# The configuration corpus-gen ran its node with.\n\
         listen = \"127.0.0.1:0\"\n\
         peers = [\"{mesh_addr}\"]\n\
         state_dir = \"{}\"\n\
         \n\
         [health]\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         [log]\n\
         level = \"warn\"\n\
         \n\
         [limits]\n\
         accept_per_sec = 100000\n",
        state.path().display()
    );
    let config = Config::parse(&config_text, Path::new("corpus-gen.toml")).expect("config");
    lock(&rec).write("config", "traffic-node.toml", config_text.as_bytes());
    lock(&rec).write(
        "config",
        "traffic-effective.toml",
        config.to_toml().as_bytes(),
    );
    let node_id = Identity::generate().unwrap();
    lock(&rec).write("pem", "traffic-node.key", node_id.to_pem().as_bytes());
    lock(&rec).write("pem", "traffic-mesh.key", mesh_id.to_pem().as_bytes());
    let node = Node::start(config, node_id).await.expect("node starts");
    let node_addr = node.local_addr().unwrap();
    let node_peer = node.peer_id();
    assert!(node_addr.ip().is_loopback() && mesh_addr.ip().is_loopback());
    eprintln!(
        "node {node_addr} ({}), mesh peer {mesh_addr}",
        node_peer.short()
    );

    // 1. The node dials its mesh peer: Hello, Welcome, an empty snapshot.
    let mut mesh = accept_mesh_link(&mesh_ep, &mesh_id, 1, &rec).await;
    let snap = next(&mut mesh.inbox, "the first DirectorySnapshot").await;
    assert!(
        matches!(snap, Message::DirectorySnapshot { .. }),
        "{snap:?}"
    );

    // 2. Two agents join and register.
    let mut a1 = Agent::join("agent1", node_addr, &rec, true).await;
    let mut a2 = Agent::join("agent2", node_addr, &rec, true).await;
    let r = a1
        .request(&Message::Register {
            addrs: vec![
                "127.0.0.1:40001".parse().unwrap(),
                "[::1]:40001".parse().unwrap(),
            ],
        })
        .await;
    assert!(matches!(r, Message::Registered { .. }), "{r:?}");
    let eight: Vec<SocketAddr> = (0..8)
        .map(|i| format!("127.0.0.{}:{}", i + 1, 41000 + i).parse().unwrap())
        .collect();
    let r = a2.request(&Message::Register { addrs: eight }).await;
    assert!(matches!(r, Message::Registered { .. }), "{r:?}");
    until(
        &mut mesh.inbox,
        "Upsert of agent2",
        |m| matches!(m, Message::DirectoryUpsert { record } if record.peer == a2.peer()),
    )
    .await;

    // 3. Lookups and introductions between local agents.
    let r = a1.request(&Message::Lookup { peer: a2.peer() }).await;
    assert!(matches!(r, Message::Found { record: Some(_) }), "{r:?}");
    let stranger = Identity::generate().unwrap().peer_id();
    let r = a1.request(&Message::Lookup { peer: stranger }).await;
    assert!(matches!(r, Message::Found { record: None }), "{r:?}");
    let r = a1.request(&Message::Introduce { peer: a2.peer() }).await;
    assert!(matches!(r, Message::Introduction { .. }), "{r:?}");
    until(&mut a2.inbox, "agent2's Introduction", |m| {
        matches!(m, Message::Introduction { .. })
    })
    .await;
    let r = a1.request(&Message::Introduce { peer: stranger }).await;
    assert!(matches!(r, Message::Refused { .. }), "{r:?}");

    // 4. The mesh peer pushes records of its own agents and an introduction.
    let far1 = Identity::generate().unwrap().peer_id();
    let far2 = Identity::generate().unwrap().peer_id();
    let far3 = Identity::generate().unwrap().peer_id();
    let mp = mesh_id.peer_id();
    mesh.control
        .send(&Message::DirectorySnapshot {
            records: vec![
                record(far1, &["127.0.0.1:42001", "[::1]:42001"], mp),
                record(far2, &["127.0.0.1:42002"], mp),
            ],
        })
        .await;
    mesh.control
        .send(&Message::DirectorySnapshotMore {
            records: vec![record(far3, &["127.0.0.1:42003"], mp)],
        })
        .await;
    let far4 = Identity::generate().unwrap().peer_id();
    mesh.control
        .send(&Message::DirectoryUpsert {
            record: record(far4, &["127.0.0.1:42004", "[::ffff:127.0.0.1]:42004"], mp),
        })
        .await;
    mesh.control
        .send(&Message::DirectoryRemove { peer: far3 })
        .await;
    mesh.control
        .send(&Message::ForwardIntroduction {
            from: record(far1, &["127.0.0.1:42001"], mp),
            to: a1.peer(),
        })
        .await;
    until(
        &mut a1.inbox,
        "the forwarded Introduction",
        |m| matches!(m, Message::Introduction { record } if record.peer == far1),
    )
    .await;
    // An agent asks to meet an agent of the mesh peer: forwarded there.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = a1.request(&Message::Lookup { peer: far2 }).await;
    assert!(matches!(r, Message::Found { record: Some(_) }), "{r:?}");
    let r = a1.request(&Message::Introduce { peer: far2 }).await;
    assert!(matches!(r, Message::Introduction { .. }), "{r:?}");
    until(&mut mesh.inbox, "ForwardIntroduction", |m| {
        matches!(m, Message::ForwardIntroduction { .. })
    })
    .await;

    // 5. Relayed datagrams, as sent and as delivered.
    let mut payloads: Vec<Vec<u8>> = vec![
        vec![relay::TAG_APP],
        [&[relay::TAG_APP][..], b"hello through the relay"].concat(),
        vec![],
    ];
    // A relayed QUIC packet: 1 201 bytes when the path allows it (MTU
    // discovery raises the datagram limit within a second on loopback).
    for _ in 0..40 {
        if a1.conn.max_datagram_size().unwrap_or(0) >= 32 + relay::MIN_RELAYED_QUIC_PACKET {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quic_len = (a1.conn.max_datagram_size().unwrap_or(0).saturating_sub(32))
        .min(relay::MIN_RELAYED_QUIC_PACKET);
    let mut quic = vec![relay::TAG_QUIC, 0xc0, 0, 0, 0, 1];
    quic.extend((6..quic_len as u32).map(|i| (i * 31 % 251) as u8));
    eprintln!("relayed QUIC packet seed: {} bytes", quic.len());
    payloads.push(quic);
    for p in &payloads {
        let d = relay::join(&a2.peer(), p);
        lock(&rec).datagram("agent1-to-node", &d);
        a1.conn.send_datagram(d).expect("send datagram");
        let got = tokio::time::timeout(WAIT, a2.conn.read_datagram())
            .await
            .expect("relayed datagram arrives")
            .expect("datagram");
        assert_eq!(relay::split(&got).map(|(p, _)| p), Some(a1.peer()));
        lock(&rec).datagram("node-to-agent2", &got);
    }
    // ... and ones the node drops (no such agent; too short to name one).
    let d = relay::join(&stranger, b"Ato nobody");
    lock(&rec).datagram("agent1-to-node-no-route", &d);
    a1.conn.send_datagram(d).unwrap();
    let d = Bytes::from_static(b"short");
    lock(&rec).datagram("agent1-to-node-malformed", &d);
    a1.conn.send_datagram(d).unwrap();

    // 6. Too many requests at once: the node refuses the excess.
    let mut refused = false;
    for _ in 0..30 {
        if let Message::Refused { .. } = a2.request(&Message::Lookup { peer: far1 }).await {
            refused = true;
            break;
        }
    }
    assert!(refused, "the request rate limit answered Refused");

    // 7. A big directory: 210 more agents, so a snapshot needs a second part.
    let mut bulk = Vec::new();
    for i in 0..210 {
        let a = Agent::join(&format!("bulk{i}"), node_addr, &rec, false).await;
        let (send, recv) = a.conn.open_bi().await.unwrap();
        let mut send = send;
        let frame = wire::encode(&Message::Register {
            addrs: vec![
                format!("127.0.1.{}:{}", i % 250 + 1, 43000 + i)
                    .parse()
                    .unwrap(),
            ],
        })
        .unwrap();
        send.write_all(&frame).await.unwrap();
        let _ = send.finish();
        let mut recv = recv;
        let (_, reply) = read_raw(&mut recv).await.expect("Registered");
        assert!(matches!(reply, Message::Registered { .. }));
        bulk.push(a);
    }

    // 8. Agent 1 leaves: the mesh peer hears DirectoryRemove.
    let a1_peer = a1.peer();
    a1.close().await;
    until(
        &mut mesh.inbox,
        "DirectoryRemove of agent1",
        |m| matches!(m, Message::DirectoryRemove { peer } if *peer == a1_peer),
    )
    .await;

    // 9. The mesh link drops; the node redials and sends its full snapshot.
    mesh.control.finish();
    mesh.conn.close(wire::close::NORMAL, b"reconnect");
    let _ = tokio::time::timeout(WAIT, mesh.task).await;
    let mut mesh2 = accept_mesh_link(&mesh_ep, &mesh_id, 2, &rec).await;
    until(&mut mesh2.inbox, "DirectorySnapshotMore", |m| {
        matches!(m, Message::DirectorySnapshotMore { .. })
    })
    .await;
    mesh2.control.finish();
    mesh2.conn.close(wire::close::NORMAL, b"done");
    let _ = tokio::time::timeout(WAIT, mesh2.task).await;

    a2.close().await;
    for a in bulk {
        a.conn.close(wire::close::NORMAL, b"done");
    }
    node.shutdown(Duration::from_secs(1)).await;
    mesh_ep.close(wire::close::NORMAL, b"done");

    let mut r = lock(&rec);
    let missing: Vec<_> = x0x_fuzz::MESSAGE_KINDS
        .iter()
        .filter(|k| !r.kinds.contains(*k))
        .collect();
    assert!(missing.is_empty(), "no {missing:?} frame was recorded");
    static_seeds(&mut r);
    eprintln!(
        "wrote {} corpus files under {}",
        r.seen.len(),
        out.display()
    );
}

/// Configs and keys written by hand, and malformed frames.
fn static_seeds(r: &mut Recorder) {
    // Frames a misbehaving peer sends (as in crates/x0x-bootstrap/tests/protocol.rs).
    let lookup = wire::encode(&Message::Lookup {
        peer: PeerId::from_bytes([7; 32]),
    })
    .unwrap();
    let mut bad_version = lookup.clone();
    bad_version[4] = 99;
    let mut trailing = lookup.clone();
    trailing.push(0);
    let n = trailing.len() as u32 - 4;
    trailing[..4].copy_from_slice(&n.to_be_bytes());
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized",
            [&(1u32 << 20).to_be_bytes()[..], &[wire::WIRE_VERSION; 64]].concat(),
        ),
        (
            "max-len-prefix",
            [&(wire::MAX_FRAME_LEN as u32).to_be_bytes()[..], &[1, 0]].concat(),
        ),
        (
            "garbage",
            vec![0, 0, 0, 4, wire::WIRE_VERSION, 0xff, 0xff, 0xff],
        ),
        ("version-99", bad_version.clone()),
        ("trailing-byte", trailing.clone()),
        ("truncated", lookup[..lookup.len() - 2].to_vec()),
        ("empty-body", vec![0, 0, 0, 0]),
        ("partial-prefix", vec![0, 0]),
    ];
    for (name, f) in &frames {
        r.write("frame", &format!("handmade-{name}"), f);
        if f.len() > 4 {
            r.write("decode", &format!("handmade-{name}"), &f[4..]);
        }
    }

    // Configuration files: every key of the README's reference, the shape
    // the NixOS module renders for hosts/*.nix (documentation addresses,
    // not the fleet's), and near misses.
    let configs: &[(&str, &str)] = &[
        ("empty.toml", ""),
        (
            "every-key.toml",
            r#"listen = "[::]:12000"
peers = ["198.51.100.7:12000", "[2001:db8::1]:12000", "node.example.org:12000"]
state_dir = "/var/lib/x0x-bootstrap"
key_file = "/run/keys/x0x-node.key"

[roles]
coordinator = true
reflector = true
relay = true

[health]
listen = "127.0.0.1:12600"
allow_remote = false

[log]
level = "x0x=debug,quinn=warn"
format = "json"

[transport]
keepalive_ms = 2000
idle_timeout_ms = 8000
udp_buffer_bytes = 7340032

[limits]
max_connections = 16384
accept_per_sec = 500
relay_datagram_bytes = 1500
relay_peer_bytes_per_sec = 1048576
relay_global_bytes_per_sec = 134217728
relay_circuits_per_peer = 32
relay_circuits = 8192
"#,
        ),
        (
            "nixos-rendered.toml",
            r#"listen = "[::]:12000"
peers = ["192.0.2.11:12000", "192.0.2.12:12000", "192.0.2.13:12000", "192.0.2.14:12000", "192.0.2.15:12000"]

[health]
listen = "127.0.0.1:12600"
"#,
        ),
        (
            "pinned-peers.toml",
            "peers = [\"19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1@192.0.2.1:12000\", \"192.0.2.2:12000\"]\n",
        ),
        (
            "roles-off.toml",
            "[roles]\ncoordinator = false\nreflector = false\nrelay = false\n[limits]\nrelay_datagram_bytes = 64\n",
        ),
        (
            "remote-health.toml",
            "[health]\nlisten = \"[::]:12600\"\nallow_remote = true\n",
        ),
        (
            "unknown-key.toml",
            "listen = \"[::]:12000\"\n[roles]\nrelays = true\n",
        ),
        ("unknown-table.toml", "[node]\nlisten = \"[::]:1\"\n"),
        ("bad-address.toml", "\nlisten = \"not-an-address\"\n"),
        ("bad-peer.toml", "peers = [\"1.2.3.4\"]\n"),
        ("bad-pin.toml", "peers = [\"abc@127.0.0.1:7\"]\n"),
        (
            "remote-health-refused.toml",
            "[health]\nlisten = \"0.0.0.0:12600\"\n",
        ),
        (
            "idle-timeout-high.toml",
            "[transport]\nidle_timeout_ms = 30000\n",
        ),
        (
            "keepalive-above-idle.toml",
            "[transport]\nidle_timeout_ms = 1500\n",
        ),
        (
            "duplicate-peer.toml",
            "peers = [\"127.0.0.1:1\", \"127.0.0.1:1\"]",
        ),
        ("bad-log-level.toml", "[log]\nlevel = \"loud=[\"\n"),
        ("bad-log-format.toml", "[log]\nformat = \"xml\"\n"),
        ("zero-limit.toml", "[limits]\nmax_connections = 0\n"),
        (
            "dotted-keys.toml",
            "limits.relay_circuits = 0\ntransport.keepalive_ms = 100\n",
        ),
        (
            "inline-table.toml",
            "roles = { relay = false }\nlimits = { accept_per_sec = 0 }\n",
        ),
        ("syntax-error.toml", "listen = \"[::]:12000\n[roles\n"),
        (
            "wrong-type.toml",
            "peers = \"127.0.0.1:1\"\n[limits]\nmax_connections = -1\n",
        ),
        (
            "crlf.toml",
            "listen = \"[::]:12000\"\r\n[roles]\r\nrelay = false\r\n",
        ),
        (
            "unicode.toml",
            "# nœud ☃\nstate_dir = \"/var/lib/x0x-ünïcode\"\n[log]\nlevel = \"info\" # ✓\n",
        ),
    ];
    for (name, text) in configs {
        r.write("config", &format!("handmade-{name}"), text.as_bytes());
    }

    // PEM keys: generated, as openssl writes them, other algorithms, corrupt.
    let generated = Identity::generate().unwrap().to_pem();
    let rfc8410 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
    let mut keys: Vec<(String, Vec<u8>)> = vec![
        ("generated.pem".into(), generated.clone().into_bytes()),
        ("openssl-rfc8410.pem".into(), rfc8410.as_bytes().to_vec()),
        (
            "crlf.pem".into(),
            generated.replace('\n', "\r\n").into_bytes(),
        ),
        (
            "no-final-newline.pem".into(),
            generated.trim_end().as_bytes().to_vec(),
        ),
        (
            "two-blocks.pem".into(),
            format!("{generated}{rfc8410}").into_bytes(),
        ),
        (
            "with-preamble.pem".into(),
            format!("# node key\n{generated}").into_bytes(),
        ),
        (
            "wrong-label.pem".into(),
            rfc8410
                .replace("PRIVATE KEY", "EC PRIVATE KEY")
                .into_bytes(),
        ),
        (
            "truncated-base64.pem".into(),
            rfc8410.replace("dVhC\n", "\n").into_bytes(),
        ),
        (
            "bad-base64.pem".into(),
            rfc8410.replace("MC4C", "M*4C").into_bytes(),
        ),
        (
            "no-end.pem".into(),
            rfc8410
                .lines()
                .take(2)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        ),
        ("empty".into(), Vec::new()),
        ("not-a-key".into(), b"not a key".to_vec()),
        (
            "der".into(),
            Identity::generate().unwrap().pkcs8_der().to_vec(),
        ),
    ];
    // Keys openssl writes, when openssl is installed: Ed25519 (v1), and
    // algorithms that are not Ed25519.
    for (name, args) in [
        (
            "openssl-ed25519.pem",
            &["genpkey", "-algorithm", "ed25519"][..],
        ),
        (
            "openssl-x25519.pem",
            &["genpkey", "-algorithm", "x25519"][..],
        ),
        ("openssl-ed448.pem", &["genpkey", "-algorithm", "ed448"][..]),
        (
            "openssl-p256.pem",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ][..],
        ),
        (
            "openssl-rsa1024.pem",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
            ][..],
        ),
    ] {
        match std::process::Command::new("openssl").args(args).output() {
            Ok(o) if o.status.success() => keys.push((name.into(), o.stdout)),
            _ => eprintln!("openssl not available: {name} not written"),
        }
    }
    for (name, bytes) in &keys {
        r.write("pem", &format!("handmade-{name}"), bytes);
    }
    // Byte-flipped copies of a valid key (corrupt DER inside valid PEM).
    let der = pem_der(rfc8410);
    for (i, at) in [0usize, 1, 5, 7, 12, 15, 47].iter().enumerate() {
        let mut d = der.clone();
        if *at < d.len() {
            d[*at] ^= 0x41;
            let p = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                b64(&d)
            );
            r.write("pem", &format!("handmade-flipped-{i}.pem"), p.as_bytes());
        }
    }

    // The message target takes `arbitrary` bytes: a few plain byte strings
    // (each yields messages of several kinds) and the recorded bodies.
    for k in 0u8..16 {
        let bytes: Vec<u8> = (0..64u32)
            .map(|i| (i as u8).wrapping_mul(k | 1) ^ k)
            .collect();
        r.write("message", &format!("handmade-bytes-{k:02}"), &bytes);
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    unb64(&body)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let vals: Vec<u32> = s
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| B64.iter().position(|x| *x == b).expect("base64") as u32)
        .collect();
    let mut out = Vec::new();
    for c in vals.chunks(4) {
        let mut n = 0u32;
        for (i, v) in c.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        for i in 0..c.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
