//! The agent's side of port mapping (`crate::portmap` talks to the router).
//!
//! `join_network` starts the mapper in the background (it never delays the
//! join). While a mapping exists its external address is one of the
//! agent's own candidates, and every node the agent is linked to is asked
//! to vouch for it (`Vouch` → the node sends a nonce to that address → the
//! router forwards it to our socket → `links::answer_vouches` returns it),
//! so the node lists it in the agent's directory record. A new address
//! (after a renewal) is vouched for again; when the mapping goes away the
//! candidates are refreshed. `Agent::close` deletes the mapping.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use x0x_proto::policy;
use x0x_proto::wire::Message;

use super::requests::request;
use super::{BootstrapLink, Inner, links, lock};
use crate::portmap::{self, PortMapping, Status};

/// Port-mapping state of one agent.
pub(crate) struct PortMap {
    status: watch::Sender<Status>,
    /// Stops the mapper (which then deletes the mapping); a child of the
    /// agent's cancel token, so dropping the agent stops it too.
    stop: CancellationToken,
    started: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
    /// (link connection, address) pairs already sent a `Vouch`: each node
    /// counts the vouches an agent asks for.
    vouched: Mutex<HashSet<(usize, SocketAddr)>>,
}

impl PortMap {
    pub fn new(cancel: &CancellationToken) -> Self {
        Self {
            status: watch::Sender::new(Status::Idle),
            stop: cancel.child_token(),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
            vouched: Mutex::new(HashSet::new()),
        }
    }
}

/// Start the mapper once (if `NetworkConfig::port_mapping` allows): called
/// by `join_network`, returns at once.
pub(super) fn start(inner: &Arc<Inner>) {
    let pm = &inner.portmap;
    if !inner.network.port_mapping || pm.started.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(bound) = inner.endpoint.local_addr() else {
        return;
    };
    // Probing from now on: `ready` waits for the first result.
    pm.status.send_replace(Status::Probing);
    #[cfg(test)]
    let gateway = inner.network.portmap_gateway;
    #[cfg(not(test))]
    let gateway = None;
    let mapper = tokio::spawn(portmap::run(
        bound,
        gateway,
        pm.status.clone(),
        pm.stop.clone(),
    ));
    *lock(&pm.task) = Some(mapper);
    tokio::spawn(follow(inner.clone(), pm.status.subscribe()));
}

/// On every change of the mapping: refresh our candidates, and ask each
/// linked node to vouch for a new address.
async fn follow(inner: Arc<Inner>, mut status: watch::Receiver<Status>) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
        let mapping = status.borrow_and_update().mapping();
        links::refresh_candidates(&inner);
        if let Some(m) = mapping {
            let conns: Vec<(quinn::Connection, BootstrapLink)> = lock(&inner.links)
                .values()
                .map(|l| (l.conn.clone(), l.info.clone()))
                .collect();
            for (conn, info) in conns {
                vouch(&inner, &conn, &info, m.external);
            }
        }
    }
}

/// A link to a node is up (and registered): have it vouch for our mapped
/// address, if there is one.
pub(super) fn on_link(inner: &Arc<Inner>, conn: &quinn::Connection, info: &BootstrapLink) {
    if let Some(m) = mapping(inner) {
        vouch(inner, conn, info, m.external);
    }
}

/// Ask the node on `conn` to vouch for `addr` (once per link and address).
/// Not needed when the node already sees us there (a port-preserving NAT
/// mapped the same port) or for a local-scope address (listed unvouched).
fn vouch(inner: &Arc<Inner>, conn: &quinn::Connection, info: &BootstrapLink, addr: SocketAddr) {
    if !info.roles.coordinator
        || policy::is_local_scope(&addr)
        || !policy::is_dialable(&addr)
        || lock(&inner.links)
            .values()
            .any(|l| l.info.observed == Some(addr))
        || !lock(&inner.portmap.vouched).insert((conn.stable_id(), addr))
    {
        return;
    }
    let conn = conn.clone();
    let node = info.peer_id;
    tokio::spawn(async move {
        match request(&conn, &Message::Vouch { addr }).await {
            Ok(Message::VouchSent) => {
                debug!(node = %node.short(), %addr, "vouch for mapped address asked")
            }
            other => debug!(node = %node.short(), %addr, "vouch refused: {other:?}"),
        }
    });
}

/// The mapping held now.
pub(super) fn mapping(inner: &Inner) -> Option<PortMapping> {
    inner.portmap.status.borrow().mapping()
}

/// Our own candidate from port mapping: the mapped external address.
pub(super) fn candidate(inner: &Inner) -> Option<SocketAddr> {
    mapping(inner).map(|m| m.external)
}

/// Wait until the first probe finished (at most about
/// [`portmap::PROBE_BUDGET`] after `join_network`), then the mapping.
pub(super) async fn ready(inner: &Inner) -> Option<PortMapping> {
    let mut rx = inner.portmap.status.subscribe();
    let done = rx.wait_for(|s| matches!(s, Status::Done(_) | Status::Idle));
    match tokio::time::timeout(portmap::PROBE_BUDGET + Duration::from_secs(1), done).await {
        Ok(Ok(s)) => s.mapping(),
        _ => None,
    }
}

/// Stop the mapper and wait (bounded) until it deleted the mapping.
pub(super) async fn stop(inner: &Inner) {
    inner.portmap.stop.cancel();
    let task = lock(&inner.portmap.task).take();
    if let Some(task) = task {
        let _ =
            tokio::time::timeout(portmap::REMOVE_TIMEOUT + Duration::from_millis(500), task).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use crate::portmap::PortMapProtocol;
    use crate::portmap::fake::FakeGateway;
    use crate::{Agent, NetworkConfig};

    /// With `port_mapping = false` the agent sends no PCP, NAT-PMP or SSDP
    /// packet; the same agent with it on does (so the fake is really
    /// where the agent would send), and deletes its mapping on close.
    #[tokio::test]
    async fn with_port_mapping_off_no_request_is_sent() {
        const SSDP: u16 = 19003;
        let fake = FakeGateway::start(Ipv4Addr::new(127, 0, 0, 3), SSDP, Duration::from_secs(7200));
        let agent = |port_mapping: bool| {
            // No node listens there: the join fails, which does not matter.
            let mut cfg = NetworkConfig::with_bootstrap_peers(vec!["127.0.0.1:9".parse().unwrap()]);
            cfg.bind = "127.0.0.1:0".parse().unwrap();
            cfg.join_timeout = Duration::from_millis(300);
            cfg.port_mapping = port_mapping;
            cfg.portmap_gateway = Some(fake.gateway(SSDP));
            Agent::builder().network(cfg).build().unwrap()
        };

        let on = agent(true);
        assert!(
            on.port_mapping_ready().await.is_none(),
            "nothing before join_network"
        );
        let _ = on.join_network().await;
        let m = on
            .port_mapping_ready()
            .await
            .expect("mapped with port mapping on");
        assert_eq!(m.protocol, PortMapProtocol::NatPmp);
        assert_eq!(m.internal.port(), on.local_addr().unwrap().port());
        assert_eq!(on.port_mapping(), Some(m.clone()));
        on.close().await;
        let maps: Vec<_> = fake.seen().iter().filter_map(|s| s.natpmp_map()).collect();
        assert_eq!(maps.first().map(|m| m.0), Some(m.internal.port()));
        assert_eq!(
            maps.last(),
            Some(&(m.internal.port(), 0, 0)),
            "deleted on close: {maps:?}"
        );
        let before = fake.seen().len();

        let off = agent(false);
        let _ = off.join_network().await;
        assert!(off.port_mapping_ready().await.is_none());
        tokio::time::sleep(crate::portmap::PROBE_BUDGET + Duration::from_millis(500)).await;
        off.close().await;
        let after = fake.seen();
        assert_eq!(
            after.len(),
            before,
            "port_mapping = false, yet the gateway got {:?}",
            &after[before..]
        );
    }
}
