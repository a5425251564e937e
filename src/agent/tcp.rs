//! Reaching a bootstrap node over TCP when UDP is blocked.
//!
//! TLS 1.3 to the node's TCP relay (same identity binding as QUIC; ALPN
//! `http/1.1`), optionally through an HTTP proxy (`CONNECT`, as set by
//! `HTTPS_PROXY`), then a WebSocket upgrade. From then on the agent's
//! socket sends what it would send to the node's UDP address down the
//! WebSocket ([`crate::socket::MuxSocket::set_tcp_route`]) and feeds what
//! comes back to quinn as if it came from that address: the QUIC link to
//! the node (and every relayed connection through it) runs unchanged. The
//! link keeps checking UDP; once a check is answered the socket goes back
//! to UDP and the node sees the QUIC connection migrate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;
use x0x_proto::relay::{MAX_WS_DATAGRAM, WS_PATH};
use x0x_proto::{PeerAddr, PeerId, tls};

use super::Inner;

/// Datagrams queued toward the node on one TCP link.
const QUEUE: usize = 1024;
/// How often a link on TCP checks whether UDP works again.
pub(super) const UDP_RECHECK: Duration = Duration::from_secs(3);

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Open `CONNECT host:port` through an HTTP proxy.
async fn through_proxy(proxy: &PeerAddr, target: &PeerAddr) -> Result<TcpStream, String> {
    let addrs = proxy
        .resolve()
        .await
        .map_err(|e| format!("cannot resolve proxy {proxy}: {e}"))?;
    let mut stream = TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .await
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    if status.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        return Err(format!(
            "proxy {proxy} refused CONNECT {target}: {}",
            status.trim()
        ));
    }
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("proxy {proxy}: {e}"))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    Ok(reader.into_inner())
}

/// TLS and a WebSocket to the TCP relay at `addr`; the node must prove
/// `pin` when given. Returns the stream and the node's identity.
async fn open(
    inner: &Inner,
    addr: &PeerAddr,
    pin: Option<PeerId>,
) -> Result<(tokio_tungstenite::WebSocketStream<Tls>, PeerId), String> {
    let tcp = match &inner.network.https_proxy {
        Some(proxy) => through_proxy(proxy, addr).await?,
        None => {
            let resolved = addr
                .resolve()
                .await
                .map_err(|e| format!("cannot resolve {addr}: {e}"))?;
            TcpStream::connect(&resolved[..])
                .await
                .map_err(|e| format!("TCP {addr}: {e}"))?
        }
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(inner.tcp_tls.clone());
    let name = rustls_pki_types::ServerName::try_from(tls::SERVER_NAME).expect("valid name");
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    let node = tls::peer_id_of(stream.get_ref().1.peer_certificates())
        .ok_or_else(|| format!("{addr} presented no usable identity"))?;
    if let Some(expected) = pin
        && expected != node
    {
        return Err(format!("{addr} is {node}, not the pinned {expected}"));
    }
    let host = match addr {
        PeerAddr::Socket(a) => a.to_string(),
        PeerAddr::Host { host, port } => format!("{host}:{port}"),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_DATAGRAM))
        .max_frame_size(Some(MAX_WS_DATAGRAM));
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("wss://{host}{WS_PATH}"),
        stream,
        Some(config),
    )
    .await
    .map_err(|e| format!("WebSocket to {addr}: {e}"))?;
    Ok((ws, node))
}

/// A TCP link to a node: dropping it closes the WebSocket (and sends the
/// node's traffic over UDP again if it still went this way).
pub(super) struct TcpLink {
    task: tokio::task::JoinHandle<()>,
    socket: Arc<crate::socket::MuxSocket>,
    node_udp: SocketAddr,
    route: mpsc::Sender<Vec<u8>>,
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        self.task.abort();
        self.socket.clear_tcp_route(&self.node_udp, &self.route);
    }
}

/// Route what goes to `node_udp` through the node's TCP relay at `addr`.
pub(super) async fn start(
    inner: &Arc<Inner>,
    addr: &PeerAddr,
    node_udp: SocketAddr,
    pin: Option<PeerId>,
) -> Result<TcpLink, String> {
    let (ws, node) = open(inner, addr, pin).await?;
    debug!(%addr, node = %node.short(), "TCP relay link open");
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    inner.socket.set_tcp_route(node_udp, Some(tx.clone()));
    let socket = inner.socket.clone();
    let task = tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let up = async {
            while let Some(d) = rx.recv().await {
                if sink.send(Ws::Binary(d.into())).await.is_err() {
                    break;
                }
            }
        };
        let down = async {
            while let Some(Ok(msg)) = stream.next().await {
                if let Ws::Binary(d) = msg {
                    socket.inject(node_udp, d.to_vec());
                }
            }
        };
        tokio::select! { _ = up => {}, _ = down => {} }
    });
    Ok(TcpLink {
        task,
        socket: inner.socket.clone(),
        node_udp,
        route: tx,
    })
}

/// The TCP relay address of bootstrap peer `i`: `tcp_relays[i]` if given,
/// else the host of its bootstrap address at port 443.
pub(super) fn relay_addr(inner: &Inner, i: usize, bootstrap: &PeerAddr) -> PeerAddr {
    if let Some(a) = inner.network.tcp_relays.get(i) {
        return a.clone();
    }
    match bootstrap {
        PeerAddr::Socket(a) => PeerAddr::Socket(SocketAddr::new(a.ip(), 443)),
        PeerAddr::Host { host, .. } => PeerAddr::Host {
            host: host.clone(),
            port: 443,
        },
    }
}

/// See [`crate::Agent::tcp_relay_check`].
pub(super) async fn check(inner: &Inner) -> Result<(PeerId, Duration), crate::AgentError> {
    let started = std::time::Instant::now();
    let peers = &inner.network.bootstrap_peers;
    // The fastest linked node's position in the configuration, else the first.
    let fastest = inner.links_by_rtt().first().map(|(id, _)| *id);
    let status = super::lock(&inner.status).clone();
    let index = peers
        .iter()
        .position(|p| {
            matches!(status.get(&p.to_string()), Some(super::NodeState::Connected(l)) if Some(l.peer_id) == fastest)
        })
        .unwrap_or(0);
    let Some(spec) = peers.get(index) else {
        return Err(crate::AgentError::InvalidConfig("bootstrap_peers is empty"));
    };
    let addr = relay_addr(inner, index, &spec.addr);
    let opened = tokio::time::timeout(Duration::from_secs(5), open(inner, &addr, spec.id)).await;
    match opened {
        Ok(Ok((mut ws, node))) => {
            let _ = ws.close(None).await;
            Ok((node, started.elapsed()))
        }
        Ok(Err(e)) => Err(crate::AgentError::Unreachable {
            peer: fastest.unwrap_or(PeerId::from_bytes([0; 32])),
            reasons: vec![e],
        }),
        Err(_) => Err(crate::AgentError::Timeout {
            what: "TCP relay check",
            after: Duration::from_secs(5),
        }),
    }
}
