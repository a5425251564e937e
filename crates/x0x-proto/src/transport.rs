//! QUIC endpoint settings shared by agents and nodes.
//!
//! Every endpoint uses one UDP socket for dialing and accepting, so the
//! address a reflector observes is the address hole punching uses. The
//! [`EndpointConfig`](quinn::EndpointConfig) disables QUIC bit greasing,
//! so a datagram whose first byte has `0x40` and `0x80` clear is never
//! QUIC (see [`crate::relay`]).
//!
//! Connections get one of a few transport profiles ([`TransportOptions`]):
//! what a peer may make the receiver buffer, how often keep-alives go out
//! and when a silent peer counts as gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};

use crate::identity::{Identity, PeerId};
use crate::relay::MAX_PEER_UDP_PAYLOAD;
use crate::tls::{self, TlsError};

/// Tunables of one transport profile.
#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    /// Concurrent bidirectional streams the remote may open.
    pub max_bidi_streams: u32,
    /// Flow-control limits: what one peer can make us buffer. `None`
    /// keeps quinn's defaults (sized for bulk transfer between agents).
    pub stream_receive_window: Option<u32>,
    pub receive_window: Option<u32>,
    /// QUIC datagrams buffered per connection; 0 disables datagrams.
    pub datagram_buffer: usize,
    /// Largest UDP payload path MTU discovery may try.
    pub mtu_upper_bound: u16,
}

impl TransportOptions {
    /// A node's connections from agents: an agent sends one small request
    /// per stream, so it may make the node buffer a few KiB at most.
    pub fn node_to_agent(keepalive: Duration, idle_timeout: Duration) -> Self {
        Self {
            keepalive,
            idle_timeout,
            max_bidi_streams: 8,
            stream_receive_window: Some(4 * 1024),
            receive_window: Some(16 * 1024),
            datagram_buffer: 0,
            mtu_upper_bound: 1452,
        }
    }

    /// Connections between nodes: directory snapshots of up to 64 KiB a
    /// frame need windows that fill a long, fat link.
    pub fn mesh(keepalive: Duration, idle_timeout: Duration) -> Self {
        Self {
            keepalive,
            idle_timeout,
            max_bidi_streams: 4,
            stream_receive_window: Some(512 * 1024),
            receive_window: Some(2 * 1024 * 1024),
            datagram_buffer: 0,
            mtu_upper_bound: 1452,
        }
    }

    /// An agent's connections to bootstrap nodes.
    pub fn agent_to_node(keepalive: Duration, idle_timeout: Duration) -> Self {
        Self {
            keepalive,
            idle_timeout,
            max_bidi_streams: 4,
            stream_receive_window: Some(64 * 1024),
            receive_window: Some(256 * 1024),
            datagram_buffer: 0,
            mtu_upper_bound: 1452,
        }
    }

    /// Connections between agents: bulk transfer, datagrams allowed, and
    /// packets small enough to cross a relay with its header.
    pub fn peer(keepalive: Duration, idle_timeout: Duration) -> Self {
        Self {
            keepalive,
            idle_timeout,
            max_bidi_streams: 256,
            stream_receive_window: None,
            receive_window: None,
            datagram_buffer: 1024 * 1024,
            mtu_upper_bound: MAX_PEER_UDP_PAYLOAD,
        }
    }

    /// The quinn transport configuration for this profile.
    pub fn quinn(&self) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keepalive));
        t.max_idle_timeout(Some(
            IdleTimeout::try_from(self.idle_timeout)
                .map_err(|e| TransportError::Setting(e.to_string()))?,
        ));
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        if self.datagram_buffer == 0 {
            t.datagram_receive_buffer_size(None);
        } else {
            t.datagram_receive_buffer_size(Some(self.datagram_buffer));
            t.datagram_send_buffer_size(self.datagram_buffer);
        }
        if let Some(w) = self.stream_receive_window {
            t.stream_receive_window(VarInt::from_u32(w));
        }
        if let Some(w) = self.receive_window {
            t.receive_window(VarInt::from_u32(w));
            t.send_window(u64::from(w) * 4);
        }
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.mtu_upper_bound);
        t.mtu_discovery_config(Some(mtu));
        Ok(Arc::new(t))
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    #[error("{addr} is {found}, not the pinned {expected}")]
    WrongPeer {
        addr: SocketAddr,
        expected: PeerId,
        found: PeerId,
    },
    #[error("resolved to no address")]
    NoAddress,
}

/// The endpoint configuration every x0x endpoint uses (no QUIC bit greasing).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    c.grease_quic_bit(false);
    c
}

/// A server configuration for `identity` with the given profile.
pub fn server_config(
    identity: &Identity,
    opts: &TransportOptions,
) -> Result<quinn::ServerConfig, TransportError> {
    let tls = QuicServerConfig::try_from(tls::server_config(identity)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
    server.transport_config(opts.quinn()?);
    Ok(server)
}

/// A client configuration for `identity` with the given profile.
pub fn client_config(
    identity: &Identity,
    opts: &TransportOptions,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = QuicClientConfig::try_from(tls::client_config(identity)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(tls));
    client.transport_config(opts.quinn()?);
    Ok(client)
}

/// Bind a UDP socket (dual-stack for `[::]`, with the requested buffers),
/// naming the address on error.
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = || -> std::io::Result<std::net::UdpSocket> {
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
    };
    bind().map_err(|source| TransportError::Bind { addr, source })
}

/// Dial `addr` with `config` and return the connection and the peer's
/// authenticated id (checked against `pin` when given).
pub async fn dial(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
    pin: Option<PeerId>,
) -> Result<(quinn::Connection, PeerId), DialError> {
    let connecting = endpoint
        .connect_with(config.clone(), addr, tls::SERVER_NAME)
        .map_err(|source| DialError::Connect { addr, source })?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| DialError::Timeout { addr, timeout })?
        .map_err(|source| DialError::Handshake { addr, source })?;
    let peer = tls::remote_peer_id(&conn).ok_or(DialError::NoIdentity { addr })?;
    if let Some(expected) = pin
        && expected != peer
    {
        conn.close(crate::wire::close::WRONG_PEER, b"not the pinned identity");
        return Err(DialError::WrongPeer {
            addr,
            expected,
            found: peer,
        });
    }
    Ok((conn, peer))
}

/// Dial every address at once; the first handshake that completes wins.
/// (A hostname may resolve to an unreachable IPv6 address before a working
/// IPv4 one.) Returns the last error if none completes.
pub async fn dial_any(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addrs: &[SocketAddr],
    timeout: Duration,
    pin: Option<PeerId>,
) -> Result<(quinn::Connection, PeerId), DialError> {
    use futures_util::StreamExt;
    let mut attempts: futures_util::stream::FuturesUnordered<_> = addrs
        .iter()
        .map(|a| dial(endpoint, config, *a, timeout, pin))
        .collect();
    let mut last = DialError::NoAddress;
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok(ok) => return Ok(ok),
            Err(e) => last = e,
        }
    }
    Err(last)
}
