//! QUIC endpoints: one UDP socket that both accepts and dials.
//!
//! Nodes and agents use the same endpoint shape: a server and a client
//! configuration built from the peer's [`Identity`] (see [`crate::tls`]),
//! keep-alives and a bounded idle timeout, so a dead peer is noticed within
//! seconds. Using one socket for both directions is what makes the address
//! a reflector observes the address others can reach (and, later, what
//! makes hole punching possible).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};

use crate::identity::{Identity, PeerId};
use crate::tls::{self, TlsError};

/// Tunables for an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    /// Requested socket buffer size (the kernel may cap it).
    pub udp_buffer_bytes: usize,
    /// Concurrent request streams a peer may open.
    pub max_bidi_streams: u32,
    /// Flow-control limits: what one peer can make us buffer. `None` keeps
    /// quinn's defaults (sized for bulk transfer between agents).
    pub stream_receive_window: Option<u32>,
    pub receive_window: Option<u32>,
    /// Relayed datagrams buffered per connection, in each direction.
    pub datagram_buffer: usize,
}

impl TransportOptions {
    /// A bootstrap node's limits: it only reads small frames and forwards
    /// datagrams, so each connection may make it buffer at most a few
    /// hundred KiB (a stream holds two frames, a connection 512 KiB).
    pub fn for_node(keepalive: Duration, idle_timeout: Duration, udp_buffer_bytes: usize) -> Self {
        Self {
            keepalive,
            idle_timeout,
            udp_buffer_bytes,
            max_bidi_streams: 32,
            stream_receive_window: Some(2 * crate::wire::MAX_FRAME_LEN as u32 + 8),
            receive_window: Some(512 * 1024),
            datagram_buffer: 256 * 1024,
        }
    }
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(8),
            udp_buffer_bytes: 2 * 1024 * 1024,
            max_bidi_streams: 32,
            stream_receive_window: None,
            receive_window: None,
            datagram_buffer: 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid transport setting: {0}")]
    Setting(String),
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot start connection to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection to {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("no answer from {addr} within {} ms", timeout.as_millis())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} presented no usable identity")]
    NoIdentity { addr: SocketAddr },
}

fn transport_config(opts: &TransportOptions) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(opts.keepalive));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(opts.idle_timeout)
            .map_err(|e| TransportError::Setting(e.to_string()))?,
    ));
    t.max_concurrent_bidi_streams(VarInt::from_u32(opts.max_bidi_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(opts.datagram_buffer));
    t.datagram_send_buffer_size(opts.datagram_buffer);
    if let Some(w) = opts.stream_receive_window {
        t.stream_receive_window(VarInt::from_u32(w));
    }
    if let Some(w) = opts.receive_window {
        t.receive_window(VarInt::from_u32(w));
        t.send_window(u64::from(w));
    }
    Ok(t)
}

/// Bind a UDP socket (dual-stack for `[::]`) with the requested buffers.
fn bind_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too when bound to [::]; harmless for specific addresses.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Server and client QUIC configurations for `identity`.
pub fn configs(
    identity: &Identity,
    opts: &TransportOptions,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let transport = Arc::new(transport_config(opts)?);

    let server_tls = QuicServerConfig::try_from(tls::server_config(identity)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());

    let client_tls = QuicClientConfig::try_from(tls::client_config(identity)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    Ok((server, client))
}

/// Bind a UDP socket for an endpoint (dual-stack for `[::]`, with the
/// requested buffers), naming the address on error.
pub fn udp_socket(
    addr: SocketAddr,
    opts: &TransportOptions,
) -> Result<std::net::UdpSocket, TransportError> {
    bind_socket(addr, opts.udp_buffer_bytes).map_err(|source| TransportError::Bind { addr, source })
}

/// A bound QUIC endpoint that can both accept and dial.
pub fn endpoint(
    identity: &Identity,
    addr: SocketAddr,
    opts: &TransportOptions,
) -> Result<quinn::Endpoint, TransportError> {
    let (server, client) = configs(identity, opts)?;
    let socket = udp_socket(addr, opts)?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Dial `addr` and return the connection and the peer's authenticated id.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(quinn::Connection, PeerId), DialError> {
    let connecting = endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(|source| DialError::Connect { addr, source })?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| DialError::Timeout { addr, timeout })?
        .map_err(|source| DialError::Handshake { addr, source })?;
    let peer = tls::remote_peer_id(&conn).ok_or(DialError::NoIdentity { addr })?;
    Ok((conn, peer))
}

/// Dial every address at once; the first handshake that completes wins.
/// (A hostname may resolve to an unreachable IPv6 address before a working
/// IPv4 one.) Returns the last error if none completes.
pub async fn dial_any(
    endpoint: &quinn::Endpoint,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(quinn::Connection, PeerId), String> {
    use futures_util::StreamExt;
    let mut attempts: futures_util::stream::FuturesUnordered<_> =
        addrs.iter().map(|a| dial(endpoint, *a, timeout)).collect();
    let mut last = String::from("resolved to no address");
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok(ok) => return Ok(ok),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}
