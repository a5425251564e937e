//! The transfer load generator: two agents on one node move one bulk
//! transfer and a ping-pong over `Agent::connect_with`, first on a direct
//! path (`PathPolicy::DirectOnly`), then through the node's relay
//! (`PathPolicy::RelayOnly`), then relayed again from a third agent that
//! reaches the node only over its TCP relay (TLS + WebSocket: its UDP
//! bootstrap address is a port where nothing listens, as if UDP were
//! blocked), in the same run. A plain quinn connection
//! between two endpoints of this process (x0x's TLS, quinn's default
//! transport settings, plain UDP sockets) moves the same bytes as the
//! baseline of this run.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use x0x::{ConnectOptions, PathKind, PathPolicy};
use x0x_proto::identity::Identity;

use crate::Res;
use crate::loadgen::emit;

#[derive(Debug, Args)]
pub struct TransferArgs {
    #[arg(long)]
    node: SocketAddr,
    /// Local addresses of agent A, agent B (and the baseline endpoints).
    #[arg(long, value_delimiter = ',', required = true)]
    bind: Vec<IpAddr>,
    /// Bytes in each bulk transfer.
    #[arg(long)]
    bytes: u64,
    /// Round trips in each ping-pong.
    #[arg(long, default_value_t = 200)]
    pings: usize,
    /// Transfers per path; the median is reported.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Longest one transfer may take.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// The node's TCP relay: also measure a relayed connection from an
    /// agent that reaches the node over TCP only.
    #[arg(long)]
    tcp_relay: Option<SocketAddr>,
}

/// UDP port 9 (discard) of the node's host: nothing listens there, so an
/// agent told to join through it finds UDP "blocked" and uses TCP.
const NO_UDP_PORT: u16 = 9;

const STREAM_BULK: u8 = b'T';
const STREAM_PING: u8 = b'P';
const CHUNK: usize = 64 * 1024;

pub async fn run(a: TransferArgs) -> Res<()> {
    if a.bind.len() != 4 {
        return Err("--bind takes 4 comma-separated addresses".into());
    }
    let limit = Duration::from_secs(a.max_seconds);

    // The baseline first: plain quinn over UDP, nothing of x0x but its TLS.
    let (server, client, server_addr) = baseline_endpoints(a.bind[2], a.bind[3])?;
    tokio::spawn(serve_endpoint(server));
    let conn = client
        .connect(server_addr, x0x_proto::tls::SERVER_NAME)?
        .await?;
    let mut base = Vec::new();
    for _ in 0..a.reps {
        base.push(bulk(&conn, a.bytes, limit).await?);
    }
    let base_rtt = ping(&conn, a.pings).await?;
    conn.close(0u32.into(), b"done");

    // Two agents on the node.
    let agent = |ip: IpAddr| {
        let mut net = x0x::NetworkConfig::with_bootstrap_peers(vec![a.node.into()]);
        net.bind = SocketAddr::new(ip, 0);
        net.port_mapping = false;
        x0x::Agent::builder().network(net).build()
    };
    let (sender, receiver) = (Arc::new(agent(a.bind[0])?), Arc::new(agent(a.bind[1])?));
    sender.join_network().await?;
    receiver.join_network().await?;
    let tcp_sender = match a.tcp_relay {
        Some(relay) => {
            let no_udp = SocketAddr::new(a.node.ip(), NO_UDP_PORT);
            let mut net = x0x::NetworkConfig::with_bootstrap_peers(vec![no_udp.into()]);
            net.bind = SocketAddr::new(a.bind[0], 0);
            net.tcp_relays = vec![relay.into()];
            let agent = Arc::new(x0x::Agent::builder().network(net).build()?);
            let joined = agent.join_network().await?;
            if joined
                .connected
                .iter()
                .any(|l| l.transport != x0x::Transport::Tcp)
            {
                return Err("the TCP-only agent joined over UDP".into());
            }
            Some(agent)
        }
        None => None,
    };
    let server = receiver.clone();
    tokio::spawn(async move {
        // Bounded by the agent: accept() ends when it closes.
        while let Some(pc) = server.accept().await {
            tokio::spawn(serve_connection(pc.connection().clone()));
        }
    });

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = serde_json::Map::new();
    out.insert("event".into(), "done".into());
    out.insert("baseline_mbit_s".into(), median(&mut base).into());
    out.insert("baseline_rtt_ms".into(), base_rtt.into());
    let mut cases = vec![
        (
            "direct",
            &sender,
            PathKind::Direct,
            ConnectOptions::default().paths(PathPolicy::DirectOnly),
        ),
        (
            "relayed",
            &sender,
            PathKind::Relayed,
            ConnectOptions::default().paths(PathPolicy::RelayOnly),
        ),
    ];
    if let Some(t) = &tcp_sender {
        cases.push((
            "tcp_relayed",
            t,
            PathKind::Relayed,
            ConnectOptions::default().paths(PathPolicy::RelayOnly),
        ));
    }
    for (name, from, want, opts) in cases {
        let pc = from.connect_with(receiver.peer_id(), opts).await?;
        if pc.path() != want {
            return Err(format!("{name}: got a {:?} path", pc.path()).into());
        }
        let conn = pc.connection().clone();
        let rtt = ping(&conn, a.pings).await?;
        // The orchestrator starts its CPU samples, then says go.
        emit(json!({"event": format!("{name}_ready")}));
        tokio::time::timeout(Duration::from_secs(120), stdin.next_line())
            .await
            .map_err(|_| "no go from the orchestrator")??
            .ok_or("stdin closed before go")?;
        let mut rates = Vec::new();
        for _ in 0..a.reps {
            rates.push(bulk(&conn, a.bytes, limit).await?);
        }
        emit(json!({"event": format!("{name}_end")}));
        out.insert(format!("{name}_mbit_s"), median(&mut rates).into());
        out.insert(format!("{name}_rtt_ms"), rtt.into());
        out.insert(
            format!("{name}_quic_rtt_ms"),
            (pc.rtt().as_secs_f64() * 1e3).into(),
        );
        let st = conn.stats().path;
        out.insert(
            format!("{name}_path"),
            json!({"sent_packets": st.sent_packets, "lost_packets": st.lost_packets,
                   "congestion_events": st.congestion_events, "cwnd": st.cwnd,
                   "mtu": st.current_mtu}),
        );
        conn.close(0u32.into(), b"done");
    }
    emit(serde_json::Value::Object(out));
    if let Some(t) = tcp_sender {
        t.close().await;
    }
    if let (Ok(s), Ok(r)) = (Arc::try_unwrap(sender), Arc::try_unwrap(receiver)) {
        s.close().await;
        r.close().await;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Send `bytes` on a new stream and wait for the receiver's count; Mbit/s.
async fn bulk(conn: &quinn::Connection, bytes: u64, limit: Duration) -> Res<f64> {
    let transfer = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let chunk = vec![0xa5u8; CHUNK];
        let t0 = Instant::now();
        send.write_all(&[STREAM_BULK]).await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        send.finish()?;
        let mut count = [0u8; 8];
        recv.read_exact(&mut count).await?;
        let elapsed = t0.elapsed().as_secs_f64();
        let got = u64::from_be_bytes(count);
        if got != bytes {
            return Err(format!("receiver counted {got} of {bytes} bytes").into());
        }
        Ok::<_, crate::Error>(bytes as f64 * 8.0 / elapsed / 1e6)
    };
    tokio::time::timeout(limit, transfer)
        .await
        .map_err(|_| format!("bulk transfer of {bytes} bytes took over {limit:?}"))?
}

/// Median round-trip time (ms) of `n` 8-byte ping-pongs on one stream, after 10 unmeasured.
async fn ping(conn: &quinn::Connection, n: usize) -> Res<f64> {
    let pings = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&[STREAM_PING]).await?;
        let mut rtts = Vec::with_capacity(n);
        let mut buf = [0u8; 8];
        for i in 0..n + 10 {
            let t0 = Instant::now();
            send.write_all(&(i as u64).to_be_bytes()).await?;
            recv.read_exact(&mut buf).await?;
            if i >= 10 {
                rtts.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        send.finish()?;
        Ok::<_, crate::Error>(median(&mut rtts))
    };
    tokio::time::timeout(Duration::from_secs(60), pings)
        .await
        .map_err(|_| "ping-pong took over 60 s")?
}

/// Serve bulk and ping streams of one connection until it closes.
async fn serve_connection(conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                return;
            }
            match kind[0] {
                STREAM_BULK => {
                    let mut count = 0u64;
                    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                        count += chunk.bytes.len() as u64;
                    }
                    let _ = send.write_all(&count.to_be_bytes()).await;
                    let _ = send.finish();
                }
                STREAM_PING => {
                    let mut buf = [0u8; 8];
                    while recv.read_exact(&mut buf).await.is_ok() {
                        if send.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                    let _ = send.finish();
                }
                _ => {}
            }
        });
    }
}

async fn serve_endpoint(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                serve_connection(conn).await;
            }
        });
    }
}

/// A server and a client endpoint with x0x identities and quinn's default
/// transport configuration, on plain UDP sockets.
fn baseline_endpoints(
    server_ip: IpAddr,
    client_ip: IpAddr,
) -> Res<(quinn::Endpoint, quinn::Endpoint, SocketAddr)> {
    let (sid, cid) = (Identity::generate()?, Identity::generate()?);
    let server_tls = QuicServerConfig::try_from(x0x_proto::tls::server_config(&sid)?)?;
    let server_cfg = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    let server = quinn::Endpoint::server(server_cfg, SocketAddr::new(server_ip, 0))?;
    let client_tls = QuicClientConfig::try_from(x0x_proto::tls::client_config(&cid)?)?;
    let mut client = quinn::Endpoint::client(SocketAddr::new(client_ip, 0))?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_tls)));
    let addr = server.local_addr()?;
    Ok((server, client, addr))
}
