//! `x0x netcheck`: how this machine sees the network.

use std::net::SocketAddr;

use serde_json::json;
use x0x::AgentError;

use crate::net::{self, NetArgs, ms};

pub async fn run(net: NetArgs) -> Result<(), AgentError> {
    let (agent, report) = net::join(&net).await?;
    let observed: Vec<SocketAddr> = report.connected.iter().filter_map(|l| l.observed).collect();
    let mapping = match observed.as_slice() {
        [] | [_] => "unknown",
        [first, rest @ ..] if rest.iter().all(|a| a == first) => "endpoint-independent",
        _ => "endpoint-dependent",
    };
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
            .map(|l| json!({"addr": l.addr, "peer_id": l.peer_id.to_string(), "observed": l.observed, "rtt_ms": ms(l.rtt)}))
            .collect();
        let mut out = json!({"public_addr": observed.first(), "mapping": mapping, "nodes": nodes, "unreachable": unreachable});
        out["portmap"] = json!(portmap_kind);
        println!("{out}");
    } else {
        println!(
            "public address: {}",
            observed.first().map_or("unknown".into(), |a| a.to_string())
        );
        println!("NAT mapping:    {mapping}");
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
        for l in &report.connected {
            let seen = l.observed.map_or("-".into(), |a| a.to_string());
            println!(
                "  {:<24} rtt {:>7.1} ms  sees us as {seen}",
                l.addr.to_string(),
                ms(l.rtt)
            );
        }
        for f in &unreachable {
            println!("  unreachable: {f}");
        }
    }
    agent.close().await;
    Ok(())
}
