//! The port mapper against a fake NAT-PMP gateway on loopback.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fake::FakeGateway;
use super::{Gateway, PROBE_BUDGET, PortMapProtocol, Status, Target, run};

#[tokio::test]
async fn natpmp_mapping_is_published_renewed_and_removed() {
    const SSDP: u16 = 19002;
    // Grants 2 s: the mapper renews after 1 s.
    let fake = FakeGateway::start(Ipv4Addr::new(127, 0, 0, 2), SSDP, Duration::from_secs(2));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let bound = socket.local_addr().unwrap();
    let port = bound.port();
    let (tx, mut rx) = watch::channel(Status::Idle);
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(bound, Some(fake.gateway(SSDP)), tx, stop.clone()));

    let first = tokio::time::timeout(
        PROBE_BUDGET + Duration::from_millis(500),
        rx.wait_for(|s| matches!(s, Status::Done(_))),
    )
    .await
    .expect("the probe finishes within its budget")
    .unwrap()
    .mapping()
    .expect("the fake gateway mapped the port");
    assert_eq!(first.protocol, PortMapProtocol::NatPmp);
    assert_eq!(first.protocol.as_str(), "natpmp");
    assert_eq!(
        first.external,
        SocketAddr::new(fake.external_ip.into(), port + 1)
    );
    assert_eq!(first.internal.port(), port);
    assert_eq!(first.gateway, fake.ip);

    // PCP was asked first; the NAT-PMP-only gateway said so; NAT-PMP then
    // mapped our port, asking for the same external port and 2 h.
    let seen = fake.seen();
    assert!(seen[0].is_pcp(), "PCP first: {seen:?}");
    let maps: Vec<_> = seen.iter().filter_map(|s| s.natpmp_map()).collect();
    assert_eq!(maps[0], (port, port, 7200));
    assert!(seen.iter().all(|s| !s.ssdp), "no UPnP search once mapped");

    // Renewed at half the granted lifetime; the fake hands out a new port,
    // and the new address is published.
    let renewed = tokio::time::timeout(
        Duration::from_secs(3),
        rx.wait_for(|s| s.mapping().is_some_and(|m| m.external != first.external)),
    )
    .await
    .expect("renewed within 3 s")
    .unwrap()
    .mapping()
    .unwrap();
    assert_eq!(renewed.external.port(), port + 2);
    let at: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.natpmp_map().is_some())
        .map(|s| s.at)
        .collect();
    assert!(
        at[1] - at[0] >= Duration::from_millis(900),
        "renewed after {:?}, before half of the 2 s lifetime",
        at[1] - at[0]
    );
    assert_eq!(renewed.protocol, PortMapProtocol::NatPmp);

    // Stopping deletes the mapping (lifetime 0) and publishes none.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("the mapper stops")
        .unwrap();
    let maps: Vec<_> = fake.seen().iter().filter_map(|s| s.natpmp_map()).collect();
    assert_eq!(maps.last(), Some(&(port, 0, 0)), "deleted: {maps:?}");
    assert_eq!(*rx.borrow(), Status::Done(None));
}

#[test]
fn only_ipv4_sockets_that_can_be_reached_are_mapped() {
    let gw = Gateway::at(Ipv4Addr::new(10, 1, 1, 1));
    let t = Target::find("10.1.1.2:4000".parse().unwrap(), Some(gw)).unwrap();
    assert_eq!(t.local, "10.1.1.2:4000".parse().unwrap());
    assert_eq!(t.gateway.ssdp, Gateway::SSDP);
    let mapped_v4 = Target::find("[::ffff:10.1.1.2]:4000".parse().unwrap(), Some(gw)).unwrap();
    assert_eq!(mapped_v4.local, t.local);
    assert!(Target::find("[2001:db8::1]:4000".parse().unwrap(), Some(gw)).is_none());
    // A loopback socket is never mapped with the host's own gateway.
    assert!(Target::find("127.0.0.1:4000".parse().unwrap(), None).is_none());
}
