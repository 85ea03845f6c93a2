//! Fuzzing the vsock connection table with what a guest sends (any header, any payload,
//! mostly aimed at live streams) interleaved with what host peers do (write, go away).
//! Checks, for every packet the device sends the guest: from the host's CID to the
//! guest's, a stream packet, a payload within bounds, and never more data on a stream
//! than the guest's last word on it allowed.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;

use super::input::Input;
use crate::vsock::muxer::{Muxer, MAX_PAYLOAD};
use crate::vsock::packet::{op, Header, TYPE_STREAM};
use crate::vsock::HOST_CID;

const CID: u64 = 3;

/// What the guest last said about its buffer on a stream, and what it was sent since.
#[derive(Default)]
struct Granted {
    buf_alloc: u32,
    fwd_cnt: u32,
    sent: u32,
}

/// Runs the table on `data`; returns how many packets it sent the guest.
pub fn fuzz_vsock(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let Ok(mut m) = Muxer::new(CID, None, None) else {
        return 0;
    };
    let mut peers = Vec::new();
    let mut host_ports = Vec::new();
    for i in 0..(input.u8() % 4) {
        let Ok((ours, theirs)) = UnixStream::pair() else {
            return 0;
        };
        let _ = ours.set_nonblocking(true);
        let _ = theirs.set_nonblocking(true);
        if let Some(p) = m.host_connect(ours, 5000 + u32::from(i)) {
            host_ports.push((p, 5000 + u32::from(i)));
        }
        peers.push(Some(theirs));
    }
    let mut granted: HashMap<(u32, u32), Granted> = HashMap::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut sent = 0usize;
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 4 {
            0 | 1 => {
                let h = header(&mut input, &host_ports);
                let n = (h.len as usize).min(512);
                let payload = input.take(n).to_vec();
                if h.src_cid == CID && h.dst_cid == HOST_CID && h.type_ == TYPE_STREAM {
                    let g = granted.entry((h.dst_port, h.src_port)).or_default();
                    if h.op == op::REQUEST || h.op == op::RESPONSE {
                        *g = Granted::default();
                    }
                    g.buf_alloc = h.buf_alloc;
                    g.fwd_cnt = h.fwd_cnt;
                }
                m.guest_packet(&h, &payload);
            }
            2 => {
                let i = usize::from(input.u8()) % peers.len().max(1);
                let n = usize::from(input.u16() % 8192);
                if let Some(Some(p)) = peers.get_mut(i) {
                    let _ = p.write(&vec![0xabu8; n]);
                }
            }
            _ => {
                let i = usize::from(input.u8()) % peers.len().max(1);
                if let Some(p) = peers.get_mut(i) {
                    *p = None;
                }
            }
        }
        poll(&mut m);
        while let Some(h) = m.next_packet(&mut buf) {
            sent += 1;
            assert_eq!(
                (h.src_cid, h.dst_cid, h.type_),
                (HOST_CID, CID, TYPE_STREAM)
            );
            assert!(h.len as usize <= MAX_PAYLOAD);
            assert!(h.op == op::RW || h.len == 0, "{h:?}");
            if h.op == op::RW {
                let g = granted.entry((h.src_port, h.dst_port)).or_default();
                g.sent = g.sent.wrapping_add(h.len);
                let in_flight = g.sent.wrapping_sub(g.fwd_cnt);
                // Only checkable while the guest's fwd_cnt was honest (not ahead of what it
                // was sent); the table then has no credit to give at all.
                assert!(
                    in_flight <= g.buf_alloc,
                    "sent beyond the guest's credit: {h:?}"
                );
            }
            if sent > 10_000 {
                return sent;
            }
        }
    }
    sent
}

/// A guest packet: usually well addressed and aimed at a live stream.
fn header(input: &mut Input<'_>, host_ports: &[(u32, u32)]) -> Header {
    let shape = input.u8();
    let (mut dst_port, mut src_port) = (input.u32() % 8, input.u32() % 8 + 5000);
    if shape & 1 == 0 {
        if let Some(&(h, g)) = host_ports.get(usize::from(input.u8()) % host_ports.len().max(1)) {
            (dst_port, src_port) = (h, g);
        }
    }
    Header {
        src_cid: if shape & 2 == 0 { CID } else { input.u64() },
        dst_cid: if shape & 4 == 0 {
            HOST_CID
        } else {
            input.u64()
        },
        src_port,
        dst_port,
        len: if shape & 8 == 0 {
            u32::from(input.u16() % 600)
        } else {
            input.u32()
        },
        type_: if shape & 16 == 0 {
            TYPE_STREAM
        } else {
            input.u16()
        },
        op: if shape & 32 == 0 {
            u16::from(input.u8() % 9)
        } else {
            input.u16()
        },
        flags: input.u32() % 4,
        buf_alloc: if shape & 64 == 0 {
            1 << 16
        } else {
            input.u32()
        },
        fwd_cnt: if shape & 128 == 0 { 0 } else { input.u32() },
    }
}

fn poll(m: &mut Muxer) {
    let mut events = vec![vmm_sys_util::epoll::EpollEvent::default(); 16];
    for _ in 0..16 {
        let Ok(n) = m.epoll().wait(0, &mut events) else {
            return;
        };
        for e in &events[..n] {
            m.event(e.data(), e.event_set());
        }
        if n < events.len() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stable::{run_bounded, Rng};
    use super::*;

    /// Host streams, then the guest's answers and data on them.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let mut out = vec![3u8];
        for _ in 0..(1 + rng.below(12)) {
            out.push(rng.below(4) as u8);
            out.extend(rng.bytes(24));
        }
        out
    }

    #[test]
    fn stable_fuzz_vsock() {
        run_bounded("vsock", valid, fuzz_vsock);
    }
}
