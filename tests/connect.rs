//! Agents connecting to each other by PeerId through a real node: direct
//! when possible, relayed when asked or when direct fails, with data
//! flowing end to end and both sides agreeing on the path.

use x0x_testkit as common;

use std::time::Duration;

use common::{Cluster, joined_agent};
use x0x::{ConnectOptions, PathKind, PathPolicy, PeerConnection};

/// Wait (a generous correctness bound) until the connection uses `want`.
async fn wait_path(pc: &PeerConnection, want: PathKind) -> bool {
    for _ in 0..100 {
        if pc.path() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn echo_once(conn: &quinn::Connection, payload: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(payload).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 24).await.unwrap()
}

/// Serve one connection: echo each stream back.
fn serve_echo(agent: std::sync::Arc<x0x::Agent>) -> tokio::task::JoinHandle<PeerConnection> {
    tokio::spawn(async move {
        let pc = agent.accept().await.expect("an incoming connection");
        let conn = pc.connection().clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let data = recv.read_to_end(1 << 24).await.unwrap();
                send.write_all(&data).await.unwrap();
                send.finish().unwrap();
            }
        });
        pc
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connect_directly_by_peer_id() {
    let mut c = Cluster::full_mesh(71, 1, "");
    c.start_all();
    let (a, _) = joined_agent(71, 1, &[&c.nodes[0]]).await;
    let (b, _) = joined_agent(71, 2, &[&c.nodes[0]]).await;
    let b = std::sync::Arc::new(b);
    let server = serve_echo(b.clone());

    let pc = a.connect(b.peer_id()).await.unwrap();
    // It may start relayed; on loopback a direct path validates at once.
    assert!(wait_path(&pc, PathKind::Direct).await, "{:?}", pc.paths());
    assert_eq!(pc.peer_id(), b.peer_id());
    assert_eq!(pc.via(), None);
    let direct = pc.paths().into_iter().find(|p| p.selected).unwrap();
    assert_eq!(direct.addr, b.local_addr().unwrap());
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(echo_once(pc.connection(), &data).await, data);

    let accepted = server.await.unwrap();
    assert_eq!(accepted.peer_id(), a.peer_id());
    assert!(wait_path(&accepted, PathKind::Direct).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connect_through_the_relay_across_the_mesh() {
    // A and B are homed on different nodes; B's home relays. A must be
    // connected to B's home node too, so A joins both.
    let mut c = Cluster::full_mesh(72, 2, "");
    c.start_all();
    assert!(c.wait_all_report(&[0, 1], 1, Duration::from_secs(30)));
    let (a, _) = joined_agent(72, 1, &[&c.nodes[0], &c.nodes[1]]).await;
    let (b, rb) = joined_agent(72, 2, &[&c.nodes[1]]).await;
    let b = std::sync::Arc::new(b);
    let server = serve_echo(b.clone());

    let opts = ConnectOptions::default().paths(PathPolicy::RelayOnly);
    let pc = a.connect_with(b.peer_id(), opts).await.unwrap();
    assert_eq!(pc.path(), PathKind::Relayed);
    // Only B's home can relay: it is the only node both are registered with.
    assert_eq!(pc.via(), Some(rb.connected[0].peer_id));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(echo_once(pc.connection(), &data).await, data);

    let accepted = server.await.unwrap();
    assert_eq!(accepted.path(), PathKind::Relayed);
    assert_eq!(accepted.peer_id(), a.peer_id());

    // The node counted the relayed packets.
    let node = std::sync::Arc::new(c);
    let n2 = node.clone();
    let relayed = common::blocking(move || n2.nodes[1].metric("x0x_relay_datagrams_total")).await;
    assert!(relayed > 100.0, "only {relayed} datagrams relayed");
}

/// A user-space "NAT" for one client: listens on `front` (the client's
/// side), talks to `server` from its own socket on `back`, and forwards
/// only between the two (address-and-port-dependent filtering).
async fn filtering_proxy(
    front: &str,
    back: &str,
    server: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let outside = tokio::net::UdpSocket::bind(front).await.unwrap();
    let inside = tokio::net::UdpSocket::bind(back).await.unwrap();
    inside.connect(server).await.unwrap();
    let addr = outside.local_addr().unwrap();
    let (outside, inside) = (std::sync::Arc::new(outside), std::sync::Arc::new(inside));
    let client = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let (outside, inside, client) = (outside.clone(), inside.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = outside.recv_from(&mut buf).await {
                let mut c = client.lock().unwrap();
                if c.is_none() || *c == Some(from) {
                    *c = Some(from);
                    let _ = inside.try_send(&buf[..n]);
                } // anyone else: dropped
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = inside.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(c) = to {
                let _ = outside.send_to(&buf[..n], c).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_direct_fails_the_connection_stays_on_the_relay() {
    let mut c = Cluster::full_mesh(73, 1, "");
    c.start_all();
    let (a, _) = joined_agent(73, 1, &[&c.nodes[0]]).await;
    // B is IPv6-only (on ::1) and A IPv4-only, so no direct path exists.
    // B reaches the node through a filtering proxy: the address the node
    // observes (and tells A) is the proxy's, which drops A's packets.
    let proxy = filtering_proxy("[::1]:0", "127.73.2.1:0", c.nodes[0].quic).await;
    let mut cfg = common::agent_network(73, 2, &[]);
    cfg.bootstrap_peers = vec![proxy.into()];
    cfg.bind = "[::1]:0".parse().unwrap();
    let b = x0x::Agent::builder().network(cfg).build().unwrap();
    let joined = b.join_network().await.unwrap();
    assert_eq!(
        joined.observed_addr.map(|a| a.ip()),
        Some("127.73.2.1".parse().unwrap())
    );
    let b = std::sync::Arc::new(b);
    let server = serve_echo(b.clone());

    let pc = a.connect(b.peer_id()).await.unwrap();
    assert_eq!(pc.path(), PathKind::Relayed);
    assert_eq!(echo_once(pc.connection(), b"ping").await, b"ping");
    // Probing the direct candidate (the proxy) keeps failing: still relayed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pc.path(), PathKind::Relayed);
    assert_eq!(echo_once(pc.connection(), b"pong").await, b"pong");
    assert_eq!(server.await.unwrap().path(), PathKind::Relayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unknown_peer_fails_clearly() {
    let mut c = Cluster::full_mesh(74, 1, "");
    c.start_all();
    let (a, _) = joined_agent(74, 1, &[&c.nodes[0]]).await;
    let stranger = x0x::Identity::generate().unwrap().peer_id();
    let err = a.connect(stranger).await.unwrap_err();
    assert!(
        matches!(err, x0x::AgentError::NotFound(p) if p == stranger),
        "{err}"
    );
    assert!(err.to_string().contains(&stranger.to_string()), "{err}");
}
