//! What a relay can and cannot do to relayed agent traffic.
//!
//! Here the test itself is the relay: two agent endpoints on `MuxSocket`s
//! exchange their QUIC packets only through this test, which sees exactly
//! the bytes a relay node forwards. It looks for the plaintext, flips bits,
//! injects fabricated packets and replays old ones. The agents' QUIC
//! connection must deliver the data intact regardless, because every
//! packet is authenticated and encrypted end to end and replays are
//! rejected by packet number.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use x0x::mux_socket::{MuxSocket, RelayedPacket};
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::transport::{self, TransportOptions};

const HONEST: u8 = 0;
const TAMPER: u8 = 1;
const REPLAY: u8 = 2;

struct Side {
    id: PeerId,
    socket: Arc<MuxSocket>,
    endpoint: quinn::Endpoint,
    queue: mpsc::Receiver<RelayedPacket>,
}

fn side() -> Side {
    let identity = Identity::generate().unwrap();
    let (server, client) = transport::configs(&identity, &TransportOptions::default()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (socket, queue) = MuxSocket::new(udp).unwrap();
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    endpoint.set_default_client_config(client);
    Side {
        id: identity.peer_id(),
        socket,
        endpoint,
        queue,
    }
}

/// Forward packets from one side's queue into the other side's socket,
/// recording them and misbehaving according to `mode`.
fn relay(
    mut from: mpsc::Receiver<RelayedPacket>,
    from_id: PeerId,
    to: Arc<MuxSocket>,
    node: PeerId,
    mode: Arc<AtomicU8>,
    seen: Arc<Mutex<Vec<Bytes>>>,
) {
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(p) = from.recv().await {
            n += 1;
            let mut seen_now = seen.lock().await;
            seen_now.push(p.payload.clone());
            match mode.load(Ordering::Relaxed) {
                TAMPER if n.is_multiple_of(3) => {
                    // Flip a bit in the protected part of the packet.
                    let mut forged = p.payload.to_vec();
                    let i = forged.len() - 5;
                    forged[i] ^= 0x20;
                    to.deliver(node, from_id, Bytes::from(forged));
                    // And a fabricated packet out of thin air.
                    to.deliver(node, from_id, Bytes::from(vec![0x40u8; 80]));
                    continue; // the genuine packet is lost: QUIC must retransmit
                }
                REPLAY => {
                    to.deliver(node, from_id, p.payload.clone());
                    // Replay an old packet too.
                    let old = seen_now[(n as usize * 7) % seen_now.len()].clone();
                    to.deliver(node, from_id, old);
                }
                _ => {}
            }
            to.deliver(node, from_id, p.payload);
        }
    });
}

async fn transfer(conn: &quinn::Connection, incoming: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, _unused) = conn.open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    let (_reply, mut recv) = tokio::time::timeout(Duration::from_secs(20), incoming.accept_bi())
        .await
        .expect("stream arrives")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1 << 24))
        .await
        .expect("data arrives")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_sees_only_ciphertext_and_cannot_forge_or_replay() {
    let node = PeerId::from_bytes([0xee; 32]);
    let (a, b) = (side(), side());
    let mode = Arc::new(AtomicU8::new(HONEST));
    let seen = Arc::new(Mutex::new(Vec::new()));
    relay(
        a.queue,
        a.id,
        b.socket.clone(),
        node,
        mode.clone(),
        seen.clone(),
    );
    relay(
        b.queue,
        b.id,
        a.socket.clone(),
        node,
        mode.clone(),
        seen.clone(),
    );

    let b_addr = a.socket.relay_addr(node, b.id);
    let accept = tokio::spawn({
        let ep = b.endpoint.clone();
        async move { ep.accept().await.unwrap().await.unwrap() }
    });
    let (conn, id) = transport::dial(&a.endpoint, b_addr, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        id, b.id,
        "end-to-end authenticated: A talks to B, not to the relay"
    );
    let incoming = accept.await.unwrap();
    assert_eq!(x0x_proto::tls::remote_peer_id(&incoming), Some(a.id));

    // 1. Honest relay: it sees the packets, never the plaintext.
    let marker = b"x0x-plaintext-marker-5b1f0c2e9a47";
    let secret: Vec<u8> = marker.iter().copied().cycle().take(64 * 1024).collect();
    assert_eq!(transfer(&conn, &incoming, &secret).await, secret);
    {
        let seen = seen.lock().await;
        assert!(
            seen.len() > 40,
            "the relay forwarded {} packets",
            seen.len()
        );
        let leaked = seen
            .iter()
            .any(|p| p.windows(12).any(|w| marker.windows(12).any(|m| m == w)));
        assert!(!leaked, "plaintext visible to the relay");
    }

    // 2. Tampering relay: flipped bits and fabricated packets are rejected;
    //    the data still arrives exactly as sent.
    mode.store(TAMPER, Ordering::Relaxed);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    assert_eq!(transfer(&conn, &incoming, &data).await, data);

    // 3. Replaying relay: duplicates and old packets change nothing.
    mode.store(REPLAY, Ordering::Relaxed);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 17 % 253) as u8).collect();
    assert_eq!(transfer(&conn, &incoming, &data).await, data);

    // The connection survived all of it.
    mode.store(HONEST, Ordering::Relaxed);
    assert_eq!(
        transfer(&conn, &incoming, b"still here").await,
        b"still here"
    );
    assert!(conn.close_reason().is_none() && incoming.close_reason().is_none());
}
