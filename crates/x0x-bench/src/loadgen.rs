//! Load generators: each runs as `x0x-bench loadgen <kind> ...` in a process
//! of its own, so the node's CPU and memory are measured apart from the
//! load. Each prints JSON lines on stdout (`{"event": ...}`) and stops by
//! itself: every loop is bounded in count and time, and closing stdin
//! stops a generator that holds connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{IdleTimeout, VarInt};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use x0x_proto::identity::Identity;
use x0x_proto::wire::{self, Message, PeerKind, close};

use crate::Res;

#[derive(Debug, Subcommand)]
pub enum LoadCmd {
    /// `Agent::join_network` against one or more nodes, one join after another.
    Join(JoinArgs),
    /// Hold many lean agents (one identity and connection each) connected.
    Hold(HoldArgs),
    /// Open new authenticated connections as fast as the node accepts them.
    Handshake(HandshakeArgs),
    /// Bulk transfer and ping-pong between two agents, direct and relayed.
    Transfer(crate::transfer::TransferArgs),
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The bootstrap nodes each agent is given (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    node: Vec<SocketAddr>,
    /// Local address the agents bind (loopback).
    #[arg(long)]
    bind: IpAddr,
    #[arg(long)]
    count: usize,
    /// Give up after this long, whatever the count reached.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    #[arg(long)]
    node: SocketAddr,
    #[arg(long)]
    bind: IpAddr,
    #[arg(long)]
    count: usize,
    /// Handshakes in flight at once while ramping up.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Stop ramping up after this long, with however many are connected.
    #[arg(long)]
    ramp_seconds: u64,
    /// Hold at most this long after ramping up (stdin closing stops earlier).
    #[arg(long, default_value_t = 600)]
    hold_seconds: u64,
}

#[derive(Debug, Args)]
pub struct HandshakeArgs {
    #[arg(long)]
    node: SocketAddr,
    #[arg(long)]
    bind: IpAddr,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Untimed warm-up before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// The measured window.
    #[arg(long)]
    seconds: f64,
    /// Distinct client identities, used in turn.
    #[arg(long, default_value_t = 512)]
    identities: usize,
}

pub async fn run(cmd: LoadCmd) -> Res<()> {
    match cmd {
        LoadCmd::Join(a) => join(a).await,
        LoadCmd::Hold(a) => hold(a).await,
        LoadCmd::Handshake(a) => handshake(a).await,
        LoadCmd::Transfer(a) => crate::transfer::run(a).await,
    }
}

/// Print one JSON event line (stdout is the channel to the orchestrator).
pub fn emit(v: serde_json::Value) {
    println!("{v}");
}

/// The transport settings of an [`x0x::Agent`]'s node links (keep-alive 15 s, idle 40 s,
/// the same stream and datagram limits as `x0x_proto::transport`).
pub fn agent_transport() -> Res<Arc<quinn::TransportConfig>> {
    let net = x0x::NetworkConfig::with_bootstrap_peers(Vec::new());
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(net.keepalive));
    t.max_idle_timeout(Some(IdleTimeout::try_from(net.idle_timeout)?));
    t.max_concurrent_bidi_streams(VarInt::from_u32(32));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(1024 * 1024));
    t.datagram_send_buffer_size(1024 * 1024);
    Ok(Arc::new(t))
}

/// A client-only QUIC endpoint on `ip` (port chosen by the kernel) with
/// large socket buffers, shared by many lean agents.
pub fn client_endpoint(ip: IpAddr) -> Res<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(8 * 1024 * 1024);
    let _ = socket.set_send_buffer_size(8 * 1024 * 1024);
    socket.bind(&addr.into())?;
    Ok(quinn::Endpoint::new(
        x0x_proto::transport::endpoint_config(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// A QUIC client configuration presenting a fresh x0x identity.
pub fn identity_client_config(
    transport: &Arc<quinn::TransportConfig>,
) -> Res<(Identity, quinn::ClientConfig)> {
    let id = Identity::generate()?;
    let tls = QuicClientConfig::try_from(x0x_proto::tls::client_config(&id)?)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(tls));
    cfg.transport_config(transport.clone());
    Ok((id, cfg))
}

/// A lean agent: what [`x0x::Agent::join_network`] leaves on the node
/// (an authenticated connection, `Hello`/`Welcome` on the control stream,
/// one `Register`), without the SDK's per-agent endpoint and tasks.
pub struct LeanAgent {
    pub conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

/// Dial and complete `Hello`/`Welcome`; with `register`, also `Register`.
pub async fn lean_connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    node: SocketAddr,
    register: bool,
) -> Res<LeanAgent> {
    let steps = async {
        let conn = endpoint
            .connect_with(cfg, node, x0x_proto::tls::SERVER_NAME)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Message::Hello {
            kind: PeerKind::Agent,
            incarnation: rand::random(),
        };
        wire::write_frame(&mut send, &hello).await?;
        match wire::read_frame(&mut recv, &wire::ReadLimits::TO_AGENT).await? {
            Some(Message::Welcome { .. }) => {}
            other => return Err(format!("expected Welcome, got {other:?}").into()),
        }
        if register {
            let (mut s, mut r) = conn.open_bi().await?;
            let addrs = endpoint.local_addr().into_iter().collect();
            wire::write_frame(
                &mut s,
                &Message::Register {
                    addrs,
                    accept_relay: false,
                },
            )
            .await?;
            let _ = s.finish();
            match wire::read_frame(&mut r, &wire::ReadLimits::TO_AGENT).await? {
                Some(Message::Registered { .. }) => {}
                other => return Err(format!("expected Registered, got {other:?}").into()),
            }
        }
        Ok::<_, crate::Error>(LeanAgent {
            conn,
            _control: (send, recv),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), steps)
        .await
        .map_err(|_| "lean agent: no answer within 10 s")?
}

/// Sequential `Agent::join_network` calls, each by a new agent (new
/// identity, new endpoint); only `join_network` is timed.
async fn join(a: JoinArgs) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let mut lat_ms = Vec::with_capacity(a.count);
    let mut failed = 0u64;
    let mut closing = tokio::task::JoinSet::new();
    for _ in 0..a.count {
        if Instant::now() >= deadline {
            break;
        }
        let peers = a.node.iter().map(|n| (*n).into()).collect();
        let mut net = x0x::NetworkConfig::with_bootstrap_peers(peers);
        net.bind = SocketAddr::new(a.bind, 0);
        net.join_timeout = Duration::from_secs(10);
        net.port_mapping = false;
        let agent = x0x::Agent::builder().network(net).build()?;
        let t0 = Instant::now();
        let joined = agent.join_network().await;
        let elapsed = t0.elapsed();
        match joined {
            Ok(r) if !r.registered.is_empty() => lat_ms.push(elapsed.as_secs_f64() * 1e3),
            _ => failed += 1,
        }
        // Leave cleanly (the node forgets the agent) without timing it.
        closing.spawn(async move { agent.close().await });
        while closing.len() > 64 {
            closing.join_next().await;
        }
    }
    while closing.join_next().await.is_some() {}
    emit(json!({"event": "done", "lat_ms": lat_ms, "failed": failed}));
    Ok(())
}

/// Connect `count` lean agents (bounded by `ramp_seconds`), report, then
/// hold them until stdin closes (or `hold_seconds` pass).
async fn hold(a: HoldArgs) -> Res<()> {
    let transport = agent_transport()?;
    let endpoint = client_endpoint(a.bind)?;
    let started = Instant::now();
    let ramp_deadline = started + Duration::from_secs(a.ramp_seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let agents = Arc::new(std::sync::Mutex::new(Vec::with_capacity(a.count)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (endpoint, transport, next, failed, agents) = (
            endpoint.clone(),
            transport.clone(),
            next.clone(),
            failed.clone(),
            agents.clone(),
        );
        let (node, count) = (a.node, a.count);
        workers.spawn(async move {
            // Each worker claims one slot at a time; a failed attempt
            // releases nothing and retries with a new identity until the
            // ramp deadline.
            while next.fetch_add(1, Ordering::Relaxed) < count {
                loop {
                    if Instant::now() >= ramp_deadline {
                        return;
                    }
                    let attempt = async {
                        let (_, cfg) = identity_client_config(&transport)?;
                        lean_connect(&endpoint, cfg, node, true).await
                    };
                    match attempt.await {
                        Ok(agent) => {
                            agents.lock().unwrap_or_else(|e| e.into_inner()).push(agent);
                            break;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    let progress = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = agents.lock().unwrap_or_else(|e| e.into_inner()).len();
            emit(json!({"event": "progress", "connected": n,
                        "failed": failed.load(Ordering::Relaxed),
                        "elapsed_s": started.elapsed().as_secs_f64()}));
        }
    };
    tokio::select! {
        _ = async { while workers.join_next().await.is_some() {} } => {}
        _ = progress => {}
    }
    let ramp_s = started.elapsed().as_secs_f64();
    let connected = agents.lock().unwrap_or_else(|e| e.into_inner()).len();
    emit(json!({"event": "ready", "connected": connected,
                "failed": failed.load(Ordering::Relaxed), "ramp_s": ramp_s}));

    // Hold until stdin closes, or at most hold_seconds.
    let stdin_closed = async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = tokio::time::sleep(Duration::from_secs(a.hold_seconds)) => {}
    }
    let agents = std::mem::take(&mut *agents.lock().unwrap_or_else(|e| e.into_inner()));
    let alive = agents
        .iter()
        .filter(|a| a.conn.close_reason().is_none())
        .count();
    emit(json!({"event": "done", "alive": alive}));
    for agent in &agents {
        agent.conn.close(close::NORMAL, b"bench done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// New connections (TLS handshake with client auth, then `Hello`/`Welcome`),
/// each closed as soon as the node has welcomed it.
async fn handshake(a: HandshakeArgs) -> Res<()> {
    let transport = agent_transport()?;
    let endpoint = client_endpoint(a.bind)?;
    let configs: Arc<Vec<quinn::ClientConfig>> = Arc::new(
        (0..a.identities.max(1))
            .map(|_| identity_client_config(&transport).map(|(_, c)| c))
            .collect::<Res<_>>()?,
    );
    let started = Instant::now();
    let window_start = started + Duration::from_secs_f64(a.warmup_seconds);
    let window_end = window_start + Duration::from_secs_f64(a.seconds);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let turn = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (endpoint, configs, done, failed, turn, errors) = (
            endpoint.clone(),
            configs.clone(),
            done.clone(),
            failed.clone(),
            turn.clone(),
            errors.clone(),
        );
        let node = a.node;
        workers.spawn(async move {
            while Instant::now() < window_end {
                let cfg = configs[turn.fetch_add(1, Ordering::Relaxed) % configs.len()].clone();
                match lean_connect(&endpoint, cfg, node, false).await {
                    Ok(agent) => {
                        let t = Instant::now();
                        if t >= window_start && t < window_end {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        agent.conn.close(close::NORMAL, b"bench");
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut seen = errors.lock().unwrap_or_else(|e| e.into_inner());
                        *seen.entry(e.to_string()).or_insert(0u64) += 1;
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(window_start.into()).await;
    emit(json!({"event": "window_start"}));
    tokio::time::sleep_until(window_end.into()).await;
    let completed = done.load(Ordering::Relaxed);
    emit(json!({"event": "window_end"}));
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    workers.abort_all();
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    emit(
        json!({"event": "done", "completed": completed, "window_s": a.seconds,
                "failed": failed.load(Ordering::Relaxed), "errors": errors}),
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}
