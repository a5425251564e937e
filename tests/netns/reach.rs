//! Reaching every network: IPv6 past IPv4 NATs, two agents behind one
//! router, and what `x0x netcheck` reports in each topology.

use std::time::Duration;

use serde_json::Value;

use crate::agents::{self, BYTES};
use crate::fleet::{self, Node, wait_peers};
use crate::lab::{Host, Lab, Nat, Router};

const PORT: u16 = 40000;

fn nodes(lab: &mut Lab, n: usize) -> Vec<Node> {
    let entries = fleet::inventory();
    let nodes = fleet::start(lab, &entries[..n]);
    let all: Vec<usize> = (0..n).collect();
    assert!(
        wait_peers(&nodes, &all, n as u64 - 1, Duration::from_secs(30)),
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

/// `--bootstrap` for every node, IPv4 and (when it has one) IPv6.
fn bootstrap(nodes: &[&Node]) -> Vec<String> {
    let mut v = Vec::new();
    for n in nodes {
        v.extend(["--bootstrap".into(), n.quic.to_string()]);
        if let Some(a6) = n.host.addr6 {
            v.extend(["--bootstrap".into(), format!("[{a6}]:{}", n.quic.port())]);
        }
    }
    v
}

/// The address of the last direct path a `--json` run reported.
fn last_direct_addr(ran: &crate::lab::Ran) -> String {
    ran.stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "path" && e["path"] == "direct")
        .and_then(|e| e["addr"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn run_cli(lab: &Lab, host: &Host, args: &[String]) -> crate::lab::Ran {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.run(&host.ns, &agents::x0x(), &args, Duration::from_secs(60))
}

fn key(lab: &Lab, name: &str) -> String {
    lab.path(&format!("{name}.key")).display().to_string()
}

/// A dual-stack `x0x listen` on `[::]:PORT`; returns (process, peer id).
fn listen6(lab: &mut Lab, host: &Host, name: &str, nodes: &[&Node]) -> (usize, String) {
    let mut args = vec!["listen".to_string()];
    args.extend(bootstrap(nodes));
    args.extend([
        "--key".into(),
        key(lab, name),
        "--bind".into(),
        format!("[::]:{PORT}"),
        "--json".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = lab.spawn(
        &host.ns,
        name,
        &agents::x0x(),
        &args,
        &[("RUST_LOG", "x0x=debug")],
    );
    let ready = lab.procs[p]
        .wait_line(Duration::from_secs(30), |l| l.contains("\"ready\""))
        .unwrap_or_else(|| panic!("{}: no ready line: {}", lab.test, lab.procs[p].log_tail(30)));
    let v: Value = serde_json::from_str(&ready).unwrap();
    (p, v["peer_id"].as_str().unwrap().to_string())
}

#[test]
fn agents_behind_random_port_ipv4_nats_connect_directly_over_ipv6() {
    let Some(mut lab) = Lab::new("reach::ipv6") else {
        return;
    };
    lab.dual_stack();
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    let (_ra, a) = home(&mut lab, "a", Nat::RandomPort);
    let (_rb, b) = home(&mut lab, "b", Nat::RandomPort);
    assert!(a.addr6.is_some() && b.addr6.is_some());
    let (_la, a_id) = listen6(&mut lab, &a, "a", &n);
    // Give a's IPv6 vouch a moment to land in the directory.
    std::thread::sleep(Duration::from_secs(1));
    let mut args = vec!["connect".to_string(), a_id.clone()];
    args.extend(bootstrap(&n));
    args.extend(
        [
            "--key",
            &key(&lab, "b"),
            "--bind",
            &format!("[::]:{PORT}"),
            "--json",
            "--bytes",
            &BYTES.to_string(),
            "--settle-ms",
            "10000",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let ran = run_cli(&lab, &b, &args);
    let v = agents::connected(&ran, &a_id);
    eprintln!("{}: {v}", lab.test);
    assert_eq!(
        v["path"], "direct",
        "random-port IPv4 NATs, yet IPv6 did not go direct: {ran}"
    );
    let addr = last_direct_addr(&ran);
    assert!(
        addr.starts_with(&format!("[{}]", a.addr6.unwrap())),
        "the direct path is not a's IPv6 address: {addr:?}: {ran}"
    );
}

#[test]
fn two_agents_behind_one_router_connect_over_their_lan_addresses() {
    let Some(mut lab) = Lab::new("reach::same_lan") else {
        return;
    };
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    // Random-port NAT: through the public address they could only be relayed.
    let mut router = lab.nat_router("r", Nat::RandomPort);
    let a = lab.behind(&mut router, "a");
    let b = lab.behind(&mut router, "b");
    let la = agents::listen(&mut lab, &a, "a", PORT, &n);
    let relayed_before = agents::relayed_bytes(&n);
    let ran = agents::connect_with(
        &lab,
        &b,
        "b",
        PORT,
        &la.peer_id,
        &n,
        &["--settle-ms", "10000"],
    );
    let v = agents::connected(&ran, &la.peer_id);
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["path"], "direct", "{ran}");
    let addr = last_direct_addr(&ran);
    assert_eq!(
        addr,
        format!("{}:{PORT}", a.addr),
        "not over the LAN: {ran}"
    );
    let relayed = agents::relayed_bytes(&n) - relayed_before;
    assert!(
        relayed < BYTES as f64,
        "the nodes relayed {relayed} bytes of a LAN connection"
    );
}

fn netcheck(lab: &Lab, host: &Host, name: &str, nodes: &[&Node]) -> Value {
    let mut args = vec!["netcheck".to_string()];
    for n in nodes {
        args.extend(["--bootstrap".into(), n.quic.to_string()]);
    }
    args.extend([
        "--key".into(),
        key(lab, name),
        "--bind".into(),
        format!("{}:{PORT}", host.addr),
        "--json".into(),
    ]);
    let ran = run_cli(lab, host, &args);
    assert_eq!(ran.code, Some(0), "{ran}");
    let v = agents::json_of(&ran);
    eprintln!("{}: {name}: {v}", lab.test);
    v
}

#[test]
fn netcheck_reports_udp_the_tcp_relay_and_the_mapping_in_each_topology() {
    let Some(mut lab) = Lab::new("reach::netcheck") else {
        return;
    };
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    let (_rp, p) = home(&mut lab, "p", Nat::PortPreserving);
    let (_rr, r) = home(&mut lab, "r", Nat::RandomPort);
    let (ru, u) = home(&mut lab, "u", Nat::PortPreserving);
    lab.iptables(
        &ru.ns,
        &[
            "-I", "FORWARD", "1", "-o", "wan0", "-p", "udp", "-j", "DROP",
        ],
    );
    let open = netcheck(&lab, &p, "p", &n);
    assert_eq!(open["udp"], true);
    assert_eq!(open["tcp_relay"], true);
    assert_eq!(open["mapping"], "endpoint-independent");
    assert!(open["ipv4"].is_string(), "{open}");
    assert!(open["preferred_relay"]["peer_id"].is_string(), "{open}");
    assert!(open["hairpin"].is_boolean(), "{open}");
    let random = netcheck(&lab, &r, "r", &n);
    assert_eq!(random["udp"], true);
    assert_eq!(random["mapping"], "endpoint-dependent");
    let blocked = netcheck(&lab, &u, "u", &n);
    assert_eq!(blocked["udp"], false, "{blocked}");
    assert_eq!(blocked["tcp_relay"], true, "{blocked}");
    assert!(
        blocked["nodes"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["transport"] == "tcp")),
        "{blocked}"
    );
}

#[test]
fn an_agent_behind_double_nat_through_a_carrier_grade_nat_connects_directly() {
    let Some(mut lab) = Lab::new("reach::cgnat") else {
        return;
    };
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    // The carrier NAT maps endpoint-independently (RFC 6888 asks it to),
    // and so does the home router behind it.
    let mut carrier = lab.nat_router("cgn", Nat::PortPreserving);
    let mut home_router = lab.nat_router_behind(&mut carrier, "ra", Nat::PortPreserving);
    let a = lab.behind(&mut home_router, "a");
    let (_rb, b) = home(&mut lab, "b", Nat::PortPreserving);

    let check = netcheck(&lab, &a, "a-netcheck", &n);
    assert_eq!(check["udp"], true, "{check}");
    assert_eq!(check["mapping"], "endpoint-independent", "{check}");
    assert_eq!(
        check["ipv4"],
        carrier.public.to_string(),
        "the public address is not the carrier's: {check}"
    );

    let la = agents::listen(&mut lab, &a, "a", PORT, &n);
    let ran = agents::connect_with(
        &lab,
        &b,
        "b",
        PORT,
        &la.peer_id,
        &n,
        &["--settle-ms", "10000"],
    );
    let v = agents::connected(&ran, &la.peer_id);
    eprintln!("{}: {v}", lab.test);
    assert_eq!(
        v["path"], "direct",
        "double NAT, both endpoint-independent: {ran}"
    );
    let addr = last_direct_addr(&ran);
    assert!(
        addr.starts_with(&format!("{}:", carrier.public)),
        "the direct path is not through the carrier's address: {addr:?}: {ran}"
    );
}
