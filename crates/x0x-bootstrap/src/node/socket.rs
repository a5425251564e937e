//! The node's UDP socket: QUIC for quinn, relay packets forwarded inline.
//!
//! quinn's endpoint reads datagrams through [`NodeSocket::poll_recv`].
//! Relay packets (see [`x0x_proto::relay`]) are taken out of each batch
//! before quinn sees it and sent on at once from the same socket: no
//! channel, no task, no QUIC termination. A GRO batch of one circuit (the
//! common case under load) is checked and charged once, its circuit ids
//! rewritten in place, and sent as one GSO transmission.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use x0x_proto::batch;
use x0x_proto::relay::{self, RELAY_HEADER_LEN, TYPE_RELAY};

use crate::metrics::Metrics;
use crate::roles::relay::{Drop, Relay};

/// See the module documentation.
pub struct NodeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    relay: Arc<Relay>,
    relay_on: bool,
    max_payload: usize,
    metrics: Metrics,
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
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Arc::new(Self {
            inner,
            relay,
            relay_on,
            max_payload,
            metrics,
        }))
    }

    /// Send one small datagram (a vouch packet) to `to`. Best effort.
    pub fn send_to(&self, to: SocketAddr, contents: &[u8]) -> bool {
        let to = self.for_socket(to);
        self.inner
            .try_send(&Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size: None,
                src_ip: None,
            })
            .is_ok()
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
            let sent = self.inner.try_send(&Transmit {
                destination: route.to,
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > stride).then_some(stride),
                src_ip: None,
            });
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
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
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
