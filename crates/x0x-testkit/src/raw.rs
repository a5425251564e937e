//! A raw protocol client: QUIC plus x0x frames, no SDK logic, so tests can
//! send exactly what they mean to (including what no agent would send).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::transport::{self, DialError, TransportOptions};
use x0x_proto::wire::{self, Message, PeerKind, ReadLimits};

/// A client endpoint with its own identity. Its socket hands non-QUIC
/// datagrams (relay packets, vouches) to the test instead of quinn, and
/// can send raw datagrams from the endpoint's own address.
pub struct RawClient {
    pub identity: Identity,
    pub endpoint: quinn::Endpoint,
    pub client: quinn::ClientConfig,
    pub socket: Arc<TapSocket>,
    raw: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>>,
}

/// The socket under a [`RawClient`].
#[derive(Debug)]
pub struct TapSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    tap: tokio::sync::mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>,
}

impl TapSocket {
    /// Send one raw datagram from the endpoint's address.
    pub fn send_raw(&self, to: SocketAddr, data: &[u8]) {
        let _ = self.inner.try_send(&quinn::udp::Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        });
    }
}

impl quinn::AsyncUdpSocket for TapSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let n = std::task::ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut keep = vec![true; n];
            for i in 0..n {
                let buf = &bufs[i][..meta[i].len];
                if x0x_proto::relay::is_x0x(buf[0]) {
                    for r in x0x_proto::batch::segments(buf, &meta[i]) {
                        let _ = self.tap.send((meta[i].addr, buf[r].to_vec()));
                    }
                    keep[i] = false;
                }
            }
            let kept = x0x_proto::batch::compact(bufs, meta, &keep);
            if kept > 0 {
                return std::task::Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl RawClient {
    /// Bind a client on `addr` (e.g. `"127.41.1.9:0"`).
    pub fn bind(addr: &str) -> Self {
        Self::with_identity(addr, Identity::generate().unwrap())
    }

    pub fn with_identity(addr: &str, identity: Identity) -> Self {
        let opts = TransportOptions::mesh(Duration::from_secs(1), Duration::from_secs(10));
        let client = transport::client_config(&identity, &opts).unwrap();
        let udp = transport::udp_socket(addr.parse().unwrap(), 1 << 20).unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, udp).unwrap();
        let (tap, raw) = tokio::sync::mpsc::unbounded_channel();
        let socket = Arc::new(TapSocket { inner, tap });
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            transport::endpoint_config(),
            None,
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        Self {
            identity,
            endpoint,
            client,
            socket,
            raw: tokio::sync::Mutex::new(raw),
        }
    }

    /// The next non-QUIC datagram that arrived (source, bytes), if one
    /// arrives within `within`.
    pub async fn recv_raw(&self, within: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        tokio::time::timeout(within, async { self.raw.lock().await.recv().await })
            .await
            .ok()
            .flatten()
    }

    /// Send a raw datagram from this client's address.
    pub fn send_raw(&self, to: SocketAddr, data: &[u8]) {
        self.socket.send_raw(to, data)
    }

    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    pub async fn dial(&self, node: SocketAddr) -> Result<quinn::Connection, DialError> {
        transport::dial(
            &self.endpoint,
            &self.client,
            node,
            Duration::from_secs(5),
            None,
        )
        .await
        .map(|(c, _)| c)
    }
}

/// The control stream after `Hello`/`Welcome`, and the `Welcome`.
pub struct Session {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub welcome: Message,
}

/// Say `Hello` as `kind` and read the `Welcome`.
pub async fn hello(conn: quinn::Connection, kind: PeerKind) -> Session {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let msg = Message::Hello {
        kind,
        incarnation: rand_u64(),
    };
    wire::write_frame(&mut send, &msg).await.unwrap();
    let welcome = wire::read_frame(&mut recv, &ReadLimits::MESH)
        .await
        .unwrap()
        .expect("a Welcome");
    Session {
        conn,
        send,
        recv,
        welcome,
    }
}

/// One request on its own stream.
pub async fn request(conn: &quinn::Connection, msg: &Message) -> Message {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::write_frame(&mut send, msg).await.unwrap();
    let _ = send.finish();
    tokio::time::timeout(
        Duration::from_secs(5),
        wire::read_frame(&mut recv, &ReadLimits::MESH),
    )
    .await
    .expect("a reply in time")
    .unwrap()
    .expect("a reply")
}

/// An agent session: dial, Hello, Register (consenting to relaying).
pub async fn registered_agent(client: &RawClient, node: SocketAddr) -> Session {
    registered_agent_with(client, node, true).await
}

/// An agent session registered with the given relay consent.
pub async fn registered_agent_with(
    client: &RawClient,
    node: SocketAddr,
    accept_relay: bool,
) -> Session {
    let s = hello(client.dial(node).await.unwrap(), PeerKind::Agent).await;
    let reply = request(
        &s.conn,
        &Message::Register {
            addrs: vec![],
            accept_relay,
        },
    )
    .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    s
}

fn rand_u64() -> u64 {
    let id = Identity::generate().unwrap().peer_id();
    u64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap())
}

impl Session {
    /// The next push on the control stream, if one arrives within `within`.
    pub async fn next_push(&mut self, within: Duration) -> Option<Message> {
        tokio::time::timeout(within, wire::read_frame(&mut self.recv, &ReadLimits::MESH))
            .await
            .ok()?
            .ok()?
    }
}

/// A relay packet for circuit `cid` carrying `payload`.
pub fn relay_packet(cid: u64, payload: &[u8]) -> Vec<u8> {
    let mut p = x0x_proto::relay::relay_header(cid).to_vec();
    p.extend_from_slice(payload);
    p
}
