//! Misbehaving peers: bad frames close *that* connection with an error code,
//! are counted, and never take the node down. Also: the key exchange a real
//! QUIC handshake with the node negotiates.

use x0x_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::raw::RawClient;
use common::{Cluster, blocking};
use quinn::{ConnectionError, VarInt};
use x0x_proto::identity::Identity;
use x0x_proto::wire::{self, Message, PeerKind, close};

/// A raw QUIC connection to the node, as a client would open it.
async fn raw_connection(net: u8, node: &common::NodeProc) -> quinn::Connection {
    let client = RawClient::bind(&format!("127.{net}.1.9:0"));
    // The endpoint's driver runs as long as the connection lives.
    client.dial(node.quic).await.unwrap()
}

async fn close_code(conn: &quinn::Connection) -> Option<VarInt> {
    match tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .ok()?
    {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code),
        other => panic!("closed unexpectedly: {other:?}"),
    }
}

async fn assert_node_still_serves(net: u8, c: &Arc<Cluster>) {
    let (_agent, report) = common::joined_agent(net, 2, &[&c.nodes[0]]).await;
    assert_eq!(report.connected.len(), 1, "node still accepts agents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_the_connection_with_a_code() {
    let c = common::single_node(41, "");
    let conn = raw_connection(41, &c.nodes[0]).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // Announce a 1 MiB frame: refused from the length prefix alone.
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    send.write_all(&[wire::WIRE_VERSION; 64]).await.unwrap();
    assert_eq!(close_code(&conn).await, Some(close::FRAME_TOO_LARGE));
    let c2 = c.clone();
    let n = blocking(move || c2.nodes[0].metric("x0x_frames_rejected_total{reason=\"too_large\"}"))
        .await;
    assert_eq!(n, 1.0);
    assert_node_still_serves(41, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_the_connection_with_a_code() {
    let c = common::single_node(42, "");
    let conn = raw_connection(42, &c.nodes[0]).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 4, wire::WIRE_VERSION, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(close_code(&conn).await, Some(close::PROTOCOL));

    // A frame of a future wire version.
    let conn = raw_connection(42, &c.nodes[0]).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 2, 99, 0]).await.unwrap();
    assert_eq!(close_code(&conn).await, Some(close::VERSION));

    // A valid frame that is not a Hello.
    let conn = raw_connection(42, &c.nodes[0]).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    wire::write_frame(
        &mut send,
        &Message::Lookup {
            peer: Identity::generate().unwrap().peer_id(),
        },
    )
    .await
    .unwrap();
    assert_eq!(close_code(&conn).await, Some(close::PROTOCOL));

    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    assert!(
        m.contains("x0x_frames_rejected_total{reason=\"malformed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("x0x_frames_rejected_total{reason=\"version\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("x0x_frames_rejected_total{reason=\"unexpected\"} 1"),
        "{m}"
    );
    assert_node_still_serves(42, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_join_the_mesh_by_claiming_to_be_a_node() {
    let c = common::single_node(43, "");
    let conn = raw_connection(43, &c.nodes[0]).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello {
        kind: PeerKind::Node,
        incarnation: 1,
    };
    wire::write_frame(&mut send, &hello).await.unwrap();
    assert_eq!(close_code(&conn).await, Some(close::NOT_MEMBER));
    let c2 = c.clone();
    let h = blocking(move || c2.nodes[0].health().unwrap()).await;
    assert_eq!(h["peers"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_with_the_node_negotiate_x25519mlkem768() {
    let c = common::single_node(44, "");
    let (_agent, _) = common::joined_agent(44, 1, &[&c.nodes[0]]).await;
    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    assert!(
        m.contains("x0x_tls_handshakes_total{group=\"X25519MLKEM768\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("x0x_tls_handshakes_total{group=\"X25519\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_the_handshake_timeout() {
    let c = common::single_node(45, "");
    let conn = raw_connection(45, &c.nodes[0]).await;
    // Never send Hello: the node gives up after hello_timeout_ms (5 s).
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("node closes a silent connection");
    match closed {
        ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, close::TOO_SLOW),
        other => panic!("unexpected close: {other:?}"),
    }
    let c2 = c.clone();
    let n = blocking(move || {
        c2.nodes[0].metric("x0x_frames_rejected_total{reason=\"hello_timeout_ms\"}")
    })
    .await;
    assert_eq!(n, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_learns_its_observed_address_and_is_not_admitted() {
    let c = common::single_node(46, "");
    let conn = raw_connection(46, &c.nodes[0]).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello {
        kind: PeerKind::Probe,
        incarnation: 1,
    };
    wire::write_frame(&mut send, &hello).await.unwrap();
    let welcome = wire::read_frame(&mut recv, &wire::ReadLimits::TO_AGENT)
        .await
        .unwrap();
    let Some(Message::Welcome { observed, .. }) = welcome else {
        panic!("expected Welcome, got {welcome:?}");
    };
    let observed = observed.expect("the reflector reports the observed address");
    assert_eq!(observed.ip().to_string(), "127.46.1.9");
    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    assert!(m.contains("x0x_probes_answered_total 1"), "{m}");
    assert!(m.contains("x0x_agents_connected 0"), "{m}");
    // A prober that lingers is closed for it (after hello_timeout_ms, 5 s
    // by default: longer than close_code's own wait, so wait here).
    let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("closed within hello_timeout_ms");
    match closed {
        ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, close::NORMAL),
        other => panic!("closed unexpectedly: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_peer_that_dialed_in_is_named_in_the_status_even_if_our_dial_failed() {
    // Node 0 is configured with a peer at 127.47.0.2:12000. What sits there
    // is a client-only endpoint: node 0's own dials to it never complete,
    // so the only way node 0 can learn its identity is the inbound session.
    let mut c = Cluster::full_mesh(47, 2, "");
    c.nodes[0].start();
    assert!(common::wait_until(Duration::from_secs(10), || c.nodes[0]
        .health()
        .is_some()));
    let peer = RawClient::bind(&format!("{}:12000", common::ip(47, 2)));
    let conn = peer.dial(c.nodes[0].quic).await.unwrap();
    let session = common::raw::hello(conn, PeerKind::Node).await;
    assert!(matches!(session.welcome, Message::Welcome { .. }));
    // Status is an agent's request: ask from another client, while the
    // mesh session stays up.
    let asker = raw_connection(47, &c.nodes[0]).await;
    let _asking = common::raw::hello(asker.clone(), PeerKind::Agent).await;
    let Message::StatusReport { status } = common::raw::request(&asker, &Message::Status).await
    else {
        panic!("expected a StatusReport");
    };
    let link = status
        .mesh
        .iter()
        .find(|l| l.addr == format!("{}:12000", common::ip(47, 2)))
        .expect("the configured peer is in the status");
    assert_eq!(link.peer_id, Some(peer.peer_id()), "{link:?}");
    assert!(link.connected, "{link:?}");
    drop(session);
}
