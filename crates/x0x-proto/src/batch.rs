//! Helpers for sockets that sit between quinn and the UDP socket and take
//! some received datagrams out of a batch (the non-QUIC packets of
//! [`crate::relay`]) before quinn sees it.
//!
//! A receive batch is `n` buffers, each described by a `RecvMeta`; with
//! GRO one buffer holds several datagrams from one source, `stride` bytes
//! apart (the last may be shorter).

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn::udp::RecvMeta;

/// The datagrams of one receive buffer.
pub fn segments(buf: &[u8], meta: &RecvMeta) -> impl Iterator<Item = std::ops::Range<usize>> {
    let stride = meta.stride.max(1);
    (0..meta.len)
        .step_by(stride)
        .map(move |start| start..(start + stride).min(meta.len))
        .filter(move |r| r.end <= buf.len())
}

/// Keep the buffers whose `keep[i]` is true, moved to the front in order;
/// returns how many remain.
pub fn compact(bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], keep: &[bool]) -> usize {
    let mut w = 0;
    for i in 0..keep.len() {
        if !keep[i] {
            continue;
        }
        if w != i {
            let len = meta[i].len;
            let (lo, hi) = bufs.split_at_mut(i);
            lo[w][..len].copy_from_slice(&hi[0][..len]);
            meta[w] = meta[i];
        }
        w += 1;
    }
    w
}

/// Remove `prefix` bytes from the front of every datagram of a buffer in
/// place, and attribute it to `from`.
pub fn strip_prefix(buf: &mut [u8], meta: &mut RecvMeta, prefix: usize, from: SocketAddr) {
    let stride = meta.stride.max(1);
    let mut read = 0;
    let mut write = 0;
    while read < meta.len {
        let end = (read + stride).min(meta.len);
        let n = end - read - prefix;
        buf.copy_within(read + prefix..end, write);
        write += n;
        read = end;
    }
    meta.len = write;
    meta.stride = stride - prefix;
    meta.addr = from;
}

/// Put queued datagrams into the batch, up to its size; returns how many.
pub fn fill_from(
    queue: &mut std::collections::VecDeque<(SocketAddr, Vec<u8>)>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> usize {
    let mut n = 0;
    while n < bufs.len().min(meta.len()) {
        let Some((addr, data)) = queue.pop_front() else {
            break;
        };
        if data.len() > bufs[n].len() {
            continue; // cannot be a packet quinn accepts
        }
        bufs[n][..data.len()].copy_from_slice(&data);
        meta[n] = RecvMeta {
            addr,
            len: data.len(),
            stride: data.len(),
            ecn: None,
            dst_ip: None,
        };
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(addr: &str, len: usize, stride: usize) -> RecvMeta {
        RecvMeta {
            addr: addr.parse().unwrap(),
            len,
            stride,
            ecn: None,
            dst_ip: None,
        }
    }

    #[test]
    fn segments_follow_the_stride_and_the_last_may_be_short() {
        let buf = [0u8; 10];
        let r: Vec<_> = segments(&buf, &meta("1.1.1.1:1", 10, 4)).collect();
        assert_eq!(r, vec![0..4, 4..8, 8..10]);
        let r: Vec<_> = segments(&buf, &meta("1.1.1.1:1", 3, 3)).collect();
        assert_eq!(r, vec![0..3]);
    }

    #[test]
    fn strip_prefix_rewrites_every_datagram_in_place() {
        // Three datagrams of 5 bytes (the last 4), each with a 2-byte prefix.
        let mut buf = *b"xxABCyyDEFzzGH..";
        let mut m = meta("1.1.1.1:1", 14, 5);
        strip_prefix(&mut buf, &mut m, 2, "2.2.2.2:2".parse().unwrap());
        assert_eq!(&buf[..m.len], b"ABCDEFGH");
        assert_eq!(m.stride, 3);
        assert_eq!(m.addr, "2.2.2.2:2".parse().unwrap());
    }

    #[test]
    fn compact_moves_kept_buffers_forward_in_order() {
        let mut a = *b"aaaa";
        let mut b = *b"bbbb";
        let mut c = *b"cccc";
        let mut bufs = [
            IoSliceMut::new(&mut a),
            IoSliceMut::new(&mut b),
            IoSliceMut::new(&mut c),
        ];
        let mut metas = [
            meta("1.1.1.1:1", 4, 4),
            meta("2.2.2.2:2", 4, 4),
            meta("3.3.3.3:3", 2, 2),
        ];
        let n = compact(&mut bufs, &mut metas, &[false, true, true]);
        assert_eq!(n, 2);
        assert_eq!(&bufs[0][..4], b"bbbb");
        assert_eq!(&bufs[1][..2], b"cc");
        assert_eq!(metas[1].addr, "3.3.3.3:3".parse().unwrap());
    }
}
