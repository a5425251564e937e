//! The six-node mesh, run as six real `x0x-bootstrap` processes on loopback.

use x0x_testkit as common;

use std::time::{Duration, Instant};

use common::Cluster;

const ALL: [usize; 6] = [0, 1, 2, 3, 4, 5];
const OTHERS: [usize; 5] = [1, 2, 3, 4, 5];

#[test]
fn six_nodes_form_a_full_mesh() {
    let mut c = Cluster::full_mesh(21, 6, "");
    let started = Instant::now();
    c.start_all();
    assert!(
        c.wait_all_report(&ALL, 5, Duration::from_secs(30)),
        "mesh did not form: {:?}",
        c.peer_counts()
    );
    eprintln!("mesh formed in {:?}", started.elapsed());
    for n in &c.nodes {
        let h = n.health().unwrap();
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["expected_peers"], 5);
        assert_eq!(h["agents"], 0);
        assert_eq!(h["peer_id"].as_str().unwrap().len(), 64);
    }
    // Distinct identities, and one connection per pair: after the dust
    // settles every node holds exactly 5 node connections (the gauge).
    let ids: std::collections::HashSet<_> = c.nodes.iter().map(|n| n.peer_id().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    assert!(common::wait_until(Duration::from_secs(5), || c
        .nodes
        .iter()
        .all(|n| n.poll_metric("x0x_peers_connected") == Some(5.0))));
}

#[test]
fn a_killed_node_is_dropped_and_rejoins_with_the_same_identity() {
    let mut c = Cluster::full_mesh(22, 6, "");
    c.start_all();
    assert!(
        c.wait_all_report(&ALL, 5, Duration::from_secs(30)),
        "{:?}",
        c.peer_counts()
    );
    let id_before = c.nodes[0].peer_id().unwrap();

    c.nodes[0].kill9();
    // No close frame: the others notice through the idle timeout (10 s).
    let killed = Instant::now();
    assert!(
        c.wait_all_report(&OTHERS, 4, Duration::from_secs(20)),
        "others did not drop to 4: {:?}",
        c.peer_counts()
    );
    eprintln!("dead peer detected after {:?}", killed.elapsed());
    assert_eq!(c.nodes[1].health().unwrap()["status"], "degraded");

    let restarted = Instant::now();
    c.nodes[0].start();
    assert!(
        c.wait_all_report(&ALL, 5, Duration::from_secs(20)),
        "mesh did not heal: {:?}",
        c.peer_counts()
    );
    eprintln!("mesh healed {:?} after restart", restarted.elapsed());
    assert_eq!(
        c.nodes[0].peer_id().unwrap(),
        id_before,
        "identity must persist"
    );
}

#[test]
fn sigterm_closes_connections_so_peers_see_it_at_once() {
    let mut c = Cluster::full_mesh(23, 6, "");
    c.start_all();
    assert!(
        c.wait_all_report(&ALL, 5, Duration::from_secs(30)),
        "{:?}",
        c.peer_counts()
    );

    let sent = Instant::now();
    c.nodes[0].signal("TERM");
    let seen = c.wait_all_report(&OTHERS, 4, Duration::from_secs(2));
    let elapsed = sent.elapsed();
    assert!(
        seen,
        "peers still at {:?} 2 s after SIGTERM",
        c.peer_counts()
    );
    eprintln!("peers saw the departure after {elapsed:?}");
    let status = c.nodes[0]
        .wait_exit(Duration::from_secs(5))
        .expect("exited within 5 s");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigint_also_shuts_down_gracefully() {
    let mut c = Cluster::full_mesh(24, 2, "");
    c.start_all();
    assert!(
        c.wait_all_report(&[0, 1], 1, Duration::from_secs(30)),
        "{:?}",
        c.peer_counts()
    );
    c.nodes[0].signal("INT");
    assert!(c.wait_all_report(&[1], 0, Duration::from_secs(2)));
    let status = c.nodes[0]
        .wait_exit(Duration::from_secs(5))
        .expect("exited within 5 s");
    assert!(status.success(), "exit status {status}");
}

/// Peers may be given by hostname: `localhost` resolves (through
/// /etc/hosts, no DNS traffic) to 127.0.0.1, where node 0 listens.
#[test]
fn peers_given_by_hostname_are_resolved_and_meshed() {
    let mut c = Cluster::full_mesh(25, 2, "");
    let n0 = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let n0 = n0.replace(
        "listen = \"127.25.0.1:12000\"",
        "listen = \"127.0.0.1:12025\"",
    );
    std::fs::write(&c.nodes[0].config, n0).unwrap();
    let n1 = std::fs::read_to_string(&c.nodes[1].config).unwrap();
    assert!(n1.contains("\"127.25.0.1:12000\""));
    std::fs::write(
        &c.nodes[1].config,
        n1.replace("\"127.25.0.1:12000\"", "\"localhost:12025\""),
    )
    .unwrap();
    c.nodes[0].start();
    c.nodes[1].start();
    assert!(
        c.wait_all_report(&[0, 1], 1, Duration::from_secs(30)),
        "{:?}",
        c.peer_counts()
    );
}

/// A peer pinned as `PEERID@addr` counts only if it proves that key; with
/// a wrong pin the two nodes never mesh, in either direction.
#[test]
fn pinned_peers_must_hold_the_pinned_key() {
    for (net, pin_right) in [(26u8, true), (27u8, false)] {
        let mut c = Cluster::full_mesh(net, 2, "");
        let identity = x0x::Identity::generate().unwrap();
        let key = c.dir.path().join("node0.pem");
        std::fs::write(&key, identity.to_pem()).unwrap();
        let n0 = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        std::fs::write(
            &c.nodes[0].config,
            format!("key_file = \"{}\"\n{n0}", key.display()),
        )
        .unwrap();
        let pin = if pin_right {
            identity.peer_id()
        } else {
            x0x::Identity::generate().unwrap().peer_id()
        };
        let n1 = std::fs::read_to_string(&c.nodes[1].config).unwrap();
        let addr = format!("\"127.{net}.0.1:12000\"");
        assert!(n1.contains(&addr));
        std::fs::write(
            &c.nodes[1].config,
            n1.replace(&addr, &format!("\"{pin}@127.{net}.0.1:12000\"")),
        )
        .unwrap();
        c.start_all();
        if pin_right {
            assert!(
                c.wait_all_report(&[0, 1], 1, Duration::from_secs(30)),
                "{:?}",
                c.peer_counts()
            );
        } else {
            // Node 1 has dialed node 0 and rejected it...
            assert!(common::wait_until(Duration::from_secs(30), || c.nodes[1]
                .poll_metric("x0x_dial_failures_total")
                .is_some_and(|n| n >= 2.0)));
            // ...and refuses node 0's own connections too.
            assert!(common::wait_until(Duration::from_secs(30), || {
                c.nodes[1]
                    .poll_metric("x0x_frames_rejected_total{reason=\"not_member\"}")
                    .is_some_and(|n| n >= 1.0)
            }));
            assert_eq!(c.peer_counts(), vec![Some(0), Some(0)]);
        }
    }
}
