//! Driving the `x0x` agent CLI inside namespaces (its documented contract:
//! `x0x id | listen | connect | lookup | netcheck`, one JSON object per line).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::fleet::Node;
use crate::lab::{Host, Lab, Ran};

/// The agent CLI binary, as a string for [`Lab::run`].
pub fn x0x() -> String {
    x0x_testkit::bin("x0x").display().to_string()
}

/// Default `x0x connect --bytes`.
pub const BYTES: u64 = 65536;
/// Generous limits: correctness, not speed, is asserted.
pub const READY_WITHIN: Duration = Duration::from_secs(30);
pub const CONNECT_LIMIT: Duration = Duration::from_secs(60);

/// A running `x0x listen`.
pub struct Listener {
    pub name: String,
    pub proc: usize,
    pub peer_id: String,
    pub observed: SocketAddr,
}

fn bootstrap_args(nodes: &[&Node]) -> Vec<String> {
    // Without --bootstrap the CLI would use the production nodes.
    assert!(
        !nodes.is_empty(),
        "an agent needs the lab's bootstrap nodes"
    );
    nodes
        .iter()
        .flat_map(|n| ["--bootstrap".to_string(), n.quic.to_string()])
        .collect()
}

/// Parse the single JSON object a one-shot command printed.
pub fn json_of(ran: &Ran) -> Value {
    let line = ran
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from {ran}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}) from {ran}"))
}

fn key(lab: &Lab, name: &str) -> String {
    lab.path(&format!("{name}.key")).display().to_string()
}

/// `x0x id --key <name>.key --json`: the agent's PeerId (creating the key).
pub fn peer_id(lab: &Lab, host: &Host, name: &str) -> String {
    let ran = lab.run(
        &host.ns,
        &x0x(),
        &["id", "--key", &key(lab, name), "--json"],
        Duration::from_secs(10),
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    let id = json_of(&ran)["peer_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no peer_id in {ran}"))
        .to_string();
    assert_eq!(id.len(), 64, "{ran}");
    id
}

/// Start `x0x listen` on `host` bound to `host.addr:port`, wait for its
/// `ready` line.
pub fn listen(lab: &mut Lab, host: &Host, name: &str, port: u16, nodes: &[&Node]) -> Listener {
    listen_with(lab, host, name, port, nodes, &[])
}

/// [`listen`] with extra arguments (e.g. `--no-port-mapping`).
pub fn listen_with(
    lab: &mut Lab,
    host: &Host,
    name: &str,
    port: u16,
    nodes: &[&Node],
    extra: &[&str],
) -> Listener {
    let mut args = vec!["listen".to_string()];
    args.extend(bootstrap_args(nodes));
    args.extend([
        "--key".to_string(),
        key(lab, name),
        "--bind".to_string(),
        format!("{}:{port}", host.addr),
        "--json".to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = lab.spawn(
        &host.ns,
        name,
        &x0x(),
        &args,
        &[("RUST_LOG", "x0x=debug,info")],
    );
    let ready = lab.procs[proc]
        .wait_line(READY_WITHIN, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == "ready")
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: `x0x listen` on {} printed no ready line within {READY_WITHIN:?}; stdout {:?}\nstderr:\n{}",
                lab.test,
                host.ns,
                lab.procs[proc].lines(),
                lab.procs[proc].log_tail(30)
            )
        });
    let v: Value = serde_json::from_str(&ready).unwrap();
    let peer_id = v["peer_id"].as_str().expect("ready.peer_id").to_string();
    let observed = v["observed"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("ready line without a valid observed address: {ready}"));
    Listener {
        name: name.to_string(),
        proc,
        peer_id,
        observed,
    }
}

/// The `connection` events a listener printed for `peer`.
pub fn connections_from(lab: &Lab, l: &Listener, peer: &str) -> Vec<Value> {
    lab.procs[l.proc]
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["event"] == "connection" && v["peer_id"] == peer)
        .collect()
}

/// The listener's `connection` and `path` events for `peer`.
pub fn path_events_from(lab: &Lab, l: &Listener, peer: &str) -> Vec<Value> {
    lab.procs[l.proc]
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| (v["event"] == "connection" || v["event"] == "path") && v["peer_id"] == peer)
        .collect()
}

/// `x0x connect PEER` from `host` bound to `host.addr:port`.
pub fn connect(lab: &Lab, host: &Host, name: &str, port: u16, peer: &str, nodes: &[&Node]) -> Ran {
    connect_with(lab, host, name, port, peer, nodes, &[])
}

/// [`connect`] with extra arguments (e.g. `--pings 10`).
pub fn connect_with(
    lab: &Lab,
    host: &Host,
    name: &str,
    port: u16,
    peer: &str,
    nodes: &[&Node],
    extra: &[&str],
) -> Ran {
    let mut args = vec!["connect".to_string(), peer.to_string()];
    args.extend(bootstrap_args(nodes));
    args.extend([
        "--key".to_string(),
        key(lab, name),
        "--bind".to_string(),
        format!("{}:{port}", host.addr),
        "--bytes".to_string(),
        BYTES.to_string(),
        "--json".to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.run(&host.ns, &x0x(), &args, CONNECT_LIMIT)
}

/// A successful connect's JSON, checked against the contract.
pub fn connected(ran: &Ran, peer: &str) -> Value {
    assert_eq!(ran.code, Some(0), "x0x connect failed: {ran}");
    let v = json_of(ran);
    assert_eq!(v["peer_id"], peer, "{ran}");
    assert_eq!(v["bytes"], BYTES, "not every byte came back: {ran}");
    assert!(
        v["path"] == "direct" || v["path"] == "relayed",
        "path must be direct or relayed: {ran}"
    );
    v
}

/// `x0x lookup PEER` from `host` through `nodes`: Some(record) or None.
pub fn lookup(lab: &Lab, host: &Host, peer: &str, nodes: &[&Node]) -> (Ran, Option<Value>) {
    let mut args = vec!["lookup".to_string(), peer.to_string()];
    args.extend(bootstrap_args(nodes));
    args.push("--json".to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ran = lab.run(&host.ns, &x0x(), &args, Duration::from_secs(30));
    let v = json_of(&ran);
    match (ran.code, v["found"].as_bool()) {
        (Some(0), Some(true)) => {
            let record = v["record"].clone();
            (ran, Some(record))
        }
        (Some(1), Some(false)) => (ran, None),
        _ => panic!("x0x lookup broke its contract: {ran}"),
    }
}

/// Count, in the wan, the bytes forwarded from `src` to `dst` (a counting
/// chain jumped to from FORWARD; it returns, so it never decides anything).
pub fn count_flow(lab: &Lab, src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) {
    let wan = lab.wan.clone();
    let exists = std::process::Command::new("ip")
        .args([
            "netns", "exec", &wan, "iptables", "-w", "-n", "-L", "X0XCOUNT",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        lab.iptables(&wan, &["-N", "X0XCOUNT"]);
        lab.iptables(&wan, &["-I", "FORWARD", "1", "-j", "X0XCOUNT"]);
    }
    lab.iptables(
        &wan,
        &[
            "-A",
            "X0XCOUNT",
            "-s",
            &src.to_string(),
            "-d",
            &dst.to_string(),
            "-j",
            "RETURN",
        ],
    );
}

/// Bytes counted so far by [`count_flow`] from `src` to `dst`.
pub fn flow_bytes(lab: &Lab, src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> u64 {
    let out = lab.iptables(&lab.wan, &["-n", "-v", "-x", "-L", "X0XCOUNT"]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // pkts bytes target prot opt in out source destination
            (f.len() >= 9 && f[2] == "RETURN" && f[7] == src.to_string() && f[8] == dst.to_string())
                .then(|| f[1].parse::<u64>().ok())?
        })
        .sum()
}

/// Relayed bytes counted by all `nodes`.
pub fn relayed_bytes(nodes: &[&Node]) -> f64 {
    nodes
        .iter()
        .map(|n| n.metric_sum("x0x_relay_bytes_total"))
        .sum()
}
