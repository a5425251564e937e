//! Agents behind home-router NATs: direct when both NATs keep ports,
//! relayed when a NAT maps each destination to a random port, and
//! recovery from a NAT rebinding. Each outcome is asserted on three
//! levels: the CLI's report, the listener's report, and the bytes the wan
//! router actually forwarded between the two homes (or the relay counted).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agents::{self, BYTES, Listener};
use crate::fleet::{self, Node, wait_peers};
use crate::lab::{Host, Lab, Nat, Router, wait_until};

const PORT: u16 = 40000;

/// Two bootstrap nodes (the first two inventory hosts, remapped), meshed.
fn two_nodes(lab: &mut Lab) -> Vec<Node> {
    let entries = fleet::inventory();
    let nodes = fleet::start(lab, &entries[..2]);
    assert!(
        wait_peers(&nodes, &[0, 1], 1, Duration::from_secs(30)),
        "two nodes did not mesh: {:?}",
        fleet::peer_counts(&nodes)
    );
    nodes
}

struct Home {
    router: Router,
    host: Host,
}

fn home(lab: &mut Lab, role: &str, nat: Nat) -> Home {
    let mut router = lab.nat_router(&format!("r{role}"), nat);
    let host = lab.behind(&mut router, role);
    Home { router, host }
}

/// The listener's observed address is its router's public address, and
/// with a port-preserving NAT also its own port.
fn check_observed(l: &Listener, home: &Home) {
    assert_eq!(
        l.observed.ip(),
        std::net::IpAddr::V4(home.router.public),
        "{}: observed {} is not its router's public address",
        l.name,
        l.observed
    );
    if home.router.nat == Nat::PortPreserving {
        assert_eq!(l.observed.port(), PORT, "{}: port not preserved", l.name);
    }
}

/// The listener printed a `connection` event for `peer` with `path`.
fn listener_saw(lab: &Lab, l: &Listener, peer: &str, path: &str) {
    let mut events = Vec::new();
    let seen = wait_until(Duration::from_secs(10), || {
        events = agents::path_events_from(lab, l, peer);
        events.iter().any(|e| e["path"] == path)
    });
    assert!(
        seen,
        "{}: no {path} connection event for {peer}; its events: {events:?}",
        l.name
    );
}

fn report(lab: &Lab, what: &str, v: &Value) {
    eprintln!(
        "{}: {what}: path {} connect_ms {} rtt_ms {} via {}",
        lab.test, v["path"], v["connect_ms"], v["rtt_ms"], v["via"]
    );
}

#[test]
fn agents_behind_two_port_preserving_nats_connect_direct() {
    let Some(mut lab) = Lab::new("nat::agents_behind_two_port_preserving_nats_connect_direct")
    else {
        return;
    };
    let nodes = two_nodes(&mut lab);
    let n: Vec<&Node> = nodes.iter().collect();
    let a = home(&mut lab, "a", Nat::PortPreserving);
    let b = home(&mut lab, "b", Nat::PortPreserving);
    agents::count_flow(&lab, b.router.public, a.router.public);
    agents::count_flow(&lab, a.router.public, b.router.public);

    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    check_observed(&la, &a);
    let b_id = agents::peer_id(&lab, &b.host, "b");
    let relayed_before = agents::relayed_bytes(&n);
    // The connection may start relayed; the data is sent once it settled
    // (a generous bound for a loaded machine; it takes milliseconds here).
    let ran = agents::connect_with(
        &lab,
        &b.host,
        "b",
        PORT,
        &la.peer_id,
        &n,
        &["--settle-ms", "10000"],
    );
    let v = agents::connected(&ran, &la.peer_id);
    report(&lab, "b -> a", &v);
    assert_eq!(v["path"], "direct", "expected a direct connection: {ran}");
    assert!(
        v["via"].is_null(),
        "a direct connection has no relay: {ran}"
    );
    listener_saw(&lab, &la, &b_id, "direct");
    // The data went home to home through the wan, not through a node.
    let b_to_a = agents::flow_bytes(&lab, b.router.public, a.router.public);
    let a_to_b = agents::flow_bytes(&lab, a.router.public, b.router.public);
    assert!(
        b_to_a >= BYTES && a_to_b >= BYTES,
        "direct, yet the wan forwarded only {b_to_a} bytes b->a and {a_to_b} a->b"
    );
    let relayed = agents::relayed_bytes(&n) - relayed_before;
    eprintln!(
        "{}: wan forwarded {b_to_a} bytes b->a, {a_to_b} a->b; nodes relayed {relayed}",
        lab.test
    );
    assert!(
        relayed < BYTES as f64,
        "direct, yet the nodes relayed {relayed} bytes"
    );
}

/// Assert the CLI reported a relayed connection through one of the nodes.
fn assert_relayed(ran: &crate::lab::Ran, v: &Value, ids: &[String]) {
    assert_eq!(v["path"], "relayed", "expected a relayed connection: {ran}");
    let via = v["via"]
        .as_str()
        .unwrap_or_else(|| panic!("relayed without via: {ran}"));
    assert!(
        ids.iter().any(|id| id == via),
        "via {via} is not one of the bootstrap nodes {ids:?}"
    );
}

fn node_ids(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            n.health_json().unwrap()["peer_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn agents_behind_two_random_port_nats_connect_relayed() {
    let Some(mut lab) = Lab::new("nat::agents_behind_two_random_port_nats_connect_relayed") else {
        return;
    };
    let nodes = two_nodes(&mut lab);
    let n: Vec<&Node> = nodes.iter().collect();
    let ids = node_ids(&n);
    let a = home(&mut lab, "a", Nat::RandomPort);
    let b = home(&mut lab, "b", Nat::RandomPort);
    agents::count_flow(&lab, b.router.public, a.router.public);

    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    check_observed(&la, &a);
    let b_id = agents::peer_id(&lab, &b.host, "b");
    let relayed_before = agents::relayed_bytes(&n);
    let ran = agents::connect(&lab, &b.host, "b", PORT, &la.peer_id, &n);
    let v = agents::connected(&ran, &la.peer_id);
    report(&lab, "b -> a", &v);
    assert_relayed(&ran, &v, &ids);
    // Relayed at once, not after a direct timeout (a generous bound: it
    // takes a few relay round trips, tens of milliseconds here).
    let connect_ms = v["connect_ms"].as_f64().expect("connect_ms");
    assert!(
        connect_ms <= 500.0,
        "a relayed connect took {connect_ms} ms: {ran}"
    );
    listener_saw(&lab, &la, &b_id, "relayed");
    // The data flowed through the relay (both directions: sent and echoed),
    // not home to home.
    let relayed = agents::relayed_bytes(&n) - relayed_before;
    assert!(
        relayed >= 2.0 * BYTES as f64,
        "relayed, yet the nodes relayed only {relayed} bytes"
    );
    let b_to_a = agents::flow_bytes(&lab, b.router.public, a.router.public);
    assert!(
        b_to_a < BYTES,
        "relayed, yet {b_to_a} bytes went home to home"
    );
}

#[test]
fn agents_behind_a_port_preserving_and_a_random_port_nat_connect_relayed() {
    let Some(mut lab) =
        Lab::new("nat::agents_behind_a_port_preserving_and_a_random_port_nat_connect_relayed")
    else {
        return;
    };
    let nodes = two_nodes(&mut lab);
    let n: Vec<&Node> = nodes.iter().collect();
    let ids = node_ids(&n);
    // The port-preserving router filters by address and port (conntrack's
    // default): only the exact address:port its host sent to may answer.
    let mut a = home(&mut lab, "a", Nat::PortPreserving);
    let mut b = home(&mut lab, "b", Nat::RandomPort);
    let a2 = lab.behind(&mut a.router, "a2");
    let b2 = lab.behind(&mut b.router, "b2");
    agents::count_flow(&lab, b.router.public, a.router.public);
    agents::count_flow(&lab, a.router.public, b.router.public);

    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    check_observed(&la, &a);
    let lb = agents::listen(&mut lab, &b.host, "b", PORT, &n);
    check_observed(&lb, &b);
    let a2_id = agents::peer_id(&lab, &a2, "a2");
    let b2_id = agents::peer_id(&lab, &b2, "b2");

    // Both directions at once: random-port side to the port-preserving
    // listener, and port-preserving side to the random-port listener.
    let relayed_before = agents::relayed_bytes(&n);
    let (to_a, to_b) = std::thread::scope(|s| {
        let to_a = s.spawn(|| agents::connect(&lab, &b2, "b2", PORT, &la.peer_id, &n));
        let to_b = s.spawn(|| agents::connect(&lab, &a2, "a2", PORT, &lb.peer_id, &n));
        (to_a.join().unwrap(), to_b.join().unwrap())
    });
    let va = agents::connected(&to_a, &la.peer_id);
    report(&lab, "random -> port-preserving", &va);
    let vb = agents::connected(&to_b, &lb.peer_id);
    report(&lab, "port-preserving -> random", &vb);
    assert_relayed(&to_a, &va, &ids);
    assert_relayed(&to_b, &vb, &ids);
    listener_saw(&lab, &la, &b2_id, "relayed");
    listener_saw(&lab, &lb, &a2_id, "relayed");
    let relayed = agents::relayed_bytes(&n) - relayed_before;
    assert!(
        relayed >= 4.0 * BYTES as f64,
        "two relayed connections, yet the nodes relayed only {relayed} bytes"
    );
    let home_to_home = agents::flow_bytes(&lab, b.router.public, a.router.public)
        + agents::flow_bytes(&lab, a.router.public, b.router.public);
    assert!(
        home_to_home < BYTES,
        "relayed, yet {home_to_home} bytes went home to home"
    );
}

#[test]
fn an_agent_whose_nat_rebinds_mid_connection_recovers_by_itself() {
    let Some(mut lab) =
        Lab::new("nat::an_agent_whose_nat_rebinds_mid_connection_recovers_by_itself")
    else {
        return;
    };
    let nodes = two_nodes(&mut lab);
    let n: Vec<&Node> = nodes.iter().collect();
    let mut a = home(&mut lab, "a", Nat::PortPreserving);
    let mut b = home(&mut lab, "b", Nat::PortPreserving);
    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    check_observed(&la, &a);
    let b_id = agents::peer_id(&lab, &b.host, "b");

    // 1. b's NAT rebinds while b is connected to a and pinging it: every
    // mapping of b's router is gone, and a's router, filtering by address
    // and port, drops what b now sends from its new address. The path layer
    // must carry the same connection on (relay first, then direct again
    // from b's new address): no new handshake.
    const PINGS: u32 = 30;
    let pinging = std::thread::scope(|s| {
        let lab_ref = &lab;
        let pinger = s.spawn(|| {
            agents::connect_with(
                lab_ref,
                &b.host,
                "b",
                PORT,
                &la.peer_id,
                &n,
                &["--pings", &PINGS.to_string(), "--ping-interval-ms", "300"],
            )
        });
        // The transfer is done within ~1 s on a direct path; rebind while
        // the pings run (they take about 9 s).
        std::thread::sleep(Duration::from_secs(3));
        let old = b.router.public;
        let new = lab_ref.rebind(&mut b.router);
        eprintln!(
            "{}: b's public address {old} -> {new} mid-connection",
            lab_ref.test
        );
        pinger.join().unwrap()
    });
    let v = agents::connected(&pinging, &la.peer_id);
    report(&lab, "b pinging a across b's rebinding", &v);
    eprintln!(
        "{}: pings_ok {} of {PINGS}, reconnects {}",
        lab.test, v["pings_ok"], v["reconnects"]
    );
    let pings_ok = v["pings_ok"].as_u64().expect("pings_ok");
    let reconnects = v["reconnects"].as_u64().expect("reconnects");
    assert_eq!(
        reconnects, 0,
        "the connection did not survive the rebinding: {pinging}"
    );
    // Pings wait 3 s each; the path moves within about a second, so at
    // most a couple may time out while it does.
    assert!(
        pings_ok + 2 >= PINGS as u64,
        "only {pings_ok} of {PINGS} pings succeeded across the rebinding: {pinging}"
    );
    listener_saw(&lab, &la, &b_id, "direct");
    let events_before = agents::connections_from(&lab, &la, &b_id).len();

    // 2. The listener's NAT rebinds: its links to the nodes now leave from
    // a new address. Without a restart it is reachable again (the test
    // retries connecting until the deadline; the listener must recover by
    // itself).
    let old = a.router.public;
    let new = lab.rebind(&mut a.router);
    let rebound = Instant::now();
    eprintln!("{}: a's public address {old} -> {new}", lab.test);
    let mut last = None;
    let recovered = wait_until(Duration::from_secs(45), || {
        let ran = agents::connect(&lab, &b.host, "b", PORT, &la.peer_id, &n);
        let ok = ran.code == Some(0);
        if !ok {
            eprintln!("{}: attempt after a's rebinding failed: {ran}", lab.test);
        }
        last = Some(ran);
        ok
    });
    let last = last.unwrap();
    assert!(
        recovered,
        "the listener behind the rebound NAT was not reachable within 45 s; last attempt: {last}"
    );
    let v = agents::connected(&last, &la.peer_id);
    report(
        &lab,
        &format!("b -> a, {:?} after a's rebinding", rebound.elapsed()),
        &v,
    );
    assert!(lab.procs[la.proc].running(), "the listener exited");
    let events = agents::connections_from(&lab, &la, &b_id);
    assert!(
        events.len() > events_before,
        "the listener reported no new connection after its rebinding: {events:?}"
    );
    let (_, record) = agents::lookup(&lab, &b.host, &la.peer_id, &n);
    eprintln!("{}: a's directory record afterwards: {record:?}", lab.test);
    // The node followed a's migrated connection: the directory now gives a's
    // new public address first, so peers can reach it directly again.
    let first = record
        .as_ref()
        .and_then(|r| r["addrs"][0].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        first.starts_with(&format!("{new}:")),
        "a's record still leads with a stale address after its rebinding: {record:?}"
    );
}
