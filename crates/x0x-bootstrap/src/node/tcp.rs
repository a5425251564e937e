//! The TCP relay: QUIC and relay datagrams inside TLS 1.3 and a WebSocket,
//! for agents on networks that block UDP.
//!
//! A session is TLS 1.3 (the node's identity, the same PeerId binding and
//! key exchange as QUIC, ALPN `http/1.1`), then an HTTP/1.1 upgrade to a
//! WebSocket on [`WS_PATH`], then binary messages, one datagram each. The
//! session becomes a virtual UDP peer of the [`NodeSocket`]: the agent's
//! QUIC connection to the node runs inside it unchanged (register, lookup,
//! introductions, circuits), and its relay packets are forwarded like any
//! others.
//!
//! Limits (each refusal counted in `x0x_tcp_rejected_total` by the key's
//! name): the TLS handshake and the upgrade must finish within
//! `hello_timeout_ms`, and at most `max_handshakes` of them run at once;
//! sessions (and handshakes) per source IP and sessions in all are bounded
//! by `connections_per_ip` and `max_connections`; a WebSocket message or
//! frame above [`MAX_WS_DATAGRAM`] closes the session (`too_large`); a
//! session that sends nothing, or takes nothing the node sends, for
//! `transport.idle_timeout_ms` is closed (`idle_timeout_ms`; the agent's
//! QUIC keep-alives, every `keepalive_ms`, keep a live one open).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info};
use x0x_proto::relay::{MAX_WS_DATAGRAM, WS_PATH};

use super::Shared;
use super::socket::NodeSocket;

/// Sessions per source address, counted while they live.
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn take(&self, ip: IpAddr, limit: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    fn give(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Handshakes (TLS and upgrade) in flight; the slot is given back on drop.
#[derive(Debug, Default)]
struct InFlight(AtomicUsize);

struct Slot(Arc<InFlight>);

impl InFlight {
    fn take(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accept TCP relay sessions until shutdown.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let per_ip = Arc::new(PerIp::default());
    let in_flight = Arc::new(InFlight::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!("tcp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let l = &shared.config.limits;
        if shared.socket.tcp_sessions() >= l.max_connections {
            shared.metrics.reject_tcp("max_connections");
            continue;
        }
        let Some(slot) = in_flight.take(l.max_handshakes) else {
            shared.metrics.reject_tcp("max_handshakes");
            continue;
        };
        let ip = peer.ip().to_canonical();
        if !per_ip.take(ip, l.connections_per_ip) {
            shared.metrics.reject_tcp("connections_per_ip");
            continue;
        }
        let (shared, acceptor, per_ip) = (shared.clone(), acceptor.clone(), per_ip.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            session(&shared, acceptor, stream, peer, slot).await;
            per_ip.give(ip);
        });
    }
}

async fn session(
    shared: &Shared,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let within = Duration::from_millis(shared.config.limits.hello_timeout_ms);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_DATAGRAM))
        .max_frame_size(Some(MAX_WS_DATAGRAM));
    let handshake = async {
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        // The signature is tungstenite's callback type.
        #[allow(clippy::result_large_err)]
        let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if req.uri().path() == WS_PATH {
                Ok(resp)
            } else {
                let mut not_found = ErrorResponse::new(Some("not an x0x relay path".into()));
                *not_found.status_mut() =
                    tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                Err(not_found)
            }
        };
        tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(config))
            .await
            .map_err(|e| format!("WebSocket: {e}"))
    };
    let mut ws = match tokio::time::timeout(within, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.metrics.reject_tcp("handshake");
            debug!(%peer, "tcp relay session refused: {e}");
            return;
        }
        Err(_) => {
            shared.metrics.reject_tcp("hello_timeout_ms");
            return;
        }
    };
    drop(slot);
    let socket: &NodeSocket = &shared.socket;
    let (addr, mut down) = socket.add_virtual(peer);
    shared.metrics.tcp_sessions.inc();
    info!(%peer, virtual_addr = %addr, "tcp relay session");
    // Quiet is checked in quarters of the idle timeout (no timer work per
    // datagram): a session is closed 1 to 1.25 idle timeouts after its
    // last message.
    let idle = shared.config.transport.idle_timeout();
    let mut quarter = tokio::time::interval_at(tokio::time::Instant::now() + idle / 4, idle / 4);
    let (mut heard, mut quiet_quarters) = (false, 0u32);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = quarter.tick() => {
                quiet_quarters = if std::mem::take(&mut heard) { 0 } else { quiet_quarters + 1 };
                if quiet_quarters >= 4 {
                    shared.metrics.reject_tcp("idle_timeout_ms");
                    debug!(%peer, "tcp relay session idle for {idle:?}: closed");
                    break;
                }
            }
            msg = ws.next() => {
                heard |= matches!(msg, Some(Ok(_)));
                if !received(shared, addr, msg) {
                    break;
                }
            }
            out = down.recv() => match out {
                Some(d) => {
                    shared.metrics.tcp_datagrams_out.inc();
                    // An agent that stops reading holds the session
                    // no longer than one that stops sending.
                    match tokio::time::timeout(idle, ws.send(Ws::Binary(d.into()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            shared.metrics.reject_tcp("idle_timeout_ms");
                            break;
                        }
                    }
                }
                None => break,
            },
        }
    }
    socket.remove_virtual(&addr);
    shared.metrics.tcp_sessions.dec();
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// One message from the session's agent; false when the session ends.
fn received(shared: &Shared, addr: SocketAddr, msg: Option<Result<Ws, WsError>>) -> bool {
    match msg {
        Some(Ok(Ws::Binary(data))) => {
            shared.metrics.tcp_datagrams_in.inc();
            if !shared.socket.inject(addr, data.to_vec()) {
                shared.metrics.reject_tcp("queue_full");
            }
            true
        }
        Some(Ok(Ws::Ping(_) | Ws::Pong(_))) => true,
        Some(Err(WsError::Capacity(
            CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
        ))) => {
            shared.metrics.reject_tcp("too_large");
            false
        }
        Some(Ok(_)) | Some(Err(_)) | None => false,
    }
}
