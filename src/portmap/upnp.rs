//! UPnP IGD (`WANIPConnection` / `WANPPPConnection`), through `igd-next`'s
//! blocking client on Tokio's blocking pool: its async client needs hyper,
//! which the SDK does not take in. Every call is bounded by the caller's
//! deadline; a call still running past it finishes on its pool thread and
//! undoes a mapping it made too late (see [`Abandon`]).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use igd_next::{AddAnyPortError, AddPortError, Gateway, PortMappingProtocol, SearchOptions};

use super::{LIFETIME, Target};

const DESCRIPTION: &str = "x0x agent";

/// A UPnP mapping and the gateway that holds it.
#[derive(Debug, Clone)]
pub struct Lease {
    gateway: Arc<Gateway>,
    local: SocketAddrV4,
    pub external: SocketAddr,
    /// Requested lease in seconds (0: the gateway supports only permanent ones).
    lease: u32,
}

impl Lease {
    /// How long the gateway keeps it unless renewed.
    pub fn lifetime(&self) -> Duration {
        match self.lease {
            0 => LIFETIME,
            s => Duration::from_secs(s.into()),
        }
    }
}

/// Set once the caller stopped waiting: a mapping made after that is
/// removed again at once, so none is left behind on the router.
#[derive(Debug, Clone, Default)]
pub struct Abandon(Arc<AtomicBool>);

impl Abandon {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Discover the gateway (SSDP from our LAN address; only an answer from
/// the default gateway itself counts), then map our port, external port =
/// internal port if free, else any. Blocking: run on the blocking pool.
pub fn map(target: &Target, deadline: Instant, abandon: &Abandon) -> Result<Lease, String> {
    let search = remaining(deadline)?;
    let mut opts = SearchOptions::default();
    opts.bind_addr = SocketAddr::new(IpAddr::V4(*target.local.ip()), 0);
    opts.broadcast_address = target.gateway.ssdp;
    opts.timeout = Some(search);
    opts.single_search_timeout = Some(search);
    let gateway = igd_next::search_gateway(opts).map_err(|e| format!("no UPnP gateway: {e}"))?;
    if gateway.addr.ip() != IpAddr::V4(target.gateway.ip) {
        return Err(format!(
            "UPnP answer from {}, not the default gateway {}",
            gateway.addr, target.gateway.ip
        ));
    }
    remaining(deadline)?;
    let lease = add(
        Arc::new(gateway),
        target.local,
        target.local.port(),
        LIFETIME,
    )?;
    if abandon.is_set() {
        remove(&lease).ok();
        return Err("mapped after the deadline; removed".into());
    }
    Ok(lease)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(50) {
        return Err("out of time".into());
    }
    Ok(left)
}

/// AddPortMapping for `local` at `external_port` (any port if that one is
/// taken), then GetExternalIPAddress.
fn add(
    gateway: Arc<Gateway>,
    local: SocketAddrV4,
    external_port: u16,
    lifetime: Duration,
) -> Result<Lease, String> {
    let proto = PortMappingProtocol::UDP;
    let local_sa = SocketAddr::V4(local);
    let mut lease = lifetime.as_secs().min(u32::MAX.into()) as u32;
    let mut port = external_port;
    let mut result = gateway.add_port(proto, port, local_sa, lease, DESCRIPTION);
    if matches!(result, Err(AddPortError::OnlyPermanentLeasesSupported)) {
        lease = 0;
        result = gateway.add_port(proto, port, local_sa, lease, DESCRIPTION);
    }
    match result {
        Ok(()) => {}
        Err(AddPortError::PortInUse) => {
            port = gateway
                .add_any_port(proto, local_sa, lease, DESCRIPTION)
                .map_err(|e: AddAnyPortError| format!("AddAnyPortMapping: {e}"))?;
        }
        Err(e) => return Err(format!("AddPortMapping: {e}")),
    }
    let ip = match gateway.get_external_ip() {
        Ok(ip) => ip,
        Err(e) => {
            gateway.remove_port(proto, port).ok();
            return Err(format!("GetExternalIPAddress: {e}"));
        }
    };
    let external = x0x_proto::canonical(SocketAddr::new(ip, port));
    let lease_out = Lease {
        gateway,
        local,
        external,
        lease,
    };
    if !x0x_proto::policy::is_dialable(&external) {
        remove(&lease_out).ok();
        return Err(format!("unusable external address {external}"));
    }
    Ok(lease_out)
}

/// Renew: the same AddPortMapping again (a gateway extends an existing
/// lease); the external address may change. Blocking.
pub fn renew(lease: &Lease) -> Result<Lease, String> {
    add(
        lease.gateway.clone(),
        lease.local,
        lease.external.port(),
        lease.lifetime(),
    )
}

/// DeletePortMapping. Blocking.
pub fn remove(lease: &Lease) -> Result<(), String> {
    lease
        .gateway
        .remove_port(PortMappingProtocol::UDP, lease.external.port())
        .map_err(|e| e.to_string())
}
