//! `x0x listen`: wait for agents and echo what they send.

use std::time::Instant;

use serde_json::json;
use x0x::{AgentError, PeerConnection};

use crate::net::{self, NetArgs, ms};

pub async fn run(net: NetArgs) -> Result<(), AgentError> {
    let (agent, report) = net::join(&net).await?;
    if net.json {
        println!(
            "{}",
            json!({"event": "ready", "peer_id": agent.peer_id().to_string(), "observed": report.observed_addr})
        );
    } else {
        println!(
            "listening as {} (seen as {})",
            agent.peer_id(),
            report
                .observed_addr
                .map_or("unknown".into(), |a| a.to_string())
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Transfer(format!("cannot install SIGTERM handler: {e}")))?;
    loop {
        let pc = tokio::select! {
            pc = agent.accept() => match pc { Some(pc) => pc, None => break },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        announce(&pc, net.json);
        serve(pc, net.json);
    }
    agent.close().await;
    Ok(())
}

fn announce(pc: &PeerConnection, json: bool) {
    if json {
        println!(
            "{}",
            json!({"event": "connection", "peer_id": pc.peer_id().to_string(), "path": pc.path(), "via": pc.via().map(|v| v.to_string()), "rtt_ms": ms(pc.rtt())})
        );
    } else {
        println!(
            "connection from {} ({:?}, rtt {:.1} ms)",
            pc.peer_id(),
            pc.path(),
            ms(pc.rtt())
        );
    }
}

/// Echo every stream back, and report path changes, until the connection ends.
fn serve(pc: PeerConnection, json: bool) {
    let accepted = Instant::now();
    let mut events = pc.path_events();
    let peer = pc.peer_id();
    let conn = pc.connection().clone();
    let watch = conn.clone();
    tokio::spawn(async move {
        let report = async {
            while let Some(e) = events.next().await {
                if json {
                    println!(
                        "{}",
                        json!({"event": "path", "peer_id": peer.to_string(), "path": e.path, "t_ms": ms(e.at.saturating_duration_since(accepted)), "via": e.via.map(|v| v.to_string()), "addr": e.addr, "transport": e.transport})
                    );
                } else {
                    println!("{peer}: now {:?} ({:?})", e.path, e.reason);
                }
            }
        };
        tokio::select! { _ = report => {}, _ = watch.closed() => {} }
    });
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                if let Ok(data) = recv.read_to_end(64 << 20).await {
                    let _ = send.write_all(&data).await;
                    let _ = send.finish();
                }
            });
        }
    });
}
