//! virtio-net (virtio 1.2, 5.1): queue 0 receives, queue 1 transmits, no control queue,
//! one queue pair (MQ is not accepted), no offloads.
//!
//! Every buffer, both ways, starts with the 12-byte `virtio_net_hdr_v1` (flags, gso_type,
//! hdr_len, gso_size, csum_start, csum_offset, num_buffers), then the Ethernet frame
//! without FCS. Outgoing headers are all zeroes (no checksum offload, no GSO: the guest
//! computes every checksum). Receive buffers are [`RX_BUF`] bytes each, all posted at
//! start and reposted as soon as their frame was looked at: a frame of up to 1514 bytes
//! fits one buffer, so with MRG_RXBUF `num_buffers` must be 1; a frame spread over more
//! buffers is dropped, the `num_buffers - 1` buffers after its first with it (all reposted).

use super::bufs::{Filled, RingError, RxRing, TxRing};
use super::queue::{self, Queue, QueueMemory};
use super::transport::{InitError, Transport};
use super::{device_id, feature as common};
use core::fmt;

/// virtio-net feature bits.
pub mod feature {
    /// Device handles partial checksums.
    pub const CSUM: u64 = 1 << 0;
    /// Driver handles partial checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `mtu` in the configuration.
    pub const MTU: u64 = 1 << 3;
    /// `mac` in the configuration.
    pub const MAC: u64 = 1 << 5;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `status` in the configuration.
    pub const STATUS: u64 = 1 << 16;
    /// Control queue.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// Several queue pairs.
    pub const MQ: u64 = 1 << 22;
}

/// What the driver accepts when offered.
pub const WANTED: u64 =
    common::VERSION_1 | common::EVENT_IDX | feature::MAC | feature::STATUS | feature::MRG_RXBUF;

/// Bytes of `virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Bytes per receive and transmit buffer (header + frame).
pub const RX_BUF: u32 = 2048;
/// Bytes per transmit buffer.
pub const TX_BUF: u32 = 2048;
/// Receive queue.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue.
pub const TX_QUEUE: u16 = 1;
/// `status` bit: link up.
pub const STATUS_LINK_UP: u16 = 1;

/// The configuration space (fields of features not offered read as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// MAC (MAC).
    pub mac: [u8; 6],
    /// Link status (STATUS).
    pub status: u16,
    /// Queue pairs (MQ; 1 without).
    pub max_queue_pairs: u16,
    /// MTU (MTU offered; 0 otherwise).
    pub mtu: u16,
}

impl NetConfig {
    /// Read the fields that `offered` features make present.
    pub fn read<T: Transport>(t: &T, offered: u64) -> Result<Self, InitError> {
        let has = |f: u64| offered & f != 0;
        t.read_config(|c| {
            let mut cfg = NetConfig {
                max_queue_pairs: 1,
                ..NetConfig::default()
            };
            if has(feature::MAC) {
                for (i, b) in cfg.mac.iter_mut().enumerate() {
                    *b = c.u8(i as u32);
                }
            }
            if has(feature::STATUS) {
                cfg.status = c.u16(6);
            }
            if has(feature::MQ) {
                cfg.max_queue_pairs = c.u16(8);
            }
            if has(feature::MTU) {
                cfg.mtu = c.u16(10);
            }
            cfg
        })
    }
}

/// Where the driver's memory is: two queues (each sized for [`queue::MAX_SIZE`]) and the
/// buffers ([`queue::MAX_SIZE`] x [`RX_BUF`] and x [`TX_BUF`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetMemory {
    /// Receive queue.
    pub rx_queue: QueueMemory,
    /// Transmit queue.
    pub tx_queue: QueueMemory,
    /// Receive buffers.
    pub rx_bufs: u64,
    /// Transmit buffers.
    pub tx_bufs: u64,
}

/// Bytes of receive (and of transmit) buffer memory [`NetMemory`] needs.
pub const BUF_BYTES: u64 = queue::MAX_SIZE as u64 * RX_BUF as u64;

/// Why the driver could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetInitError {
    /// Not a network device.
    NotNet(u32),
    /// The handshake failed.
    Init(InitError),
    /// Posting the receive buffers failed.
    Ring(RingError),
}

impl fmt::Display for NetInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotNet(id) => write!(
                f,
                "device type {id} ({}) is not a network device",
                device_id::name(*id)
            ),
            Self::Init(e) => e.fmt(f),
            Self::Ring(e) => e.fmt(f),
        }
    }
}

impl From<InitError> for NetInitError {
    fn from(e: InitError) -> Self {
        Self::Init(e)
    }
}

/// A received frame, until [`Net::recycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    buf: Filled,
}

/// Why a received buffer holds no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// Shorter than the header.
    Short(u32),
    /// `num_buffers` other than 1 (a frame bigger than one buffer).
    Merged(u16),
    /// A further buffer of such a frame.
    Continuation,
}

/// Set up a queue for `index`: the largest power of two the device allows, in `mem`.
///
/// # Safety
/// As [`Queue::new`] for [`queue::MAX_SIZE`] entries.
unsafe fn make_queue<T: Transport>(
    t: &T,
    index: u16,
    mem: QueueMemory,
    event_idx: bool,
) -> Result<Queue, InitError> {
    let size = queue::choose_size(t.queue_max(index));
    if size == 0 {
        t.fail();
        return Err(InitError::NoQueue(index));
    }
    // SAFETY: the caller's memory holds MAX_SIZE >= size entries.
    let q = unsafe { Queue::new(mem, size, event_idx) }.map_err(|_| InitError::NoQueue(index))?;
    t.setup_queue(index, size, &mem)?;
    Ok(q)
}

/// A virtio-net device, driven by polling.
pub struct Net<T> {
    transport: T,
    /// Receive buffers (queue 0).
    pub rx: RxRing,
    /// Transmit buffers (queue 1).
    pub tx: TxRing,
    /// Configuration read at set-up.
    pub config: NetConfig,
    /// Notifications sent (both queues).
    pub kicks: u64,
    /// Buffers still to come of a frame dropped because it spans several.
    skip_rx: u16,
}

impl<T: Transport> Net<T> {
    /// Negotiate [`WANTED`], read the configuration, set up both queues in `mem`, set
    /// DRIVER_OK, post every receive buffer. Interrupts are suppressed.
    ///
    /// # Safety
    /// Every area of `mem` must be valid, writable memory of the sizes [`NetMemory`]
    /// documents, used by nothing but this driver and its device while the device is live.
    pub unsafe fn init(mut transport: T, mem: NetMemory) -> Result<Self, NetInitError> {
        if transport.device_id() != device_id::NET {
            return Err(NetInitError::NotNet(transport.device_id()));
        }
        let features = transport.negotiate(WANTED)?;
        let config =
            NetConfig::read(&transport, transport.offered()).inspect_err(|_| transport.fail())?;
        let event_idx = features & common::EVENT_IDX != 0;
        // SAFETY: the caller's queue memory (`init`'s contract).
        let rxq = unsafe { make_queue(&transport, RX_QUEUE, mem.rx_queue, event_idx)? };
        // SAFETY: as above.
        let txq = unsafe { make_queue(&transport, TX_QUEUE, mem.tx_queue, event_idx)? };
        let count = queue::MAX_SIZE;
        // SAFETY: the caller's buffer memory, MAX_SIZE buffers of each size.
        let (rx, tx) = unsafe {
            (
                RxRing::new(rxq, mem.rx_bufs, RX_BUF, count),
                TxRing::new(txq, mem.tx_bufs, TX_BUF, count),
            )
        };
        transport.driver_ok()?;
        let mut net = Self {
            transport,
            rx,
            tx,
            config,
            kicks: 0,
            skip_rx: 0,
        };
        net.rx.post_all().map_err(NetInitError::Ring)?;
        net.kick_rx();
        Ok(net)
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.transport.accepted()
    }

    /// Publish reposted receive buffers; notify if the device asks.
    pub fn kick_rx(&mut self) -> bool {
        let notify = self.rx.publish();
        if notify {
            self.transport.notify(RX_QUEUE);
            self.kicks += 1;
        }
        notify
    }

    /// Publish queued frames; notify if the device asks.
    pub fn kick_tx(&mut self) -> bool {
        let notify = self.tx.publish();
        if notify {
            self.transport.notify(TX_QUEUE);
            self.kicks += 1;
        }
        notify
    }

    /// The next received buffer: `Ok(Some(Ok(frame)))` with a frame, `Ok(Some(Err(why)))`
    /// when the buffer held none (already reposted), `Ok(None)` when nothing came.
    pub fn poll_rx(&mut self) -> Result<Option<Result<RxFrame, RxDrop>>, RingError> {
        let Some(buf) = self.rx.pop()? else {
            return Ok(None);
        };
        let data = self.rx.data(&buf);
        let why = if self.skip_rx > 0 {
            // The rest of a frame merged over several buffers: no header of its own.
            self.skip_rx -= 1;
            Some(RxDrop::Continuation)
        } else if data.len() < HDR_LEN {
            Some(RxDrop::Short(buf.len))
        } else {
            let num_buffers = u16::from_le_bytes([data[10], data[11]]);
            let merged = self.features() & feature::MRG_RXBUF != 0;
            if merged && num_buffers > 1 {
                self.skip_rx = num_buffers - 1;
            }
            (merged && num_buffers != 1).then_some(RxDrop::Merged(num_buffers))
        };
        match why {
            None => Ok(Some(Ok(RxFrame { buf }))),
            Some(why) => {
                self.rx.repost(buf.index)?;
                Ok(Some(Err(why)))
            }
        }
    }

    /// The Ethernet frame of a received buffer.
    pub fn frame(&self, rx: &RxFrame) -> &[u8] {
        &self.rx.data(&rx.buf)[HDR_LEN..]
    }

    /// Give a receive buffer back to the device (published by [`kick_rx`](Self::kick_rx)).
    pub fn recycle(&mut self, rx: RxFrame) -> Result<(), RingError> {
        self.rx.repost(rx.buf.index)
    }

    /// Queue one frame that `build` writes into the buffer it is given (returning its
    /// length; at most `TX_BUF - 12`), behind a zeroed header. Reclaims sent buffers
    /// first. `Ok(false)`: every buffer is in flight.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Result<bool, RingError> {
        if self.tx.num_free() == 0 {
            self.tx.reclaim()?;
        }
        self.tx.send(|buf| {
            buf[..HDR_LEN].fill(0);
            HDR_LEN + build(&mut buf[HDR_LEN..])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net;
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::mock::{Dma, FakeRegs, MockQueue, QueueArea};

    struct Rig {
        regs: &'static FakeRegs,
        _mem: (QueueArea, QueueArea, Dma, Dma),
        net: Net<MmioTransport<&'static FakeRegs>>,
        rxdev: MockQueue,
        txdev: MockQueue,
    }

    fn rig(features: u64) -> Rig {
        let regs: &'static FakeRegs = Box::leak(Box::new(FakeRegs::net([2, 0, 0, 0, 0, 7])));
        regs.state.borrow_mut().features = features;
        let (rq, tq) = (
            QueueArea::new(queue::MAX_SIZE),
            QueueArea::new(queue::MAX_SIZE),
        );
        let (rb, tb) = (Dma::new(BUF_BYTES as usize), Dma::new(BUF_BYTES as usize));
        let mem = NetMemory {
            rx_queue: rq.memory(),
            tx_queue: tq.memory(),
            rx_bufs: rb.addr(),
            tx_bufs: tb.addr(),
        };
        let t = MmioTransport::probe(regs).unwrap();
        // SAFETY: the rig owns the memory for as long as the driver lives.
        let net = unsafe { Net::init(t, mem) }.unwrap();
        let event_idx = features & common::EVENT_IDX != 0;
        let rxdev = MockQueue::new(&rq, 256, event_idx);
        let txdev = MockQueue::new(&tq, 256, event_idx);
        Rig {
            regs,
            _mem: (rq, tq, rb, tb),
            net,
            rxdev,
            txdev,
        }
    }

    const OFFERED: u64 = common::VERSION_1
        | common::EVENT_IDX
        | common::VHOST_USER_PROTOCOL_FEATURES
        | feature::CSUM
        | feature::GUEST_CSUM
        | feature::MTU
        | feature::MAC
        | feature::STATUS
        | feature::MRG_RXBUF
        | feature::MQ
        | 1 << 7
        | 1 << 11;

    /// Deliver `frame` into the next posted receive buffer, as the device would.
    fn deliver(rig: &mut Rig, frame: &[u8], num_buffers: u16) {
        let chain = rig.rxdev.next_chain().expect("a posted receive buffer");
        assert_eq!(chain.descs.len(), 1);
        let (addr, len, writable) = chain.descs[0];
        assert!(writable);
        assert_eq!(len, RX_BUF);
        let mut hdr = [0u8; HDR_LEN];
        hdr[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        // SAFETY: a live receive buffer of RX_BUF bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
        buf[..HDR_LEN].copy_from_slice(&hdr);
        buf[HDR_LEN..HDR_LEN + frame.len()].copy_from_slice(frame);
        rig.rxdev
            .complete(chain.head, (HDR_LEN + frame.len()) as u32);
    }

    #[test]
    fn accepts_no_offloads_and_reads_the_config() {
        let rig = rig(OFFERED);
        assert_eq!(
            rig.net.features(),
            common::VERSION_1
                | common::EVENT_IDX
                | feature::MAC
                | feature::STATUS
                | feature::MRG_RXBUF
        );
        assert_eq!(
            rig.net.config,
            NetConfig {
                mac: [2, 0, 0, 0, 0, 7],
                status: 1,
                max_queue_pairs: 4,
                mtu: 1500
            }
        );
        let s = rig.regs.state.borrow();
        assert!(
            s.queue_ready && s.extra_queues[0].ready,
            "both queues ready"
        );
        assert_eq!(s.status_writes.last(), Some(&15));
    }

    #[test]
    fn every_receive_buffer_is_posted_at_start() {
        let mut rig = rig(OFFERED);
        assert_eq!(rig.net.rx.queue.outstanding(), 256);
        let mut n = 0;
        while rig.rxdev.next_chain().is_some() {
            n += 1;
        }
        assert_eq!(n, 256);
        // Without EVENT_IDX the device gets a kick (no NO_NOTIFY flag).
        let rig2 = self::rig(OFFERED & !common::EVENT_IDX);
        assert_eq!(rig2.net.kicks, 1);
        assert_eq!(rig2.regs.state.borrow().notifies, vec![0]);
    }

    #[test]
    fn frames_come_in_and_buffers_go_back() {
        let mut rig = rig(OFFERED);
        let frame: Vec<u8> = (0..100u8).collect();
        deliver(&mut rig, &frame, 1);
        let rx = rig.net.poll_rx().unwrap().unwrap().unwrap();
        assert_eq!(rig.net.frame(&rx), &frame[..]);
        assert_eq!(rig.net.rx.queue.outstanding(), 255);
        rig.net.recycle(rx).unwrap();
        rig.net.kick_rx();
        assert_eq!(rig.net.rx.queue.outstanding(), 256);
        assert_eq!(rig.net.poll_rx().unwrap(), None);
        // A frame merged over two buffers and a runt are dropped, their buffers reposted.
        deliver(&mut rig, &frame, 3);
        deliver(&mut rig, &[0xff; 40], 0xffff);
        deliver(&mut rig, &[0xff; 40], 0xffff);
        assert_eq!(rig.net.poll_rx().unwrap(), Some(Err(RxDrop::Merged(3))));
        for _ in 0..2 {
            assert_eq!(rig.net.poll_rx().unwrap(), Some(Err(RxDrop::Continuation)));
        }
        deliver(&mut rig, &frame, 1);
        let rx = rig.net.poll_rx().unwrap().unwrap().unwrap();
        assert_eq!(
            rig.net.frame(&rx),
            &frame[..],
            "back in step after the merged frame"
        );
        rig.net.recycle(rx).unwrap();
        let chain = rig.rxdev.next_chain().unwrap();
        rig.rxdev.complete(chain.head, 5);
        assert_eq!(rig.net.poll_rx().unwrap(), Some(Err(RxDrop::Short(5))));
        assert_eq!(rig.net.rx.queue.outstanding(), 256);
        // More than the buffer holds: an error, never a read past its end.
        let chain = rig.rxdev.next_chain().unwrap();
        rig.rxdev.complete(chain.head, RX_BUF + 1);
        assert!(matches!(
            rig.net.poll_rx(),
            Err(RingError::TooLong { len: 2049, .. })
        ));
    }

    #[test]
    fn frames_go_out_behind_a_zero_header() {
        let mut rig = rig(OFFERED);
        let route = net::Route {
            src_mac: [2, 0, 0, 0, 0, 7],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: [10, 0, 2, 2],
            dst: [10, 0, 2, 1],
        };
        for size in [64usize, 512, 1472] {
            assert!(rig
                .net
                .send(
                    |buf| net::build_udp(buf, &route, 1000, 5555, size, 0, net::fill_pattern)
                        .unwrap()
                )
                .unwrap());
        }
        rig.net.kick_tx();
        for size in [64usize, 512, 1472] {
            let chain = rig.txdev.next_chain().unwrap();
            assert_eq!(chain.descs.len(), 1);
            let (addr, len, writable) = chain.descs[0];
            assert!(!writable);
            assert_eq!(len as usize, HDR_LEN + 42 + size);
            // SAFETY: a live transmit buffer.
            let buf = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
            assert!(buf[..HDR_LEN].iter().all(|&b| b == 0));
            let Ok(net::Packet::Udp { payload, dport, .. }) = net::parse(&buf[HDR_LEN..]) else {
                panic!("not UDP");
            };
            assert_eq!(dport, 5555);
            assert!(payload
                .iter()
                .enumerate()
                .all(|(i, &b)| b == net::pattern_byte(i, size)));
            rig.txdev.complete(chain.head, 0);
        }
    }

    #[test]
    fn transmit_buffers_run_out_and_come_back() {
        let mut rig = rig(OFFERED);
        let mut sent = 0;
        while rig.net.send(|_| 60).unwrap() {
            sent += 1;
        }
        assert_eq!(sent, 256);
        rig.net.kick_tx();
        for _ in 0..10 {
            let chain = rig.txdev.next_chain().unwrap();
            rig.txdev.complete(chain.head, 0);
        }
        // `send` reclaims when it runs out.
        let mut more = 0;
        while rig.net.send(|_| 60).unwrap() {
            more += 1;
        }
        assert_eq!(more, 10);
    }

    #[test]
    fn a_block_device_is_refused() {
        let regs = FakeRegs::blk(8);
        let t = MmioTransport::probe(&regs).unwrap();
        let mem = NetMemory {
            rx_queue: QueueMemory {
                desc: 0,
                avail: 0,
                used: 0,
            },
            tx_queue: QueueMemory {
                desc: 0,
                avail: 0,
                used: 0,
            },
            rx_bufs: 0,
            tx_bufs: 0,
        };
        // SAFETY: refused before any memory is touched.
        let e = unsafe { Net::init(t, mem) }.err().unwrap();
        assert_eq!(e, NetInitError::NotNet(2));
    }
}
