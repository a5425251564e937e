//! Agents on networks that block UDP: they join over the nodes' TLS/TCP
//! relay on port 443, are found and connected to (relayed, transport
//! tcp), and move back to UDP by themselves when the block is lifted.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agents::{self, Listener};
use crate::fleet::{self, Node, wait_peers};
use crate::lab::{Host, Lab, Nat, Router, wait_until};

const PORT: u16 = 40000;

fn two_nodes(lab: &mut Lab) -> Vec<Node> {
    let entries = fleet::inventory();
    let nodes = fleet::start(lab, &entries[..2]);
    assert!(
        wait_peers(&nodes, &[0, 1], 1, Duration::from_secs(30)),
        "nodes did not mesh: {:?}",
        fleet::peer_counts(&nodes)
    );
    nodes
}

fn home(lab: &mut Lab, role: &str, nat: Nat) -> (Router, Host) {
    let mut router = lab.nat_router(&format!("r{role}"), nat);
    let host = lab.behind(&mut router, role);
    (router, host)
}

/// The router drops every UDP packet from its LAN to the internet.
fn block_udp(lab: &Lab, router: &Router) {
    lab.iptables(
        &router.ns,
        &[
            "-I", "FORWARD", "1", "-o", "wan0", "-p", "udp", "-j", "DROP",
        ],
    );
}

fn unblock_udp(lab: &Lab, router: &Router) {
    lab.iptables(
        &router.ns,
        &["-D", "FORWARD", "-o", "wan0", "-p", "udp", "-j", "DROP"],
    );
}

/// The router lets only TCP to port 443 out.
fn only_tcp_443(lab: &Lab, router: &Router) {
    lab.iptables(
        &router.ns,
        &[
            "-I", "FORWARD", "1", "-o", "wan0", "-p", "udp", "-j", "DROP",
        ],
    );
    lab.iptables(
        &router.ns,
        &[
            "-I", "FORWARD", "2", "-o", "wan0", "-p", "tcp", "!", "--dport", "443", "-j", "DROP",
        ],
    );
}

/// `x0x connect` in the background with pings; returns its process index.
fn start_connect(
    lab: &mut Lab,
    host: &Host,
    name: &str,
    to: &Listener,
    nodes: &[&Node],
    pings: u32,
) -> usize {
    let mut args = vec!["connect".to_string(), to.peer_id.clone()];
    for n in nodes {
        args.extend(["--bootstrap".to_string(), n.quic.to_string()]);
    }
    let key = lab.path(&format!("{name}.key")).display().to_string();
    let bind = format!("{}:{PORT}", host.addr);
    let pings = pings.to_string();
    args.extend(
        [
            "--key",
            &key,
            "--bind",
            &bind,
            "--bytes",
            "65536",
            "--json",
            "--pings",
            &pings,
            "--ping-interval-ms",
            "300",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(
        &host.ns,
        name,
        &agents::x0x(),
        &args,
        &[("RUST_LOG", "x0x=debug")],
    )
}

fn json_lines(lab: &Lab, proc: usize) -> Vec<Value> {
    lab.procs[proc]
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn summary(lab: &mut Lab, proc: usize) -> Value {
    let done = wait_until(Duration::from_secs(90), || !lab.procs[proc].running());
    let lines = json_lines(lab, proc);
    assert!(done, "{}: x0x connect still running: {lines:?}", lab.test);
    lines
        .into_iter()
        .find(|v| v.get("pings_ok").is_some())
        .unwrap_or_else(|| panic!("{}: no summary: {}", lab.test, lab.procs[proc].log_tail(40)))
}

fn node_metric(n: &Node, name: &str) -> f64 {
    n.metric_sum(name)
}

#[test]
fn an_agent_behind_a_udp_blocking_router_joins_over_tcp_and_moves_back_to_udp() {
    let Some(mut lab) = Lab::new("tcp::udp_blocked") else {
        return;
    };
    let nodes = two_nodes(&mut lab);
    let n: Vec<&Node> = nodes.iter().collect();
    let (ra, a) = home(&mut lab, "a", Nat::PortPreserving);
    let (_rb, b) = home(&mut lab, "b", Nat::PortPreserving);
    block_udp(&lab, &ra);
    let lb = agents::listen(&mut lab, &b, "b", PORT, &n);
    let started = Instant::now();
    let p = start_connect(&mut lab, &a, "a", &lb, &n, 50);
    // The first path line: relayed through a node, over TCP.
    let mut first = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            first = json_lines(&lab, p)
                .into_iter()
                .find(|v| v["event"] == "path");
            first.is_some()
        }),
        "{}: no path over TCP: {}",
        lab.test,
        lab.procs[p].log_tail(40)
    );
    let first = first.unwrap();
    eprintln!(
        "{}: first path after {:?}: {first}",
        lab.test,
        started.elapsed()
    );
    assert_eq!(first["path"], "relayed", "{first}");
    assert_eq!(first["transport"], "tcp", "{first}");
    let tcp_in: f64 = n
        .iter()
        .map(|x| node_metric(x, "x0x_tcp_datagrams_in_total"))
        .sum();
    assert!(tcp_in > 0.0, "no node saw datagrams over TCP");
    std::thread::sleep(Duration::from_secs(3));
    unblock_udp(&lab, &ra);
    let lifted = Instant::now();
    let moved = wait_until(Duration::from_secs(15), || {
        json_lines(&lab, p)
            .iter()
            .any(|v| v["event"] == "path" && v["transport"] == "udp")
    });
    assert!(
        moved,
        "{}: still on TCP 15 s after UDP came back: {:?}",
        lab.test,
        json_lines(&lab, p)
    );
    eprintln!(
        "{}: back on UDP {:?} after the block was lifted",
        lab.test,
        lifted.elapsed()
    );
    let v = summary(&mut lab, p);
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["reconnects"], 0, "the connection was lost: {v}");
    assert!(
        v["pings_ok"].as_u64() >= Some(48),
        "pings did not continue: {v}"
    );
    assert_eq!(v["bytes"], 65536);
}

#[test]
fn an_agent_allowed_only_tcp_443_still_reaches_its_peer() {
    let Some(mut lab) = Lab::new("tcp::only_443") else {
        return;
    };
    let nodes = two_nodes(&mut lab);
    let n: Vec<&Node> = nodes.iter().collect();
    let (ra, a) = home(&mut lab, "a", Nat::PortPreserving);
    let (_rb, b) = home(&mut lab, "b", Nat::RandomPort);
    only_tcp_443(&lab, &ra);
    let lb = agents::listen(&mut lab, &b, "b", PORT, &n);
    let p = start_connect(&mut lab, &a, "a", &lb, &n, 5);
    let v = summary(&mut lab, p);
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["path"], "relayed", "{v}");
    assert_eq!(v["transport"], "tcp", "{v}");
    assert_eq!(v["pings_ok"], 5, "{v}");
    assert_eq!(v["reconnects"], 0, "{v}");
    // And the listener, on an open network, also works over UDP.
    let peer = agents::peer_id(&lab, &a, "a");
    let events = agents::path_events_from(&lab, &lb, &peer);
    assert!(
        events.iter().any(|e| e["path"] == "relayed"),
        "the listener saw no relayed connection: {events:?}"
    );
}
