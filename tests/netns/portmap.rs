//! Port mapping against a real router daemon: Debian's `miniupnpd`
//! (package `miniupnpd-iptables`: UPnP IGD, NAT-PMP and PCP), run inside
//! the namespace of a lab home router whose NAT gives every flow a random
//! public port and whose firewall drops every unsolicited inbound packet.
//! Behind such a router an agent is only ever reached relayed
//! (`nat::agents_behind_two_random_port_nats_connect_relayed`), unless
//! the router forwards a port to it.
//!
//! miniupnpd runs as a process of the lab with a config file the test
//! writes, so it dies with the lab's namespaces when the test ends, also
//! when it fails; nothing on the host runs or changes. It refuses to map
//! anything while its WAN address is in a reserved range (the lab's
//! 198.18.0.0/15 is) unless a STUN check shows that the address is
//! reachable as is: the test runs a minimal STUN responder on a public
//! host of the lab for that (`ext_perform_stun`).
//!
//! NAT-PMP and PCP share miniupnpd's switch (`enable_natpmp`) and port
//! 5351, and the agent tries PCP first; to exercise NAT-PMP the router
//! drops PCP requests (version byte 2) before they reach miniupnpd, as a
//! NAT-PMP-only router that ignores PCP would.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::agents::{self, BYTES, Listener};
use crate::fleet::{self, Node, wait_peers};
use crate::lab::{Host, Lab, Nat, Router, in_ns, wait_until};

const PORT: u16 = 40000;
const MINIUPNPD: &str = "/usr/sbin/miniupnpd";
const STUN_PORT: u16 = 3478;

/// A minimal RFC 5389 STUN server (Binding requests only; answers every
/// one from where it arrived, with XOR-MAPPED-ADDRESS), on a thread of
/// the test; it stops when dropped.
struct Stun {
    host: Host,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stun {
    fn start(lab: &mut Lab) -> Stun {
        let host = lab.public_host("stun");
        let addr = SocketAddr::new(host.addr.into(), STUN_PORT);
        let socket = in_ns(&host.ns, || UdpSocket::bind(addr)).expect("STUN socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = stun_reply(&buf[..n], from) {
                    socket.send_to(&reply, from).ok();
                }
            }
        });
        Stun {
            host,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Stun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// The Binding success response to `req` from `from` (IPv4 only).
fn stun_reply(req: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    let SocketAddr::V4(from) = from else {
        return None;
    };
    if req.len() < 20 || req[0..2] != [0x00, 0x01] || req[4..8] != COOKIE {
        return None;
    }
    let port = from.port() ^ 0x2112;
    let ip: Vec<u8> = from
        .ip()
        .octets()
        .iter()
        .zip(COOKIE)
        .map(|(a, c)| a ^ c)
        .collect();
    let mut out = vec![0x01, 0x01, 0x00, 12];
    out.extend_from_slice(&COOKIE);
    out.extend_from_slice(&req[8..20]); // transaction id
    out.extend_from_slice(&[0x00, 0x20, 0x00, 8, 0x00, 0x01]); // XOR-MAPPED-ADDRESS, IPv4
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&ip);
    Some(out)
}

/// What a router's miniupnpd answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Offers {
    /// PCP, NAT-PMP and UPnP IGD (the agent uses PCP: it asks first).
    All,
    /// NAT-PMP and UPnP: PCP requests are dropped on the router.
    NatPmp,
    /// UPnP IGD only (`enable_natpmp=no`).
    Upnp,
}

struct Home {
    router: Router,
    host: Host,
    /// Index of miniupnpd in `lab.procs`, if the router runs it.
    igd: Option<usize>,
}

/// A random-port NAT router with one host behind it, running miniupnpd
/// with `offers` (or nothing, for `None`).
fn home(lab: &mut Lab, role: &str, stun: &Stun, offers: Option<Offers>) -> Home {
    let mut router = lab.nat_router(&format!("r{role}"), Nat::RandomPort);
    let host = lab.behind(&mut router, role);
    let igd = offers.map(|o| start_miniupnpd(lab, &router, role, stun, o));
    Home { router, host, igd }
}

fn legacy_iptables(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns, "iptables-legacy", "-w"];
    full.extend_from_slice(args);
    lab.ip(&full)
}

/// Start miniupnpd on `router` (its LAN `lan1` must exist) and wait until
/// it maps ports.
fn start_miniupnpd(lab: &mut Lab, router: &Router, role: &str, stun: &Stun, o: Offers) -> usize {
    // Not a skip: without miniupnpd the port-mapping tests cannot run,
    // and a test that did not run must not pass.
    assert!(
        Path::new(MINIUPNPD).exists(),
        "{}: {MINIUPNPD} is missing: install Debian's miniupnpd-iptables (scripts/test.sh does as root)",
        lab.test
    );
    let version = std::process::Command::new(MINIUPNPD)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    assert!(
        version.contains("(iptables) backend"),
        "{}: {MINIUPNPD} is not the iptables build (package miniupnpd-iptables) this lab configures: {version:?}",
        lab.test
    );
    let ns = router.ns.clone();
    let public = router.public.to_string();
    // A home router does not masquerade its own packets (the lab's
    // MASQUERADE --random would change the ports of miniupnpd's STUN check).
    lab.iptables(
        &ns,
        &[
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "1",
            "-o",
            "wan0",
            "-s",
            &public,
            "-j",
            "RETURN",
        ],
    );
    // Let in what miniupnpd's rules forward (the lab's firewall drops every
    // other new inbound flow).
    lab.iptables(
        &ns,
        &[
            "-I",
            "FORWARD",
            "1",
            "-i",
            "wan0",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-j",
            "ACCEPT",
        ],
    );
    if o == Offers::NatPmp {
        // PCP's first byte is its version, 2; NAT-PMP's is 0.
        lab.iptables(
            &ns,
            &[
                "-I",
                "INPUT",
                "1",
                "-i",
                "lan1",
                "-p",
                "udp",
                "--dport",
                "5351",
                "-m",
                "u32",
                "--u32",
                "0>>22&0x3C@8>>24=2",
                "-j",
                "DROP",
            ],
        );
    }
    // miniupnpd-iptables writes through libiptc, i.e. the legacy tables
    // (the lab's own rules are in nf_tables; the kernel runs both): the
    // chains its iptables_init.sh would create.
    for (table, chain, hook, dir) in [
        ("nat", "MINIUPNPD", "PREROUTING", "-i"),
        ("mangle", "MINIUPNPD", "PREROUTING", "-i"),
        ("filter", "MINIUPNPD", "FORWARD", "-i"),
        ("nat", "MINIUPNPD-POSTROUTING", "POSTROUTING", "-o"),
    ] {
        legacy_iptables(lab, &ns, &["-t", table, "-N", chain]);
        legacy_iptables(
            lab,
            &ns,
            &["-t", table, "-I", hook, dir, "wan0", "-j", chain],
        );
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let conf = format!(
        "ext_ifname=wan0\n\
         listening_ip=lan1\n\
         http_port=0\n\
         enable_natpmp={natpmp}\n\
         enable_upnp=yes\n\
         ext_perform_stun=yes\n\
         ext_stun_host={stun}\n\
         ext_stun_port={STUN_PORT}\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         lease_file={lease}\n\
         uuid=3c6f6a3e-5a5e-4e59-9d9e-{uuid:012x}\n\
         allow 1024-65535 10.0.0.0/8 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        natpmp = yes(o != Offers::Upnp),
        stun = stun.host.addr,
        lease = lab.path(&format!("miniupnpd-{role}.leases")).display(),
        uuid = router.public.to_bits(),
    );
    let conf_path = lab.path(&format!("miniupnpd-{role}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let pid = lab.path(&format!("miniupnpd-{role}.pid"));
    let i = lab.spawn(
        &ns,
        &format!("miniupnpd-{role}"),
        MINIUPNPD,
        &[
            "-d",
            "-f",
            conf_path.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ],
        &[],
    );
    let ready = |log: &str| {
        log.contains("Port forwarding is now enabled")
            && (o == Offers::Upnp || log.contains("Listening for NAT-PMP/PCP traffic"))
            && log.contains("HTTP listening on port")
    };
    // STUN takes one round of 3 s when its first answers are lost.
    let started = wait_until(Duration::from_secs(20), || {
        ready(&std::fs::read_to_string(&lab.procs[i].log).unwrap_or_default())
    });
    assert!(
        started && lab.procs[i].running(),
        "{}: miniupnpd on {ns} did not start mapping: {}",
        lab.test,
        lab.procs[i].log_tail(30)
    );
    i
}

/// miniupnpd's redirects now: (external port, internal address). Its DNAT
/// rules (legacy nat table, chain MINIUPNPD) hold the external ports, but
/// this iptables-legacy cannot print the revision of DNAT target miniupnpd
/// writes; the ACCEPT rules it adds beside them, in the same order (legacy
/// filter table, chain MINIUPNPD), hold the internal addresses.
fn redirects(lab: &Lab, router: &Router) -> Vec<(u16, SocketAddrV4)> {
    let rules = |table: &str| -> Vec<Vec<String>> {
        legacy_iptables(lab, &router.ns, &["-t", table, "-S", "MINIUPNPD"])
            .lines()
            .filter(|l| l.starts_with("-A MINIUPNPD"))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let after = |rule: &[String], flag: &str| -> String {
        rule.iter()
            .position(|w| w == flag)
            .and_then(|i| rule.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("no {flag} in miniupnpd's rule {rule:?}"))
    };
    let nat = rules("nat");
    let filter = rules("filter");
    assert_eq!(
        nat.len(),
        filter.len(),
        "miniupnpd's nat and filter rules differ: {nat:?} {filter:?}"
    );
    nat.iter()
        .zip(&filter)
        .map(|(n, f)| {
            let ext: u16 = after(n, "--dport").parse().expect("--dport is a port");
            let ip: std::net::Ipv4Addr = after(f, "-d")
                .trim_end_matches("/32")
                .parse()
                .expect("-d is an address");
            let port: u16 = after(f, "--dport").parse().expect("--dport is a port");
            (ext, SocketAddrV4::new(ip, port))
        })
        .collect()
}

/// The external port miniupnpd forwards to `to`, once it does (20 s).
fn wait_redirect(lab: &Lab, router: &Router, to: SocketAddrV4) -> Option<u16> {
    let mut port = None;
    wait_until(Duration::from_secs(20), || {
        port = redirects(lab, router)
            .into_iter()
            .find(|(_, t)| *t == to)
            .map(|(p, _)| p);
        port.is_some()
    });
    port
}

fn log_of(lab: &Lab, proc: usize) -> String {
    std::fs::read_to_string(&lab.procs[proc].log).unwrap_or_default()
}

/// The lines of miniupnpd's log that show a request from `client` of any
/// protocol (SSDP search, UPnP HTTP/SOAP, NAT-PMP, PCP).
fn requests_from(log: &str, client: std::net::Ipv4Addr) -> Vec<String> {
    let c = client.to_string();
    log.lines()
        .filter(|l| {
            [
                "SSDP M-SEARCH from ",
                "HTTP REQUEST from ",
                "NAT-PMP request received from ",
                "PCP request received from ",
            ]
            .iter()
            .any(|p| {
                l.split_once(p)
                    .is_some_and(|(_, rest)| rest.starts_with(&format!("{c}:")))
            })
        })
        .map(str::to_string)
        .collect()
}

/// The external port miniupnpd logged mapping to `client` with `protocol`
/// (`pcp`, `natpmp` or `upnp`), if it did.
fn mapped_in_log(log: &str, protocol: &str, client: std::net::Ipv4Addr) -> Option<u16> {
    let (marker, sep) = match protocol {
        "pcp" => ("PCP MAP: added mapping UDP ", "->"),
        "natpmp" => ("NAT-PMP port mapping request : ", "->"),
        "upnp" => ("AddPortMapping: ext port ", " to "),
        _ => unreachable!("no such protocol {protocol}"),
    };
    log.lines().find_map(|l| {
        let (_, rest) = l.split_once(marker)?;
        let (port, rest) = rest.split_once(sep)?;
        rest.starts_with(&format!("{client}:"))
            .then(|| port.parse().ok())?
    })
}

/// The line miniupnpd logs when `protocol`'s mapping of UDP `port` is deleted.
fn removed_line(protocol: &str, port: u16) -> String {
    match protocol {
        "pcp" => format!("PCP: UDP port {port} mapping removed"),
        "natpmp" => format!("NAT-PMP UDP port {port} mapping removed"),
        "upnp" => format!("DeletePortMapping: external port: {port}, protocol: UDP"),
        _ => unreachable!("no such protocol {protocol}"),
    }
}

/// `x0x netcheck --json` from `host`.
fn netcheck(lab: &Lab, host: &Host, nodes: &[&Node], extra: &[&str]) -> (crate::lab::Ran, Value) {
    let mut args = vec!["netcheck".to_string()];
    for n in nodes {
        args.extend(["--bootstrap".to_string(), n.quic.to_string()]);
    }
    args.push("--json".to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ran = lab.run(&host.ns, &agents::x0x(), &args, Duration::from_secs(30));
    assert_eq!(ran.code, Some(0), "x0x netcheck failed: {ran}");
    let v = agents::json_of(&ran);
    (ran, v)
}

fn nodes(lab: &mut Lab, count: usize) -> Vec<Node> {
    let entries = fleet::inventory();
    let nodes = fleet::start(lab, &entries[..count]);
    let all: Vec<usize> = (0..count).collect();
    assert!(
        wait_peers(&nodes, &all, count as u64 - 1, Duration::from_secs(30)),
        "the nodes did not mesh: {:?}",
        fleet::peer_counts(&nodes)
    );
    nodes
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

/// The addresses of `peer`'s directory record, as `from` looks it up.
fn record_addrs(lab: &Lab, from: &Host, peer: &str, n: &[&Node]) -> Vec<SocketAddr> {
    let (_, record) = agents::lookup(lab, from, peer, n);
    record
        .as_ref()
        .and_then(|r| r["addrs"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect()
}

/// SIGTERM the listener (`x0x listen` then closes its agent) and wait
/// until it exited.
fn terminate(lab: &mut Lab, l: &Listener) {
    let pid = lab.procs[l.proc].pid().expect("the listener runs");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid} failed");
    let proc = &mut lab.procs[l.proc];
    assert!(
        wait_until(Duration::from_secs(10), || !proc.running()),
        "`x0x listen` did not exit within 10 s of SIGTERM"
    );
}

/// Two homes behind random-port NATs: `a`'s router runs miniupnpd (every
/// protocol), `b`'s nothing; the wan counts what goes between them.
struct Pair {
    lab: Lab,
    nodes: Vec<Node>,
    _stun: Stun,
    a: Home,
    b: Home,
}

fn pair(test: &str) -> Option<Pair> {
    let mut lab = Lab::new(test)?;
    let nodes = nodes(&mut lab, 2);
    let stun = Stun::start(&mut lab);
    let a = home(&mut lab, "a", &stun, Some(Offers::All));
    let b = home(&mut lab, "b", &stun, None);
    agents::count_flow(&lab, b.router.public, a.router.public);
    agents::count_flow(&lab, a.router.public, b.router.public);
    Some(Pair {
        lab,
        nodes,
        _stun: stun,
        a,
        b,
    })
}

#[test]
fn an_agent_behind_a_port_mapping_router_is_reached_directly_at_its_mapped_address() {
    let Some(Pair {
        mut lab,
        nodes,
        _stun,
        a,
        b,
    }) = pair(
        "portmap::an_agent_behind_a_port_mapping_router_is_reached_directly_at_its_mapped_address",
    )
    else {
        return;
    };
    let n: Vec<&Node> = nodes.iter().collect();
    let igd = a.igd.expect("a's router runs miniupnpd");
    let la = agents::listen(&mut lab, &a.host, "a", PORT, &n);
    assert_eq!(
        la.observed.ip(),
        std::net::IpAddr::V4(a.router.public),
        "a's observed address is not its router's"
    );
    // a asked its router (PCP: asked first) to forward a port to its socket.
    let internal = SocketAddrV4::new(a.host.addr, PORT);
    let port = wait_redirect(&lab, &a.router, internal).unwrap_or_else(|| {
        panic!(
            "miniupnpd forwards nothing to {internal}: {:?}\n{}",
            redirects(&lab, &a.router),
            lab.procs[igd].log_tail(30)
        )
    });
    let mapped = SocketAddr::new(a.router.public.into(), port);
    assert_eq!(
        mapped_in_log(&log_of(&lab, igd), "pcp", a.host.addr),
        Some(port),
        "the mapping was not asked with PCP: {}",
        lab.procs[igd].log_tail(30)
    );
    // The nodes vouched for the mapped address (their nonce reached a
    // through the router's forwarding), so it is in a's record.
    let mut addrs = Vec::new();
    let vouched = wait_until(Duration::from_secs(20), || {
        addrs = record_addrs(&lab, &b.host, &la.peer_id, &n);
        addrs.contains(&mapped)
    });
    eprintln!(
        "{}: a observed at {}, mapped at {mapped}; record {addrs:?}",
        lab.test, la.observed
    );
    assert!(
        vouched,
        "a's mapped address {mapped} is not in its record {addrs:?}"
    );

    let b_id = agents::peer_id(&lab, &b.host, "b");
    let relayed_before = agents::relayed_bytes(&n);
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
    eprintln!(
        "{}: b -> a: path {} connect_ms {} rtt_ms {} time_to_direct_ms {}",
        lab.test, v["path"], v["connect_ms"], v["rtt_ms"], v["time_to_direct_ms"]
    );
    assert_eq!(v["path"], "direct", "expected a direct connection: {ran}");
    assert!(
        v["via"].is_null(),
        "a direct connection has no relay: {ran}"
    );
    // The direct path runs to a's mapped address.
    let direct_addrs: Vec<String> = ran
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "path" && e["path"] == "direct")
        .filter_map(|e| e["addr"].as_str().map(str::to_string))
        .collect();
    assert!(
        direct_addrs.contains(&mapped.to_string()),
        "the direct path is not to a's mapped address {mapped}: {direct_addrs:?}\n{ran}"
    );
    let mut events = Vec::new();
    let seen = wait_until(Duration::from_secs(10), || {
        events = agents::path_events_from(&lab, &la, &b_id);
        events.iter().any(|e| e["path"] == "direct")
    });
    assert!(seen, "a saw no direct path to b: {events:?}");
    // The bytes went home to home through the wan, not through a node.
    let b_to_a = agents::flow_bytes(&lab, b.router.public, a.router.public);
    let a_to_b = agents::flow_bytes(&lab, a.router.public, b.router.public);
    let relayed = agents::relayed_bytes(&n) - relayed_before;
    eprintln!(
        "{}: wan forwarded {b_to_a} bytes b->a, {a_to_b} a->b; nodes relayed {relayed}",
        lab.test
    );
    assert!(
        b_to_a >= BYTES && a_to_b >= BYTES,
        "direct, yet the wan forwarded only {b_to_a} bytes b->a and {a_to_b} a->b"
    );
    assert!(
        relayed < BYTES as f64,
        "direct, yet the nodes relayed {relayed} bytes"
    );

    // Closing the agent deletes the mapping.
    terminate(&mut lab, &la);
    let rules = redirects(&lab, &a.router);
    assert!(
        rules.iter().all(|(_, to)| *to != internal),
        "a closed, yet miniupnpd still forwards to it: {rules:?}\n{}",
        lab.procs[igd].log_tail(30)
    );
    assert!(
        log_of(&lab, igd).contains(&removed_line("pcp", port)),
        "miniupnpd logged no removal of port {port}: {}",
        lab.procs[igd].log_tail(30)
    );
}

#[test]
fn without_port_mapping_the_same_agents_are_relayed() {
    let Some(Pair {
        mut lab,
        nodes,
        _stun,
        a,
        b,
    }) = pair("portmap::without_port_mapping_the_same_agents_are_relayed")
    else {
        return;
    };
    let n: Vec<&Node> = nodes.iter().collect();
    let ids = node_ids(&n);
    let igd = a.igd.expect("a's router runs miniupnpd");
    let off = ["--no-port-mapping"];
    let la = agents::listen_with(&mut lab, &a.host, "a", PORT, &n, &off);
    // No mapped address is published: only what the nodes observed (the
    // NAT's random ports) and a's LAN address.
    let addrs = record_addrs(&lab, &b.host, &la.peer_id, &n);
    let would_be = SocketAddr::new(a.router.public.into(), PORT);
    assert!(
        !addrs.is_empty() && !addrs.contains(&would_be),
        "a's record without port mapping: {addrs:?}"
    );
    let b_id = agents::peer_id(&lab, &b.host, "b");
    let relayed_before = agents::relayed_bytes(&n);
    // As long a settling time as the direct test allows.
    let ran = agents::connect_with(
        &lab,
        &b.host,
        "b",
        PORT,
        &la.peer_id,
        &n,
        &["--settle-ms", "10000", "--no-port-mapping"],
    );
    let v = agents::connected(&ran, &la.peer_id);
    eprintln!(
        "{}: b -> a: path {} connect_ms {} via {}",
        lab.test, v["path"], v["connect_ms"], v["via"]
    );
    assert_eq!(v["path"], "relayed", "expected a relayed connection: {ran}");
    let via = v["via"]
        .as_str()
        .unwrap_or_else(|| panic!("relayed without via: {ran}"));
    assert!(
        ids.iter().any(|id| id == via),
        "via {via} is not one of the bootstrap nodes {ids:?}"
    );
    let mut events = Vec::new();
    let seen = wait_until(Duration::from_secs(10), || {
        events = agents::path_events_from(&lab, &la, &b_id);
        events.iter().any(|e| e["path"] == "relayed")
    });
    assert!(seen, "a saw no relayed connection from b: {events:?}");
    assert!(
        !events.iter().any(|e| e["path"] == "direct"),
        "a reached b directly without a mapping: {events:?}"
    );
    let relayed = agents::relayed_bytes(&n) - relayed_before;
    let b_to_a = agents::flow_bytes(&lab, b.router.public, a.router.public);
    assert!(
        relayed >= 2.0 * BYTES as f64,
        "relayed, yet the nodes relayed only {relayed} bytes"
    );
    assert!(
        b_to_a < BYTES,
        "relayed, yet {b_to_a} bytes went home to home"
    );
    // Port mapping off sends the router nothing, and nothing is forwarded.
    terminate(&mut lab, &la);
    let log = log_of(&lab, igd);
    let asked = requests_from(&log, a.host.addr);
    assert!(
        asked.is_empty(),
        "with --no-port-mapping a still asked its router: {asked:?}"
    );
    let rules = redirects(&lab, &a.router);
    assert!(rules.is_empty(), "miniupnpd forwards ports: {rules:?}");
}

#[test]
fn netcheck_reports_pcp_natpmp_upnp_or_none_and_deletes_the_mapping_when_it_closes() {
    let Some(mut lab) = Lab::new(
        "portmap::netcheck_reports_pcp_natpmp_upnp_or_none_and_deletes_the_mapping_when_it_closes",
    ) else {
        return;
    };
    let nodes = nodes(&mut lab, 1);
    let n: Vec<&Node> = nodes.iter().collect();
    let stun = Stun::start(&mut lab);
    let pcp = home(&mut lab, "p", &stun, Some(Offers::All));
    let natpmp = home(&mut lab, "m", &stun, Some(Offers::NatPmp));
    let upnp = home(&mut lab, "u", &stun, Some(Offers::Upnp));
    let plain = home(&mut lab, "n", &stun, None);

    // First with port mapping off, behind the router answering everything:
    // "none", and the router heard nothing.
    let (ran, v) = netcheck(&lab, &pcp.host, &n, &["--no-port-mapping"]);
    assert_eq!(v["portmap"], "none", "with --no-port-mapping: {ran}");
    let igd = pcp.igd.expect("runs miniupnpd");
    let asked = requests_from(&log_of(&lab, igd), pcp.host.addr);
    assert!(
        asked.is_empty(),
        "with --no-port-mapping netcheck asked its router: {asked:?}"
    );

    for (home, want) in [
        (&pcp, "pcp"),
        (&natpmp, "natpmp"),
        (&upnp, "upnp"),
        (&plain, "none"),
    ] {
        let (ran, v) = netcheck(&lab, &home.host, &n, &[]);
        eprintln!(
            "{}: behind {}: {}",
            lab.test,
            home.router.ns,
            ran.stdout.trim()
        );
        assert_eq!(v["portmap"], want, "behind {}: {ran}", home.router.ns);
        // The keys netcheck had before are all still there.
        for key in ["udp", "public_addr", "mapping", "nodes", "unreachable"] {
            assert!(v.get(key).is_some(), "netcheck lost {key}: {ran}");
        }
        let Some(igd) = home.igd else { continue };
        // The agent mapped its port with that protocol, and deleted the
        // mapping when it closed (netcheck closes its agent before it exits).
        let log = log_of(&lab, igd);
        let port = mapped_in_log(&log, want, home.host.addr).unwrap_or_else(|| {
            panic!(
                "miniupnpd logged no {want} mapping to {}: {}",
                home.host.addr,
                lab.procs[igd].log_tail(30)
            )
        });
        assert!(
            log.contains(&removed_line(want, port)),
            "the agent left its {want} mapping of port {port} behind: {}",
            lab.procs[igd].log_tail(30)
        );
        let rules = redirects(&lab, &home.router);
        assert!(
            rules.is_empty(),
            "miniupnpd still forwards after netcheck exited: {rules:?}"
        );
    }
}
