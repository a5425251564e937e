//! Finding the router to ask: the default IPv4 gateway, and our own
//! address toward it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

/// `RTF_UP` and `RTF_GATEWAY` in `/proc/net/route`'s `Flags` column.
const RTF_UP: u32 = 0x0001;
const RTF_GATEWAY: u32 = 0x0002;

/// The default IPv4 gateway of this host, if it has one (Linux only: read
/// from `/proc/net/route`; elsewhere `None`, so no port mapping is tried).
pub fn default_gateway() -> Option<Ipv4Addr> {
    if cfg!(target_os = "linux") {
        parse_route_table(&std::fs::read_to_string("/proc/net/route").ok()?)
    } else {
        None
    }
}

/// The gateway of the lowest-metric default route (destination and mask
/// 0.0.0.0, up, with a gateway) in the text of `/proc/net/route`.
///
/// The kernel prints each address as the hexadecimal value of its
/// in-memory (network order) 32 bits read as a native integer.
pub fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (dest, gw, flags, metric, mask) = (
        col("Destination")?,
        col("Gateway")?,
        col("Flags")?,
        col("Metric")?,
        col("Mask")?,
    );
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let get = |i: usize| f.get(i).copied().and_then(hex);
            let fl = get(flags)?;
            if get(dest)? != 0
                || get(mask)? != 0
                || fl & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY
            {
                return None;
            }
            let ip = Ipv4Addr::from(get(gw)?.to_ne_bytes());
            let metric: u32 = f.get(metric)?.parse().ok()?;
            (!ip.is_unspecified()).then_some((metric, ip))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, ip)| ip)
}

/// The address this host sends from toward `gateway` (asks the routing
/// table through a connected UDP socket; sends nothing).
pub fn local_ip_toward(gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    let probe = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    probe
        .connect(SocketAddrV4::new(gateway, crab_nat::GATEWAY_PORT))
        .ok()?;
    match probe.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/net/route` as captured on a Debian VM (its trailing padding
    /// left out): one default route via 192.0.2.1 and the on-link route.
    const CAPTURED: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    /// The same format for a host with Wi-Fi and wired links, a VPN's
    /// half-default route and a Docker bridge.
    const ROUTES: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
tun0\t00000000\t00000000\t0001\t0\t0\t50\t00000080\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn the_lowest_metric_default_route_with_a_gateway_wins() {
        assert_eq!(
            parse_route_table(CAPTURED),
            Some(Ipv4Addr::new(192, 0, 2, 1))
        );
        // eth0 (metric 100) beats wlan0 (600); tun0's 0.0.0.0/1 is not a
        // default route and has no gateway.
        assert_eq!(parse_route_table(ROUTES), Some(Ipv4Addr::new(10, 0, 0, 1)));
        let wifi_only: String = ROUTES
            .lines()
            .filter(|l| !l.starts_with("eth0"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            parse_route_table(&wifi_only),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
    }

    #[test]
    fn no_default_route_means_no_gateway() {
        let header = ROUTES.lines().next().unwrap();
        // Only loopback-like and on-link routes; a default route that is
        // down, or has no gateway flag.
        let text = format!(
            "{header}\n\
             eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth1\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth2\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        assert_eq!(parse_route_table(&text), None);
        assert_eq!(parse_route_table(header), None);
        assert_eq!(parse_route_table(""), None);
        assert_eq!(parse_route_table("garbage\nmore garbage"), None);
    }
}
