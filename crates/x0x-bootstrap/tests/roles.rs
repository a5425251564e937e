//! The three roles of a bootstrap node, each exercised through real agents
//! against real `x0x-bootstrap` processes, and each switched off to show
//! the test depends on it.

use x0x_testkit as common;

use std::time::Duration;

use common::{Cluster, blocking, joined_agent};

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
    let (a, ra) = joined_agent(33, 1, &[&c.nodes[0]]).await;
    let (b, rb) = joined_agent(33, 2, &[&c.nodes[2]]).await;
    let node0 = ra.connected[0].peer_id;
    assert_eq!(ra.registered, vec![node0]);
    assert_eq!(rb.registered.len(), 1);

    // B finds A through node 2, which only knows A from the mesh.
    let mut found = None;
    for _ in 0..100 {
        found = b.lookup(a.peer_id()).await.unwrap();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = found.expect("A is visible through node 2");
    assert_eq!(record.home, node0);
    assert!(
        record.addrs.contains(&a.local_addr().unwrap()),
        "{record:?}"
    );

    // B asks node 2 for an introduction; node 0 delivers it to A.
    let intro = b.introduce(a.peer_id()).await.unwrap();
    assert_eq!(intro.peer, a.peer_id());
    let to_a = tokio::time::timeout(Duration::from_secs(5), a.next_introduction())
        .await
        .expect("A hears of B")
        .unwrap();
    assert_eq!(to_a.peer, b.peer_id());
    assert!(to_a.addrs.contains(&b.local_addr().unwrap()));

    // Unknown peers are reported as such.
    let stranger = x0x::Identity::generate().unwrap().peer_id();
    assert_eq!(b.lookup(stranger).await.unwrap(), None);
    assert!(b.introduce(stranger).await.is_err());

    // When A leaves, its record disappears everywhere.
    let a_id = a.peer_id();
    a.close().await;
    let mut gone = false;
    for _ in 0..100 {
        if b.lookup(a_id).await.unwrap().is_none() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_forwards_opaque_datagrams_by_peer_id() {
    let c = common::single_node(35, "[limits]\nrelay_datagram_bytes = 500\n");
    let (a, ra) = joined_agent(35, 1, &[&c.nodes[0]]).await;
    let (b, _) = joined_agent(35, 2, &[&c.nodes[0]]).await;
    let node = ra.connected[0].peer_id;

    // Arbitrary bytes (not a valid frame of anything) arrive unchanged.
    // (The relay counts 257 bytes: the agent tags application datagrams.)
    let payload: Vec<u8> = (0..=255u8).rev().collect();
    a.send_relayed(node, b.peer_id(), &payload).unwrap();
    let got = common::recv_relayed(&b)
        .await
        .expect("B receives the relayed datagram");
    assert_eq!(got.from, a.peer_id());
    assert_eq!(got.via, node);
    assert_eq!(&got.payload[..], &payload[..]);

    // Over the size limit: dropped and counted.
    a.send_relayed(node, b.peer_id(), &[7u8; 600]).unwrap();
    assert!(common::recv_relayed(&b).await.is_none());
    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    assert!(
        m.contains("x0x_relay_dropped_total{reason=\"too_large\"} 1"),
        "{m}"
    );
    assert!(m.contains("x0x_relay_datagrams_total 1"), "{m}");
    assert!(m.contains("x0x_relay_bytes_total 257"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_throttles_a_peer_over_its_quota_and_not_the_others() {
    // 2 000 bytes/s per peer: a burst of 20 × 400 bytes mostly exceeds it.
    let c = common::single_node(36, "[limits]\nrelay_peer_bytes_per_sec = 2000\n");
    let (a, ra) = joined_agent(36, 1, &[&c.nodes[0]]).await;
    let (b, _) = joined_agent(36, 2, &[&c.nodes[0]]).await;
    let (z, _) = joined_agent(36, 3, &[&c.nodes[0]]).await;
    let node = ra.connected[0].peer_id;
    for i in 0..20u8 {
        a.send_relayed(node, b.peer_id(), &[i; 400]).unwrap();
    }
    let mut from_a = 0;
    while let Some(d) = common::recv_relayed(&b).await {
        assert_eq!(d.from, a.peer_id());
        from_a += 1;
    }
    // At most the 1-second burst (5 datagrams) plus what refilled meanwhile.
    assert!((1..=8).contains(&from_a), "A got {from_a} of 20 through");
    // Z is within its own quota and is not throttled.
    z.send_relayed(node, b.peer_id(), b"hello").unwrap();
    let d = common::recv_relayed(&b)
        .await
        .expect("Z's datagram is relayed");
    assert_eq!(d.from, z.peer_id());
    let c2 = c.clone();
    let throttled =
        blocking(move || c2.nodes[0].metric("x0x_relay_dropped_total{reason=\"peer_rate\"}")).await;
    assert_eq!(throttled, (20 - from_a) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_off_forwards_nothing() {
    let c = common::single_node(37, "[roles]\nrelay = false\n");
    let (a, ra) = joined_agent(37, 1, &[&c.nodes[0]]).await;
    let (b, _) = joined_agent(37, 2, &[&c.nodes[0]]).await;
    a.send_relayed(ra.connected[0].peer_id, b.peer_id(), b"x")
        .unwrap();
    assert!(common::recv_relayed(&b).await.is_none());
    let c2 = c.clone();
    let dropped =
        blocking(move || c2.nodes[0].metric("x0x_relay_dropped_total{reason=\"disabled\"}")).await;
    assert_eq!(dropped, 1.0);
}
