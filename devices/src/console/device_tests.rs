//! Unit tests of `device.rs`: mock split queues, a `Vec` as the stream, hostile chains.

use super::*;
use std::io::Cursor;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

fn memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

struct Harness<'a> {
    mem: &'a GuestRam,
    vq: MockSplitQueue<'a, GuestRam>,
    queue: Queue,
    next_desc: u16,
    seen_used: u16,
    counters: Counters,
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
            counters: Counters::default(),
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

    /// Stores descriptors (their `next` fields are offsets from the first slot) and makes
    /// the first available.
    fn raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let base = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                flags,
                base.wrapping_add(next),
            ));
            let at = self
                .vq
                .desc_table_addr()
                .unchecked_add(16 * u64::from(base + i as u16));
            self.mem.write_obj(d, at).unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.push_avail(base);
        base
    }

    /// A well-formed chain of buffers (addr, len) all in one direction.
    fn chain(&mut self, bufs: &[(u64, u32)], flags: u16) -> u16 {
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(a, l))| {
                let more = if i + 1 < bufs.len() { N } else { 0 };
                (a, l, flags | more, i as u16 + 1)
            })
            .collect();
        self.raw(&descs)
    }

    fn used(&mut self) -> Vec<(u32, u32)> {
        let used = self.vq.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.seen_used != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.seen_used % QUEUE_SIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id, len));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }

    fn transmit(&mut self, out: &mut Vec<u8>) -> TxRound {
        let mut tx = Transmitter::default();
        tx.round(&mut self.queue, self.mem, out, &self.counters)
    }

    fn receive(&mut self, rx: &mut Receiver, input: &mut dyn Read) -> RxRound {
        rx.receive(&mut self.queue, self.mem, input, &self.counters)
    }
}

fn fill(mem: &GuestRam, addr: u64, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
}

fn read(mem: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn transmit_keeps_order_across_chains_and_buffers() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    fill(&mem, 0x1_0000, b"hello, ");
    fill(&mem, 0x2_0000, b"world");
    fill(&mem, 0x3_0000, b"!\n");
    let a = h.chain(&[(0x1_0000, 7), (0x2_0000, 5)], R);
    let b = h.chain(&[(0x3_0000, 2)], R);
    // A buffer larger than the scratch buffer crosses in several steps.
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    fill(&mem, 0x4_0000, &big);
    let c = h.chain(&[(0x4_0000, big.len() as u32)], R);
    let mut out = Vec::new();
    let round = h.transmit(&mut out);
    assert!(round.interrupt);
    let mut want = b"hello, world!\n".to_vec();
    want.extend_from_slice(&big);
    assert_eq!(out, want);
    assert_eq!(
        h.used(),
        vec![(u32::from(a), 0), (u32::from(b), 0), (u32::from(c), 0)]
    );
    assert_eq!(h.counters.bad_tx_chains.load(Ordering::Relaxed), 0);
}

#[test]
fn hostile_transmit_chains_are_returned_empty_and_counted() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    fill(&mem, 0x1_0000, b"good");
    fill(&mem, 0x2_0000, b"BAD!");
    let mut heads = vec![
        // A device-writable buffer in a transmit chain: after a readable one, or alone.
        h.raw(&[(0x2_0000, 4, R | N, 1), (0x2_0000, 4, W, 0)]),
        h.raw(&[(0x2_0000, 4, W, 0)]),
        // Outside guest memory, and a huge length.
        h.chain(&[(MEM_SIZE - 2, 4)], R),
        h.chain(&[(0x2_0000, u32::MAX)], R),
        // A loop: two descriptors pointing at each other.
        h.raw(&[(0x2_0000, 4, N, 1), (0x2_0000, 4, N, 0)]),
        // `next` beyond the table.
        h.raw(&[(0x2_0000, 4, N, 100)]),
    ];
    let good = h.chain(&[(0x1_0000, 4)], R);
    heads.push(good);
    let mut out = Vec::new();
    h.transmit(&mut out);
    assert_eq!(
        out, b"good",
        "nothing from a refused chain reaches the stream"
    );
    let used = h.used();
    assert_eq!(used.len(), 7);
    assert_eq!(used.iter().map(|u| u.0 as u16).collect::<Vec<_>>(), heads);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(h.counters.bad_tx_chains.load(Ordering::Relaxed), 6);
}

#[test]
fn transmit_round_is_bounded_by_the_queue_size() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    fill(&mem, 0x1_0000, b"x");
    for _ in 0..QUEUE_SIZE {
        h.raw(&[(0x1_0000, 1, R, 0)]);
    }
    let mut out = Vec::new();
    let round = h.transmit(&mut out);
    assert_eq!(out.len(), usize::from(QUEUE_SIZE));
    assert!(round.again, "a full budget asks for another round");
}

#[test]
fn receive_fills_one_buffer_per_read_in_order() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let mut rx = Receiver::default();
    let a = h.chain(&[(0x1_0000, 3), (0x2_0000, 4)], W);
    let b = h.chain(&[(0x3_0000, 64)], W);
    let mut input = Cursor::new(b"abcdefghij".to_vec());
    let r = h.receive(&mut rx, &mut input);
    assert!(matches!(r.end, RxEnd::Delivered(7)), "{r:?}");
    assert!(r.interrupt);
    assert_eq!(read(&mem, 0x1_0000, 3), b"abc");
    assert_eq!(read(&mem, 0x2_0000, 4), b"defg");
    let r = h.receive(&mut rx, &mut input);
    assert!(matches!(r.end, RxEnd::Delivered(3)), "{r:?}");
    assert_eq!(read(&mem, 0x3_0000, 3), b"hij");
    assert_eq!(h.used(), vec![(u32::from(a), 7), (u32::from(b), 3)]);
    // Out of buffers: the input is left alone.
    let mut more = Cursor::new(b"later".to_vec());
    assert!(matches!(
        h.receive(&mut rx, &mut more).end,
        RxEnd::NoBuffers
    ));
    assert_eq!(more.position(), 0);
}

#[test]
fn eof_puts_the_buffer_back() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let mut rx = Receiver::default();
    let a = h.chain(&[(0x1_0000, 8)], W);
    let mut empty = Cursor::new(Vec::new());
    assert!(matches!(h.receive(&mut rx, &mut empty).end, RxEnd::Eof));
    assert!(h.used().is_empty());
    let mut input = Cursor::new(b"ok".to_vec());
    assert!(matches!(
        h.receive(&mut rx, &mut input).end,
        RxEnd::Delivered(2)
    ));
    assert_eq!(h.used(), vec![(u32::from(a), 2)]);
}

#[test]
fn hostile_receive_buffers_are_skipped_with_length_zero() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let mut rx = Receiver::default();
    let ro = h.chain(&[(0x1_0000, 8)], R);
    let outside = h.chain(&[(MEM_SIZE - 4, 8)], W);
    let looped = h.raw(&[(0x1_0000, 8, W | N, 1), (0x1_0000, 8, W | N, 0)]);
    let empty = h.chain(&[(0x1_0000, 0)], W);
    let good = h.chain(&[(0x5_0000, 8)], W);
    let mut input = Cursor::new(b"data".to_vec());
    let r = h.receive(&mut rx, &mut input);
    assert!(matches!(r.end, RxEnd::Delivered(4)), "{r:?}");
    assert_eq!(read(&mem, 0x5_0000, 4), b"data");
    assert_eq!(
        read(&mem, 0x1_0000, 4),
        [0u8; 4],
        "nothing written to bad buffers"
    );
    assert_eq!(
        h.used(),
        vec![
            (u32::from(ro), 0),
            (u32::from(outside), 0),
            (u32::from(looped), 0),
            (u32::from(empty), 0),
            (u32::from(good), 4)
        ]
    );
    assert_eq!(h.counters.bad_rx_chains.load(Ordering::Relaxed), 4);
}

#[test]
fn a_queue_full_of_bad_receive_buffers_is_skipped_in_bounded_steps() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let mut rx = Receiver::default();
    for _ in 0..QUEUE_SIZE {
        h.raw(&[(0x1_0000, 8, R, 0)]);
    }
    let mut input = Cursor::new(b"kept".to_vec());
    let r = h.receive(&mut rx, &mut input);
    assert!(r.interrupt);
    assert!(matches!(r.end, RxEnd::NoBuffers | RxEnd::Skipped), "{r:?}");
    assert_eq!(input.position(), 0, "no byte taken without a buffer for it");
    assert_eq!(h.used().len(), usize::from(QUEUE_SIZE));
    assert_eq!(
        h.counters.bad_rx_chains.load(Ordering::Relaxed),
        u64::from(QUEUE_SIZE)
    );
}

/// Records, for each piece of output, the used index guest memory shows at that moment.
struct UsedWatcher<'a> {
    mem: &'a GuestRam,
    used_idx: GuestAddress,
    seen: Vec<(u8, u16)>,
}

impl Output for UsedWatcher<'_> {
    fn output(&mut self, bytes: &[u8]) {
        let idx: u16 = self.mem.read_obj(self.used_idx).unwrap();
        self.seen.push((bytes[0], idx));
    }
}

#[test]
fn output_is_handed_over_before_its_chain_is_completed() {
    // A process killed between the two must not have told the guest its bytes were sent:
    // a successor then sends them again (a repeat), never loses them.
    let mem = memory();
    let mut h = Harness::new(&mem);
    for (i, b) in b"abc".iter().enumerate() {
        let at = 0x1_0000 + 0x1000 * i as u64;
        fill(&mem, at, &[*b]);
        h.chain(&[(at, 1)], R);
    }
    let mut watcher = UsedWatcher {
        mem: &mem,
        used_idx: h.vq.used_addr().unchecked_add(2),
        seen: Vec::new(),
    };
    let mut tx = Transmitter::default();
    tx.round(&mut h.queue, &mem, &mut watcher, &h.counters);
    assert_eq!(watcher.seen, [(b'a', 0), (b'b', 1), (b'c', 2)]);
    assert_eq!(h.used().len(), 3);
}
