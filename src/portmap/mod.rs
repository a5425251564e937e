//! Port mapping: ask the home router to forward a public UDP port to the
//! agent's socket, so that peers reach it directly even through a NAT
//! that gives every destination a new port (where hole punching fails).
//!
//! The router asked is the default IPv4 gateway (`/proc/net/route`; on
//! other systems none, so nothing is sent). The probe tries, each with a
//! short timeout and all within [`PROBE_BUDGET`]:
//!
//! 1. **PCP** (RFC 6887) and 2. **NAT-PMP** (RFC 6886), UDP to the gateway's
//!    port 5351, through `crab_nat` (NAT-PMP is skipped when nothing
//!    listens there);
//! 3. **UPnP IGD**: SSDP discovery from our LAN address, then
//!    AddPortMapping, through `igd-next` (only an answer from the default
//!    gateway itself is used).
//!
//! It requests [`LIFETIME`], renews at half the granted lifetime (the
//! external address may change: the new one is published), probes again
//! every [`REPROBE`] while there is no mapping, and deletes the mapping
//! when stopped.

#[cfg(test)]
pub(crate) mod fake;
mod gateway;
mod pmp;
#[cfg(test)]
mod tests;
mod upnp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The lifetime requested for a mapping (RFC 6886's recommendation).
pub(crate) const LIFETIME: Duration = Duration::from_secs(7200);
/// The whole probe (all three protocols) takes at most this long.
pub(crate) const PROBE_BUDGET: Duration = Duration::from_secs(2);
/// With no mapping, probe again this often (a router may come up later).
pub(crate) const REPROBE: Duration = Duration::from_secs(300);
/// How long a removal may take when the agent closes.
pub(crate) const REMOVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Per-protocol limits within the probe.
const PCP_TIMEOUT: Duration = Duration::from_millis(650);
const NATPMP_TIMEOUT: Duration = Duration::from_millis(650);

/// How a router was asked to forward a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum PortMapProtocol {
    /// Port Control Protocol (RFC 6887).
    #[serde(rename = "pcp")]
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    #[serde(rename = "natpmp")]
    NatPmp,
    /// UPnP Internet Gateway Device.
    #[serde(rename = "upnp")]
    Upnp,
}

impl PortMapProtocol {
    /// `"pcp"`, `"natpmp"` or `"upnp"` (as `x0x netcheck --json` prints it).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pcp => "pcp",
            Self::NatPmp => "natpmp",
            Self::Upnp => "upnp",
        }
    }
}

impl std::fmt::Display for PortMapProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port the agent's router forwards to the agent's UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortMapping {
    pub protocol: PortMapProtocol,
    /// The public address the router forwards to this agent.
    pub external: SocketAddr,
    /// The router (default gateway) holding the mapping.
    pub gateway: Ipv4Addr,
    /// The agent's address and port the router forwards to.
    pub internal: SocketAddrV4,
    /// When the router drops it unless renewed (the agent renews it at
    /// half its lifetime).
    pub expires: Instant,
}

/// The router to ask: its address, and where SSDP searches go (the UPnP
/// multicast group, or in tests a unicast address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gateway {
    pub ip: Ipv4Addr,
    pub ssdp: SocketAddr,
}

impl Gateway {
    /// The standard SSDP multicast group and port.
    pub const SSDP: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900));

    pub fn at(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            ssdp: Self::SSDP,
        }
    }
}

/// Who asks whom for what: the gateway, and our LAN address with the
/// socket's port (the internal side of the mapping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub gateway: Gateway,
    pub local: SocketAddrV4,
}

impl Target {
    /// The target for a socket bound to `bound`: the default gateway (or
    /// `gateway`, when given), and our IPv4 address toward it. `None` when
    /// there is no gateway, or the socket is bound to a loopback or an IPv6
    /// address (port mapping here is IPv4 only).
    pub fn find(bound: SocketAddr, gateway: Option<Gateway>) -> Option<Self> {
        let explicit = gateway.is_some();
        let gateway = gateway.or_else(|| gateway::default_gateway().map(Gateway::at))?;
        let ip = match bound.ip().to_canonical() {
            // Nothing outside reaches a loopback socket (tests name a
            // loopback gateway explicitly).
            IpAddr::V4(ip) if ip.is_loopback() && !explicit => return None,
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            IpAddr::V6(ip) if !ip.is_unspecified() => return None,
            _ => gateway::local_ip_toward(gateway.ip)?,
        };
        Some(Self {
            gateway,
            local: SocketAddrV4::new(ip, bound.port()),
        })
    }
}

/// A mapping held, with what it takes to renew and delete it.
struct Held {
    lease: Lease,
    public: PortMapping,
}

enum Lease {
    Pmp(crab_nat::PortMapping),
    Upnp(upnp::Lease),
}

impl Held {
    fn new(target: &Target, protocol: PortMapProtocol, lease: Lease, external: SocketAddr) -> Self {
        let lifetime = match &lease {
            Lease::Pmp(m) => Duration::from_secs(m.lifetime().into()),
            Lease::Upnp(l) => l.lifetime(),
        };
        Self {
            lease,
            public: PortMapping {
                protocol,
                external,
                gateway: target.gateway.ip,
                internal: target.local,
                expires: Instant::now() + lifetime,
            },
        }
    }

    /// When to renew: half the lifetime left (at least a second from now).
    fn renew_at(&self, now: Instant) -> Instant {
        now + (self.public.expires.saturating_duration_since(now) / 2).max(Duration::from_secs(1))
    }

    async fn renew(&mut self, target: &Target) -> Result<(), String> {
        let external = match &mut self.lease {
            Lease::Pmp(m) => {
                let external = pmp::renew(m, self.public.external).await?;
                self.public.expires = Instant::now() + Duration::from_secs(m.lifetime().into());
                external
            }
            Lease::Upnp(l) => {
                let old = l.clone();
                let renewed = tokio::time::timeout(
                    PROBE_BUDGET,
                    tokio::task::spawn_blocking(move || upnp::renew(&old)),
                )
                .await
                .map_err(|_| "UPnP renewal timed out".to_string())?
                .map_err(|e| e.to_string())??;
                self.public.expires = Instant::now() + renewed.lifetime();
                let external = renewed.external;
                *l = renewed;
                external
            }
        };
        if external != self.public.external {
            debug!(old = %self.public.external, new = %external, gateway = %target.gateway.ip, "mapped address changed");
        }
        self.public.external = external;
        Ok(())
    }

    async fn remove(self) {
        let result = match self.lease {
            Lease::Pmp(m) => tokio::time::timeout(REMOVE_TIMEOUT, pmp::remove(m))
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
            Lease::Upnp(l) => tokio::time::timeout(
                REMOVE_TIMEOUT,
                tokio::task::spawn_blocking(move || upnp::remove(&l)),
            )
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|r| r),
        };
        match result {
            Ok(()) => debug!(external = %self.public.external, "port mapping removed"),
            Err(e) => debug!(external = %self.public.external, "port mapping not removed: {e}"),
        }
    }
}

/// Try PCP, NAT-PMP, then UPnP, within [`PROBE_BUDGET`].
async fn probe(target: &Target) -> Option<Held> {
    let deadline = Instant::now() + PROBE_BUDGET;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut try_natpmp = true;
    match tokio::time::timeout(PCP_TIMEOUT.min(left()), pmp::pcp(target)).await {
        Ok(Ok((m, external))) => {
            return Some(Held::new(
                target,
                PortMapProtocol::Pcp,
                Lease::Pmp(m),
                external,
            ));
        }
        Ok(Err(pmp::Failed::NatPmpOnly)) => {}
        Ok(Err(pmp::Failed::Refused)) => {
            debug!(gateway = %target.gateway.ip, "PCP: nothing listens on port 5351");
            try_natpmp = false;
        }
        Ok(Err(pmp::Failed::Other(e))) => debug!(gateway = %target.gateway.ip, "PCP: {e}"),
        Err(_) => debug!(gateway = %target.gateway.ip, "PCP: no answer"),
    }
    if try_natpmp {
        match tokio::time::timeout(NATPMP_TIMEOUT.min(left()), pmp::natpmp(target)).await {
            Ok(Ok((m, external))) => {
                return Some(Held::new(
                    target,
                    PortMapProtocol::NatPmp,
                    Lease::Pmp(m),
                    external,
                ));
            }
            Ok(Err(e)) => debug!(gateway = %target.gateway.ip, "NAT-PMP: {e:?}"),
            Err(_) => debug!(gateway = %target.gateway.ip, "NAT-PMP: no answer"),
        }
    }
    let abandon = upnp::Abandon::default();
    let job = {
        let (target, abandon) = (*target, abandon.clone());
        tokio::task::spawn_blocking(move || upnp::map(&target, deadline, &abandon))
    };
    match tokio::time::timeout(left(), job).await {
        Ok(Ok(Ok(lease))) => {
            let external = lease.external;
            Some(Held::new(
                target,
                PortMapProtocol::Upnp,
                Lease::Upnp(lease),
                external,
            ))
        }
        Ok(Ok(Err(e))) => {
            debug!(gateway = %target.gateway.ip, "UPnP: {e}");
            None
        }
        Ok(Err(e)) => {
            debug!("UPnP task: {e}");
            None
        }
        Err(_) => {
            abandon.set();
            debug!(gateway = %target.gateway.ip, "UPnP: out of time");
            None
        }
    }
}

/// Where the port mapper is, as it publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not started (port mapping is off, or the agent has not joined yet).
    Idle,
    /// The first probe is under way.
    Probing,
    /// The first probe finished: the mapping held now, if any.
    Done(Option<PortMapping>),
}

impl Status {
    pub fn mapping(&self) -> Option<PortMapping> {
        match self {
            Status::Done(m) => m.clone(),
            _ => None,
        }
    }
}

/// Map the port of the socket bound to `bound` and keep the mapping until
/// `stop`, publishing every change on `status`; then delete it.
pub(crate) async fn run(
    bound: SocketAddr,
    gateway: Option<Gateway>,
    status: watch::Sender<Status>,
    stop: CancellationToken,
) {
    let Some(target) = Target::find(bound, gateway) else {
        debug!(%bound, "no IPv4 default gateway: no port mapping");
        status.send_replace(Status::Done(None));
        return;
    };
    status.send_replace(Status::Probing);
    let mut held: Option<Held> = None;
    let mut renew_failures = 0u32;
    loop {
        if held.is_none() {
            held = tokio::select! {
                _ = stop.cancelled() => break,
                h = probe(&target) => h,
            };
            match &held {
                Some(h) => {
                    debug!(protocol = %h.public.protocol, external = %h.public.external, "port mapped")
                }
                None => debug!(gateway = %target.gateway.ip, "no port mapping"),
            }
            status.send_replace(Status::Done(held.as_ref().map(|h| h.public.clone())));
        }
        let now = Instant::now();
        let wake = match &held {
            Some(h) if renew_failures == 0 => h.renew_at(now),
            // Retry a failed renewal soon, while the mapping still lives.
            Some(h) => (now + Duration::from_secs(5)).min(h.renew_at(now)),
            None => now + REPROBE,
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let Some(h) = held.as_mut() else { continue };
        let renewed = tokio::select! {
            _ = stop.cancelled() => break,
            r = h.renew(&target) => r,
        };
        match renewed {
            Ok(()) => {
                renew_failures = 0;
                let public = h.public.clone();
                status.send_if_modified(|s| {
                    let changed = s.mapping().map(|m| m.external) != Some(public.external);
                    *s = Status::Done(Some(public));
                    changed
                });
            }
            Err(e) => {
                renew_failures += 1;
                debug!(external = %h.public.external, "renewal failed: {e}");
                if Instant::now() + Duration::from_secs(1) >= h.public.expires
                    || renew_failures >= 3
                {
                    // Gone: probe again from the start (any protocol).
                    held = None;
                    renew_failures = 0;
                    status.send_replace(Status::Done(None));
                }
            }
        }
    }
    if let Some(h) = held.take() {
        h.remove().await;
    }
    status.send_replace(Status::Done(None));
}
