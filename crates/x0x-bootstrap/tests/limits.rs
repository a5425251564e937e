//! Relay circuit limits and the accept-rate limit of a real node: on by
//! default, configurable, visible in /metrics, and they throttle only the
//! peer that exceeds them.

use x0x_testkit as common;

use std::time::Duration;

use common::{blocking, joined_agent};
use x0x_proto::identity::Identity;
use x0x_proto::transport::{self, TransportOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_circuit_quota_is_refused_and_others_are_not() {
    let c = common::single_node(91, "[limits]\nrelay_circuits_per_peer = 2\n");
    let mut agents = Vec::new();
    for host in 1..=5 {
        agents.push(joined_agent(91, host, &[&c.nodes[0]]).await);
    }
    let node = agents[0].1.connected[0].peer_id;
    let (a, b, cc, d, e) = (
        &agents[0].0,
        &agents[1].0,
        &agents[2].0,
        &agents[3].0,
        &agents[4].0,
    );
    a.send_relayed(node, b.peer_id(), b"1").unwrap();
    assert!(common::recv_relayed(b).await.is_some());
    a.send_relayed(node, cc.peer_id(), b"2").unwrap();
    assert!(common::recv_relayed(cc).await.is_some());
    // A third destination for A is over its quota.
    a.send_relayed(node, d.peer_id(), b"3").unwrap();
    assert!(common::recv_relayed(d).await.is_none());
    // E is not affected by A's quota.
    e.send_relayed(node, d.peer_id(), b"4").unwrap();
    assert_eq!(common::recv_relayed(d).await.unwrap().from, e.peer_id());
    // A's existing circuits still work.
    a.send_relayed(node, b.peer_id(), b"5").unwrap();
    assert!(common::recv_relayed(b).await.is_some());

    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    assert!(
        m.contains("x0x_relay_dropped_total{reason=\"peer_circuits\"} 1"),
        "{m}"
    );
    assert!(m.contains("x0x_relay_circuits 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_beyond_the_accept_rate_are_refused() {
    let c = common::single_node(92, "[limits]\naccept_per_sec = 3\n");
    let identity = Identity::generate().unwrap();
    let ep = transport::endpoint(
        &identity,
        "127.92.1.1:0".parse().unwrap(),
        &TransportOptions::default(),
    )
    .unwrap();
    let mut ok = 0;
    for _ in 0..10 {
        if transport::dial(&ep, c.nodes[0].quic, Duration::from_secs(3))
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    // The burst is one second's worth (3), plus what refilled meanwhile.
    assert!((3..=6).contains(&ok), "{ok} of 10 accepted");
    let c2 = c.clone();
    let refused = blocking(move || {
        c2.nodes[0].metric("x0x_connections_rejected_total{reason=\"accept_rate\"}")
    })
    .await;
    assert_eq!(refused, (10 - ok) as f64);
    // The limit is per source: another address is not throttled meanwhile.
    let other = Identity::generate().unwrap();
    let ep2 = transport::endpoint(
        &other,
        "127.92.1.2:0".parse().unwrap(),
        &TransportOptions::default(),
    )
    .unwrap();
    assert!(
        transport::dial(&ep2, c.nodes[0].quic, Duration::from_secs(3))
            .await
            .is_ok()
    );
    // The limit is a rate, not a ban: a second later connections are accepted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        transport::dial(&ep, c.nodes[0].quic, Duration::from_secs(3))
            .await
            .is_ok()
    );
}

#[test]
fn limits_are_on_by_default_and_shown_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "").unwrap();
    let out = std::process::Command::new(common::bootstrap_bin())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "relay_peer_bytes_per_sec",
        "relay_global_bytes_per_sec",
        "relay_circuits_per_peer = 32",
        "relay_circuits = 8192",
        "accept_per_sec = 500",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
}
