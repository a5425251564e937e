//! What a relay can and cannot do to relayed agent traffic.
//!
//! Agent B reaches the (real) bootstrap node only through a UDP proxy in
//! this test, so every relay packet to and from B passes through code that
//! sees exactly the bytes a relay node forwards. The proxy looks for the
//! plaintext, flips bits, injects fabricated packets and replays old ones.
//! The agents' QUIC connection must deliver the data intact regardless:
//! every packet is encrypted and authenticated end to end (between A and
//! B, not with the node), and replays are rejected by packet number.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use x0x::{Agent, ConnectOptions, PathKind, PathPolicy};
use x0x_proto::relay::{self, RELAY_HEADER_LEN};
use x0x_testkit as common;

const HONEST: u8 = 0;
const TAMPER: u8 = 1;
const REPLAY: u8 = 2;

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    relay_payloads: Mutex<Vec<Vec<u8>>>,
    tampered: AtomicUsize,
    injected: AtomicUsize,
    replayed: AtomicUsize,
}

/// A UDP proxy between an agent (whichever address talks to it first) and `node`.
async fn proxy(listen: SocketAddr, node: SocketAddr, mode: Arc<AtomicU8>, seen: Arc<Seen>) {
    let front = UdpSocket::bind(listen).await.unwrap();
    let back = UdpSocket::bind(SocketAddr::new(listen.ip(), 0))
        .await
        .unwrap();
    back.connect(node).await.unwrap();
    let agent: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let history: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let front = Arc::new(front);
    let back = Arc::new(back);
    // Agent -> node: forwarded as is.
    let up = {
        let (front, back, agent) = (front.clone(), back.clone(), agent.clone());
        async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *agent.lock().unwrap() = Some(from);
                let _ = back.send(&buf[..n]).await;
            }
        }
    };
    // Node -> agent: relay packets recorded and, by mode, abused.
    let down = async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let Some(to) = *agent.lock().unwrap() else {
                continue;
            };
            let mut packet = buf[..n].to_vec();
            if relay::parse_relay(&packet).is_some() {
                seen.relay_payloads
                    .lock()
                    .unwrap()
                    .push(packet[RELAY_HEADER_LEN..].to_vec());
                match mode.load(Ordering::Relaxed) {
                    TAMPER => {
                        // Every other packet: flip a payload bit; also inject garbage.
                        if seen
                            .tampered
                            .fetch_add(1, Ordering::Relaxed)
                            .is_multiple_of(2)
                        {
                            let i = RELAY_HEADER_LEN + (packet.len() - RELAY_HEADER_LEN) / 2;
                            packet[i] ^= 0x40;
                        }
                        let mut fake = packet[..RELAY_HEADER_LEN].to_vec();
                        fake.extend((0..1200).map(|_| rand::random::<u8>() | 0x40));
                        let _ = front.send_to(&fake, to).await;
                        seen.injected.fetch_add(1, Ordering::Relaxed);
                    }
                    REPLAY => {
                        let old = history.lock().unwrap().clone();
                        for p in old.iter().rev().take(3) {
                            let _ = front.send_to(p, to).await;
                            seen.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
                let mut h = history.lock().unwrap();
                h.push(buf[..n].to_vec());
                if h.len() > 64 {
                    h.remove(0);
                }
            }
            let _ = front.send_to(&packet, to).await;
        }
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

async fn echo(conn: &x0x::quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 20).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_sees_only_ciphertext_and_cannot_tamper_inject_or_replay() {
    let c = common::single_node(91, "");
    let node = c.nodes[0].quic;
    let mode = Arc::new(AtomicU8::new(HONEST));
    let seen = Arc::new(Seen::default());
    let proxy_addr: SocketAddr = "127.91.2.1:12000".parse().unwrap();
    tokio::spawn(proxy(proxy_addr, node, mode.clone(), seen.clone()));

    let (a, _) = common::joined_agent(91, 1, &[&c.nodes[0]]).await;
    let mut cfg = common::agent_network(91, 2, &[]);
    cfg.bootstrap_peers = vec![proxy_addr.into()];
    let b = Agent::builder().network(cfg).build().unwrap();
    b.join_network().await.unwrap();

    // B echoes everything.
    let b = Arc::new(b);
    let server = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(pc) = b.accept().await {
                let conn = pc.connection().clone();
                tokio::spawn(async move {
                    while let Ok((mut s, mut r)) = conn.accept_bi().await {
                        let data = r.read_to_end(1 << 20).await.unwrap_or_default();
                        let _ = s.write_all(&data).await;
                        let _ = s.finish();
                    }
                });
            }
        })
    };
    let opts = ConnectOptions::default().paths(PathPolicy::RelayOnly);
    let pc = a.connect_with(b.peer_id(), opts).await.unwrap();
    assert_eq!(pc.path(), PathKind::Relayed);
    let secret: Vec<u8> = b"x0x relay test plaintext: the relay must never see this "
        .iter()
        .cycle()
        .take(64 * 1024)
        .copied()
        .collect();
    assert_eq!(echo(pc.connection(), &secret).await, secret);

    let payloads = seen.relay_payloads.lock().unwrap().clone();
    assert!(
        payloads.iter().map(Vec::len).sum::<usize>() >= 64 * 1024,
        "the echo crossed the relay"
    );
    let needle = &secret[..24];
    for p in &payloads {
        assert!(
            !p.windows(needle.len()).any(|w| w == needle),
            "plaintext seen by the relay"
        );
    }

    mode.store(TAMPER, Ordering::Relaxed);
    assert_eq!(echo(pc.connection(), &secret).await, secret, "tampering");
    assert!(seen.tampered.load(Ordering::Relaxed) > 0);
    assert!(seen.injected.load(Ordering::Relaxed) > 0);

    mode.store(REPLAY, Ordering::Relaxed);
    assert_eq!(echo(pc.connection(), &secret).await, secret, "replays");
    assert!(seen.replayed.load(Ordering::Relaxed) > 0);

    mode.store(HONEST, Ordering::Relaxed);
    assert_eq!(echo(pc.connection(), b"still alive").await, b"still alive");
    assert!(pc.connection().close_reason().is_none());
    server.abort();
    tokio::time::sleep(Duration::from_millis(10)).await;
}
