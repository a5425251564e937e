//! `x0x netcheck`: how this machine sees the network.
//!
//! `--json` prints one object with: `udp` (a node answered over UDP),
//! `tcp_relay` (a TLS/TCP relay session to a node opened), `ipv4` / `ipv6`
//! (public addresses nodes saw or vouched for), `public_addr` (the first
//! observed), `mapping` (`endpoint-independent` when every node saw the same
//! address, `endpoint-dependent` when they differ, `unknown` with fewer than
//! two), `hairpin` (a packet to our own public address came back: bool, or
//! null without a public address), `preferred_relay` (the node with the
//! lowest RTT), `nodes` (per node: addr, peer_id, observed, rtt_ms,
//! transport), `unreachable` and `portmap` (the router's port mapping the
//! agent got: `pcp`, `natpmp`, `upnp` or `none`).

use std::net::SocketAddr;

use serde_json::json;
use x0x::policy;
use x0x::{AgentError, Transport};

use crate::net::{self, NetArgs, ms};

pub async fn run(net: NetArgs) -> Result<(), AgentError> {
    let (agent, report) = net::join(&net).await?;
    let observed: Vec<SocketAddr> = report.connected.iter().filter_map(|l| l.observed).collect();
    let mapping = match observed.as_slice() {
        [] | [_] => "unknown",
        [first, rest @ ..] if rest.iter().all(|a| a == first) => "endpoint-independent",
        _ => "endpoint-dependent",
    };
    let udp = report
        .connected
        .iter()
        .any(|l| l.transport == Transport::Udp);
    let tcp = agent.tcp_relay_check().await;
    let hairpin = if udp { agent.hairpin().await } else { None };
    let public: Vec<SocketAddr> = agent
        .candidate_addrs()
        .into_iter()
        .chain(observed.iter().copied())
        .filter(|a| !policy::is_local_scope(a))
        .collect();
    let ipv4 = public.iter().find(|a| a.is_ipv4()).map(|a| a.ip());
    let ipv6 = public.iter().find(|a| a.is_ipv6()).map(|a| a.ip());
    let preferred = report.connected.iter().min_by_key(|l| l.rtt);
    let unreachable: Vec<String> = report
        .failed
        .iter()
        .map(|f| f.to_string())
        .chain(report.pending.iter().map(|p| format!("{p}: no answer yet")))
        .collect();
    // The router's port mapping: the probe started with the join and
    // takes at most about 2 s.
    let portmap = agent.port_mapping_ready().await;
    let portmap_kind = portmap.as_ref().map_or("none", |m| m.protocol.as_str());
    if net.json {
        let nodes: Vec<_> = report
            .connected
            .iter()
            .map(|l| json!({"addr": l.addr, "peer_id": l.peer_id.to_string(), "observed": l.observed, "rtt_ms": ms(l.rtt), "transport": l.transport}))
            .collect();
        println!(
            "{}",
            json!({
                "udp": udp,
                "tcp_relay": tcp.is_ok(),
                "ipv4": ipv4,
                "ipv6": ipv6,
                "public_addr": observed.first(),
                "mapping": mapping,
                "hairpin": hairpin,
                "preferred_relay": preferred.map(|l| json!({"peer_id": l.peer_id.to_string(), "addr": l.addr, "rtt_ms": ms(l.rtt)})),
                "nodes": nodes,
                "unreachable": unreachable,
                "portmap": portmap_kind,
            })
        );
    } else {
        println!(
            "UDP:            {}",
            if udp {
                "works (QUIC to the nodes)"
            } else {
                "blocked: joined over the TLS/TCP relay"
            }
        );
        match &tcp {
            Ok((node, took)) => println!(
                "TCP relay:      reachable ({} in {:.0} ms), the fallback if UDP is blocked",
                node.short(),
                ms(*took)
            ),
            Err(e) => println!("TCP relay:      not reachable ({e})"),
        }
        println!(
            "public IPv4:    {}",
            ipv4.map_or("none seen".into(), |a| a.to_string())
        );
        println!(
            "public IPv6:    {}",
            ipv6.map_or("none seen".into(), |a| a.to_string())
        );
        println!(
            "NAT mapping:    {mapping} ({})",
            match mapping {
                "endpoint-independent" =>
                    "one public port for every destination: direct connections usually work",
                "endpoint-dependent" =>
                    "a new public port per destination: expect relayed connections",
                _ => "fewer than two nodes saw this agent",
            }
        );
        println!(
            "hairpin:        {}",
            match hairpin {
                Some(true) => "yes: peers behind the same NAT can use the public address",
                Some(false) => "no: peers behind the same NAT need LAN addresses",
                None => "unknown (no public address)",
            }
        );
        match &portmap {
            Some(m) => println!(
                "port mapping:   {portmap_kind} (the router forwards {} to this agent: peers can connect directly)",
                m.external
            ),
            None => println!(
                "port mapping:   none (no PCP, NAT-PMP or UPnP answer from the router{})",
                if net.no_port_mapping {
                    "; --no-port-mapping"
                } else {
                    ""
                }
            ),
        }
        if let Some(l) = preferred {
            println!(
                "preferred relay: {} at {} (rtt {:.1} ms)",
                l.peer_id.short(),
                l.addr,
                ms(l.rtt)
            );
        }
        for l in &report.connected {
            let seen = l.observed.map_or("-".into(), |a| a.to_string());
            println!(
                "  {:<24} rtt {:>7.1} ms  over {:?}  sees us as {seen}",
                l.addr.to_string(),
                ms(l.rtt),
                l.transport
            );
        }
        for f in &unreachable {
            println!("  unreachable: {f}");
        }
    }
    agent.close().await;
    Ok(())
}
