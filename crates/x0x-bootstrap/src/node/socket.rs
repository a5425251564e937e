//! The node's UDP socket: QUIC for quinn, relay packets forwarded inline.
//!
//! quinn's endpoint reads datagrams through [`NodeSocket::poll_recv`].
//! Relay packets (see [`x0x_proto::relay`]) are taken out of each batch
//! before quinn sees it and sent on at once from the same socket: no
//! channel, no task, no QUIC termination. A GRO batch of one circuit (the
//! common case under load) is checked and charged once, its circuit ids
//! rewritten in place, and sent as one GSO transmission.
//!
//! Agents on networks that block UDP reach the node over TLS/WebSocket
//! ([`super::tcp`]); each such session is a *virtual peer* here: datagrams
//! it sends are injected into the receive path as if they came from its
//! virtual address, and datagrams for that address go back down its
//! WebSocket. quinn and the relay cannot tell the difference.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use x0x_proto::batch;
use x0x_proto::relay::{
    self, RELAY_HEADER_LEN, TYPE_RELAY, TYPE_UDP_CHECK, TYPE_UDP_ECHO, UDP_CHECK_LEN,
};

use crate::metrics::Metrics;
use crate::roles::relay::{Drop, Relay};

/// Datagrams from TCP sessions waiting for quinn.
const INJECTED: usize = 8192;
/// Datagrams queued toward one TCP session.
const TO_SESSION: usize = 1024;

/// A TCP session seen as a UDP peer.
#[derive(Debug)]
struct Virtual {
    tx: mpsc::Sender<Vec<u8>>,
    tcp_peer: SocketAddr,
}

#[derive(Debug, Default)]
struct Virtuals {
    peers: HashMap<SocketAddr, Virtual>,
    next: u64,
}

/// See the module documentation.
pub struct NodeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    ipv6: bool,
    relay: Arc<Relay>,
    relay_on: bool,
    max_payload: usize,
    metrics: Metrics,
    virtuals: Mutex<Virtuals>,
    injected: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    waker: AtomicWaker,
}

impl fmt::Debug for NodeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl NodeSocket {
    pub fn new(
        socket: std::net::UdpSocket,
        relay: Arc<Relay>,
        relay_on: bool,
        max_payload: usize,
        metrics: Metrics,
    ) -> io::Result<Arc<Self>> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Arc::new(Self {
            inner,
            ipv6,
            relay,
            relay_on,
            max_payload,
            metrics,
            virtuals: Mutex::default(),
            injected: Mutex::default(),
            waker: AtomicWaker::new(),
        }))
    }

    fn virtuals(&self) -> std::sync::MutexGuard<'_, Virtuals> {
        self.virtuals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new virtual peer for the TCP session from `tcp_peer`: its address,
    /// and the datagrams to send down the session.
    pub fn add_virtual(&self, tcp_peer: SocketAddr) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(TO_SESSION);
        let mut v = self.virtuals();
        v.next += 1;
        let n = v.next;
        let addr = if self.ipv6 {
            let s = |shift: u32| ((n >> shift) & 0xffff) as u16;
            SocketAddr::new(
                Ipv6Addr::new(0xfd58, 0x3078, 0x7463, 0, s(48), s(32), s(16), s(0)).into(),
                1,
            )
        } else {
            let low = (n % ((1 << 28) - 2)) as u32 + 1;
            SocketAddr::new(Ipv4Addr::from(0xf000_0000 | low).into(), 1)
        };
        v.peers.insert(addr, Virtual { tx, tcp_peer });
        (addr, rx)
    }

    /// The TCP session at `addr` ended.
    pub fn remove_virtual(&self, addr: &SocketAddr) {
        self.virtuals().peers.remove(addr);
    }

    /// The TCP peer behind a virtual address.
    pub fn tcp_peer_of(&self, addr: &SocketAddr) -> Option<SocketAddr> {
        self.virtuals().peers.get(addr).map(|v| v.tcp_peer)
    }

    /// TCP sessions open now.
    pub fn tcp_sessions(&self) -> usize {
        self.virtuals().peers.len()
    }

    /// A datagram the TCP session at `from` sent. Returns false if dropped.
    pub fn inject(&self, from: SocketAddr, datagram: Vec<u8>) -> bool {
        {
            let mut q = self.injected.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= INJECTED {
                return false;
            }
            q.push_back((from, datagram));
        }
        self.waker.wake();
        true
    }

    /// Send `contents` (datagrams `segment` bytes apart) to `to`: down its
    /// TCP session if it is a virtual peer, else from the UDP socket.
    fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let tx = self.virtuals().peers.get(&to).map(|v| v.tx.clone());
        if let Some(tx) = tx {
            for d in contents.chunks(segment.unwrap_or(contents.len()).max(1)) {
                if tx.try_send(d.to_vec()).is_err() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
            return Ok(());
        }
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        })
    }

    /// Send one small datagram (a vouch packet) to `to`. Best effort.
    pub fn send_to(&self, to: SocketAddr, contents: &[u8]) -> bool {
        self.send(self.for_socket(to), contents, None).is_ok()
    }

    /// `to` in the address family of the socket.
    fn for_socket(&self, to: SocketAddr) -> SocketAddr {
        match (self.inner.local_addr(), to) {
            (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => to,
        }
    }

    fn drop(&self, reason: Drop, packets: usize) {
        self.metrics.drop_relayed(reason.label(), packets as u64);
    }

    /// Forward the relay packets `buf[range]` (all of circuit `cid`, each
    /// `stride` long but the last) from `from`.
    fn forward(&self, from: SocketAddr, buf: &mut [u8], stride: usize, cid: u64) {
        let segments = buf.len().div_ceil(stride);
        if !self.relay_on {
            return self.metrics.drop_relayed("disabled", segments as u64);
        }
        let payload = buf.len() - segments * RELAY_HEADER_LEN;
        if stride - RELAY_HEADER_LEN > self.max_payload {
            return self.drop(Drop::TooLarge, segments);
        }
        let route = match self
            .relay
            .route(from, cid, segments, payload, Instant::now())
        {
            Ok(r) => r,
            Err(d) => return self.drop(d, segments),
        };
        for start in (0..buf.len()).step_by(stride) {
            relay::set_relay_cid(&mut buf[start..], route.cid);
        }
        // One GSO transmission per run of segments the socket can send at once.
        let per_send = self.inner.max_transmit_segments().max(1) * stride;
        let mut sent_all = true;
        for chunk in buf.chunks(per_send) {
            let sent = self.send(route.to, chunk, (chunk.len() > stride).then_some(stride));
            sent_all &= sent.is_ok();
        }
        if sent_all {
            self.metrics.relay_datagrams.inc_by(segments as u64);
            self.metrics.relay_bytes.inc_by(payload as u64);
        } else {
            self.metrics.drop_relayed("send_failed", segments as u64);
        }
    }

    /// Take the non-QUIC datagrams out of one receive buffer, forwarding
    /// relay packets. Returns whether QUIC datagrams remain in it.
    fn filter(&self, buf: &mut [u8], meta: &mut RecvMeta) -> bool {
        let buf = &mut buf[..meta.len];
        let stride = meta.stride.max(1);
        let mut quic = 0;
        let mut first_cid = None;
        let mut one_circuit = true;
        for r in batch::segments(buf, meta) {
            let seg = &buf[r];
            if !relay::is_x0x(seg[0]) {
                quic += 1;
                continue;
            }
            let cid = relay::parse_relay(seg).map(|(c, _)| c);
            match (first_cid, cid) {
                (_, None) => one_circuit = false,
                (None, Some(c)) => first_cid = Some(c),
                (Some(a), Some(c)) if a != c => one_circuit = false,
                _ => {}
            }
        }
        let segments = meta.len.div_ceil(stride);
        if quic == segments {
            return true;
        }
        if quic == 0
            && one_circuit
            && let Some(cid) = first_cid
        {
            self.forward(meta.addr, buf, stride, cid);
            return false;
        }
        // Mixed: forward the relay packets one by one, keep the QUIC ones.
        let mut write = 0;
        let ranges: Vec<_> = batch::segments(buf, meta).collect();
        for r in ranges {
            let len = r.len();
            if !relay::is_x0x(buf[r.start]) {
                buf.copy_within(r, write);
                write += len;
                continue;
            }
            match relay::parse_relay(&buf[r.clone()]) {
                Some((cid, _)) if buf[r.start] == TYPE_RELAY => {
                    let mut one = buf[r].to_vec();
                    self.forward(meta.addr, &mut one, len, cid);
                }
                _ if buf[r.start] == TYPE_UDP_CHECK && len == UDP_CHECK_LEN => {
                    // UDP works for this agent: say so, from where it asked.
                    let mut echo = buf[r].to_vec();
                    echo[0] = TYPE_UDP_ECHO;
                    if self.tcp_peer_of(&meta.addr).is_none() {
                        let _ = self.send(meta.addr, &echo, None);
                    }
                }
                _ => self.metrics.reject_frame("stray_packet"),
            }
        }
        meta.len = write;
        write > 0
    }
}

impl AsyncUdpSocket for NodeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.send(
            transmit.destination,
            transmit.contents,
            transmit.segment_size,
        )
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.waker.register(cx.waker());
        loop {
            // Datagrams from TCP sessions first, then the UDP socket.
            let injected = {
                let mut q = self.injected.lock().unwrap_or_else(|e| e.into_inner());
                batch::fill_from(&mut q, bufs, meta)
            };
            let n = if injected > 0 {
                injected
            } else {
                ready!(self.inner.poll_recv(cx, bufs, meta))?
            };
            let keep: Vec<bool> = (0..n)
                .map(|i| self.filter(&mut bufs[i], &mut meta[i]))
                .collect();
            let kept = batch::compact(bufs, meta, &keep);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Only relay traffic this time: read again (or register the waker).
        }
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
