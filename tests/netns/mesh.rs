//! The six inventory hosts as six namespaces: the full mesh, and a
//! partition into two groups of three.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use crate::agents;
use crate::fleet::{self, Node, peer_counts, wait_peers};
use crate::lab::{Host, Lab, wait_until};

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
fn partition_rules(side_a: &[Ipv4Addr], side_b: &[Ipv4Addr]) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for a in side_a {
        for b in side_b {
            for (src, dst) in [(a, b), (b, a)] {
                rules.push(
                    [
                        "FORWARD",
                        "-s",
                        &src.to_string(),
                        "-d",
                        &dst.to_string(),
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

/// Look `peer` up from `host` through `node` until found or `timeout`.
fn found_within(lab: &Lab, host: &Host, peer: &str, node: &Node, timeout: Duration) -> bool {
    wait_until(timeout, || {
        agents::lookup(lab, host, peer, &[node]).1.is_some()
    })
}

#[test]
fn a_partition_into_two_groups_of_three_for_30_s_heals() {
    let Some(mut lab) = Lab::new("mesh::a_partition_into_two_groups_of_three_for_30_s_heals")
    else {
        return;
    };
    let nodes = six_node_fleet(&mut lab);
    // One agent host per side; each listener registers at one node of its side.
    let ha = lab.public_host("ha");
    let hb = lab.public_host("hb");
    let la = agents::listen(&mut lab, &ha, "la", 40000, &[&nodes[0]]);
    let lb = agents::listen(&mut lab, &hb, "lb", 40000, &[&nodes[3]]);
    // Before: the directory spans the mesh.
    assert!(
        found_within(&lab, &hb, &la.peer_id, &nodes[4], Duration::from_secs(10)),
        "before the partition, la (at {}) is not found through {}",
        nodes[0].inventory.name,
        nodes[4].inventory.name
    );

    let side = |idx: &[usize], agent: &Host| {
        let mut v: Vec<Ipv4Addr> = idx.iter().map(|&i| nodes[i].host.addr).collect();
        v.push(agent.addr);
        v
    };
    let rules = partition_rules(&side(&SIDE_A, &ha), &side(&SIDE_B, &hb));
    let wan = lab.wan.clone();
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

    // The directory keeps working inside each side: the listeners are
    // found through the other nodes of their side, and an agent that
    // registers during the partition is found too.
    for (l, host, via) in [(&la, &ha, &nodes[1]), (&lb, &hb, &nodes[4])] {
        let (ran, record) = agents::lookup(&lab, host, &l.peer_id, &[via]);
        assert!(
            record.is_some(),
            "during the partition, {} is not found through {}: {ran}",
            l.name,
            via.inventory.name
        );
    }
    let ha2 = lab.public_host("ha2");
    let rules_a2 = partition_rules(&[ha2.addr], &side(&SIDE_B, &hb));
    for r in &rules_a2 {
        let mut args = vec!["-A"];
        args.extend(r.iter().map(String::as_str));
        lab.iptables(&wan, &args);
    }
    let la2 = agents::listen(&mut lab, &ha2, "la2", 40000, &[&nodes[2]]);
    assert!(
        found_within(&lab, &ha, &la2.peer_id, &nodes[1], Duration::from_secs(10)),
        "during the partition, la2 (registered at {}) is not found through {}",
        nodes[2].inventory.name,
        nodes[1].inventory.name
    );

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
    for r in rules.iter().chain(&rules_a2) {
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
    // And the directory spans the mesh again.
    for (l, host, via) in [
        (&la, &hb, &nodes[5]),
        (&la2, &hb, &nodes[4]),
        (&lb, &ha, &nodes[1]),
    ] {
        assert!(
            found_within(&lab, host, &l.peer_id, via, Duration::from_secs(15)),
            "after the heal, {} is not found through {}",
            l.name,
            via.inventory.name
        );
    }
    eprintln!(
        "{}: directory whole again {:?} after the heal",
        lab.test,
        healed.elapsed()
    );
}
