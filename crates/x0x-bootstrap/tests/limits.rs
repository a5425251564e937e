//! Relay circuit limits and the accept-rate limit of a real node: on by
//! default, configurable, visible in /metrics, and they throttle only the
//! peer that exceeds them.

use x0x_testkit as common;

use std::time::Duration;

use common::blocking;
use common::raw::{RawClient, registered_agent, request};
use x0x_proto::wire::{Message, Refusal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_circuit_quota_is_refused_and_others_are_not() {
    let c = common::single_node(93, "[limits]\nrelay_circuits_per_peer = 2\n");
    let node = c.nodes[0].quic;
    let clients: Vec<RawClient> = (1..=5)
        .map(|h| RawClient::bind(&format!("127.93.1.{h}:0")))
        .collect();
    let mut sessions = Vec::new();
    for cl in &clients {
        sessions.push(registered_agent(cl, node).await);
    }
    let open = |from: usize, to: usize| {
        let conn = sessions[from].conn.clone();
        let peer = clients[to].peer_id();
        async move { request(&conn, &Message::OpenCircuit { peer }).await }
    };
    assert!(matches!(open(0, 1).await, Message::CircuitOpened { .. }));
    assert!(matches!(open(0, 2).await, Message::CircuitOpened { .. }));
    // A third destination for A is over its quota...
    assert!(matches!(
        open(0, 3).await,
        Message::Refused {
            reason: Refusal::CircuitLimit(_)
        }
    ));
    // ...E is not affected by A's quota, and A's circuits still exist.
    assert!(matches!(open(4, 3).await, Message::CircuitOpened { .. }));
    assert!(matches!(open(0, 1).await, Message::CircuitOpened { .. }));
    let c2 = c.clone();
    let m = blocking(move || c2.nodes[0].metrics()).await;
    assert!(
        m.contains("x0x_relay_circuits_refused_total{reason=\"relay_circuits_per_peer\"} 1"),
        "{m}"
    );
    assert!(m.contains("x0x_relay_circuits 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_beyond_the_accept_rate_are_refused() {
    let c = common::single_node(92, "[limits]\naccept_per_sec = 3\n");
    let client = RawClient::bind("127.92.1.1:0");
    let mut ok = 0;
    for _ in 0..10 {
        if client.dial(c.nodes[0].quic).await.is_ok() {
            ok += 1;
        }
    }
    // The burst is one second's worth (3), plus what refilled meanwhile.
    assert!((3..=6).contains(&ok), "{ok} of 10 accepted");
    let c2 = c.clone();
    let refused = blocking(move || {
        c2.nodes[0].metric("x0x_connections_rejected_total{reason=\"accept_per_sec\"}")
    })
    .await;
    // Each refused dial is one or two refused connection attempts (a
    // post-quantum ClientHello spans two Initial packets; the second one
    // of a refused attempt is a new attempt to the node).
    assert!(
        ((10 - ok) as f64..=(2 * (10 - ok)) as f64).contains(&refused),
        "{refused} refusals for {} refused dials",
        10 - ok
    );
    // The limit is per source: another address is not throttled meanwhile.
    let other = RawClient::bind("127.92.1.2:0");
    assert!(other.dial(c.nodes[0].quic).await.is_ok());
    // The limit is a rate, not a ban: a second later connections are accepted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(client.dial(c.nodes[0].quic).await.is_ok());
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
        "relay_dest_bytes_per_sec",
        "relay_ip_bytes_per_sec = 8388608",
        "relay_global_bytes_per_sec",
        "relay_min_charge_bytes = 128",
        "relay_circuits_per_peer = 32",
        "relay_circuits_per_dest = 64",
        "relay_circuits_per_ip = 256",
        "relay_circuits = 8192",
        "relay_circuit_idle_ms = 30000",
        "accept_per_sec = 500",
        "connections_per_ip = 256",
        "max_handshakes = 512",
        "retry_above_handshakes = 16",
        "hello_timeout_ms = 5000",
        "register_timeout_ms = 10000",
        "requests_per_sec = 20",
        "directory_records_per_peer = 65536",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
}
