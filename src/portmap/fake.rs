//! A fake NAT-PMP gateway on a loopback address, for tests: it answers
//! PCP requests as a NAT-PMP-only server does ("unsupported version"),
//! answers NAT-PMP, records every datagram, and counts what reaches its
//! SSDP port (UPnP discovery).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Gateway;

/// One datagram the fake received on port 5351 (or its SSDP port).
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub bytes: Vec<u8>,
    pub ssdp: bool,
}

impl Seen {
    /// A NAT-PMP UDP mapping request: (internal port, suggested port, lifetime).
    pub fn natpmp_map(&self) -> Option<(u16, u16, u32)> {
        let b = &self.bytes;
        (!self.ssdp && b.len() == 12 && b[0] == 0 && b[1] == 1).then(|| {
            (
                u16::from_be_bytes([b[4], b[5]]),
                u16::from_be_bytes([b[6], b[7]]),
                u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            )
        })
    }

    pub fn is_pcp(&self) -> bool {
        !self.ssdp && self.bytes.first() == Some(&2)
    }
}

pub struct FakeGateway {
    pub ip: Ipv4Addr,
    pub external_ip: Ipv4Addr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FakeGateway {
    /// Listen on `ip`:5351 and `ip`:`ssdp_port`. Each mapping gets external
    /// port `internal + n` for the n-th request (so a renewal changes the
    /// address) and a lifetime of at most `grant`.
    pub fn start(ip: Ipv4Addr, ssdp_port: u16, grant: Duration) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let external_ip = Ipv4Addr::new(203, 0, 113, 7);
        let mut threads = Vec::new();
        for (port, ssdp) in [(crab_nat::GATEWAY_PORT, false), (ssdp_port, true)] {
            let socket = UdpSocket::bind(SocketAddrV4::new(ip, port))
                .unwrap_or_else(|e| panic!("fake gateway binds {ip}:{port}: {e}"));
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let (seen, stop) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut maps = 0u16;
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let req = buf[..n].to_vec();
                    seen.lock().unwrap().push(Seen {
                        at: Instant::now(),
                        bytes: req.clone(),
                        ssdp,
                    });
                    if ssdp {
                        continue;
                    }
                    if let Some(reply) = answer(&req, external_ip, grant, &mut maps) {
                        socket.send_to(&reply, from).ok();
                    }
                }
            }));
        }
        Self {
            ip,
            external_ip,
            seen,
            stop,
            threads,
        }
    }

    /// The gateway to give the port mapper.
    pub fn gateway(&self, ssdp_port: u16) -> Gateway {
        Gateway {
            ip: self.ip,
            ssdp: SocketAddr::V4(SocketAddrV4::new(self.ip, ssdp_port)),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().ok();
        }
    }
}

/// The reply of a NAT-PMP-only gateway (RFC 6886) to `req`.
fn answer(req: &[u8], external: Ipv4Addr, grant: Duration, maps: &mut u16) -> Option<Vec<u8>> {
    let epoch = 1000u32.to_be_bytes();
    match req {
        // Any other version (PCP is 2): "unsupported version", 8 bytes.
        [v, op, ..] if *v != 0 => Some([&[0, 0x80 | op, 0, 1][..], &epoch].concat()),
        // External address.
        [0, 0] => Some([&[0, 128, 0, 0][..], &epoch, &external.octets()].concat()),
        // Map UDP: internal, suggested external, lifetime.
        [0, 1, _, _, i0, i1, _, _, l0, l1, l2, l3] => {
            let internal = u16::from_be_bytes([*i0, *i1]);
            let asked = u32::from_be_bytes([*l0, *l1, *l2, *l3]);
            let (external_port, lifetime) = if asked == 0 {
                (0, 0) // deletion
            } else {
                *maps += 1;
                (
                    internal.wrapping_add(*maps),
                    asked.min(grant.as_secs() as u32),
                )
            };
            Some(
                [
                    &[0, 129, 0, 0][..],
                    &epoch,
                    &internal.to_be_bytes(),
                    &external_port.to_be_bytes(),
                    &lifetime.to_be_bytes(),
                ]
                .concat(),
            )
        }
        _ => None,
    }
}
