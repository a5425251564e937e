//! The path layer across real NATs: one connection that starts on the
//! first path that works, upgrades to direct when it can, falls back to a
//! relay when the direct path breaks, moves to another node's relay when
//! its node dies, picks the relay with the lowest RTT, and cannot be moved
//! by forged packets. Each test drives `x0x connect --pings` as a process
//! and reads its JSON path events while it runs.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agents::{self, Listener};
use crate::fleet::{self, Node, wait_peers};
use crate::lab::{Host, Lab, Nat, Router, wait_until};

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

struct Home {
    router: Router,
    host: Host,
}

fn home(lab: &mut Lab, role: &str, nat: Nat) -> Home {
    let mut router = lab.nat_router(&format!("r{role}"), nat);
    let host = lab.behind(&mut router, role);
    Home { router, host }
}

/// `x0x connect` running in the background, pinging every 300 ms.
struct Pinger {
    proc: usize,
}

fn start_pinger(
    lab: &mut Lab,
    host: &Host,
    name: &str,
    to: &Listener,
    nodes: &[&Node],
    pings: u32,
    extra: &[&str],
) -> Pinger {
    let mut args = vec!["connect".to_string(), to.peer_id.clone()];
    for n in nodes {
        args.extend(["--bootstrap".to_string(), n.quic.to_string()]);
    }
    args.extend(
        [
            "--key",
            &lab.path(&format!("{name}.key")).display().to_string(),
            "--bind",
            &format!("{}:{PORT}", host.addr),
            "--bytes",
            "1024",
            "--json",
            "--pings",
            &pings.to_string(),
            "--ping-interval-ms",
            "300",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = lab.spawn(
        &host.ns,
        name,
        &agents::x0x(),
        &args,
        &[("RUST_LOG", "x0x=debug")],
    );
    Pinger { proc }
}

fn events(lab: &Lab, p: &Pinger) -> Vec<Value> {
    lab.procs[p.proc]
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "path")
        .collect()
}

/// Wait until a path event satisfies `pred`; returns it and when it was seen.
fn wait_event(
    lab: &Lab,
    p: &Pinger,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<(Value, Instant)> {
    wait_event_after(lab, p, 0, within, pred)
}

/// [`wait_event`] among the events after the first `skip`.
fn wait_event_after(
    lab: &Lab,
    p: &Pinger,
    skip: usize,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<(Value, Instant)> {
    let mut found = None;
    wait_until(within, || {
        found = events(lab, p).into_iter().skip(skip).find(|e| pred(e));
        found.is_some()
    });
    found.map(|e| (e, Instant::now()))
}

/// Wait for the pinger to exit and return its summary line.
fn summary(lab: &mut Lab, p: &Pinger, within: Duration) -> Value {
    let exited = wait_until(within, || !lab.procs[p.proc].running());
    let lines = lab.procs[p.proc].lines();
    assert!(
        exited,
        "{}: x0x connect still running after {within:?}: {lines:?}",
        lab.test
    );
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("pings_ok").is_some())
        .unwrap_or_else(|| {
            panic!(
                "{}: no summary line: {lines:?}\n{}",
                lab.test,
                lab.procs[p.proc].log_tail(40)
            )
        })
}

fn block_both(lab: &Lab, a: Ipv4Addr, b: Ipv4Addr) {
    lab.block(a, b);
    lab.block(b, a);
}

fn unblock_both(lab: &Lab, a: Ipv4Addr, b: Ipv4Addr) {
    lab.unblock(a, b);
    lab.unblock(b, a);
}

#[test]
fn a_relayed_connection_moves_to_direct_when_direct_udp_becomes_possible() {
    let Some(mut lab) = Lab::new("paths::upgrade") else {
        return;
    };
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    let a = home(&mut lab, "a", Nat::PortPreserving);
    let b = home(&mut lab, "b", Nat::PortPreserving);
    // The "internet" drops UDP between the two homes at first.
    block_both(&lab, a.router.public, b.router.public);
    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    let p = start_pinger(&mut lab, &b.host, "b", &la, &n, 40, &["--settle-ms", "0"]);
    let (first, _) = wait_event(&lab, &p, Duration::from_secs(20), |_| true)
        .unwrap_or_else(|| panic!("{}: no path event", lab.test));
    assert_eq!(first["path"], "relayed", "{first}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !events(&lab, &p).iter().any(|e| e["path"] == "direct"),
        "direct although blocked"
    );
    unblock_both(&lab, a.router.public, b.router.public);
    let lifted = Instant::now();
    let (direct, seen) = wait_event(&lab, &p, Duration::from_secs(10), |e| e["path"] == "direct")
        .unwrap_or_else(|| {
            panic!(
                "{}: still relayed 10 s after the block was lifted: {:?}",
                lab.test,
                events(&lab, &p)
            )
        });
    eprintln!(
        "{}: direct {:.0} ms after the block was lifted ({direct})",
        lab.test,
        seen.duration_since(lifted).as_secs_f64() * 1e3
    );
    let v = summary(&mut lab, &p, Duration::from_secs(60));
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["reconnects"], 0, "{v}");
    assert_eq!(v["path"], "direct", "{v}");
    assert!(v["path_changes"].as_u64() >= Some(1), "{v}");
    assert!(
        v["pings_ok"].as_u64() >= Some(38),
        "pings did not continue: {v}"
    );
}

#[test]
fn a_direct_connection_falls_back_to_the_relay_when_its_path_breaks() {
    let Some(mut lab) = Lab::new("paths::fallback") else {
        return;
    };
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    let a = home(&mut lab, "a", Nat::PortPreserving);
    let b = home(&mut lab, "b", Nat::PortPreserving);
    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    let p = start_pinger(&mut lab, &b.host, "b", &la, &n, 30, &[]);
    wait_event(&lab, &p, Duration::from_secs(20), |e| e["path"] == "direct")
        .unwrap_or_else(|| panic!("{}: never direct: {:?}", lab.test, events(&lab, &p)));
    std::thread::sleep(Duration::from_secs(2));
    block_both(&lab, a.router.public, b.router.public);
    let blocked = Instant::now();
    let before = events(&lab, &p).len();
    let (ev, seen) = wait_event_after(&lab, &p, before, Duration::from_secs(10), |e| {
        e["path"] == "relayed"
    })
    .unwrap_or_else(|| panic!("{}: no fallback: {:?}", lab.test, events(&lab, &p)));
    let took = seen.duration_since(blocked);
    eprintln!(
        "{}: relayed {:.0} ms after the block ({ev})",
        lab.test,
        took.as_secs_f64() * 1e3
    );
    assert!(took <= Duration::from_secs(3), "fallback took {took:?}");
    let v = summary(&mut lab, &p, Duration::from_secs(60));
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["reconnects"], 0, "{v}");
    assert_eq!(v["path"], "relayed", "{v}");
    assert!(
        v["pings_ok"].as_u64() >= Some(28),
        "pings did not continue: {v}"
    );
}

#[test]
fn when_the_relaying_node_dies_another_shared_node_relays_without_a_new_handshake() {
    let Some(mut lab) = Lab::new("paths::relay_node_lost") else {
        return;
    };
    let nodes = nodes(&mut lab, 3);
    let n: Vec<&Node> = nodes.iter().collect();
    let ids: Vec<String> = n
        .iter()
        .map(|x| {
            x.health_json().unwrap()["peer_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let a = home(&mut lab, "a", Nat::RandomPort);
    let b = home(&mut lab, "b", Nat::RandomPort);
    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    let p = start_pinger(&mut lab, &b.host, "b", &la, &n, 40, &[]);
    let (first, _) = wait_event(&lab, &p, Duration::from_secs(20), |e| {
        e["path"] == "relayed"
    })
    .unwrap_or_else(|| panic!("{}: not relayed: {:?}", lab.test, events(&lab, &p)));
    std::thread::sleep(Duration::from_secs(2));
    // The node relaying now (the last event's via).
    let via = events(&lab, &p).last().unwrap()["via"]
        .as_str()
        .unwrap()
        .to_string();
    let x = ids
        .iter()
        .position(|id| *id == via)
        .expect("via is a lab node");
    eprintln!("{}: first {first}; killing node {x} ({via})", lab.test);
    lab.procs[nodes[x].proc].kill();
    let killed = Instant::now();
    let (ev, seen) = wait_event(&lab, &p, Duration::from_secs(10), |e| {
        e["path"] == "relayed" && e["via"].as_str().is_some_and(|v| v != via)
    })
    .unwrap_or_else(|| {
        panic!(
            "{}: no move to another relay: {:?}",
            lab.test,
            events(&lab, &p)
        )
    });
    let took = seen.duration_since(killed);
    eprintln!(
        "{}: moved {:.0} ms after the kill ({ev})",
        lab.test,
        took.as_secs_f64() * 1e3
    );
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    let v = summary(&mut lab, &p, Duration::from_secs(60));
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["reconnects"], 0, "{v}");
    assert!(
        v["pings_ok"].as_u64() >= Some(37),
        "pings did not continue: {v}"
    );
}

#[test]
fn the_relay_with_the_lowest_summed_rtt_is_used() {
    let Some(mut lab) = Lab::new("paths::relay_choice") else {
        return;
    };
    let nodes = nodes(&mut lab, 2);
    let n: Vec<&Node> = nodes.iter().collect();
    let ids: Vec<String> = n
        .iter()
        .map(|x| {
            x.health_json().unwrap()["peer_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let a = home(&mut lab, "a", Nat::RandomPort);
    let b = home(&mut lab, "b", Nat::RandomPort);
    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    // Twice, each time with the other node 40 ms further away (20 ms each
    // way): a choice that ignored RTT would be wrong at least once.
    for (far, near) in [(0, 1), (1, 0)] {
        lab.delay(n[far].host.addr, 20);
        let name = format!("b{far}");
        let p = start_pinger(&mut lab, &b.host, &name, &la, &n, 20, &["--relay-only"]);
        let (ev, _) = wait_event(&lab, &p, Duration::from_secs(15), |e| {
            e["via"] == ids[near].as_str()
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: never via the near node {near}: {:?}",
                lab.test,
                events(&lab, &p)
            )
        });
        eprintln!("{}: node {far} delayed: {ev}", lab.test);
        let v = summary(&mut lab, &p, Duration::from_secs(60));
        eprintln!("{}: {v}", lab.test);
        assert_eq!(
            v["via"],
            ids[near].as_str(),
            "ended via the far node {far}: {v}"
        );
    }
}

#[test]
fn forged_packets_from_a_third_host_do_not_move_a_connection() {
    let Some(mut lab) = Lab::new("paths::forged") else {
        return;
    };
    let nodes = nodes(&mut lab, 1);
    let n: Vec<&Node> = nodes.iter().collect();
    // The listener is public, so the attacker can reach it.
    let a = lab.public_host("a");
    let b = home(&mut lab, "b", Nat::PortPreserving);
    let attacker = lab.public_host("m");
    let la = agents::listen(&mut lab, &a, "a", PORT, &n);
    let b_id = agents::peer_id(&lab, &b.host, "b");
    let p = start_pinger(&mut lab, &b.host, "b", &la, &n, 20, &[]);
    wait_event(&lab, &p, Duration::from_secs(20), |e| e["path"] == "direct")
        .unwrap_or_else(|| panic!("{}: never direct: {:?}", lab.test, events(&lab, &p)));
    // Probes claiming to come from b (its peer id), with made-up MACs,
    // and QUIC-looking garbage, all from the attacker's address.
    let target = format!("{}:{PORT}", a.addr);
    let b_hex = b_id.clone();
    let forge = format!(
        "import socket,os,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         pid=bytes.fromhex('{b_hex}')\n\
         t=time.time()\n\
         while time.time()-t<3:\n\
         \x20   for kind in (1,2,3,4):\n\
         \x20       s.sendto(bytes([2,kind])+pid+os.urandom(12+20+16),('{}',{PORT}))\n\
         \x20   s.sendto(bytes([0x40])+os.urandom(1200),('{}',{PORT}))\n\
         \x20   time.sleep(0.01)\n",
        a.addr, a.addr
    );
    let ran = lab.run(
        &attacker.ns,
        "python3",
        &["-c", &forge],
        Duration::from_secs(10),
    );
    assert_eq!(ran.code, Some(0), "the forger failed: {ran}");
    let v = summary(&mut lab, &p, Duration::from_secs(60));
    eprintln!("{}: {v}", lab.test);
    assert_eq!(v["reconnects"], 0, "{v}");
    assert!(v["pings_ok"].as_u64() >= Some(19), "{v}");
    // The listener never moved its connection to the attacker.
    let moved: Vec<Value> = agents::path_events_from(&lab, &la, &b_id)
        .into_iter()
        .filter(|e| {
            e["addr"]
                .as_str()
                .is_some_and(|x| x.starts_with(&attacker.addr.to_string()))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "{}: moved to the attacker ({target}): {moved:?}",
        lab.test
    );
}
