//! The six inventory hosts as six namespaces: the full mesh, and a
//! partition into two groups of three.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::fleet::{self, Node, peer_counts, wait_peers};
use crate::lab::Lab;

const ALL: [usize; 6] = [0, 1, 2, 3, 4, 5];
const SIDE_A: [usize; 3] = [0, 1, 2];
const SIDE_B: [usize; 3] = [3, 4, 5];

fn six_node_fleet(lab: &mut Lab) -> Vec<Node> {
    let entries = fleet::inventory();
    assert_eq!(entries.len(), 6, "hosts/inventory.toml lists six nodes");
    let nodes = fleet::start(lab, &entries);
    let started = Instant::now();
    assert!(
        wait_peers(&nodes, &ALL, 5, Duration::from_secs(60)),
        "the mesh did not form: peers per node {:?}",
        peer_counts(&nodes)
    );
    eprintln!(
        "{}: mesh of six formed in {:?}",
        lab.test,
        started.elapsed()
    );
    nodes
}

#[test]
fn six_inventory_hosts_form_a_full_mesh() {
    let Some(mut lab) = Lab::new("mesh::six_inventory_hosts_form_a_full_mesh") else {
        return;
    };
    let nodes = six_node_fleet(&mut lab);
    let mut ids = HashSet::new();
    for n in &nodes {
        let h = n.health_json().expect("health");
        assert_eq!(h["status"], "healthy", "{}: {h}", n.inventory.name);
        assert_eq!(h["peers"], 5, "{}: {h}", n.inventory.name);
        assert_eq!(h["expected_peers"], 5, "{}: {h}", n.inventory.name);
        assert_eq!(h["listen"], "[::]:12000", "{}: {h}", n.inventory.name);
        ids.insert(h["peer_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 6, "six distinct identities");
    // One connection per pair once simultaneous dials are resolved.
    assert!(
        crate::lab::wait_until(Duration::from_secs(10), || nodes
            .iter()
            .all(|n| n.metric_sum("x0x_peers_connected") == 5.0)),
        "x0x_peers_connected: {:?}",
        nodes
            .iter()
            .map(|n| n.metric_sum("x0x_peers_connected"))
            .collect::<Vec<_>>()
    );
}

/// DROP every packet between the two sides, in the wan router.
fn partition_rules(nodes: &[Node]) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for &a in &SIDE_A {
        for &b in &SIDE_B {
            for (src, dst) in [(a, b), (b, a)] {
                rules.push(
                    [
                        "FORWARD",
                        "-s",
                        &nodes[src].host.addr.to_string(),
                        "-d",
                        &nodes[dst].host.addr.to_string(),
                        "-j",
                        "DROP",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
            }
        }
    }
    rules
}

#[test]
fn a_partition_into_two_groups_of_three_for_30_s_heals() {
    let Some(mut lab) = Lab::new("mesh::a_partition_into_two_groups_of_three_for_30_s_heals")
    else {
        return;
    };
    let nodes = six_node_fleet(&mut lab);
    let wan = lab.wan.clone();
    let rules = partition_rules(&nodes);
    for r in &rules {
        let mut args = vec!["-A"];
        args.extend(r.iter().map(String::as_str));
        lab.iptables(&wan, &args);
    }
    let cut = Instant::now();
    let both = [SIDE_A, SIDE_B].concat();
    // Each side sees the other go after the idle timeout (10 s).
    assert!(
        wait_peers(&nodes, &both, 2, Duration::from_secs(25)),
        "sides did not settle at 2 peers: {:?}",
        peer_counts(&nodes)
    );
    eprintln!(
        "{}: each side reports 2 peers {:?} after the cut",
        lab.test,
        cut.elapsed()
    );
    for n in &nodes {
        assert_eq!(n.health_json().unwrap()["status"], "degraded");
    }
    // Hold the partition for 30 s in all; the sides stay at 2 throughout.
    while cut.elapsed() < Duration::from_secs(30) {
        let counts = peer_counts(&nodes);
        assert!(
            counts.iter().all(|c| *c == Some(2)),
            "during the partition ({:?} in): {counts:?}",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for r in &rules {
        let mut args = vec!["-D"];
        args.extend(r.iter().map(String::as_str));
        lab.iptables(&wan, &args);
    }
    let healed = Instant::now();
    assert!(
        wait_peers(&nodes, &ALL, 5, Duration::from_secs(30)),
        "the mesh did not heal: {:?}",
        peer_counts(&nodes)
    );
    eprintln!(
        "{}: all back to 5 peers {:?} after the heal",
        lab.test,
        healed.elapsed()
    );
    for n in &nodes {
        assert_eq!(n.health_json().unwrap()["status"], "healthy");
    }
}
