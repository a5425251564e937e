//! The agent's UDP socket, shared by direct and relayed paths.
//!
//! An agent has one QUIC endpoint. Its connections to bootstrap nodes and
//! its *direct* connections to other agents use the real UDP socket: the
//! address a reflector observes is the address hole punching uses.
//!
//! *Relayed* connections to other agents are ordinary QUIC connections of
//! the same endpoint whose remote address is a virtual one (IPv6
//! `fd58:3078::/32`, or IPv4 `240.0.0.0/4` on an IPv4 socket; neither is
//! ever routed). Packets for a virtual address never touch the UDP socket:
//! they leave through [`MuxSocket::try_send`] into a queue that the agent
//! drains into relay datagrams on its connection to the bootstrap node, and
//! relay datagrams arriving from a node are handed back to quinn as if they
//! came from the virtual address. The relay therefore only ever sees the
//! agents' QUIC packets: encrypted and authenticated end to end, with
//! QUIC's packet-number replay protection.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use x0x_proto::identity::PeerId;

/// Relayed packets queued before new ones are dropped (QUIC retransmits).
const QUEUE: usize = 4096;
/// Relay routes created by inbound packets from peers we never dialed;
/// beyond this, packets from new unsolicited peers are dropped.
const MAX_ROUTES: usize = 4096;

/// A QUIC packet for the relay: send `payload` to agent `peer` via `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedPacket {
    pub node: PeerId,
    pub peer: PeerId,
    pub payload: Bytes,
}

#[derive(Default)]
struct Paths {
    by_addr: HashMap<SocketAddr, (PeerId, PeerId)>,
    by_route: HashMap<(PeerId, PeerId), SocketAddr>,
}

/// See the module documentation.
pub struct MuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    ipv6: bool,
    paths: Mutex<Paths>,
    outbound: mpsc::Sender<RelayedPacket>,
    inbound: Mutex<VecDeque<(SocketAddr, Bytes)>>,
    waker: AtomicWaker,
}

impl fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Whether `addr` is a virtual relay address.
pub fn is_virtual(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V6(ip) => ip.segments()[..2] == [0xfd58, 0x3078],
        IpAddr::V4(ip) => ip.octets()[0] >= 240 && !ip.is_broadcast(),
    }
}

impl MuxSocket {
    /// Wrap a bound UDP socket. Returns the socket and the queue of packets
    /// the agent must forward through relays.
    pub fn new(
        socket: std::net::UdpSocket,
    ) -> io::Result<(Arc<Self>, mpsc::Receiver<RelayedPacket>)> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        let (outbound, rx) = mpsc::channel(QUEUE);
        let socket = Arc::new(Self {
            inner,
            ipv6,
            paths: Mutex::new(Paths::default()),
            outbound,
            inbound: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
        });
        Ok((socket, rx))
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, Paths> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtual address of agent `peer` through relay `node` (stable for the pair).
    pub fn relay_addr(&self, node: PeerId, peer: PeerId) -> SocketAddr {
        self.route(node, peer, usize::MAX).expect("no route limit")
    }

    /// The virtual address for (node, peer), creating it only while fewer
    /// than `limit` routes exist. One lock: this runs for every relayed packet.
    fn route(&self, node: PeerId, peer: PeerId, limit: usize) -> Option<SocketAddr> {
        let mut paths = self.paths();
        if let Some(addr) = paths.by_route.get(&(node, peer)) {
            return Some(*addr);
        }
        if paths.by_addr.len() >= limit {
            return None;
        }
        let n = paths.by_addr.len() as u32 + 1;
        let addr = if self.ipv6 {
            let ip = Ipv6Addr::new(0xfd58, 0x3078, 0, 0, 0, 0, (n >> 16) as u16, n as u16);
            SocketAddr::new(ip.into(), 1)
        } else {
            let [_, b, c, d] = n.to_be_bytes();
            SocketAddr::new(Ipv4Addr::new(240, b, c, d).into(), 1)
        };
        paths.by_addr.insert(addr, (node, peer));
        paths.by_route.insert((node, peer), addr);
        Some(addr)
    }

    /// The (relay node, agent) behind a virtual address.
    pub fn relay_route(&self, addr: &SocketAddr) -> Option<(PeerId, PeerId)> {
        self.paths().by_addr.get(addr).copied()
    }

    /// A QUIC packet from agent `peer` arrived through relay `node`.
    pub fn deliver(&self, node: PeerId, peer: PeerId, payload: Bytes) {
        let Some(addr) = self.route(node, peer, MAX_ROUTES) else {
            return; // too many unsolicited peers: drop
        };
        {
            let mut q = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= QUEUE {
                return; // overload: drop, QUIC recovers
            }
            q.push_back((addr, payload));
        }
        self.waker.wake();
    }

    /// Send a one-byte UDP packet to `addr` from the endpoint's socket. It
    /// opens our NAT and firewall for packets from `addr`; the peer's QUIC
    /// stack discards it as not a QUIC packet.
    pub fn punch(&self, addr: SocketAddr) {
        let addr = match (self.ipv6, addr) {
            _ if is_virtual(&addr) => return,
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            (false, SocketAddr::V6(_)) => return,
            _ => addr,
        };
        let transmit = Transmit {
            destination: addr,
            ecn: None,
            contents: &[0],
            segment_size: None,
            src_ip: None,
        };
        let _ = self.inner.try_send(&transmit);
    }

    fn send_relayed(&self, transmit: &Transmit) {
        let Some((node, peer)) = self.relay_route(&transmit.destination) else {
            return; // a virtual address we never handed out: nothing to do
        };
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            let packet = RelayedPacket {
                node,
                peer,
                payload: Bytes::copy_from_slice(segment),
            };
            if self.outbound.try_send(packet).is_err() {
                return; // queue full or agent gone: drop, QUIC recovers
            }
        }
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if is_virtual(&transmit.destination) {
            self.send_relayed(transmit);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.waker.register(cx.waker());
        {
            let mut q = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            while n < bufs.len().min(meta.len()) {
                let Some((addr, payload)) = q.pop_front() else {
                    break;
                };
                if payload.len() > bufs[n].len() {
                    continue; // cannot be a packet we accept
                }
                bufs[n][..payload.len()].copy_from_slice(&payload);
                meta[n] = RecvMeta {
                    addr,
                    len: payload.len(),
                    stride: payload.len(),
                    ecn: None,
                    dst_ip: None,
                };
                n += 1;
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_addresses_are_recognised_and_stable() {
        assert!(is_virtual(&"[fd58:3078::1]:1".parse().unwrap()));
        assert!(is_virtual(&"240.0.0.1:1".parse().unwrap()));
        assert!(!is_virtual(&"[fd58:3079::1]:1".parse().unwrap()));
        assert!(!is_virtual(&"127.0.0.1:1".parse().unwrap()));
        assert!(!is_virtual(&"255.255.255.255:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn relay_addresses_map_both_ways_per_family() {
        let (a, b) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
        for bind in ["[::1]:0", "127.0.0.1:0"] {
            let (s, _rx) = MuxSocket::new(std::net::UdpSocket::bind(bind).unwrap()).unwrap();
            let x = s.relay_addr(a, b);
            assert!(is_virtual(&x));
            assert_eq!(x.is_ipv6(), bind.starts_with('['));
            assert_eq!(s.relay_addr(a, b), x);
            assert_ne!(s.relay_addr(b, a), x);
            assert_eq!(s.relay_route(&x), Some((a, b)));
        }
    }
}
