//! Spoofed-source floods of real QUIC Initial packets, for the node's
//! address-validation tests.
//!
//! [`initials`] makes valid QUIC Initials with `quinn-proto` directly: each
//! comes from a client connection of its own (a fresh destination
//! connection id, a real TLS ClientHello with x0x's key exchange), exactly
//! what a node sees from a new agent. [`RawSender`] sends UDP datagrams with
//! any source address from a raw IPv4 socket (`IPPROTO_RAW`, so the IPv4
//! header is ours): a flood from addresses the node cannot reach back.
//! Raw sockets need root; create the sender inside the attacker's
//! namespace ([`crate::netns::in_ns`]), it stays there.

use std::ffi::{c_int, c_void};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn_proto::crypto;
use quinn_proto::transport_parameters::TransportParameters;
use x0x_proto::identity::Identity;
use x0x_proto::transport::{self, TransportOptions};

/// `count` valid QUIC Initial datagrams, each the first datagram of a
/// client handshake of its own (a fresh destination connection id), the
/// way an x0x agent starts one.
///
/// The datagrams are built by a `quinn-proto` client endpoint. A real TLS
/// ClientHello (rustls with x0x's post-quantum key exchange) takes about a
/// millisecond in a debug build, far too slow for tens of thousands, so
/// the first connection's ClientHello is captured and replayed by every
/// later one: quinn-proto still builds, numbers, pads and encrypts each
/// Initial under keys derived from its own fresh destination id. All of
/// them share the source connection id the ClientHello's transport
/// parameters name, so each is consistent: a node that accepted one would
/// go on with the handshake.
pub fn initials(count: usize, to: SocketAddr) -> Vec<Vec<u8>> {
    let identity = Identity::generate().unwrap();
    let opts = TransportOptions::agent_to_node(Duration::from_secs(15), Duration::from_secs(40));
    let transport = opts.quinn().unwrap();
    let scid = quinn_proto::ConnectionId::new(&rand_bytes::<8>());
    let mut endpoint_config = transport::endpoint_config();
    endpoint_config.cid_generator(move || Box::new(FixedCid(scid)));
    let endpoint_config = Arc::new(endpoint_config);

    // The real ClientHello, captured from one real handshake start.
    let real = quinn::crypto::rustls::QuicClientConfig::try_from(
        x0x_proto::tls::client_config(&identity).unwrap(),
    )
    .unwrap();
    let hello = Arc::new(Mutex::new(None));
    let capture = Capture {
        real: Arc::new(real),
        hello: hello.clone(),
    };
    let mut first = quinn_proto::ClientConfig::new(Arc::new(capture));
    first.transport_config(transport.clone());
    let mut out = Vec::with_capacity(count);
    let mut buf = Vec::with_capacity(1500);
    let one = |config: &quinn_proto::ClientConfig, buf: &mut Vec<u8>| {
        let mut endpoint = quinn_proto::Endpoint::new(endpoint_config.clone(), None, false, None);
        let now = Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, config.clone(), to, x0x_proto::tls::SERVER_NAME)
            .expect("client connection");
        buf.clear();
        let t = conn
            .poll_transmit(now, 1, buf)
            .expect("a client sends its Initial at once");
        buf[..t.size].to_vec()
    };
    out.push(one(&first, &mut buf));
    let hello = hello
        .lock()
        .unwrap()
        .take()
        .expect("a ClientHello was written");

    // Initial keys come from the version and the destination id alone.
    let server = transport::server_config(&Identity::generate().unwrap(), &opts).unwrap();
    let replay = Replay {
        hello,
        server: server.crypto.clone(),
    };
    let mut config = quinn_proto::ClientConfig::new(Arc::new(replay));
    config.transport_config(transport);
    while out.len() < count {
        out.push(one(&config, &mut buf));
    }
    out
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    std::array::from_fn(|_| rand_u32() as u8)
}

/// Every connection of an endpoint gets the same source connection id
/// (one connection per endpoint here).
struct FixedCid(quinn_proto::ConnectionId);

impl quinn_proto::ConnectionIdGenerator for FixedCid {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        self.0
    }

    fn cid_len(&self) -> usize {
        self.0.len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A real rustls client whose first handshake flight is recorded.
struct Capture {
    real: Arc<dyn crypto::ClientConfig>,
    hello: Arc<Mutex<Option<Vec<u8>>>>,
}

impl crypto::ClientConfig for Capture {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, quinn_proto::ConnectError> {
        let inner = self
            .real
            .clone()
            .start_session(version, server_name, params)?;
        Ok(Box::new(CaptureSession {
            inner,
            hello: self.hello.clone(),
        }))
    }
}

struct CaptureSession {
    inner: Box<dyn crypto::Session>,
    hello: Arc<Mutex<Option<Vec<u8>>>>,
}

impl crypto::Session for CaptureSession {
    fn initial_keys(
        &self,
        dst_cid: &quinn_proto::ConnectionId,
        side: quinn_proto::Side,
    ) -> crypto::Keys {
        self.inner.initial_keys(dst_cid, side)
    }
    fn handshake_data(&self) -> Option<Box<dyn std::any::Any>> {
        self.inner.handshake_data()
    }
    fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.inner.peer_identity()
    }
    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        self.inner.early_crypto()
    }
    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }
    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }
    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, quinn_proto::TransportError> {
        self.inner.read_handshake(buf)
    }
    fn transport_parameters(
        &self,
    ) -> Result<Option<TransportParameters>, quinn_proto::TransportError> {
        self.inner.transport_parameters()
    }
    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<crypto::Keys> {
        let start = buf.len();
        let keys = self.inner.write_handshake(buf);
        let mut hello = self.hello.lock().unwrap();
        if hello.is_none() && buf.len() > start {
            *hello = Some(buf[start..].to_vec());
        }
        keys
    }
    fn next_1rtt_keys(&mut self) -> Option<crypto::KeyPair<Box<dyn crypto::PacketKey>>> {
        self.inner.next_1rtt_keys()
    }
    fn is_valid_retry(
        &self,
        cid: &quinn_proto::ConnectionId,
        header: &[u8],
        payload: &[u8],
    ) -> bool {
        self.inner.is_valid_retry(cid, header, payload)
    }
    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), crypto::ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// A client that sends a recorded ClientHello.
struct Replay {
    hello: Vec<u8>,
    /// Any server configuration: it derives the Initial keys.
    server: Arc<dyn crypto::ServerConfig>,
}

impl crypto::ClientConfig for Replay {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        _server_name: &str,
        _params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, quinn_proto::ConnectError> {
        Ok(Box::new(ReplaySession {
            config: self,
            version,
            written: false,
        }))
    }
}

struct ReplaySession {
    config: Arc<Replay>,
    version: u32,
    written: bool,
}

impl crypto::Session for ReplaySession {
    fn initial_keys(
        &self,
        dst_cid: &quinn_proto::ConnectionId,
        side: quinn_proto::Side,
    ) -> crypto::Keys {
        let k = self
            .config
            .server
            .initial_keys(self.version, dst_cid)
            .expect("QUIC v1");
        match side {
            quinn_proto::Side::Server => k,
            // The client's keys are the server's, swapped.
            quinn_proto::Side::Client => crypto::Keys {
                header: crypto::KeyPair {
                    local: k.header.remote,
                    remote: k.header.local,
                },
                packet: crypto::KeyPair {
                    local: k.packet.remote,
                    remote: k.packet.local,
                },
            },
        }
    }
    fn handshake_data(&self) -> Option<Box<dyn std::any::Any>> {
        None
    }
    fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        None
    }
    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        None
    }
    fn early_data_accepted(&self) -> Option<bool> {
        None
    }
    fn is_handshaking(&self) -> bool {
        true
    }
    fn read_handshake(&mut self, _buf: &[u8]) -> Result<bool, quinn_proto::TransportError> {
        Ok(false)
    }
    fn transport_parameters(
        &self,
    ) -> Result<Option<TransportParameters>, quinn_proto::TransportError> {
        Ok(None)
    }
    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<crypto::Keys> {
        if !self.written {
            self.written = true;
            buf.extend_from_slice(&self.config.hello);
        }
        None
    }
    fn next_1rtt_keys(&mut self) -> Option<crypto::KeyPair<Box<dyn crypto::PacketKey>>> {
        None
    }
    fn is_valid_retry(&self, _: &quinn_proto::ConnectionId, _: &[u8], _: &[u8]) -> bool {
        false
    }
    fn export_keying_material(
        &self,
        _: &mut [u8],
        _: &[u8],
        _: &[u8],
    ) -> Result<(), crypto::ExportKeyingMaterialError> {
        Err(crypto::ExportKeyingMaterialError)
    }
}

unsafe extern "C" {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn sendto(
        fd: c_int,
        buf: *const c_void,
        len: usize,
        flags: c_int,
        addr: *const SockaddrIn,
        addrlen: u32,
    ) -> isize;
    fn close(fd: c_int) -> c_int;
}

const AF_INET: c_int = 2;
const SOCK_RAW: c_int = 3;
const IPPROTO_RAW: c_int = 255;
const IPPROTO_UDP: u8 = 17;

#[repr(C)]
struct SockaddrIn {
    sin_family: u16,
    sin_port: u16,
    sin_addr: [u8; 4],
    sin_zero: [u8; 8],
}

/// A raw IPv4 socket that sends UDP datagrams with any source address.
pub struct RawSender {
    fd: c_int,
}

impl RawSender {
    /// A raw socket in the calling thread's network namespace.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned by the returned value.
        let fd = unsafe { socket(AF_INET, SOCK_RAW, IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Send `payload` as a UDP datagram `from -> to`.
    pub fn send(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let packet = udp_packet(from, to, payload);
        let addr = SockaddrIn {
            sin_family: AF_INET as u16,
            sin_port: 0,
            sin_addr: to.ip().octets(),
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `addr` outlive the call; lengths are theirs.
        let n = unsafe {
            sendto(
                self.fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                &addr,
                std::mem::size_of::<SockaddrIn>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { close(self.fd) };
    }
}

/// The one's-complement sum of `data` as 16-bit big-endian words.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 packet carrying one UDP datagram, with both checksums.
pub fn udp_packet(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    // IPv4: version 4, IHL 5, no TOS, total length, id, DF, TTL 64, UDP.
    let id = (rand_u32() & 0xffff) as u16;
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    let ip_sum = fold(sum16(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // UDP header, checksum over the pseudo-header, header and payload.
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&from.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut udp_sum = fold(sum16(&p[20..], sum16(&pseudo, 0)));
    if udp_sum == 0 {
        udp_sum = 0xffff; // 0 means "no checksum" in IPv4 UDP
    }
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

fn seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
    now ^ (u64::from(std::process::id()) << 32)
}

/// A small xorshift generator seeded from the clock (no extra crates).
fn rand_u32() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get() | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 16) as u32
    })
}

/// What a [`flood`] sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: usize,
    pub errors: usize,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Send each of `packets` once to `to`, from a random address of
/// `spoof_net` (a /16: `a.b.0.0`) and a random port, at `per_sec`
/// packets a second. Stops after the last packet or after `limit`.
pub fn flood(
    sender: &RawSender,
    packets: &[Vec<u8>],
    spoof_net: Ipv4Addr,
    to: SocketAddrV4,
    per_sec: u32,
    limit: Duration,
) -> FloodReport {
    let [a, b, _, _] = spoof_net.octets();
    let started = Instant::now();
    let (mut sent, mut errors) = (0, 0);
    for p in packets {
        if started.elapsed() >= limit {
            break;
        }
        // Pace: the k-th packet leaves at k / per_sec.
        let due = Duration::from_secs_f64(sent as f64 / f64::from(per_sec));
        if let Some(wait) = due.checked_sub(started.elapsed())
            && wait > Duration::from_micros(200)
        {
            std::thread::sleep(wait);
        }
        let r = rand_u32();
        let from = SocketAddrV4::new(
            Ipv4Addr::new(a, b, (r >> 8) as u8, (r as u8).max(1)),
            1024 + (r >> 16) as u16 % 60000,
        );
        match sender.send(from, to, p) {
            Ok(()) => sent += 1,
            Err(_) => errors += 1,
        }
    }
    FloodReport {
        sent,
        errors,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = udp_packet(
            "10.1.2.3:4000".parse().unwrap(),
            "192.0.2.9:12000".parse().unwrap(),
            b"hello, odd length",
        );
        // A correct header sums to 0xffff (folded), i.e. fold() gives 0.
        assert_eq!(fold(sum16(&p[..20], 0)), 0);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        assert_eq!(fold(sum16(&p[20..], sum16(&pseudo, 0))), 0);
    }

    #[test]
    fn initials_are_distinct_long_header_packets() {
        let to: SocketAddr = "192.0.2.1:12000".parse().unwrap();
        let ps = initials(300, to);
        assert_eq!(ps.len(), 300);
        for p in &ps {
            assert!(p.len() >= 1200, "Initials are padded to 1200 bytes");
            assert_eq!(p[0] & 0xf0, 0xc0, "long header, type Initial");
        }
        // Destination connection ids (after version and length byte) differ.
        let dcid = |p: &[u8]| p[6..6 + p[5] as usize].to_vec();
        let set: std::collections::HashSet<_> = ps.iter().map(|p| dcid(p)).collect();
        assert_eq!(set.len(), 300);
    }
}
