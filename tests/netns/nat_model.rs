//! The NAT model itself, checked with plain UDP sockets before any x0x test
//! relies on it: port preservation, random mapping, filtering of
//! unsolicited packets, and rebinding.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use crate::lab::{Host, Lab, Nat, in_ns};

const INSIDE_PORT: u16 = 40000;
const SERVER_PORT: u16 = 7000;

fn udp(host: &Host, port: u16) -> UdpSocket {
    let s = in_ns(&host.ns, || {
        UdpSocket::bind(SocketAddrV4::new(host.addr, port))
    })
    .unwrap_or_else(|e| panic!("bind {}:{port} in {}: {e}", host.addr, host.ns));
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    s
}

/// The next datagram, or None if nothing arrives within the read timeout.
/// An ICMP error (e.g. port unreachable) is a test failure: the routers
/// must drop, never answer.
fn recv(s: &UdpSocket) -> Option<(String, SocketAddr)> {
    let mut buf = [0u8; 1500];
    match retry_eintr(|| s.recv_from(&mut buf)) {
        Ok((n, from)) => Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from)),
        Err(e) if is_timeout(&e) => None,
        Err(e) => panic!("socket error (an ICMP answer?): {e}"),
    }
}

/// A blocking socket call with a timeout returns EINTR when the process is
/// stopped and continued, even without a signal handler (signal(7)).
fn retry_eintr<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn to(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, port))
}

/// Send until the peer sees a datagram (the first ones may meet ARP);
/// returns the source address the peer saw.
fn send_seen(from: &UdpSocket, peer: &UdpSocket, dest: SocketAddr, msg: &str) -> SocketAddr {
    for _ in 0..10 {
        from.send_to(msg.as_bytes(), dest).unwrap();
        if let Some((got, src)) = recv(peer) {
            assert_eq!(got, msg);
            return src;
        }
    }
    panic!("{msg:?} to {dest} never arrived");
}

#[test]
fn port_preserving_nat_keeps_the_port_and_drops_unsolicited_packets() {
    let Some(mut lab) =
        Lab::new("nat_model::port_preserving_nat_keeps_the_port_and_drops_unsolicited_packets")
    else {
        return;
    };
    let s1 = lab.public_host("s1");
    let s2 = lab.public_host("s2");
    let s3 = lab.public_host("s3");
    let mut r = lab.nat_router("r", Nat::PortPreserving);
    let c = lab.behind(&mut r, "c");

    let srv1 = udp(&s1, SERVER_PORT);
    let srv2 = udp(&s2, SERVER_PORT);
    let other = udp(&s2, SERVER_PORT + 1);
    let stranger = udp(&s3, SERVER_PORT);
    let inside = udp(&c, INSIDE_PORT);

    // Unsolicited, before the inside host ever sent: from the very address
    // the inside host will talk to next (what a hole punch races with).
    for _ in 0..3 {
        srv1.send_to(b"unsolicited", to(r.public, INSIDE_PORT))
            .unwrap();
    }
    assert_eq!(
        recv(&inside),
        None,
        "the router let an unsolicited packet in"
    );
    // Neither answered: a connected socket would report an ICMP error.
    let probe = in_ns(&s1.ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    probe.connect(to(r.public, 1)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    probe.send(b"probe").unwrap();
    let mut buf = [0u8; 64];
    let err = retry_eintr(|| probe.recv(&mut buf)).expect_err("the router answered a probe");
    assert!(
        is_timeout(&err),
        "the router answered an unsolicited packet: {err}"
    );

    // Outbound: the same public port towards every destination, despite
    // the dropped packet above.
    let seen1 = send_seen(&inside, &srv1, to(s1.addr, SERVER_PORT), "hello 1");
    let seen2 = send_seen(&inside, &srv2, to(s2.addr, SERVER_PORT), "hello 2");
    assert_eq!(seen1, to(r.public, INSIDE_PORT), "mapping towards s1");
    assert_eq!(seen2, to(r.public, INSIDE_PORT), "mapping towards s2");

    // Replies come back; others are filtered (address-and-port dependent
    // filtering: s2 port 7001 and host s3 were never contacted).
    srv1.send_to(b"reply 1", seen1).unwrap();
    assert_eq!(recv(&inside).map(|r| r.0).as_deref(), Some("reply 1"));
    other.send_to(b"third party", seen2).unwrap();
    assert_eq!(recv(&inside), None, "an uncontacted port got through");
    stranger.send_to(b"stranger", seen2).unwrap();
    assert_eq!(recv(&inside), None, "an uncontacted address got through");
    srv2.send_to(b"reply 2", seen2).unwrap();
    assert_eq!(recv(&inside).map(|r| r.0).as_deref(), Some("reply 2"));
}

#[test]
fn random_port_nat_maps_each_destination_to_its_own_port() {
    let Some(mut lab) =
        Lab::new("nat_model::random_port_nat_maps_each_destination_to_its_own_port")
    else {
        return;
    };
    let s1 = lab.public_host("s1");
    let s2 = lab.public_host("s2");
    let mut r = lab.nat_router("r", Nat::RandomPort);
    let c = lab.behind(&mut r, "c");
    let srv1 = udp(&s1, SERVER_PORT);
    let srv2 = udp(&s2, SERVER_PORT);
    let inside = udp(&c, INSIDE_PORT);

    let seen1 = send_seen(&inside, &srv1, to(s1.addr, SERVER_PORT), "hello 1");
    let seen2 = send_seen(&inside, &srv2, to(s2.addr, SERVER_PORT), "hello 2");
    assert_eq!(seen1.ip(), r.public);
    assert_eq!(seen2.ip(), r.public);
    assert_ne!(
        seen1.port(),
        seen2.port(),
        "one socket got the same public port towards two destinations"
    );
    // The mapping is stable per flow, and replies reach the inside socket.
    assert_eq!(
        send_seen(&inside, &srv1, to(s1.addr, SERVER_PORT), "again"),
        seen1
    );
    srv2.send_to(b"reply 2", seen2).unwrap();
    assert_eq!(recv(&inside).map(|r| r.0).as_deref(), Some("reply 2"));
    // s1 cannot use the port mapped for s2.
    srv1.send_to(b"wrong port", seen2).unwrap();
    assert_eq!(recv(&inside), None, "s1 got through on s2's mapping");
}

#[test]
fn rebinding_moves_the_mapping_to_the_new_address() {
    let Some(mut lab) = Lab::new("nat_model::rebinding_moves_the_mapping_to_the_new_address")
    else {
        return;
    };
    let s1 = lab.public_host("s1");
    let mut r = lab.nat_router("r", Nat::PortPreserving);
    let c = lab.behind(&mut r, "c");
    let srv1 = udp(&s1, SERVER_PORT);
    let inside = udp(&c, INSIDE_PORT);

    let old = send_seen(&inside, &srv1, to(s1.addr, SERVER_PORT), "before");
    assert_eq!(old, to(r.public, INSIDE_PORT));
    let new_ip = lab.rebind(&mut r);

    // The kernel drops the old mappings asynchronously: within a second
    // the same inside socket appears from the new address.
    let mut seen = old;
    let moved = crate::lab::wait_until(Duration::from_secs(5), || {
        seen = send_seen(&inside, &srv1, to(s1.addr, SERVER_PORT), "after");
        seen.ip() == std::net::IpAddr::V4(new_ip)
    });
    assert!(moved, "mapping still {seen} after rebinding to {new_ip}");
    assert_eq!(seen, to(new_ip, INSIDE_PORT));
    // Packets to the old mapping are no longer delivered (nobody has the
    // old address), packets to the new one are.
    srv1.send_to(b"to old", old).unwrap();
    assert_eq!(recv(&inside), None);
    srv1.send_to(b"to new", seen).unwrap();
    assert_eq!(recv(&inside).map(|r| r.0).as_deref(), Some("to new"));
}

#[test]
fn a_failing_test_leaves_no_namespace_and_no_process_behind() {
    let test = "nat_model::a_failing_test_leaves_no_namespace_and_no_process_behind";
    let Some(probe) = Lab::new(test) else {
        return;
    };
    drop(probe);
    let mut created = Vec::new();
    let mut pids = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new(test).unwrap();
        let mut r = lab.nat_router("r", Nat::RandomPort);
        let c = lab.behind(&mut r, "c");
        let config = lab.path("node.toml");
        let state = lab.path("state");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}:12000\"\nstate_dir = \"{}\"\n",
                c.addr,
                state.display()
            ),
        )
        .unwrap();
        let p = lab.spawn(
            &c.ns,
            "bootstrap",
            &crate::fleet::bootstrap(),
            &["--config", config.to_str().unwrap()],
            &[],
        );
        // Running (it serves health on the namespace's loopback).
        assert!(crate::lab::wait_until(Duration::from_secs(10), || {
            crate::lab::http_get(&c.ns, "127.0.0.1:12600".parse().unwrap(), "/health").is_some()
        }));
        created = lab.namespaces().to_vec();
        pids.extend(lab.procs[p].pid());
        panic!("a test failing with its lab up");
    }));
    assert!(outcome.is_err());
    assert_eq!(created.len(), 3, "wan, router, host: {created:?}");
    for ns in &created {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{ns}")).exists(),
            "namespace {ns} survived a failing test"
        );
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} survived a failing test"
        );
    }
}
