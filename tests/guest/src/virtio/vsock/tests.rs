//! The driver against a fake device: the tests play the device side of the three queues.

use super::hdr::{op, shutdown, Hdr, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::*;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::mock::{Dma, FakeRegs, MockQueue, QueueArea};

const CID: u64 = 3;

struct Rig {
    regs: &'static FakeRegs,
    _mem: Vec<QueueArea>,
    _bufs: Vec<Dma>,
    v: Vsock<MmioTransport<&'static FakeRegs>>,
    rxdev: MockQueue,
    txdev: MockQueue,
    evdev: MockQueue,
}

/// Queue areas and buffers for the driver, and the [`VsockMemory`] naming them (the caller
/// keeps the first two alive as long as the driver).
fn memory() -> (Vec<QueueArea>, Vec<Dma>, VsockMemory) {
    let areas: Vec<QueueArea> = (0..3).map(|_| QueueArea::new(queue::MAX_SIZE)).collect();
    let bufs = vec![
        Dma::new(RX_BUF as usize * usize::from(RX_COUNT)),
        Dma::new(TX_BUF as usize * usize::from(TX_COUNT)),
        Dma::new(EVENT_BUF as usize * usize::from(EVENT_COUNT)),
        Dma::new(CONN_BYTES as usize),
        Dma::new(TABLES_BYTES as usize),
    ];
    let mem = VsockMemory {
        rx_queue: areas[0].memory(),
        tx_queue: areas[1].memory(),
        event_queue: areas[2].memory(),
        rx_bufs: bufs[0].addr(),
        tx_bufs: bufs[1].addr(),
        event_bufs: bufs[2].addr(),
        conn_bufs: bufs[3].addr(),
        tables: bufs[4].addr(),
    };
    (areas, bufs, mem)
}

fn rig() -> Rig {
    let regs: &'static FakeRegs = Box::leak(Box::new(FakeRegs::vsock(CID)));
    let (areas, bufs, mem) = memory();
    let t = MmioTransport::probe(regs).unwrap();
    // SAFETY: the rig owns the memory for as long as the driver lives.
    let v = unsafe { Vsock::init(t, mem) }.unwrap();
    Rig {
        regs,
        rxdev: MockQueue::new(&areas[0], 256, true),
        txdev: MockQueue::new(&areas[1], 256, true),
        evdev: MockQueue::new(&areas[2], 256, true),
        _mem: areas,
        _bufs: bufs,
        v,
    }
}

fn host(op: u16, src_port: u32, dst_port: u32, len: u32) -> Hdr {
    Hdr {
        src_cid: HOST_CID,
        dst_cid: CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 1 << 20,
        fwd_cnt: 0,
    }
}

impl Rig {
    /// Deliver raw bytes in the next receive buffer, the used length `used`.
    fn inject_raw(&mut self, bytes: &[u8], used: u32) {
        let chain = self.rxdev.next_chain().expect("a posted receive buffer");
        let (addr, len, writable) = chain.descs[0];
        assert!(writable && bytes.len() <= len as usize);
        // SAFETY: a live receive buffer of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        self.rxdev.complete(chain.head, used);
    }

    fn inject(&mut self, h: Hdr, payload: &[u8]) {
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(payload);
        let n = b.len() as u32;
        self.inject_raw(&b, n);
    }

    /// Everything the driver sent, completed.
    fn sent(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(chain) = self.txdev.next_chain() {
            assert_eq!(chain.descs.len(), 1);
            let (addr, len, writable) = chain.descs[0];
            assert!(!writable);
            // SAFETY: a live transmit buffer.
            let b = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
            let h = Hdr::parse(b).expect("a whole header");
            assert_eq!(h.len as usize, b.len() - HDR_LEN, "{h:?}");
            out.push((h, b[HDR_LEN..].to_vec()));
            self.txdev.complete(chain.head, 0);
        }
        out
    }

    fn poll_all(&mut self) -> Vec<Event> {
        let mut evs = Vec::new();
        while let Some(e) = self.v.poll().unwrap() {
            evs.push(e);
        }
        evs
    }

    /// The host connects from `port` to 5000; the connection's id.
    fn accept(&mut self, port: u32) -> usize {
        self.v.listen(5000).unwrap();
        self.inject(host(op::REQUEST, port, 5000, 0), &[]);
        let evs = self.poll_all();
        let [Event::Accepted(id)] = evs[..] else {
            panic!("{evs:?}")
        };
        let sent = self.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.op, op::RESPONSE);
        id
    }
}

#[test]
fn set_up_reads_the_cid_and_posts_buffers() {
    let mut rig = rig();
    assert_eq!(rig.v.guest_cid(), CID);
    assert_eq!(
        rig.v.transport().accepted(),
        common::VERSION_1 | common::EVENT_IDX | feature::STREAM
    );
    {
        let s = rig.regs.state.borrow();
        assert!(s.queue_ready && s.extra_queues.iter().all(|q| q.ready));
        assert_eq!(s.config_widths, [(0, 4), (4, 4)]);
    }
    let mut n = 0;
    while let Some(c) = rig.rxdev.next_chain() {
        assert_eq!(c.descs.len(), 1);
        assert_eq!((c.descs[0].1, c.descs[0].2), (RX_BUF, true));
        n += 1;
    }
    assert_eq!(n, RX_COUNT);
    let mut e = 0;
    while rig.evdev.next_chain().is_some() {
        e += 1;
    }
    assert_eq!(e, EVENT_COUNT);
}

#[test]
fn a_request_to_a_listening_port_is_answered() {
    let mut rig = rig();
    rig.v.listen(5000).unwrap();
    rig.inject(host(op::REQUEST, 1234, 5000, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Accepted(0)]);
    let sent = rig.sent();
    let h = sent[0].0;
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (op::RESPONSE, CID, HOST_CID, 5000, 1234)
    );
    assert_eq!(
        (h.type_, h.buf_alloc, h.fwd_cnt, h.len),
        (TYPE_STREAM, BUF_ALLOC, 0, 0)
    );
}

#[test]
fn a_request_to_another_port_is_reset() {
    let mut rig = rig();
    rig.v.listen(5000).unwrap();
    rig.inject(host(op::REQUEST, 1234, 5001, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Dropped]);
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.op, sent[0].0.dst_port, sent[0].0.src_port),
        (op::RST, 1234, 5001)
    );
    assert_eq!(rig.v.live().count(), 0);
}

#[test]
fn data_is_received_and_credit_advertised_once_consumed() {
    let mut rig = rig();
    let id = rig.accept(1234);
    let chunk = vec![7u8; 4000];
    let mut got = 0;
    // Fill the window completely, consuming nothing.
    for _ in 0..BUF_ALLOC as usize / 4000 {
        rig.inject(host(op::RW, 1234, 5000, 4000), &chunk);
        assert_eq!(rig.poll_all(), [Event::Data(id)]);
        got += 4000;
    }
    assert_eq!(rig.v.conn(id).unwrap().pending() as usize, got);
    assert!(rig.sent().is_empty(), "no credit update before consuming");
    let mut out = vec![0u8; CREDIT_THRESHOLD as usize - 1];
    assert_eq!(rig.v.recv(id, &mut out).unwrap(), out.len());
    assert!(rig.sent().is_empty(), "below the threshold");
    assert_eq!(rig.v.recv(id, &mut out[..1]).unwrap(), 1);
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.op, sent[0].0.fwd_cnt, sent[0].0.buf_alloc),
        (op::CREDIT_UPDATE, CREDIT_THRESHOLD, BUF_ALLOC)
    );
}

#[test]
fn data_wraps_around_the_ring_intact() {
    let mut rig = rig();
    let id = rig.accept(1234);
    let mut next = 0u32;
    let mut expect = 0u32;
    let mut out = vec![0u8; 3000];
    for _ in 0..100 {
        let payload: Vec<u8> = (0..3000).map(|i| ((next + i) * 7 + 3) as u8).collect();
        rig.inject(host(op::RW, 1234, 5000, 3000), &payload);
        next += 3000;
        assert_eq!(rig.poll_all(), [Event::Data(id)]);
        let n = rig.v.recv(id, &mut out).unwrap();
        for (i, b) in out[..n].iter().enumerate() {
            assert_eq!(*b, ((expect + i as u32) * 7 + 3) as u8);
        }
        expect += n as u32;
        rig.sent();
    }
    assert_eq!(expect, next);
}

#[test]
fn a_peer_overrunning_our_credit_is_dropped() {
    let mut rig = rig();
    let id = rig.accept(1234);
    let chunk = vec![1u8; 4000];
    for _ in 0..BUF_ALLOC / 4000 {
        rig.inject(host(op::RW, 1234, 5000, 4000), &chunk);
    }
    rig.poll_all();
    let before = rig.v.conn(id).unwrap().pending();
    rig.inject(host(op::RW, 1234, 5000, 4000), &chunk);
    assert_eq!(rig.poll_all(), [Event::Dropped]);
    assert_eq!(rig.v.conn(id).unwrap().pending(), before);
    assert_eq!(rig.v.stats.overruns, 1);
    assert_eq!(rig.v.conn(id).unwrap().state, State::Established);
}

#[test]
fn send_never_exceeds_the_peers_credit() {
    let mut rig = rig();
    rig.v.listen(5000).unwrap();
    let mut req = host(op::REQUEST, 1234, 5000, 0);
    req.buf_alloc = 10_000;
    rig.inject(req, &[]);
    let [Event::Accepted(id)] = rig.poll_all()[..] else {
        panic!()
    };
    rig.sent();
    let data = vec![9u8; 30_000];
    assert_eq!(rig.v.send(id, &data).unwrap(), 10_000);
    let sent = rig.sent();
    assert_eq!(
        sent.iter().map(|(h, _)| h.len as usize).sum::<usize>(),
        10_000
    );
    assert!(sent.iter().all(|(h, p)| h.op == op::RW
        && h.len as usize <= MAX_PAYLOAD
        && p.len() == h.len as usize));
    assert_eq!(rig.v.send(id, &data).unwrap(), 0, "window full");
    // The peer consumed 4000.
    let mut upd = host(op::CREDIT_UPDATE, 1234, 5000, 0);
    upd.buf_alloc = 10_000;
    upd.fwd_cnt = 4000;
    rig.inject(upd, &[]);
    assert_eq!(rig.poll_all(), [Event::Other]);
    assert_eq!(rig.v.send(id, &data).unwrap(), 4000);
    assert_eq!(rig.v.conn(id).unwrap().tx_cnt, 14_000);
}

#[test]
fn credit_request_gets_an_update() {
    let mut rig = rig();
    let id = rig.accept(1234);
    rig.inject(host(op::CREDIT_REQUEST, 1234, 5000, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Other]);
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.op, sent[0].0.buf_alloc),
        (op::CREDIT_UPDATE, BUF_ALLOC)
    );
    rig.v.request_credit(id).unwrap();
    assert_eq!(rig.sent()[0].0.op, op::CREDIT_REQUEST);
}

#[test]
fn connect_then_response_then_rst() {
    let mut rig = rig();
    let id = rig.v.connect(HOST_CID, 6000).unwrap();
    let sent = rig.sent();
    let h = sent[0].0;
    assert_eq!(
        (h.op, h.dst_cid, h.dst_port, h.src_port),
        (op::REQUEST, HOST_CID, 6000, FIRST_EPHEMERAL)
    );
    assert!(matches!(
        rig.v.send(id, b"x"),
        Err(VsockError::NotConnected(_))
    ));
    rig.inject(host(op::RESPONSE, 6000, FIRST_EPHEMERAL, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Connected(id)]);
    assert_eq!(rig.v.send(id, b"hello").unwrap(), 5);
    assert_eq!(rig.sent()[0].1, b"hello");
    rig.inject(host(op::RST, 6000, FIRST_EPHEMERAL, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Closed(id)]);
    assert!(rig.sent().is_empty(), "never answer an RST");
    assert_eq!(rig.v.live().count(), 0);
}

#[test]
fn refused_connect_is_closed() {
    let mut rig = rig();
    let id = rig.v.connect(HOST_CID, 6000).unwrap();
    rig.sent();
    rig.inject(host(op::RST, 6000, FIRST_EPHEMERAL, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Closed(id)]);
}

#[test]
fn many_connections_are_kept_apart() {
    let mut rig = rig();
    rig.v.listen(5000).unwrap();
    for p in 0..64u32 {
        rig.inject(host(op::REQUEST, 2000 + p, 5000, 0), &[]);
    }
    let evs = rig.poll_all();
    assert_eq!(evs.len(), 64);
    assert_eq!(rig.sent().len(), 64);
    for p in 0..64u32 {
        rig.inject(host(op::RW, 2000 + p, 5000, 4), &p.to_le_bytes());
    }
    rig.poll_all();
    for id in rig.v.live().collect::<Vec<_>>() {
        let c = *rig.v.conn(id).unwrap();
        let mut out = [0u8; 8];
        assert_eq!(rig.v.recv(id, &mut out).unwrap(), 4);
        assert_eq!(
            u32::from_le_bytes(out[..4].try_into().unwrap()),
            c.peer_port - 2000
        );
    }
}

#[test]
fn shutdown_both_ways_is_answered_with_rst() {
    let mut rig = rig();
    let id = rig.accept(1234);
    let mut sd = host(op::SHUTDOWN, 1234, 5000, 0);
    sd.flags = shutdown::SEND;
    rig.inject(sd, &[]);
    assert_eq!(rig.poll_all(), [Event::PeerShutdown(id)]);
    sd.flags = shutdown::BOTH;
    rig.inject(sd, &[]);
    assert_eq!(rig.poll_all(), [Event::Closed(id)]);
    assert_eq!(rig.sent()[0].0.op, op::RST);
}

#[test]
fn our_shutdown_waits_for_the_peers_rst() {
    let mut rig = rig();
    let id = rig.accept(1234);
    rig.v.shutdown(id, shutdown::BOTH).unwrap();
    let h = rig.sent()[0].0;
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, shutdown::BOTH));
    assert_eq!(rig.v.conn(id).unwrap().state, State::Closing);
    rig.inject(host(op::RST, 1234, 5000, 0), &[]);
    assert_eq!(rig.poll_all(), [Event::Closed(id)]);
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let mut rig = rig();
    let id = rig.accept(1234);
    // Short header.
    rig.inject_raw(&[1, 2, 3], 3);
    // A length beyond what the device wrote.
    rig.inject(host(op::RW, 1234, 5000, 60_000), &[0; 10]);
    // Wrong destination CID: dropped without a word.
    let mut wrong = host(op::RW, 1234, 5000, 1);
    wrong.dst_cid = 99;
    rig.inject(wrong, &[0]);
    // Unknown type: RST.
    let mut t = host(op::REQUEST, 1234, 5000, 0);
    t.type_ = 7;
    rig.inject(t, &[]);
    // Unknown op on the connection: ignored.
    rig.inject(host(99, 1234, 5000, 0), &[]);
    // RW with no connection: RST.
    rig.inject(host(op::RW, 4321, 5000, 1), &[0]);
    let evs = rig.poll_all();
    assert_eq!(evs, [Event::Dropped; 6]);
    let s = rig.v.stats;
    assert_eq!((s.bad_len, s.bad_cid, s.bad_type, s.bad_op), (2, 1, 1, 1));
    let sent = rig.sent();
    assert_eq!(sent.iter().filter(|(h, _)| h.op == op::RST).count(), 2);
    assert_eq!(rig.v.conn(id).unwrap().state, State::Established);
    assert_eq!(rig.v.conn(id).unwrap().pending(), 0);
    // A used length over the buffer is a ring error, and the buffer stays posted.
    let chain = rig.rxdev.next_chain().unwrap();
    rig.rxdev.complete(chain.head, RX_BUF + 1);
    assert!(rig.v.poll().is_err());
}

#[test]
fn transport_reset_drops_every_connection_and_rereads_the_cid() {
    let mut rig = rig();
    rig.accept(1234);
    rig.regs.state.borrow_mut().config = 42u64.to_le_bytes().to_vec();
    let chain = rig.evdev.next_chain().unwrap();
    // The event buffer holds id 0 (zeroed memory): TRANSPORT_RESET.
    rig.evdev.complete(chain.head, 4);
    assert_eq!(rig.poll_all(), [Event::TransportReset]);
    assert_eq!(rig.v.live().count(), 0);
    assert_eq!(rig.v.guest_cid(), 42);
    assert_eq!(rig.v.stats.transport_resets, 1);
}

#[test]
fn control_packets_wait_for_a_transmit_buffer() {
    let mut rig = rig();
    rig.v.listen(5000).unwrap();
    // Fill every transmit buffer without the device taking any.
    for p in 0..TX_COUNT as u32 + 5 {
        rig.inject(host(op::REQUEST, 3000 + p, 5000, 0), &[]);
        if p == MAX_CONNS as u32 {
            break;
        }
    }
    rig.poll_all();
    // More RSTs than transmit buffers: refusals of other ports.
    for p in 0..TX_COUNT as u32 {
        rig.inject(host(op::REQUEST, 9000 + p, 5001, 0), &[]);
        rig.v.poll().unwrap();
    }
    let first = rig.sent();
    assert_eq!(first.len(), TX_COUNT as usize);
    // The rest went out once buffers came back.
    assert!(!rig.v.flushed().unwrap());
    let second = rig.sent();
    assert_eq!(
        first.len() + second.len(),
        MAX_CONNS + 1 + TX_COUNT as usize
    );
    assert_eq!(rig.v.stats.control_lost, 0);
}

#[test]
fn the_driver_itself_is_small() {
    // The guest's stack is 64 KiB: the tables live in the driver's memory.
    assert!(std::mem::size_of::<Vsock<MmioTransport<&'static FakeRegs>>>() < 8192);
}

#[test]
fn the_same_driver_over_virtio_pci() {
    use crate::virtio::mock_pci::{FakeBar, FakeCfg};
    use crate::virtio::pci::{layout, PciTransport};
    use crate::virtio::Regs;
    let bar: &'static FakeBar = Box::leak(Box::new(FakeBar::new(FakeRegs::vsock(CID))));
    let cfg: &'static FakeCfg = Box::leak(Box::new(FakeCfg::virtio(19, 0xc000_0000)));
    let l = layout(cfg).unwrap();
    let t = PciTransport::new(bar as &dyn Regs, cfg as &dyn Regs, l, 19, None);
    let (areas, _bufs, mem) = memory();
    // SAFETY: the memory outlives the driver (dropped at the end of the test).
    let mut v = unsafe { Vsock::init(t, mem) }.unwrap();
    assert_eq!(v.guest_cid(), CID);
    {
        let s = bar.dev.state.borrow();
        assert!(s.queue_ready && s.extra_queues.iter().all(|q| q.ready));
    }
    // A host connect is answered through the PCI transport's queues.
    let mut rxdev = MockQueue::new(&areas[0], 256, true);
    let mut txdev = MockQueue::new(&areas[1], 256, true);
    v.listen(5000).unwrap();
    let chain = rxdev.next_chain().unwrap();
    let b = host(op::REQUEST, 1234, 5000, 0).to_bytes();
    // SAFETY: a live receive buffer.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), chain.descs[0].0 as *mut u8, HDR_LEN) };
    rxdev.complete(chain.head, HDR_LEN as u32);
    assert_eq!(v.poll().unwrap(), Some(Event::Accepted(0)));
    let sent = txdev.next_chain().unwrap();
    // SAFETY: a live transmit buffer.
    let h = Hdr::parse(unsafe {
        std::slice::from_raw_parts(sent.descs[0].0 as *const u8, sent.descs[0].1 as usize)
    })
    .unwrap();
    assert_eq!((h.op, h.src_cid, h.dst_port), (op::RESPONSE, CID, 1234));
}
