//! virtio-console (virtio 1.2, 5.3), port 0 only (no MULTIPORT): queue 0 `receiveq`
//! (host to guest), queue 1 `transmitq` (guest to host). Receive buffers
//! ([`RX_BUF`] bytes each) are all posted at start; every [`Console::write`] of up to
//! [`TX_BUF`] bytes is one device-readable chain.

use super::bufs::{RingError, RxRing, TxRing};
use super::mmio::INT_CONFIG;
use super::queue::{self, Queue, QueueMemory};
use super::transport::{InitError, Transport};
use super::{device_id, feature as common};
use core::fmt;

/// virtio-console feature bits.
pub mod feature {
    /// `cols` and `rows` are valid.
    pub const SIZE: u64 = 1 << 0;
    /// Several ports, control queues.
    pub const MULTIPORT: u64 = 1 << 1;
    /// `emerg_wr` works.
    pub const EMERG_WRITE: u64 = 1 << 2;
}

/// What the driver accepts when offered.
pub const WANTED: u64 = common::VERSION_1 | common::EVENT_IDX | feature::SIZE;

/// Receive buffer bytes.
pub const RX_BUF: u32 = 256;
/// Transmit buffer bytes (largest write).
pub const TX_BUF: u32 = 1024;
/// Receive buffers posted.
pub const RX_COUNT: u16 = 64;
/// Transmit buffers.
pub const TX_COUNT: u16 = 64;
/// Receive queue.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue.
pub const TX_QUEUE: u16 = 1;

/// The configuration space (fields of features not offered read as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Columns (SIZE).
    pub cols: u16,
    /// Rows (SIZE).
    pub rows: u16,
    /// Ports (MULTIPORT).
    pub max_nr_ports: u32,
}

/// Where the driver's memory is: two queues (each sized for [`queue::MAX_SIZE`]) and the
/// buffers ([`RX_COUNT`] x [`RX_BUF`], [`TX_COUNT`] x [`TX_BUF`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleMemory {
    /// Receive queue.
    pub rx_queue: QueueMemory,
    /// Transmit queue.
    pub tx_queue: QueueMemory,
    /// Receive buffers.
    pub rx_bufs: u64,
    /// Transmit buffers.
    pub tx_bufs: u64,
}

/// Why the driver could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleInitError {
    /// Not a console.
    NotConsole(u32),
    /// The handshake failed.
    Init(InitError),
    /// Posting receive buffers failed.
    Ring(RingError),
}

impl fmt::Display for ConsoleInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConsole(id) => write!(
                f,
                "device type {id} ({}) is not a console",
                device_id::name(*id)
            ),
            Self::Init(e) => e.fmt(f),
            Self::Ring(e) => e.fmt(f),
        }
    }
}

impl From<InitError> for ConsoleInitError {
    fn from(e: InitError) -> Self {
        Self::Init(e)
    }
}

/// A virtio-console device, driven by polling.
pub struct Console<T> {
    transport: T,
    /// Receive buffers (queue 0).
    pub rx: RxRing,
    /// Transmit buffers (queue 1).
    pub tx: TxRing,
    /// Configuration read at set-up, or by the last [`Console::poll_config`] that saw a
    /// change.
    pub config: ConsoleConfig,
    /// Notifications sent.
    pub kicks: u64,
    /// ConfigGeneration that `config` was read at.
    generation: u32,
}

/// Read the configuration space (retried until ConfigGeneration is stable around the
/// read); returns it and its generation. Fields of features not offered read as 0.
fn read_config<T: Transport>(t: &T) -> Result<(ConsoleConfig, u32), InitError> {
    let offered = t.offered();
    let size = offered & feature::SIZE != 0;
    let multiport = offered & feature::MULTIPORT != 0;
    t.read_config_generation(|c| ConsoleConfig {
        cols: if size { c.u16(0) } else { 0 },
        rows: if size { c.u16(2) } else { 0 },
        max_nr_ports: if multiport { c.u32(4) } else { 0 },
    })
}

fn setup<T: Transport>(
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
    // SAFETY: `Console::init`'s caller guarantees the queue memory for MAX_SIZE entries.
    let q = unsafe { Queue::new(mem, size, event_idx) }.map_err(|_| InitError::NoQueue(index))?;
    t.setup_queue(index, size, &mem)?;
    Ok(q)
}

impl<T: Transport> Console<T> {
    /// Negotiate [`WANTED`], read the configuration, set up both queues, set DRIVER_OK,
    /// post the receive buffers.
    ///
    /// # Safety
    /// Every area of `mem` must be valid, writable memory of the sizes [`ConsoleMemory`]
    /// documents, used by nothing but this driver and its device while the device is live.
    pub unsafe fn init(mut transport: T, mem: ConsoleMemory) -> Result<Self, ConsoleInitError> {
        if transport.device_id() != device_id::CONSOLE {
            return Err(ConsoleInitError::NotConsole(transport.device_id()));
        }
        let features = transport.negotiate(WANTED)?;
        let (config, generation) = read_config(&transport).inspect_err(|_| transport.fail())?;
        let event_idx = features & common::EVENT_IDX != 0;
        let rxq = setup(&transport, RX_QUEUE, mem.rx_queue, event_idx)?;
        let txq = setup(&transport, TX_QUEUE, mem.tx_queue, event_idx)?;
        // SAFETY: the caller's buffer memory.
        let (rx, tx) = unsafe {
            (
                RxRing::new(rxq, mem.rx_bufs, RX_BUF, RX_COUNT),
                TxRing::new(txq, mem.tx_bufs, TX_BUF, TX_COUNT),
            )
        };
        transport.driver_ok()?;
        let mut console = Self {
            transport,
            rx,
            tx,
            config,
            kicks: 0,
            generation,
        };
        console.rx.post_all().map_err(ConsoleInitError::Ring)?;
        console.kick(RX_QUEUE);
        Ok(console)
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.transport.accepted()
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Look for a configuration change (a terminal resize): one register read,
    /// ConfigGeneration, when nothing changed. When it moved since `config` was read, read
    /// the configuration again (retried until the generation is the same before and after,
    /// so a read torn by a further change is not used), acknowledge the configuration-change
    /// interrupt (InterruptACK = [`INT_CONFIG`]; the driver polls, but the bit must not stay
    /// pending), update `config` and return it. Several changes between two calls are seen
    /// as one, with the latest configuration.
    pub fn poll_config(&mut self) -> Result<Option<ConsoleConfig>, InitError> {
        if self.transport.config_generation() == self.generation {
            return Ok(None);
        }
        let (config, generation) = read_config(&self.transport)?;
        self.transport.interrupt_ack(INT_CONFIG);
        self.config = config;
        self.generation = generation;
        Ok(Some(config))
    }

    fn kick(&mut self, q: u16) {
        let notify = if q == RX_QUEUE {
            self.rx.publish()
        } else {
            self.tx.publish()
        };
        if notify {
            self.transport.notify(q);
            self.kicks += 1;
        }
    }

    /// Queue `bytes` (at most [`TX_BUF`]) as one chain and notify if needed. `Ok(false)`:
    /// every transmit buffer is in flight (try again later).
    pub fn write(&mut self, bytes: &[u8]) -> Result<bool, RingError> {
        assert!(bytes.len() <= TX_BUF as usize, "console write too long");
        self.tx.reclaim()?;
        let queued = self.tx.send(|buf| {
            buf[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })?;
        if queued {
            self.kick(TX_QUEUE);
        }
        Ok(queued)
    }

    /// Have all writes been consumed by the device?
    pub fn flushed(&mut self) -> Result<bool, RingError> {
        self.tx.reclaim()?;
        Ok(self.tx.queue.outstanding() == 0)
    }

    /// Copy received bytes into `out` (one receive buffer at most per call; bytes that do not
    /// fit are lost, so pass at least [`RX_BUF`] bytes); returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, RingError> {
        let Some(filled) = self.rx.pop()? else {
            return Ok(0);
        };
        let data = self.rx.data(&filled);
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        self.rx.repost(filled.index)?;
        self.kick(RX_QUEUE);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::mock::{Dma, FakeRegs, MockQueue, QueueArea};

    struct Rig {
        regs: &'static FakeRegs,
        _mem: (QueueArea, QueueArea, Dma, Dma),
        console: Console<MmioTransport<&'static FakeRegs>>,
        rxdev: MockQueue,
        txdev: MockQueue,
    }

    fn rig() -> Rig {
        let regs: &'static FakeRegs = Box::leak(Box::new(FakeRegs::console(80, 25)));
        let (rq, tq) = (
            QueueArea::new(queue::MAX_SIZE),
            QueueArea::new(queue::MAX_SIZE),
        );
        let rb = Dma::new((RX_BUF as usize) * usize::from(RX_COUNT));
        let tb = Dma::new((TX_BUF as usize) * usize::from(TX_COUNT));
        let mem = ConsoleMemory {
            rx_queue: rq.memory(),
            tx_queue: tq.memory(),
            rx_bufs: rb.addr(),
            tx_bufs: tb.addr(),
        };
        let t = MmioTransport::probe(regs).unwrap();
        // SAFETY: the rig owns the memory for as long as the driver lives.
        let console = unsafe { Console::init(t, mem) }.unwrap();
        let rxdev = MockQueue::new(&rq, 256, true);
        let txdev = MockQueue::new(&tq, 256, true);
        Rig {
            regs,
            _mem: (rq, tq, rb, tb),
            console,
            rxdev,
            txdev,
        }
    }

    #[test]
    fn set_up_with_size_and_buffers_posted() {
        let mut rig = rig();
        assert_eq!(
            rig.console.config,
            ConsoleConfig {
                cols: 80,
                rows: 25,
                max_nr_ports: 0
            }
        );
        assert_eq!(
            rig.console.features(),
            common::VERSION_1 | common::EVENT_IDX | feature::SIZE
        );
        assert!(rig.regs.state.borrow().extra_queues[0].ready);
        let mut n = 0;
        while let Some(chain) = rig.rxdev.next_chain() {
            assert_eq!(chain.descs, vec![(chain.descs[0].0, RX_BUF, true)]);
            n += 1;
        }
        assert_eq!(n, RX_COUNT);
    }

    #[test]
    fn one_chain_per_write_in_order() {
        let mut rig = rig();
        for line in ["hello 0\n", "hello 1\n"] {
            assert!(rig.console.write(line.as_bytes()).unwrap());
        }
        let mut seen = Vec::new();
        while let Some(chain) = rig.txdev.next_chain() {
            assert_eq!(chain.descs.len(), 1);
            let (addr, len, writable) = chain.descs[0];
            assert!(!writable);
            // SAFETY: a live transmit buffer.
            seen.extend_from_slice(unsafe {
                std::slice::from_raw_parts(addr as *const u8, len as usize)
            });
            rig.txdev.complete(chain.head, 0);
        }
        assert_eq!(seen, b"hello 0\nhello 1\n");
        assert!(rig.console.flushed().unwrap());
    }

    fn size(cols: u16, rows: u16) -> ConsoleConfig {
        ConsoleConfig {
            cols,
            rows,
            max_nr_ports: 0,
        }
    }

    #[test]
    fn no_config_change_reads_only_the_generation() {
        let mut rig = rig();
        let reads = rig.regs.state.borrow().config_widths.len();
        for _ in 0..3 {
            assert_eq!(rig.console.poll_config(), Ok(None));
        }
        let s = rig.regs.state.borrow();
        assert_eq!(s.config_widths.len(), reads);
        assert!(s.interrupt_acks.is_empty());
        assert_eq!(rig.console.config, size(80, 25));
    }

    #[test]
    fn resize_is_read_once_and_acknowledged() {
        let mut rig = rig();
        rig.regs.resize_console(132, 43);
        assert_ne!(rig.regs.state.borrow().interrupt_status & INT_CONFIG, 0);
        let reads = rig.regs.state.borrow().config_widths.len();
        assert_eq!(rig.console.poll_config(), Ok(Some(size(132, 43))));
        assert_eq!(rig.console.config, size(132, 43));
        {
            let s = rig.regs.state.borrow();
            assert_eq!(s.config_widths[reads..], [(0, 2), (2, 2)]);
            assert_eq!(s.interrupt_acks, [INT_CONFIG]);
            assert_eq!(s.interrupt_status & INT_CONFIG, 0);
        }
        assert_eq!(rig.console.poll_config(), Ok(None));
        rig.regs.resize_console(100, 30);
        assert_eq!(rig.console.poll_config(), Ok(Some(size(100, 30))));
        assert_eq!(rig.console.poll_config(), Ok(None));
        assert_eq!(rig.regs.state.borrow().interrupt_acks, [INT_CONFIG; 2]);
    }

    #[test]
    fn several_changes_between_polls_are_one_with_the_latest_size() {
        let mut rig = rig();
        rig.regs.resize_console(81, 26);
        rig.regs.resize_console(82, 27);
        assert_eq!(rig.console.poll_config(), Ok(Some(size(82, 27))));
        assert_eq!(rig.console.poll_config(), Ok(None));
        assert_eq!(rig.regs.state.borrow().interrupt_acks, [INT_CONFIG]);
    }

    #[test]
    fn generation_wraps_around() {
        let mut rig = rig();
        rig.regs.state.borrow_mut().generation = u32::MAX;
        assert_eq!(rig.console.poll_config(), Ok(Some(size(80, 25))));
        rig.regs.resize_console(40, 12);
        assert_eq!(rig.regs.state.borrow().generation, 0);
        assert_eq!(rig.console.poll_config(), Ok(Some(size(40, 12))));
        assert_eq!(rig.console.poll_config(), Ok(None));
    }

    #[test]
    fn torn_read_is_retried() {
        let mut rig = rig();
        rig.regs.resize_console(100, 30);
        // A second resize lands between the reads of cols and rows: 100 x 50 is torn.
        rig.regs.state.borrow_mut().resize_after_read = Some((120, 50));
        let reads = rig.regs.state.borrow().config_widths.len();
        assert_eq!(rig.console.poll_config(), Ok(Some(size(120, 50))));
        assert_eq!(
            rig.regs.state.borrow().config_widths[reads..],
            [(0, 2), (2, 2), (0, 2), (2, 2)]
        );
        assert_eq!(rig.console.poll_config(), Ok(None));
    }

    #[test]
    fn config_that_never_settles_is_an_error() {
        let mut rig = rig();
        {
            let mut s = rig.regs.state.borrow_mut();
            s.generation += 1;
            s.generation_bumps = u32::MAX;
        }
        assert_eq!(rig.console.poll_config(), Err(InitError::ConfigUnstable));
        assert!(rig.regs.state.borrow().interrupt_acks.is_empty());
        assert_eq!(rig.console.config, size(80, 25));
    }

    #[test]
    fn bytes_read_and_buffer_reposted() {
        let mut rig = rig();
        let chain = rig.rxdev.next_chain().unwrap();
        let (addr, _, _) = chain.descs[0];
        // SAFETY: a live receive buffer.
        unsafe { std::ptr::copy_nonoverlapping(b"abc\x04".as_ptr(), addr as *mut u8, 4) };
        rig.rxdev.complete(chain.head, 4);
        let mut out = [0u8; RX_BUF as usize];
        assert_eq!(rig.console.read(&mut out).unwrap(), 4);
        assert_eq!(&out[..4], b"abc\x04");
        assert_eq!(rig.console.read(&mut out).unwrap(), 0);
        assert_eq!(rig.console.rx.queue.outstanding(), RX_COUNT);
    }
}
