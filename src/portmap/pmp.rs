//! PCP (RFC 6887) and NAT-PMP (RFC 6886), through `crab_nat`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig};

use super::{LIFETIME, Target};

/// Retransmissions: one retry after 200 ms, then 400 ms (RFC 6887 starts
/// at 3 s; a router on the LAN answers in milliseconds).
const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(200),
    max_retries: 1,
    max_retry_timeout: Some(Duration::from_millis(400)),
};

fn options(external_port: NonZeroU16) -> PortMappingOptions {
    PortMappingOptions {
        external_port: Some(external_port),
        lifetime_seconds: Some(LIFETIME.as_secs() as u32),
        timeout_config: Some(TIMEOUTS),
    }
}

/// Why a PCP or NAT-PMP request got no mapping.
#[derive(Debug)]
pub enum Failed {
    /// Nothing listens on the gateway's port 5351 (ICMP port unreachable).
    Refused,
    /// The gateway speaks only NAT-PMP.
    NatPmpOnly,
    Other(String),
}

fn classify_socket(e: &io::Error) -> Failed {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        Failed::Refused
    } else {
        Failed::Other(e.to_string())
    }
}

/// Map `target.local`'s port with PCP; returns the mapping and its
/// external address.
pub async fn pcp(target: &Target) -> Result<(crab_nat::PortMapping, SocketAddr), Failed> {
    let port = internal_port(target)?;
    let base = crab_nat::pcp::BaseMapRequest::new(
        target.gateway.ip.into(),
        IpAddr::V4(*target.local.ip()),
        InternetProtocol::Udp,
        port,
    );
    let mapping = crab_nat::pcp::port_mapping(base, None, None, options(port))
        .await
        .map_err(|e| match e {
            crab_nat::pcp::Failure::Socket(e) => classify_socket(&e),
            crab_nat::pcp::Failure::UnsupportedVersion(crab_nat::VersionCode::NatPmp) => {
                Failed::NatPmpOnly
            }
            e => Failed::Other(e.to_string()),
        })?;
    let external =
        external_of(&mapping, None).ok_or_else(|| Failed::Other("no external address".into()))?;
    Ok((mapping, external))
}

/// Map `target.local`'s port with NAT-PMP; asks the gateway's external
/// address too (a NAT-PMP mapping reply carries only the port).
pub async fn natpmp(target: &Target) -> Result<(crab_nat::PortMapping, SocketAddr), Failed> {
    let port = internal_port(target)?;
    let gateway = target.gateway.ip.into();
    let to_failed = |e: crab_nat::natpmp::Failure| match e {
        crab_nat::natpmp::Failure::Socket(e) => classify_socket(&e),
        e => Failed::Other(e.to_string()),
    };
    let ip = crab_nat::natpmp::external_address(gateway, Some(TIMEOUTS))
        .await
        .map_err(to_failed)?;
    let mapping =
        crab_nat::natpmp::port_mapping(gateway, InternetProtocol::Udp, port, options(port))
            .await
            .map_err(to_failed)?;
    let external = external_of(&mapping, Some(ip.into()))
        .ok_or_else(|| Failed::Other("no external address".into()))?;
    Ok((mapping, external))
}

fn internal_port(target: &Target) -> Result<NonZeroU16, Failed> {
    NonZeroU16::new(target.local.port()).ok_or_else(|| Failed::Other("local port 0".into()))
}

/// The external address of `mapping`: PCP replies carry it; for NAT-PMP
/// it is `natpmp_ip` (asked separately).
pub fn external_of(
    mapping: &crab_nat::PortMapping,
    natpmp_ip: Option<IpAddr>,
) -> Option<SocketAddr> {
    let ip = match mapping.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => external_ip,
        PortMappingType::NatPmp => natpmp_ip?,
    };
    let addr = x0x_proto::canonical(SocketAddr::new(ip, mapping.external_port().get()));
    x0x_proto::policy::is_dialable(&addr).then_some(addr)
}

/// Renew `mapping` (same protocol, same external port if the gateway
/// still grants it); returns its external address now.
pub async fn renew(
    mapping: &mut crab_nat::PortMapping,
    last: SocketAddr,
) -> Result<SocketAddr, String> {
    mapping.renew().await.map_err(|e| e.to_string())?;
    let natpmp_ip = match mapping.mapping_type() {
        PortMappingType::NatPmp => Some(
            crab_nat::natpmp::external_address(mapping.gateway(), Some(TIMEOUTS))
                .await
                .map(IpAddr::V4)
                .unwrap_or(last.ip()),
        ),
        PortMappingType::Pcp { .. } => None,
    };
    external_of(mapping, natpmp_ip).ok_or_else(|| "no external address".into())
}

/// Ask the gateway to delete `mapping`.
pub async fn remove(mapping: crab_nat::PortMapping) -> Result<(), String> {
    mapping.try_drop().await.map_err(|(e, _)| e.to_string())
}
