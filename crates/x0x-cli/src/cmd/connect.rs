//! `x0x connect PEER`: connect, echo data, ping across path changes.
//!
//! With `--json`, one line per path (the first, then each change):
//! `{"event":"path","path":"direct"|"relayed","t_ms":…,"via":…,"transport":…}`,
//! then the summary: `{"peer_id","path","rtt_ms","bytes","connect_ms","via",
//! "pings_ok","reconnects","path_changes","transport"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use x0x::{AgentError, ConnectOptions, PathKind, PathPolicy, PeerConnection, PeerId, Transport};

use crate::net::{self, NetArgs, ms};

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The peer id to connect to (64 hex characters).
    peer: PeerId,
    #[command(flatten)]
    net: NetArgs,
    /// Bytes to send (and read back).
    #[arg(long, default_value_t = 65536)]
    bytes: usize,
    /// How long the handshake may take (on the allowed paths).
    #[arg(long, default_value_t = 3000)]
    direct_timeout_ms: u64,
    /// Never use a relay.
    #[arg(long, conflicts_with = "relay_only")]
    direct_only: bool,
    /// Never go direct: stay on a relay.
    #[arg(long)]
    relay_only: bool,
    /// After the transfer, exchange this many pings over the same
    /// connection (across path changes; a new handshake only if the
    /// connection itself breaks) and report how many succeeded.
    #[arg(long, default_value_t = 0)]
    pings: u32,
    #[arg(long, default_value_t = 500)]
    ping_interval_ms: u64,
    /// Before sending data, wait up to this long for a connection that
    /// started relayed to move to a direct path (when direct is allowed).
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
}

pub async fn run(args: ConnectArgs) -> Result<(), AgentError> {
    let net = &args.net;
    let (agent, _) = net::join(net).await?;
    let policy = if args.relay_only {
        PathPolicy::RelayOnly
    } else if args.direct_only {
        PathPolicy::DirectOnly
    } else {
        PathPolicy::Any
    };
    // Relayed connections need the relay round trips; direct-only ones the timeout given.
    let timeout = match policy {
        PathPolicy::DirectOnly => Duration::from_millis(args.direct_timeout_ms),
        _ => Duration::from_millis(args.direct_timeout_ms).max(Duration::from_secs(10)),
    };
    let opts = ConnectOptions::default().paths(policy).timeout(timeout);
    net::progress(net, &format!("connecting to {} ({policy:?})", args.peer));
    let started = Instant::now();
    let mut pc = agent.connect_with(args.peer, opts).await?;
    let connect_time = started.elapsed();
    let changes = Arc::new(AtomicU32::new(0));
    let report = tokio::spawn(report_paths(pc.clone(), started, net.json, changes.clone()));
    // Measure on the path the connection settles on: a relayed start
    // usually moves to direct within a few round trips.
    if policy == PathPolicy::Any && pc.path() == PathKind::Relayed {
        let until = Instant::now() + Duration::from_millis(args.settle_ms);
        while pc.path() == PathKind::Relayed && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let payload: Vec<u8> = (0..args.bytes).map(|i| (i % 251) as u8).collect();
    let echoed = echo(pc.connection(), &payload).await?;
    if echoed != payload {
        return Err(AgentError::Transfer(
            "the echo differs from what was sent".into(),
        ));
    }
    let (mut pings_ok, mut reconnects) = (0u32, 0u32);
    for _ in 0..args.pings {
        tokio::time::sleep(Duration::from_millis(args.ping_interval_ms)).await;
        let ok = tokio::time::timeout(Duration::from_secs(3), echo(pc.connection(), b"ping"))
            .await
            .is_ok_and(|r| r.is_ok_and(|e| e == b"ping"));
        if ok {
            pings_ok += 1;
        } else if pc.connection().close_reason().is_some()
            && let Ok(again) = agent.connect_with(args.peer, opts).await
        {
            // Only a broken connection is replaced; a slow ping is not.
            pc = again;
            reconnects += 1;
        }
    }
    // Let the reporter print the last change before the summary.
    tokio::time::sleep(Duration::from_millis(20)).await;
    report.abort();
    summary(
        &pc,
        &args,
        connect_time,
        pings_ok,
        reconnects,
        changes.load(Ordering::Relaxed),
    );
    agent.close().await;
    Ok(())
}

/// One path of the connection: kind, relaying node, direct address, transport.
type Path = (
    PathKind,
    Option<PeerId>,
    Option<std::net::SocketAddr>,
    Transport,
);

fn path_line((path, via, addr, transport): Path, t: Duration, json: bool) {
    if json {
        println!(
            "{}",
            json!({"event": "path", "path": path, "t_ms": ms(t), "via": via.map(|v| v.to_string()), "addr": addr, "transport": transport})
        );
    } else {
        eprintln!(
            "x0x: path {path:?}{} over {transport:?} at {:.1} ms",
            via.map(|v| format!(" via {}", v.short()))
                .unwrap_or_default(),
            ms(t)
        );
    }
}

/// The connection's path now.
fn current(pc: &PeerConnection) -> Path {
    let addr = pc
        .paths()
        .into_iter()
        .find(|p| p.selected && p.kind == PathKind::Direct)
        .map(|p| p.addr);
    (pc.path(), pc.via(), addr, pc.transport())
}

/// Print the first path, then every change, until aborted.
async fn report_paths(pc: PeerConnection, started: Instant, json: bool, changes: Arc<AtomicU32>) {
    let mut events = pc.path_events();
    let mut last = current(&pc);
    path_line(last, started.elapsed(), json);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        // Path events, and a look every 200 ms for a change the events do
        // not carry (the node link moving between TCP and UDP).
        let next = tokio::select! {
            e = events.next() => match e {
                Some(e) => (e.path, e.via, e.addr, e.transport),
                None => break,
            },
            _ = tick.tick() => current(&pc),
        };
        if next == last {
            continue;
        }
        last = next;
        changes.fetch_add(1, Ordering::Relaxed);
        path_line(next, started.elapsed(), json);
    }
}

fn summary(
    pc: &PeerConnection,
    args: &ConnectArgs,
    took: Duration,
    pings_ok: u32,
    reconnects: u32,
    path_changes: u32,
) {
    let via = pc.via().map(|v| v.to_string());
    if args.net.json {
        println!(
            "{}",
            json!({
                "peer_id": pc.peer_id().to_string(),
                "path": pc.path(),
                "rtt_ms": ms(pc.rtt()),
                "bytes": args.bytes,
                "connect_ms": ms(took),
                "via": via,
                "pings_ok": pings_ok,
                "reconnects": reconnects,
                "path_changes": path_changes,
                "transport": pc.transport(),
                "time_to_direct_ms": pc.time_to_direct().map(ms),
            })
        );
    } else {
        println!(
            "connected to {} {:?}{} in {:.1} ms, rtt {:.1} ms, echoed {} bytes, {} path change(s)",
            pc.peer_id(),
            pc.path(),
            via.map(|v| format!(" via {v}")).unwrap_or_default(),
            ms(took),
            ms(pc.rtt()),
            args.bytes,
            path_changes,
        );
    }
}

async fn echo(conn: &x0x::quinn::Connection, payload: &[u8]) -> Result<Vec<u8>, AgentError> {
    let err = |e: &dyn std::fmt::Display| AgentError::Transfer(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await.map_err(|e| err(&e))?;
    send.finish().map_err(|e| err(&e))?;
    recv.read_to_end(64 << 20).await.map_err(|e| err(&e))
}
