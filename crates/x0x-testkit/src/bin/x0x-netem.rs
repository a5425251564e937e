//! `x0x-netem`: delay and loss for test labs on kernels without `sch_netem`.
//!
//! Runs inside a lab's wan namespace, where iptables sends forwarded
//! packets to an NFQUEUE (`-j NFQUEUE --queue-num Q --queue-bypass`). Each
//! packet's verdict (accept or drop) is given after the delay of the first
//! rule matching its source and destination, so the kernel forwards it
//! that much later: per-pair one-way delay and loss, like `tc netem`.
//!
//! ```text
//! x0x-netem --queue 7 --rule 198.18.1.0/24,198.18.2.0/24,40,1.0 --rule ...
//!            (src prefix, dst prefix, one-way delay ms, loss %)
//! ```
//!
//! Only for labs: it runs where the test put it and stops with its parent.

use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

#[derive(Debug, Clone, Copy)]
struct Rule {
    src: (u32, u32),
    dst: (u32, u32),
    delay: Duration,
    loss: f64,
}

fn prefix(s: &str) -> Result<(u32, u32), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s}: {e}"))?;
    let len: u32 = len.parse().map_err(|e| format!("{s}: {e}"))?;
    if len > 32 {
        return Err(format!("{s}: prefix length over 32"));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((u32::from(ip) & mask, mask))
}

fn rule(s: &str) -> Result<Rule, String> {
    let f: Vec<&str> = s.split(',').collect();
    let [src, dst, delay, loss] = f[..] else {
        return Err(format!(
            "rule {s:?}: expected SRC/LEN,DST/LEN,DELAY_MS,LOSS_PCT"
        ));
    };
    Ok(Rule {
        src: prefix(src)?,
        dst: prefix(dst)?,
        delay: Duration::from_micros(
            (delay.parse::<f64>().map_err(|e| format!("{delay}: {e}"))? * 1000.0) as u64,
        ),
        loss: loss.parse::<f64>().map_err(|e| format!("{loss}: {e}"))? / 100.0,
    })
}

/// A verdict due at `at` (ordered earliest first in the heap).
struct Due {
    at: Instant,
    seq: u64,
    msg: nfq::Message,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("x0x-netem: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut queue_num = 0u16;
    let mut rules = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--queue" => queue_num = val()?.parse().map_err(|e| format!("--queue: {e}"))?,
            "--rule" => rules.push(rule(&val()?)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut q = Queue::open().map_err(|e| format!("open NFQUEUE: {e}"))?;
    q.bind(queue_num)
        .map_err(|e| format!("bind queue {queue_num}: {e}"))?;
    let _ = q.set_queue_max_len(queue_num, 65_536);
    q.set_nonblocking(true);
    println!("ready");
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let mut idle = true;
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    idle = false;
                    let p = msg.get_payload();
                    let (src, dst) = if p.len() >= 20 && p[0] >> 4 == 4 {
                        (
                            u32::from_be_bytes([p[12], p[13], p[14], p[15]]),
                            u32::from_be_bytes([p[16], p[17], p[18], p[19]]),
                        )
                    } else {
                        (0, 0)
                    };
                    let r = rules
                        .iter()
                        .find(|r| src & r.src.1 == r.src.0 && dst & r.dst.1 == r.dst.0);
                    match r {
                        Some(r) if rand::random::<f64>() < r.loss => {
                            msg.set_verdict(Verdict::Drop);
                            q.verdict(msg).map_err(|e| format!("verdict: {e}"))?;
                        }
                        Some(r) if !r.delay.is_zero() => {
                            msg.set_verdict(Verdict::Accept);
                            seq += 1;
                            heap.push(Due {
                                at: Instant::now() + r.delay,
                                seq,
                                msg,
                            });
                        }
                        _ => {
                            msg.set_verdict(Verdict::Accept);
                            q.verdict(msg).map_err(|e| format!("verdict: {e}"))?;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|d| d.at <= now) {
            let d = heap.pop().expect("peeked");
            q.verdict(d.msg).map_err(|e| format!("verdict: {e}"))?;
            idle = false;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
