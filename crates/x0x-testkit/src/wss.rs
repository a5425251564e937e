//! A raw client of a node's TCP relay (TLS 1.3 + WebSocket) from a chosen
//! source address, for tests of the relay listener's limits.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use x0x_proto::identity::Identity;
use x0x_proto::relay::WS_PATH;
use x0x_proto::tls;

/// A TLS stream to a node's TCP relay.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection to `to` from `from` (port chosen by the kernel).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream, String> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    socket
        .connect(to)
        .await
        .map_err(|e| format!("TCP {to}: {e}"))
}

/// TLS over [`tcp_from`] with a fresh identity.
pub async fn tls_from(from: IpAddr, to: SocketAddr) -> Result<Tls, String> {
    let tcp = tcp_from(from, to).await?;
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let config = tls::tcp_client_config(&identity).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name =
        rustls_pki_types::ServerName::try_from(tls::SERVER_NAME).map_err(|e| e.to_string())?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {to}: {e}"))
}

/// A WebSocket session with the relay at `to` from `from`. The client
/// sends messages of any size (no limit on this side).
pub async fn session_from(from: IpAddr, to: SocketAddr) -> Result<WebSocketStream<Tls>, String> {
    let stream = tls_from(from, to).await?;
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("wss://{to}{WS_PATH}"),
        stream,
        Some(config),
    )
    .await
    .map_err(|e| format!("WebSocket to {to}: {e}"))?;
    Ok(ws)
}
