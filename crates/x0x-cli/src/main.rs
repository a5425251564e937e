//! `x0x`: the agent command line, for people and for tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use x0x::agent::{ConnectOptions, PeerConnection};
use x0x::{Agent, AgentError, Identity, NetworkConfig, PeerAddr, PeerId};

/// An x0x agent: find out how this machine sees the network, wait for
/// other agents, or connect to one by its peer id (directly through NATs
/// when possible, otherwise through a bootstrap node's relay, end-to-end
/// encrypted either way).
///
/// Exit codes: 0 success, 1 failure, 2 usage, 69 no bootstrap node reachable.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this agent's peer id.
    Id {
        #[command(flatten)]
        key: KeyArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report the public address bootstrap nodes observe, whether the NAT
    /// mapping is the same toward every node, and the RTT to each.
    Netcheck(NetArgs),
    /// Join and wait for other agents; echo back whatever they send.
    Listen(NetArgs),
    /// Connect to an agent, send data, read the echo, print the path taken.
    Connect {
        /// The peer id to connect to (64 hex characters).
        peer: PeerId,
        #[command(flatten)]
        net: NetArgs,
        /// Bytes to send (and read back).
        #[arg(long, default_value_t = 65536)]
        bytes: usize,
        /// How long to try direct paths before using a relay.
        #[arg(long, default_value_t = 3000)]
        direct_timeout_ms: u64,
        /// Never use a relay.
        #[arg(long, conflicts_with = "relay_only")]
        direct_only: bool,
        /// Skip direct paths and use a relay.
        #[arg(long)]
        relay_only: bool,
        /// After the transfer, exchange this many pings (reconnecting if the
        /// connection breaks) and report how many succeeded.
        #[arg(long, default_value_t = 0)]
        pings: u32,
        #[arg(long, default_value_t = 500)]
        ping_interval_ms: u64,
    },
    /// Look an agent up in the directory.
    Lookup {
        peer: PeerId,
        #[command(flatten)]
        net: NetArgs,
    },
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Agent key (PKCS#8 PEM); created if missing. Without it the agent
    /// uses a new identity each run.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct NetArgs {
    /// A bootstrap node (`ip:port`, `[ipv6]:port` or `host:port`); repeatable.
    /// Default: the public x0x bootstrap nodes.
    #[arg(long = "bootstrap", value_name = "ADDR")]
    bootstrap: Vec<PeerAddr>,
    /// Local UDP address to bind.
    #[arg(long, default_value = "[::]:0")]
    bind: SocketAddr,
    #[command(flatten)]
    key: KeyArgs,
    /// How long to keep trying to reach bootstrap nodes.
    #[arg(long, default_value_t = 10_000)]
    join_timeout_ms: u64,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// Exit code when no bootstrap node can be reached (`EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("x0x: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("x0x: {e}");
            match e {
                AgentError::NoBootstrapReachable { .. } => ExitCode::from(EX_UNAVAILABLE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn identity(key: &KeyArgs) -> Result<Identity, AgentError> {
    match &key.key {
        Some(path) => Ok(Identity::load_or_generate(path)?.0),
        None => Ok(Identity::generate()?),
    }
}

async fn join(net: &NetArgs) -> Result<(Agent, x0x::JoinReport), AgentError> {
    let mut cfg = if net.bootstrap.is_empty() {
        NetworkConfig::default()
    } else {
        NetworkConfig::with_bootstrap_peers(net.bootstrap.clone())
    };
    cfg.bind = net.bind;
    cfg.join_timeout = Duration::from_millis(net.join_timeout_ms);
    progress(
        net,
        &format!(
            "joining through {} bootstrap node(s)…",
            cfg.bootstrap_peers.len()
        ),
    );
    let agent = Agent::builder()
        .network(cfg)
        .identity(identity(&net.key)?)
        .build()
        .await?;
    let report = agent.join_network().await?;
    progress(
        net,
        &format!(
            "joined: {} node(s) reached, {} unreachable",
            report.connected.len(),
            report.failed.len()
        ),
    );
    Ok((agent, report))
}

/// Status for people on stderr (text mode only; JSON output stays clean).
fn progress(net: &NetArgs, line: &str) {
    if !net.json {
        eprintln!("x0x: {line}");
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn run(command: Command) -> Result<(), AgentError> {
    match command {
        Command::Id { key, json } => {
            let id = identity(&key)?.peer_id();
            if json {
                println!("{}", json!({ "peer_id": id.to_string() }));
            } else {
                println!("{id}");
            }
            Ok(())
        }
        Command::Netcheck(net) => netcheck(net).await,
        Command::Listen(net) => listen(net).await,
        Command::Lookup { peer, net } => {
            let (agent, _) = join(&net).await?;
            let record = agent.lookup(peer).await?;
            match &record {
                Some(r) if net.json => println!(
                    "{}",
                    json!({"found": true, "record": {"peer": r.peer.to_string(), "addrs": r.addrs, "home": r.home.to_string()}})
                ),
                Some(r) => println!("{} at {:?} (home node {})", r.peer, r.addrs, r.home),
                None if net.json => println!("{}", json!({"found": false})),
                None => println!("{peer} is not in the directory"),
            }
            agent.close().await;
            record
                .map(|_| ())
                .ok_or_else(|| AgentError::Refused(format!("{peer} not found")))
        }
        Command::Connect {
            peer,
            net,
            bytes,
            direct_timeout_ms,
            direct_only,
            relay_only,
            pings,
            ping_interval_ms,
        } => {
            let (agent, _) = join(&net).await?;
            let opts = ConnectOptions {
                allow_direct: !relay_only,
                allow_relay: !direct_only,
                direct_timeout: Duration::from_millis(direct_timeout_ms),
                ..ConnectOptions::default()
            };
            progress(
                &net,
                &format!(
                    "connecting to {peer}: direct for up to {direct_timeout_ms} ms{}",
                    if opts.allow_relay {
                        ", then through a relay"
                    } else {
                        ""
                    }
                ),
            );
            let started = Instant::now();
            let mut pc = agent.connect_with(peer, opts).await?;
            let connect_time = started.elapsed();
            let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
            let echoed = echo(pc.connection(), &payload).await?;
            if echoed != payload {
                return Err(AgentError::Protocol(
                    "the echo differs from what was sent".into(),
                ));
            }
            let (mut pings_ok, mut reconnects) = (0u32, 0u32);
            for _ in 0..pings {
                tokio::time::sleep(Duration::from_millis(ping_interval_ms)).await;
                let ok =
                    tokio::time::timeout(Duration::from_secs(3), echo(pc.connection(), b"ping"))
                        .await
                        .is_ok_and(|r| r.is_ok_and(|e| e == b"ping"));
                if ok {
                    pings_ok += 1;
                } else if let Ok(again) = agent.connect_with(peer, opts).await {
                    pc = again;
                    reconnects += 1;
                }
            }
            report_connection(&pc, &net, bytes, connect_time, pings_ok, reconnects);
            agent.close().await;
            Ok(())
        }
    }
}

fn report_connection(
    pc: &PeerConnection,
    net: &NetArgs,
    bytes: usize,
    took: Duration,
    pings_ok: u32,
    reconnects: u32,
) {
    let via = pc.via().map(|v| v.to_string());
    if net.json {
        println!(
            "{}",
            json!({
                "peer_id": pc.peer_id().to_string(),
                "path": pc.path(),
                "rtt_ms": ms(pc.rtt()),
                "bytes": bytes,
                "connect_ms": ms(took),
                "via": via,
                "pings_ok": pings_ok,
                "reconnects": reconnects,
            })
        );
    } else {
        println!(
            "connected to {} {:?}{} in {:.1} ms, rtt {:.1} ms, echoed {bytes} bytes",
            pc.peer_id(),
            pc.path(),
            via.map(|v| format!(" via {v}")).unwrap_or_default(),
            ms(took),
            ms(pc.rtt()),
        );
    }
}

async fn echo(conn: &x0x::quinn::Connection, payload: &[u8]) -> Result<Vec<u8>, AgentError> {
    let err = |e: &dyn std::fmt::Display| AgentError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await.map_err(|e| err(&e))?;
    send.finish().map_err(|e| err(&e))?;
    recv.read_to_end(64 << 20).await.map_err(|e| err(&e))
}

async fn netcheck(net: NetArgs) -> Result<(), AgentError> {
    let (agent, report) = join(&net).await?;
    let observed: Vec<SocketAddr> = report.connected.iter().filter_map(|l| l.observed).collect();
    let mapping = match observed.as_slice() {
        [] | [_] => "unknown",
        [first, rest @ ..] if rest.iter().all(|a| a == first) => "endpoint-independent",
        _ => "endpoint-dependent",
    };
    if net.json {
        let nodes: Vec<_> = report
            .connected
            .iter()
            .map(|l| json!({"addr": l.addr, "peer_id": l.peer_id.to_string(), "observed": l.observed, "rtt_ms": ms(l.rtt)}))
            .collect();
        println!(
            "{}",
            json!({"public_addr": observed.first(), "mapping": mapping, "nodes": nodes, "unreachable": report.failed})
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
        for f in &report.failed {
            println!("  unreachable: {f}");
        }
    }
    agent.close().await;
    Ok(())
}

async fn listen(net: NetArgs) -> Result<(), AgentError> {
    let (agent, report) = join(&net).await?;
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
        .map_err(|e| AgentError::Protocol(e.to_string()))?;
    loop {
        let pc = tokio::select! {
            pc = agent.accept() => match pc { Some(pc) => pc, None => break },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        if net.json {
            println!(
                "{}",
                json!({"event": "connection", "peer_id": pc.peer_id().to_string(), "path": pc.path(), "rtt_ms": ms(pc.rtt())})
            );
        } else {
            println!(
                "connection from {} ({:?}, rtt {:.1} ms)",
                pc.peer_id(),
                pc.path(),
                ms(pc.rtt())
            );
        }
        let conn = pc.connection().clone();
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
    agent.close().await;
    Ok(())
}
