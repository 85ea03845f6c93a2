//! Unit tests of `device.rs`: mock queues, and a SOCK_SEQPACKET socketpair standing in for
//! the TAP (one read or write per frame, truncating reads, like a TAP descriptor).

use super::*;
use crate::fuzz::net::fake_tap;
use nix::sys::socket::MsgFlags;
use std::os::fd::AsRawFd;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;

const MEM_SIZE: u64 = 0x40_0000;
const QUEUE_SIZE: u16 = 256;
const BUF: u64 = 0x10_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

fn memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    let n = nix::sys::socket::send(fd.as_raw_fd(), frame, MsgFlags::empty());
    assert_eq!(n, Ok(frame.len()));
}

/// The next packet on `fd`, if any.
fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    let n = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).ok()?;
    buf.truncate(n);
    Some(buf)
}

struct Harness<'a> {
    mem: &'a GuestRam,
    vq: MockSplitQueue<'a, GuestRam>,
    queue: Queue,
    next_desc: u16,
    seen_used: u16,
    counters: Arc<Counters>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestRam) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let queue = vq.create_queue().unwrap();
        Harness {
            mem,
            vq,
            queue,
            next_desc: 0,
            seen_used: 0,
            counters: Arc::default(),
        }
    }

    fn push_avail(&self, head: u16) {
        let idx_addr = self.vq.avail_addr().unchecked_add(2);
        let idx: u16 = self.mem.read_obj(idx_addr).unwrap();
        let slot = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % QUEUE_SIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.mem.write_obj(idx.wrapping_add(1), idx_addr).unwrap();
    }

    /// Stores descriptors (`next` relative to the first) and makes the first available.
    fn raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let base = self.next_desc;
        for (i, &(a, l, f, n)) in descs.iter().enumerate() {
            let d = SplitDescriptor::new(a, l, f, n.wrapping_add(base));
            self.vq
                .desc_table()
                .store(base + i as u16, RawDescriptor::from(d))
                .unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.push_avail(base);
        base
    }

    /// A chain of `(addr, len, flags)` linked in order.
    fn chain(&mut self, parts: &[(u64, u32, u16)]) -> u16 {
        let descs: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let last = i + 1 == parts.len();
                (
                    a,
                    l,
                    if last { f } else { f | N },
                    if last { 0 } else { i as u16 + 1 },
                )
            })
            .collect();
        self.raw(&descs)
    }

    fn used(&mut self) -> Vec<(u32, u32)> {
        let used_idx = self.vq.used().idx().load();
        let mut out = Vec::new();
        while self.seen_used != used_idx {
            let e = self
                .vq
                .used()
                .ring()
                .ref_at(usize::from(self.seen_used % QUEUE_SIZE))
                .unwrap()
                .load();
            out.push((e.id(), e.len()));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }

    fn tx(&mut self, worker: &mut TxWorker) -> Result<Vec<(u32, u32)>, TapGone> {
        loop {
            let round = worker.serve_round(&mut self.queue, self.mem)?;
            if !round.again {
                break;
            }
        }
        Ok(self.used())
    }

    fn rx(&mut self, worker: &mut RxWorker) -> Result<(RxEnd, Vec<(u32, u32)>), TapGone> {
        let round = worker.serve(&mut self.queue, self.mem)?;
        Ok((round.end, self.used()))
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A header (with a recognisable flags byte) followed by a frame.
fn packet(frame_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; NET_HDR_SIZE];
    p[0] = 1; // NEEDS_CSUM, to see the header go through untouched
    p.extend(frame(frame_len));
    p
}

#[test]
fn tx_frame_reaches_the_tap_from_split_buffers() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut tx = TxWorker::new(tap, Arc::clone(&h.counters));
    let p = packet(1000);
    mem.write_slice(&p, GuestAddress(BUF)).unwrap();
    // The header and the frame's first bytes in one buffer, the rest in another.
    let head = h.chain(&[(BUF, 20, R), (BUF + 20, (p.len() - 20) as u32, R)]);
    assert_eq!(h.tx(&mut tx).unwrap(), [(u32::from(head), 0)]);
    assert_eq!(recv(&far).unwrap(), p);
    let c = h.counters.snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes), (1, 1000));
}

#[test]
fn tx_short_and_oversized_frames_are_dropped_and_counted() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut tx = TxWorker::new(tap, Arc::clone(&h.counters));
    let short = h.chain(&[(BUF, 11, R)]);
    let large = h.chain(&[(BUF, (NET_HDR_SIZE + MAX_FRAME + 1) as u32, R)]);
    let largest = h.chain(&[(BUF, (NET_HDR_SIZE + MAX_FRAME) as u32, R)]);
    let used = h.tx(&mut tx).unwrap();
    assert_eq!(
        used,
        [
            (u32::from(short), 0),
            (u32::from(large), 0),
            (u32::from(largest), 0)
        ]
    );
    // Only the largest allowed one went out.
    assert_eq!(recv(&far).unwrap().len(), NET_HDR_SIZE + MAX_FRAME);
    assert!(recv(&far).is_none());
    let c = h.counters.snapshot();
    assert_eq!((c.tx_too_short, c.tx_too_large, c.tx_frames), (1, 1, 1));
}

#[test]
fn tx_bad_descriptors_are_returned_and_counted() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut tx = TxWorker::new(tap, Arc::clone(&h.counters));
    let wrong_direction = h.chain(&[(BUF, 12, R), (BUF + 12, 100, W)]);
    let outside = h.chain(&[(MEM_SIZE - 50, 100, R)]);
    // Two descriptors pointing at each other.
    let looping = h.raw(&[(BUF, 12, N, 1), (BUF + 12, 100, N, 0)]);
    let good = h.chain(&[(BUF, 112, R)]);
    let used = h.tx(&mut tx).unwrap();
    assert_eq!(
        used,
        [
            (u32::from(wrong_direction), 0),
            (u32::from(outside), 0),
            (u32::from(looping), 0),
            (u32::from(good), 0)
        ]
    );
    assert_eq!(recv(&far).unwrap().len(), 112);
    assert!(recv(&far).is_none());
    let c = h.counters.snapshot();
    assert_eq!((c.tx_bad_chain, c.tx_frames), (3, 1));
}

#[test]
fn tx_to_a_vanished_tap_is_fatal_and_the_chain_is_returned() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    drop(far);
    let mut tx = TxWorker::new(tap, Arc::clone(&h.counters));
    let head = h.chain(&[(BUF, 112, R)]);
    let err = h.tx(&mut tx).unwrap_err();
    assert_eq!(err.source.raw_os_error(), Some(libc::EPIPE));
    assert_eq!(h.used(), [(u32::from(head), 0)]);
}

#[test]
fn rx_frame_lands_in_the_buffer_with_num_buffers_one() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    mem.write_slice(&[0xee; 4096], GuestAddress(BUF)).unwrap();
    // The header split across two buffers, num_buffers straddling them.
    let head = h.chain(&[(BUF, 11, W), (BUF + 11, 2000, W)]);
    let p = packet(100);
    send(&far, &p);
    let (end, used) = h.rx(&mut rx).unwrap();
    // The one buffer is used up before the TAP is found empty.
    assert_eq!(end, RxEnd::NoBuffers);
    assert_eq!(used, [(u32::from(head), p.len() as u32)]);
    let got = h.bytes(BUF, p.len());
    assert_eq!(got[..10], p[..10]);
    assert_eq!(got[10..12], [1, 0], "num_buffers");
    assert_eq!(got[12..], p[12..]);
    let c = h.counters.snapshot();
    assert_eq!((c.rx_frames, c.rx_bytes), (1, 100));
}

#[test]
fn rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    let head = h.chain(&[(BUF, 80, W)]);
    send(&far, &packet(100));
    send(&far, &packet(60));
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!(end, RxEnd::NoBuffers);
    assert_eq!(used, [(u32::from(head), 72)]);
    assert_eq!(h.bytes(BUF + 12, 60), frame(60));
    let c = h.counters.snapshot();
    assert_eq!((c.rx_too_small, c.rx_frames), (1, 1));
}

#[test]
fn rx_mergeable_buffers_take_as_many_chains_as_the_frame_needs() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    rx.set_features(true, 1518);
    let a = h.chain(&[(BUF, 1000, W)]);
    let b = h.chain(&[(BUF + 0x1000, 1000, W)]);
    let c = h.chain(&[(BUF + 0x2000, 1000, W)]);
    let p = packet(1500);
    send(&far, &p);
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!(
        end,
        RxEnd::NoBuffers,
        "one chain left: not enough for a full frame"
    );
    assert_eq!(used, [(u32::from(a), 1000), (u32::from(b), 512)]);
    let mut got = h.bytes(BUF, 1000);
    got.extend(h.bytes(BUF + 0x1000, 512));
    assert_eq!(got[10..12], [2, 0], "num_buffers");
    assert_eq!(got[12..], p[12..]);
    // The third chain was put back: it is the next one used.
    let d = h.chain(&[(BUF + 0x3000, 1000, W)]);
    send(&far, &packet(10));
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!(end, RxEnd::NoBuffers);
    assert_eq!(used, [(u32::from(c), 22)]);
    assert_eq!(h.bytes(BUF + 0x2000 + 10, 2), [1, 0]);
    let _ = d;
}

#[test]
fn rx_without_buffers_leaves_the_frame_in_the_tap() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    let p = packet(50);
    send(&far, &p);
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!((end, used.len()), (RxEnd::NoBuffers, 0));
    let head = h.chain(&[(BUF, 2000, W)]);
    h.chain(&[(BUF + 0x1000, 2000, W)]);
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!(end, RxEnd::TapEmpty);
    assert_eq!(used, [(u32::from(head), p.len() as u32)]);
    assert_eq!(h.counters.snapshot().rx_too_small, 0);
}

#[test]
fn rx_bad_chains_are_returned_and_counted() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    let readable = h.chain(&[(BUF, 2000, R)]);
    let tiny = h.chain(&[(BUF, 11, W)]);
    let outside = h.chain(&[(MEM_SIZE - 10, 2000, W)]);
    let good = h.chain(&[(BUF, 2000, W)]);
    send(&far, &packet(50));
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!(end, RxEnd::NoBuffers);
    assert_eq!(
        used,
        [
            (u32::from(readable), 0),
            (u32::from(tiny), 0),
            (u32::from(outside), 0),
            (u32::from(good), 62)
        ]
    );
    assert_eq!(h.counters.snapshot().rx_bad_chain, 3);
}

#[test]
fn rx_from_a_vanished_tap_is_fatal_and_buffers_are_kept() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    h.chain(&[(BUF, 2000, W)]);
    drop(far);
    assert!(h.rx(&mut rx).is_err());
    assert!(h.used().is_empty());
}

#[test]
fn rx_starved_with_event_idx_asks_for_a_kick_on_the_next_buffer() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.queue.set_event_idx(true);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    rx.set_features(true, 1518);
    // Not enough for a full-sized frame: nothing is read, the chain stays available.
    let first = h.chain(&[(BUF, 1000, W)]);
    send(&far, &packet(50));
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!((end, used.len()), (RxEnd::NoBuffers, 0));
    // avail_event is the driver's index (1), so its next buffer kicks us; virtio-queue's
    // own choice (our next index, 0) would never be crossed again.
    let avail_event_addr =
        h.vq.used_addr()
            .unchecked_add(4 + 8 * u64::from(QUEUE_SIZE));
    let avail_event: u16 = mem.read_obj(avail_event_addr).unwrap();
    assert_eq!(avail_event, 1);
    h.chain(&[(BUF + 0x1000, 1000, W)]);
    let (_, used) = h.rx(&mut rx).unwrap();
    assert_eq!(used, [(u32::from(first), 62)]);
}

#[test]
fn tx_with_a_bogus_available_index_waits_for_the_next_kick() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, _far) = fake_tap();
    let mut tx = TxWorker::new(tap, Arc::clone(&h.counters));
    let idx_addr = h.vq.avail_addr().unchecked_add(2);
    mem.write_obj(QUEUE_SIZE + 1, idx_addr).unwrap();
    let round = tx.serve_round(&mut h.queue, &mem).unwrap();
    assert!(!round.again && !round.interrupt);
}

/// The used ring's flags: VRING_USED_F_NO_NOTIFY (1) while kicks are off (no EVENT_IDX).
fn used_flags(h: &Harness) -> u16 {
    h.mem.read_obj(h.vq.used_addr()).unwrap()
}

#[test]
fn polling_tx_leaves_kicks_off_while_it_polls_and_turns_them_on_when_idle() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut tx = TxWorker::new(tap, Arc::clone(&h.counters));
    tx.set_poll(Duration::from_micros(200));
    let p = packet(60);
    mem.write_slice(&p, GuestAddress(BUF)).unwrap();
    h.chain(&[(BUF, p.len() as u32, R)]);
    let round = tx.serve_batch(&mut h.queue, &mem).unwrap();
    assert_eq!(
        (round.interrupt, round.again, round.idle),
        (true, false, true)
    );
    assert_eq!(used_flags(&h) & 1, 1, "kicks off until rest()");
    // The driver adds the next frame while we'd poll: found without a kick.
    h.chain(&[(BUF, p.len() as u32, R)]);
    assert!(tx.rest(&mut h.queue, &mem));
    assert_eq!(used_flags(&h) & 1, 1, "still polling: kicks still off");
    let round = tx.serve_batch(&mut h.queue, &mem).unwrap();
    assert!(round.idle);
    // Nothing more within the poll time: kicks back on.
    assert!(!tx.rest(&mut h.queue, &mem));
    assert_eq!(used_flags(&h) & 1, 0);
    assert_eq!(h.used().len(), 2);
    assert_eq!(recv(&far).unwrap(), p);
    assert_eq!(recv(&far).unwrap(), p);
}

#[test]
fn polling_rx_hands_over_frames_before_waiting_for_buffers() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (tap, far) = fake_tap();
    let mut rx = RxWorker::new(tap, Arc::clone(&h.counters));
    rx.set_poll(Duration::from_micros(200));
    let head = h.chain(&[(BUF, 2048, W)]);
    let (first, second) = (packet(100), packet(200));
    send(&far, &first);
    send(&far, &second);
    // The one buffer filled: back to the caller to signal it, not polling first.
    let round = rx.serve(&mut h.queue, &mem).unwrap();
    assert_eq!((round.end, round.interrupt), (RxEnd::Budget, true));
    assert_eq!(h.used(), [(u32::from(head), first.len() as u32)]);
    // Called again: polls, finds no buffer, waits for a kick.
    let (end, used) = h.rx(&mut rx).unwrap();
    assert_eq!((end, used.len()), (RxEnd::NoBuffers, 0));
    let head = h.chain(&[(BUF + 0x1000, 2048, W)]);
    let (_, used) = h.rx(&mut rx).unwrap();
    assert_eq!(used, [(u32::from(head), second.len() as u32)]);
    assert_eq!(
        h.bytes(BUF + 0x1000, second.len())[NET_HDR_SIZE..],
        second[NET_HDR_SIZE..]
    );
}
