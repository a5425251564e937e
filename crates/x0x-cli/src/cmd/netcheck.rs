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
    if net.json {
        let nodes: Vec<_> = report
            .connected
            .iter()
            .map(|l| json!({"addr": l.addr, "peer_id": l.peer_id.to_string(), "observed": l.observed, "rtt_ms": ms(l.rtt)}))
            .collect();
        println!(
            "{}",
            json!({"public_addr": observed.first(), "mapping": mapping, "nodes": nodes, "unreachable": unreachable})
        );
    } else {
        println!(
            "public address: {}",
            observed.first().map_or("unknown".into(), |a| a.to_string())
        );
        println!("NAT mapping:    {mapping}");
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
