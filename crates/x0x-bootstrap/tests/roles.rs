//! The three roles of a bootstrap node, each exercised through real agents
//! against real `x0x-bootstrap` processes, and each switched off to show
//! the test depends on it.

use x0x_testkit as common;

use std::time::Duration;

use common::raw::{
    RawClient, Session, registered_agent, registered_agent_with, relay_packet, request,
};
use common::{Cluster, blocking, joined_agent};
use x0x_proto::PeerId;
use x0x_proto::relay::parse_relay;
use x0x_proto::wire::{Message, Refusal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_tells_an_agent_the_address_it_was_seen_from() {
    let c = common::single_node(31, "");
    let (agent, report) = joined_agent(31, 1, &[&c.nodes[0]]).await;
    // On loopback there is no NAT: the observed address is our own socket.
    assert_eq!(report.observed_addr, Some(agent.local_addr().unwrap()));
    let c2 = c.clone();
    let n = blocking(move || c2.nodes[0].metric("x0x_reflector_observations_total")).await;
    assert_eq!(n, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_off_reports_nothing() {
    let c = common::single_node(32, "[roles]\nreflector = false\n");
    let (_agent, report) = joined_agent(32, 1, &[&c.nodes[0]]).await;
    assert_eq!(report.observed_addr, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_shared_by_the_mesh_and_introductions_cross_it() {
    let mut c = Cluster::full_mesh(33, 3, "");
    c.start_all();
    assert!(
        c.wait_all_report(&[0, 1, 2], 2, Duration::from_secs(30)),
        "{:?}",
        c.peer_counts()
    );
    // A registers with node 0 only; B with node 2 only.
    let a = RawClient::bind("127.33.1.1:0");
    let b = RawClient::bind("127.33.1.2:0");
    let mut sa = registered_agent(&a, c.nodes[0].quic).await;
    let sb = registered_agent(&b, c.nodes[2].quic).await;
    let node0 = sa.conn.remote_address();
    let _ = node0;

    // B finds A through node 2, which only knows A from the mesh.
    let mut found = None;
    for _ in 0..100 {
        if let Message::Found { info: Some(info) } =
            request(&sb.conn, &Message::Lookup { peer: a.peer_id() }).await
        {
            found = Some(info);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = found.expect("A is visible through node 2");
    assert_eq!(info.homes.len(), 1);
    assert!(
        info.addrs.contains(&a.endpoint.local_addr().unwrap()),
        "{info:?}"
    );

    // B asks node 2 for an introduction; node 0 delivers it to A.
    let intro = request(&sb.conn, &Message::Introduce { peer: a.peer_id() }).await;
    assert!(
        matches!(intro, Message::Introduced { ref info } if info.peer == a.peer_id()),
        "{intro:?}"
    );
    match sa.next_push(Duration::from_secs(5)).await {
        Some(Message::Introduction { info }) => {
            assert_eq!(info.peer, b.peer_id());
            assert!(info.addrs.contains(&b.endpoint.local_addr().unwrap()));
        }
        other => panic!("A should hear of B, got {other:?}"),
    }

    // Unknown peers are reported as such.
    let stranger = x0x::Identity::generate().unwrap().peer_id();
    assert_eq!(
        request(&sb.conn, &Message::Lookup { peer: stranger }).await,
        Message::Found { info: None }
    );
    assert_eq!(
        request(&sb.conn, &Message::Introduce { peer: stranger }).await,
        Message::Refused {
            reason: Refusal::UnknownPeer
        }
    );

    // When A leaves, its record disappears everywhere.
    sa.conn.close(0u32.into(), b"bye");
    let mut gone = false;
    for _ in 0..100 {
        if request(&sb.conn, &Message::Lookup { peer: a.peer_id() }).await
            == (Message::Found { info: None })
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "A's record outlived its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_off_refuses_registration_and_lookups() {
    let c = common::single_node(34, "[roles]\ncoordinator = false\n");
    let (a, report) = joined_agent(34, 1, &[&c.nodes[0]]).await;
    assert!(report.registered.is_empty());
    let err = a.lookup(a.peer_id()).await.unwrap_err();
    assert!(err.to_string().contains("coordinator"), "{err}");
}

/// Two raw agents on one node with a circuit between them: (A's cid, B's cid).
async fn circuit(c: &Cluster, a: &RawClient, b: &RawClient) -> (Session, Session, u64, u64) {
    let node = c.nodes[0].quic;
    let sa = registered_agent(a, node).await;
    let mut sb = registered_agent(b, node).await;
    let Message::CircuitOpened { cid, .. } =
        request(&sa.conn, &Message::OpenCircuit { peer: b.peer_id() }).await
    else {
        panic!("circuit refused");
    };
    let Some(Message::CircuitNotice { peer, cid: theirs }) =
        sb.next_push(Duration::from_secs(5)).await
    else {
        panic!("B got no circuit notice");
    };
    assert_eq!(peer, a.peer_id());
    (sa, sb, cid, theirs)
}

/// The next relay packet B receives: (cid, payload).
async fn relayed(b: &RawClient) -> Option<(u64, Vec<u8>)> {
    let (_, p) = b.recv_raw(Duration::from_secs(1)).await?;
    parse_relay(&p).map(|(cid, pl)| (cid, pl.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_forwards_opaque_packets_by_circuit_and_only_from_their_owner() {
    let c = common::single_node(35, "[limits]\nrelay_datagram_bytes = 500\n");
    let (a, b, m) = (
        RawClient::bind("127.35.1.1:0"),
        RawClient::bind("127.35.1.2:0"),
        RawClient::bind("127.35.1.3:0"),
    );
    let (_sa, _sb, cid_a, cid_b) = circuit(&c, &a, &b).await;
    let node = c.nodes[0].quic;

    // Arbitrary bytes (not QUIC, not a frame of anything) arrive unchanged,
    // with B's end's circuit id.
    let payload: Vec<u8> = (0..=255u8).rev().collect();
    a.send_raw(node, &relay_packet(cid_a, &payload));
    assert_eq!(relayed(&b).await, Some((cid_b, payload.clone())));
    // And back.
    b.send_raw(node, &relay_packet(cid_b, b"pong"));
    assert_eq!(relayed(&a).await, Some((cid_a, b"pong".to_vec())));

    // Over the size limit: dropped and counted.
    a.send_raw(node, &relay_packet(cid_a, &[7u8; 600]));
    assert_eq!(relayed(&b).await, None);
    // Another host using A's circuit id (a spoofed or guessed id): dropped.
    m.send_raw(node, &relay_packet(cid_a, b"forged"));
    assert_eq!(relayed(&b).await, None);
    // A made-up circuit id.
    a.send_raw(node, &relay_packet(cid_a ^ 1, b"nowhere"));
    assert_eq!(relayed(&b).await, None);

    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    for line in [
        "x0x_relay_dropped_total{reason=\"too_large\"} 1",
        "x0x_relay_dropped_total{reason=\"spoofed\"} 1",
        "x0x_relay_dropped_total{reason=\"no_circuit\"} 1",
        "x0x_relay_datagrams_total 2",
        "x0x_relay_bytes_total 260",
        "x0x_relay_circuits 1",
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_needs_the_destinations_consent() {
    let c = common::single_node(38, "");
    let (a, b) = (
        RawClient::bind("127.38.1.1:0"),
        RawClient::bind("127.38.1.2:0"),
    );
    let sa = registered_agent(&a, c.nodes[0].quic).await;
    let _sb = registered_agent_with(&b, c.nodes[0].quic, false).await;
    assert_eq!(
        request(&sa.conn, &Message::OpenCircuit { peer: b.peer_id() }).await,
        Message::Refused {
            reason: Refusal::NoConsent
        }
    );
    let nobody = PeerId::from_bytes([9; 32]);
    assert_eq!(
        request(&sa.conn, &Message::OpenCircuit { peer: nobody }).await,
        Message::Refused {
            reason: Refusal::NotHere
        }
    );
    let c2 = c.clone();
    let refused = blocking(move || {
        c2.nodes[0].metric("x0x_relay_circuits_refused_total{reason=\"no_consent\"}")
    })
    .await;
    assert_eq!(refused, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_throttles_a_peer_over_its_quota_and_not_the_others() {
    // 20 000 bytes/s per sender: a burst of 20 x 2 000 bytes mostly exceeds it.
    let c = common::single_node(
        36,
        "[limits]\nrelay_peer_bytes_per_sec = 20000\nrelay_datagram_bytes = 2000\n",
    );
    let (a, b, z) = (
        RawClient::bind("127.36.1.1:0"),
        RawClient::bind("127.36.1.2:0"),
        RawClient::bind("127.36.1.3:0"),
    );
    let (_sa, _sb, cid_a, _) = circuit(&c, &a, &b).await;
    let node = c.nodes[0].quic;
    for i in 0..20u8 {
        a.send_raw(node, &relay_packet(cid_a, &[i; 2000]));
    }
    let mut from_a = 0;
    while relayed(&b).await.is_some() {
        from_a += 1;
    }
    // At most the 1-second burst (10 packets) plus what refilled meanwhile.
    assert!((1..=13).contains(&from_a), "A got {from_a} of 20 through");
    // Z has its own budget.
    let (_sz, _sb2, cid_z, _) = circuit_more(&c, &z, &b).await;
    z.send_raw(node, &relay_packet(cid_z, b"hello"));
    assert_eq!(relayed(&b).await.map(|(_, p)| p), Some(b"hello".to_vec()));
    let c2 = c.clone();
    let throttled =
        blocking(move || c2.nodes[0].metric("x0x_relay_dropped_total{reason=\"peer_rate\"}")).await;
    assert_eq!(throttled, (20 - from_a) as f64);
}

/// A circuit from a new agent to an already registered one (whose
/// control stream the caller does not read).
async fn circuit_more(c: &Cluster, from: &RawClient, to: &RawClient) -> (Session, (), u64, ()) {
    let s = registered_agent(from, c.nodes[0].quic).await;
    let Message::CircuitOpened { cid, .. } =
        request(&s.conn, &Message::OpenCircuit { peer: to.peer_id() }).await
    else {
        panic!("circuit refused");
    };
    (s, (), cid, ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_off_opens_no_circuit_and_forwards_nothing() {
    let c = common::single_node(37, "[roles]\nrelay = false\n");
    let (a, b) = (
        RawClient::bind("127.37.1.1:0"),
        RawClient::bind("127.37.1.2:0"),
    );
    let sa = registered_agent(&a, c.nodes[0].quic).await;
    let _sb = registered_agent(&b, c.nodes[0].quic).await;
    assert_eq!(
        request(&sa.conn, &Message::OpenCircuit { peer: b.peer_id() }).await,
        Message::Refused {
            reason: Refusal::RelayDisabled
        }
    );
    a.send_raw(c.nodes[0].quic, &relay_packet(1, b"x"));
    assert_eq!(relayed(&b).await, None);
    let c2 = c.clone();
    let dropped =
        blocking(move || c2.nodes[0].metric("x0x_relay_dropped_total{reason=\"disabled\"}")).await;
    assert_eq!(dropped, 1.0);
}
