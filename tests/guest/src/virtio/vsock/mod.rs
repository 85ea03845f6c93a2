//! virtio-vsock (virtio 1.2, 5.10): device type 19, queue 0 `rx` (device to driver),
//! queue 1 `tx`, queue 2 `event`; configuration `guest_cid` (le64). Stream sockets only.
//!
//! Every receive buffer ([`RX_BUF`] bytes, one device-writable descriptor) and every
//! transmit buffer ([`TX_BUF`] bytes, one device-readable descriptor) holds the 44-byte
//! header ([`hdr`]) and up to [`MAX_PAYLOAD`] payload bytes. Each connection ([`conn`])
//! has a receive ring of [`BUF_ALLOC`] bytes in the driver's memory: received RW payload
//! is copied there (so the receive buffer goes straight back to the device) and leaves it
//! when the application consumes it, which advances `fwd_cnt`. Credit is honoured both
//! ways: [`Vsock::send`] never exceeds the peer's window, and a peer that overruns ours
//! has its packet dropped (counted), as Linux does. A CREDIT_UPDATE goes out once the
//! application consumed [`CREDIT_THRESHOLD`] bytes not yet advertised (every header we
//! send advertises too) or when the peer asks.
//!
//! Control packets (RESPONSE, RST, CREDIT_UPDATE) that find every transmit buffer in
//! flight wait in a small queue, sent before anything else on the next call.

pub mod conn;
pub mod hdr;

#[cfg(test)]
mod tests;

use super::bufs::{RingError, RxRing, TxRing};
use super::queue::{self, Queue, QueueMemory};
use super::transport::{InitError, Transport};
use super::{device_id, feature as common};
use conn::{Conn, State};
use core::fmt;
use hdr::{op, shutdown, Hdr, HDR_LEN, TYPE_STREAM};

/// virtio-vsock feature bits.
pub mod feature {
    /// Stream sockets (virtio 1.2; a device offering nothing supports streams).
    pub const STREAM: u64 = 1 << 0;
    /// Seqpacket sockets (not accepted).
    pub const SEQPACKET: u64 = 1 << 1;
}

/// What the driver accepts when offered.
pub const WANTED: u64 = common::VERSION_1 | common::EVENT_IDX | feature::STREAM;

/// Receive buffer bytes (header + payload).
pub const RX_BUF: u32 = 4096;
/// Transmit buffer bytes (header + payload).
pub const TX_BUF: u32 = 4096;
/// Largest payload of one packet we send.
pub const MAX_PAYLOAD: usize = TX_BUF as usize - HDR_LEN;
/// Receive buffers posted.
pub const RX_COUNT: u16 = 256;
/// Transmit buffers.
pub const TX_COUNT: u16 = 256;
/// Event buffers posted (each holds one `virtio_vsock_event`, a le32 id).
pub const EVENT_COUNT: u16 = 8;
/// Event buffer bytes.
pub const EVENT_BUF: u32 = 8;
/// The event id of a transport reset.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Receive queue.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Event queue.
pub const EVENT_QUEUE: u16 = 2;
/// Receive buffer per connection (the `buf_alloc` we advertise); a power of two.
pub const BUF_ALLOC: u32 = 64 * 1024;
/// Connections at once.
pub const MAX_CONNS: usize = 72;
/// Ports listened on at once.
pub const MAX_LISTEN: usize = 4;
/// Consumed-but-unadvertised bytes that trigger a CREDIT_UPDATE.
pub const CREDIT_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Control packets that can wait for a transmit buffer.
pub const PENDING: usize = 128;
/// First local port of outgoing connections.
pub const FIRST_EPHEMERAL: u32 = 49152;

/// Bytes of the connections' receive rings.
pub const CONN_BYTES: u64 = BUF_ALLOC as u64 * MAX_CONNS as u64;

/// The connection table and the control packets waiting for a transmit buffer. They live
/// in the driver's memory ([`VsockMemory::tables`]), not in [`Vsock`]: the guest's stacks
/// are small, and a driver value is moved a few times while it is set up.
pub struct Tables {
    conns: [Conn; MAX_CONNS],
    pending: [Hdr; PENDING],
}

/// Bytes of [`Tables`] (8-byte aligned).
pub const TABLES_BYTES: u64 = core::mem::size_of::<Tables>() as u64;

/// Where the driver's memory is: three queues (each sized for [`queue::MAX_SIZE`]), the
/// buffers and the connections' receive rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockMemory {
    /// Receive queue.
    pub rx_queue: QueueMemory,
    /// Transmit queue.
    pub tx_queue: QueueMemory,
    /// Event queue.
    pub event_queue: QueueMemory,
    /// [`RX_COUNT`] x [`RX_BUF`] bytes.
    pub rx_bufs: u64,
    /// [`TX_COUNT`] x [`TX_BUF`] bytes.
    pub tx_bufs: u64,
    /// [`EVENT_COUNT`] x [`EVENT_BUF`] bytes.
    pub event_bufs: u64,
    /// [`CONN_BYTES`] bytes.
    pub conn_bufs: u64,
    /// [`TABLES_BYTES`] bytes, 8-byte aligned.
    pub tables: u64,
}

/// Why the driver could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockInitError {
    /// Not a vsock device.
    NotVsock(u32),
    /// The handshake failed.
    Init(InitError),
    /// Posting buffers failed.
    Ring(RingError),
}

impl fmt::Display for VsockInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotVsock(id) => write!(
                f,
                "device type {id} ({}) is not vsock",
                device_id::name(*id)
            ),
            Self::Init(e) => e.fmt(f),
            Self::Ring(e) => e.fmt(f),
        }
    }
}

impl From<InitError> for VsockInitError {
    fn from(e: InitError) -> Self {
        Self::Init(e)
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockError {
    /// The device broke a ring.
    Ring(RingError),
    /// No such connection, or not in a state for this.
    NotConnected(usize),
    /// Every connection slot is in use.
    NoSlot,
    /// Already listening on as many ports as we can.
    TooManyListeners,
    /// A raw packet longer than a transmit buffer.
    TooLong(usize),
}

impl fmt::Display for VsockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ring(e) => e.fmt(f),
            Self::NotConnected(id) => write!(f, "connection {id} is not established"),
            Self::NoSlot => write!(f, "all {MAX_CONNS} connection slots are in use"),
            Self::TooManyListeners => write!(f, "listening on {MAX_LISTEN} ports already"),
            Self::TooLong(n) => write!(f, "raw packet of {n} bytes exceeds {TX_BUF}"),
        }
    }
}

impl From<RingError> for VsockError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// What [`Vsock::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The peer connected to a port we listen on: connection `id`.
    Accepted(usize),
    /// Our connect was accepted.
    Connected(usize),
    /// Payload arrived on the connection.
    Data(usize),
    /// The peer sent SHUTDOWN (flags in the connection's `peer_shutdown`).
    PeerShutdown(usize),
    /// The connection is gone: the peer reset it, refused our connect, or answered our
    /// SHUTDOWN (the slot is free again).
    Closed(usize),
    /// The device reset the transport: every connection is gone, the CID was read again.
    TransportReset,
    /// A packet that belongs to nothing or is malformed (counted in [`Stats`]).
    Dropped,
    /// Something the driver handled itself (a credit update or request).
    Other,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent (data and control).
    pub tx_packets: u64,
    /// Payload bytes received into connections.
    pub rx_bytes: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// Received packets shorter than a header, or whose `len` exceeds what the device wrote.
    pub bad_len: u64,
    /// Received packets for another CID.
    pub bad_cid: u64,
    /// Received packets of a type other than stream.
    pub bad_type: u64,
    /// Received packets with an unknown op.
    pub bad_op: u64,
    /// RW packets dropped because the peer exceeded our credit.
    pub overruns: u64,
    /// RSTs we sent.
    pub rst_sent: u64,
    /// CREDIT_UPDATEs we sent.
    pub credit_updates: u64,
    /// Control packets lost because the pending queue was full.
    pub control_lost: u64,
    /// Transport resets seen.
    pub transport_resets: u64,
    /// Notifications sent.
    pub kicks: u64,
}

/// A virtio-vsock device, driven by polling.
pub struct Vsock<T> {
    transport: T,
    rx: RxRing,
    tx: TxRing,
    events: RxRing,
    guest_cid: u64,
    /// Address of the [`Tables`] (an address, like the rings' buffers).
    tables: u64,
    conn_bufs: u64,
    listening: [Option<u32>; MAX_LISTEN],
    pending_head: usize,
    pending_len: usize,
    next_port: u32,
    /// Counters.
    pub stats: Stats,
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
    // SAFETY: `Vsock::init`'s caller guarantees the queue memory for MAX_SIZE entries.
    let q = unsafe { Queue::new(mem, size, event_idx) }.map_err(|_| InitError::NoQueue(index))?;
    t.setup_queue(index, size, &mem)?;
    Ok(q)
}

/// Read `guest_cid` (two 32-bit reads, consistent by ConfigGeneration).
pub fn read_cid<T: Transport>(t: &T) -> Result<u64, InitError> {
    t.read_config(|c| u64::from(c.u32(0)) | u64::from(c.u32(4)) << 32)
}

impl<T: Transport> Vsock<T> {
    /// Negotiate [`WANTED`], read `guest_cid`, set up the three queues, set DRIVER_OK,
    /// post the receive and event buffers.
    ///
    /// # Safety
    /// Every area of `mem` must be valid, writable memory of the sizes [`VsockMemory`]
    /// documents, used by nothing but this driver and its device while the device is live.
    pub unsafe fn init(mut transport: T, mem: VsockMemory) -> Result<Self, VsockInitError> {
        if transport.device_id() != device_id::VSOCK {
            return Err(VsockInitError::NotVsock(transport.device_id()));
        }
        let features = transport.negotiate(WANTED)?;
        let guest_cid = read_cid(&transport).inspect_err(|_| transport.fail())?;
        let event_idx = features & common::EVENT_IDX != 0;
        let rxq = setup(&transport, RX_QUEUE, mem.rx_queue, event_idx)?;
        let txq = setup(&transport, TX_QUEUE, mem.tx_queue, event_idx)?;
        let evq = setup(&transport, EVENT_QUEUE, mem.event_queue, event_idx)?;
        // SAFETY: the caller's buffer memory.
        let (rx, tx, events) = unsafe {
            (
                RxRing::new(rxq, mem.rx_bufs, RX_BUF, RX_COUNT),
                TxRing::new(txq, mem.tx_bufs, TX_BUF, TX_COUNT),
                RxRing::new(evq, mem.event_bufs, EVENT_BUF, EVENT_COUNT),
            )
        };
        let tables = mem.tables as *mut Tables;
        // SAFETY: the caller's memory for the tables, aligned and used by nothing else;
        // every element is written before any is read.
        unsafe {
            for i in 0..MAX_CONNS {
                core::ptr::addr_of_mut!((*tables).conns[i]).write(Conn::FREE);
            }
            for i in 0..PENDING {
                core::ptr::addr_of_mut!((*tables).pending[i]).write(Hdr::default());
            }
        }
        transport.driver_ok()?;
        let mut v = Self {
            transport,
            rx,
            tx,
            events,
            guest_cid,
            tables: mem.tables,
            conn_bufs: mem.conn_bufs,
            listening: [None; MAX_LISTEN],
            pending_head: 0,
            pending_len: 0,
            next_port: FIRST_EPHEMERAL,
            stats: Stats::default(),
        };
        v.rx.post_all().map_err(VsockInitError::Ring)?;
        v.events.post_all().map_err(VsockInitError::Ring)?;
        v.kick(RX_QUEUE);
        v.kick(EVENT_QUEUE);
        Ok(v)
    }

    fn t(&mut self) -> &mut Tables {
        // SAFETY: `init` filled the tables in the caller's memory, which only this driver
        // uses; `&mut self` makes this the only reference.
        unsafe { &mut *(self.tables as *mut Tables) }
    }

    fn tr(&self) -> &Tables {
        // SAFETY: as in `t`; shared with nothing mutable while `&self` lives.
        unsafe { &*(self.tables as *const Tables) }
    }

    /// Our CID, from the configuration space.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Queue sizes (rx, tx, event).
    pub fn queue_sizes(&self) -> (u16, u16, u16) {
        (
            self.rx.queue.size(),
            self.tx.queue.size(),
            self.events.queue.size(),
        )
    }

    /// Connection `id`, if the slot exists.
    pub fn conn(&self, id: usize) -> Option<&Conn> {
        self.tr().conns.get(id)
    }

    /// Ids of the connections in use.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_CONNS).filter(|&i| self.tr().conns[i].state != State::Free)
    }

    fn kick(&mut self, q: u16) {
        let notify = match q {
            RX_QUEUE => self.rx.publish(),
            TX_QUEUE => self.tx.publish(),
            _ => self.events.publish(),
        };
        if notify {
            self.transport.notify(q);
            self.stats.kicks += 1;
        }
    }

    /// Listen on `port`.
    pub fn listen(&mut self, port: u32) -> Result<(), VsockError> {
        if self.listening.contains(&Some(port)) {
            return Ok(());
        }
        let slot = self
            .listening
            .iter_mut()
            .find(|l| l.is_none())
            .ok_or(VsockError::TooManyListeners)?;
        *slot = Some(port);
        Ok(())
    }

    fn header(&self, c: &Conn, op: u16, len: u32, flags: u32) -> Hdr {
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: c.peer_cid,
            src_port: c.local_port,
            dst_port: c.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
    }

    /// Put one packet in a free transmit buffer (unpublished); `Ok(false)` if none.
    fn put(&mut self, h: &Hdr, payload: &[u8]) -> Result<bool, RingError> {
        if self.tx.num_free() == 0 {
            self.tx.reclaim()?;
        }
        let queued = self.tx.send(|buf| {
            h.write(buf);
            buf[HDR_LEN..HDR_LEN + payload.len()].copy_from_slice(payload);
            HDR_LEN + payload.len()
        })?;
        if queued {
            self.stats.tx_packets += 1;
        }
        Ok(queued)
    }

    /// Send the waiting control packets (unpublished); whether all went.
    fn flush_pending(&mut self) -> Result<bool, RingError> {
        while self.pending_len > 0 {
            let head = self.pending_head;
            let h = self.tr().pending[head];
            if !self.put(&h, &[])? {
                return Ok(false);
            }
            self.pending_head = (self.pending_head + 1) % PENDING;
            self.pending_len -= 1;
        }
        Ok(true)
    }

    /// Send a control packet now, or queue it.
    fn control(&mut self, h: Hdr) -> Result<(), RingError> {
        if h.op == op::RST {
            self.stats.rst_sent += 1;
        }
        if h.op == op::CREDIT_UPDATE {
            self.stats.credit_updates += 1;
        }
        if self.flush_pending()? && self.put(&h, &[])? {
            self.kick(TX_QUEUE);
            return Ok(());
        }
        if self.pending_len == PENDING {
            self.stats.control_lost += 1;
            return Ok(());
        }
        let at = (self.pending_head + self.pending_len) % PENDING;
        self.t().pending[at] = h;
        self.pending_len += 1;
        self.kick(TX_QUEUE);
        Ok(())
    }

    fn send_conn_control(&mut self, id: usize, op: u16, flags: u32) -> Result<(), RingError> {
        let c = self.t().conns[id];
        let h = self.header(&c, op, 0, flags);
        self.t().conns[id].fwd_sent = c.fwd_cnt;
        self.control(h)
    }

    /// RST in answer to `h` (never to an RST).
    fn reset_reply(&mut self, h: &Hdr) -> Result<(), RingError> {
        if h.op == op::RST {
            return Ok(());
        }
        self.control(Hdr {
            src_cid: self.guest_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: h.type_,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        })
    }

    /// Connect to `cid`:`port` from a fresh local port; the connection is usable after
    /// [`Event::Connected`] (or gone after [`Event::Closed`]).
    pub fn connect(&mut self, cid: u64, port: u32) -> Result<usize, VsockError> {
        let id = self
            .t()
            .conns
            .iter()
            .position(|c| c.state == State::Free)
            .ok_or(VsockError::NoSlot)?;
        let local = self.next_port;
        self.next_port = if self.next_port == u32::MAX {
            FIRST_EPHEMERAL
        } else {
            self.next_port + 1
        };
        let mut c = Conn::new(State::Connecting, local, cid, port);
        c.outgoing = true;
        self.t().conns[id] = c;
        self.send_conn_control(id, op::REQUEST, 0)?;
        Ok(id)
    }

    /// Queue as much of `data` as the peer's credit and the free transmit buffers allow
    /// (one notification at most); returns the bytes queued (0: no credit or no buffer).
    pub fn send(&mut self, id: usize, data: &[u8]) -> Result<usize, VsockError> {
        let c = *self.t().conns.get(id).ok_or(VsockError::NotConnected(id))?;
        if c.state != State::Established || c.our_shutdown & shutdown::SEND != 0 {
            return Err(VsockError::NotConnected(id));
        }
        if !self.flush_pending()? {
            self.kick(TX_QUEUE);
            return Ok(0);
        }
        let mut sent = 0usize;
        while sent < data.len() {
            let credit = self.t().conns[id].credit() as usize;
            let n = (data.len() - sent).min(credit).min(MAX_PAYLOAD);
            if n == 0 {
                break;
            }
            let conn = self.t().conns[id];
            let h = self.header(&conn, op::RW, n as u32, 0);
            if !self.put(&h, &data[sent..sent + n])? {
                break;
            }
            let c = &mut self.t().conns[id];
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            c.fwd_sent = c.fwd_cnt;
            sent += n;
        }
        if sent > 0 {
            self.stats.tx_bytes += sent as u64;
            self.kick(TX_QUEUE);
        }
        Ok(sent)
    }

    /// Copy up to `out.len()` waiting bytes of connection `id` into `out` without
    /// consuming them; returns how many.
    pub fn peek(&self, id: usize, out: &mut [u8]) -> usize {
        let Some(c) = self.tr().conns.get(id) else {
            return 0;
        };
        let n = (c.pending() as usize).min(out.len());
        let base = self.conn_bufs + id as u64 * u64::from(BUF_ALLOC);
        let start = (c.fwd_cnt % BUF_ALLOC) as usize;
        let first = n.min(BUF_ALLOC as usize - start);
        // SAFETY: the ring of slot `id` lies inside `conn_bufs` (`init`'s contract);
        // `start + first <= BUF_ALLOC` and `n - first <= start`.
        unsafe {
            let ring = core::slice::from_raw_parts(base as *const u8, BUF_ALLOC as usize);
            out[..first].copy_from_slice(&ring[start..start + first]);
            out[first..n].copy_from_slice(&ring[..n - first]);
        }
        n
    }

    /// The application consumed `n` bytes of connection `id` (at most what waits); sends a
    /// CREDIT_UPDATE once enough were consumed since the last advertisement.
    pub fn consume(&mut self, id: usize, n: usize) -> Result<(), VsockError> {
        let c = self
            .t()
            .conns
            .get_mut(id)
            .ok_or(VsockError::NotConnected(id))?;
        let n = (n as u32).min(c.pending());
        c.fwd_cnt = c.fwd_cnt.wrapping_add(n);
        if c.state == State::Established && c.unadvertised() >= CREDIT_THRESHOLD {
            self.send_conn_control(id, op::CREDIT_UPDATE, 0)?;
        }
        Ok(())
    }

    /// [`peek`](Self::peek) and [`consume`](Self::consume).
    pub fn recv(&mut self, id: usize, out: &mut [u8]) -> Result<usize, VsockError> {
        let n = self.peek(id, out);
        self.consume(id, n)?;
        Ok(n)
    }

    /// Ask the peer for its credit (when ours ran out and no update came).
    pub fn request_credit(&mut self, id: usize) -> Result<(), VsockError> {
        self.established(id)?;
        Ok(self.send_conn_control(id, op::CREDIT_REQUEST, 0)?)
    }

    fn established(&self, id: usize) -> Result<(), VsockError> {
        match self.tr().conns.get(id) {
            Some(c) if c.state == State::Established => Ok(()),
            _ => Err(VsockError::NotConnected(id)),
        }
    }

    /// Send SHUTDOWN with `flags`; with both flags the connection waits for the peer's RST
    /// ([`Event::Closed`]).
    pub fn shutdown(&mut self, id: usize, flags: u32) -> Result<(), VsockError> {
        self.established(id)?;
        let c = &mut self.t().conns[id];
        c.our_shutdown |= flags & shutdown::BOTH;
        if c.our_shutdown == shutdown::BOTH {
            c.state = State::Closing;
        }
        Ok(self.send_conn_control(id, op::SHUTDOWN, flags & shutdown::BOTH)?)
    }

    /// Send RST and forget the connection.
    pub fn reset(&mut self, id: usize) -> Result<(), VsockError> {
        match self.tr().conns.get(id) {
            Some(c) if c.state != State::Free => {}
            _ => return Err(VsockError::NotConnected(id)),
        }
        self.send_conn_control(id, op::RST, 0)?;
        self.t().conns[id] = Conn::FREE;
        Ok(())
    }

    /// Send `bytes` as one raw packet, whatever they hold (the hostile scenario).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<bool, VsockError> {
        if bytes.len() > TX_BUF as usize {
            return Err(VsockError::TooLong(bytes.len()));
        }
        self.flush_pending()?;
        if self.tx.num_free() == 0 {
            self.tx.reclaim()?;
        }
        let queued = self.tx.send(|buf| {
            buf[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })?;
        if queued {
            self.stats.tx_packets += 1;
            self.kick(TX_QUEUE);
        }
        Ok(queued)
    }

    /// A header for a raw packet on connection `id` (the hostile scenario bends it).
    pub fn raw_header(&self, id: usize, op: u16, len: u32) -> Option<Hdr> {
        let c = self.tr().conns.get(id)?;
        Some(self.header(c, op, len, 0))
    }

    /// Has the device taken every packet sent, and is nothing waiting to be sent?
    pub fn flushed(&mut self) -> Result<bool, VsockError> {
        self.tx.reclaim()?;
        if !self.flush_pending()? {
            self.kick(TX_QUEUE);
            return Ok(false);
        }
        self.kick(TX_QUEUE);
        Ok(self.tx.queue.outstanding() == 0)
    }

    /// Handle what the device returned: one event buffer or one received packet, or
    /// nothing (`None`). Also reclaims transmit buffers and sends waiting control packets.
    pub fn poll(&mut self) -> Result<Option<Event>, VsockError> {
        if self.tx.reclaim()? > 0 && self.pending_len > 0 {
            self.flush_pending()?;
            self.kick(TX_QUEUE);
        }
        if let Some(ev) = self.poll_event()? {
            return Ok(Some(ev));
        }
        let Some(filled) = self.rx.pop()? else {
            return Ok(None);
        };
        self.stats.rx_packets += 1;
        let data = self.rx.data(&filled);
        let parsed = Hdr::parse(data).filter(|h| h.len as usize <= data.len() - HDR_LEN);
        // The payload goes into its connection's ring before the buffer goes back.
        let mut stored = None;
        if let Some(h) = parsed {
            if h.op == op::RW && h.type_ == TYPE_STREAM && h.dst_cid == self.guest_cid {
                let payload = &data[HDR_LEN..HDR_LEN + h.len as usize];
                // SAFETY: the tables are only this driver's (`init`), and nothing else refers
                // to them during this call: `data` borrows the receive ring, not the tables.
                let conns = unsafe { &mut (*(self.tables as *mut Tables)).conns };
                stored = store(conns, self.conn_bufs, &mut self.stats, &h, payload);
            }
        }
        self.rx.repost(filled.index)?;
        self.kick(RX_QUEUE);
        let Some(h) = parsed else {
            self.stats.bad_len += 1;
            return Ok(Some(Event::Dropped));
        };
        Ok(Some(self.handle(&h, stored)?))
    }

    fn find(&self, h: &Hdr) -> Option<usize> {
        find(&self.tr().conns, h)
    }

    fn handle(&mut self, h: &Hdr, stored: Option<(usize, bool)>) -> Result<Event, VsockError> {
        if h.dst_cid != self.guest_cid {
            self.stats.bad_cid += 1;
            return Ok(Event::Dropped);
        }
        if h.type_ != TYPE_STREAM {
            self.stats.bad_type += 1;
            self.reset_reply(h)?;
            return Ok(Event::Dropped);
        }
        let Some(id) = self.find(h) else {
            return self.handle_unconnected(h);
        };
        self.t().conns[id].update_peer_credit(h.buf_alloc, h.fwd_cnt);
        let state = self.t().conns[id].state;
        match (h.op, state) {
            (op::RST, _) => {
                self.t().conns[id] = Conn::FREE;
                Ok(Event::Closed(id))
            }
            (op::RESPONSE, State::Connecting) => {
                self.t().conns[id].state = State::Established;
                Ok(Event::Connected(id))
            }
            (op::RW, State::Established | State::Closing) => match stored {
                Some((_, true)) => Ok(Event::Data(id)),
                _ => Ok(Event::Dropped),
            },
            (op::CREDIT_UPDATE, _) => Ok(Event::Other),
            (op::CREDIT_REQUEST, State::Established | State::Closing) => {
                self.send_conn_control(id, op::CREDIT_UPDATE, 0)?;
                Ok(Event::Other)
            }
            (op::SHUTDOWN, State::Established | State::Closing) => {
                let c = &mut self.t().conns[id];
                c.peer_shutdown |= h.flags & shutdown::BOTH;
                if c.peer_shutdown == shutdown::BOTH && c.pending() == 0 {
                    // As Linux: a peer that shut down both ways and left nothing unread
                    // gets its RST, and the connection is gone.
                    self.send_conn_control(id, op::RST, 0)?;
                    self.t().conns[id] = Conn::FREE;
                    return Ok(Event::Closed(id));
                }
                Ok(Event::PeerShutdown(id))
            }
            (op::REQUEST, _) | (op::RESPONSE, _) => {
                // A second REQUEST for a live connection, or a RESPONSE we did not ask
                // for: the connection is confused; reset it.
                self.send_conn_control(id, op::RST, 0)?;
                self.t().conns[id] = Conn::FREE;
                Ok(Event::Closed(id))
            }
            (o, _) if o > op::CREDIT_REQUEST || o == 0 => {
                self.stats.bad_op += 1;
                Ok(Event::Dropped)
            }
            _ => Ok(Event::Dropped),
        }
    }

    fn handle_unconnected(&mut self, h: &Hdr) -> Result<Event, VsockError> {
        if h.op == op::REQUEST && self.listening.contains(&Some(h.dst_port)) {
            let Some(id) = self.t().conns.iter().position(|c| c.state == State::Free) else {
                self.reset_reply(h)?;
                return Ok(Event::Dropped);
            };
            let mut c = Conn::new(State::Established, h.dst_port, h.src_cid, h.src_port);
            c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
            self.t().conns[id] = c;
            self.send_conn_control(id, op::RESPONSE, 0)?;
            return Ok(Event::Accepted(id));
        }
        if h.op == 0 || h.op > op::CREDIT_REQUEST {
            self.stats.bad_op += 1;
        }
        self.reset_reply(h)?;
        Ok(Event::Dropped)
    }

    /// One event buffer, if the device returned one.
    fn poll_event(&mut self) -> Result<Option<Event>, VsockError> {
        let Some(filled) = self.events.pop()? else {
            return Ok(None);
        };
        let data = self.events.data(&filled);
        let id =
            (data.len() >= 4).then(|| u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        self.events.repost(filled.index)?;
        self.kick(EVENT_QUEUE);
        if id != Some(EVENT_TRANSPORT_RESET) {
            return Ok(Some(Event::Dropped));
        }
        // Every connection is gone; the CID may have changed (virtio 1.2, 5.10.6.6).
        self.stats.transport_resets += 1;
        self.t().conns.fill(Conn::FREE);
        self.pending_len = 0;
        if let Ok(cid) = read_cid(&self.transport) {
            self.guest_cid = cid;
        }
        Ok(Some(Event::TransportReset))
    }
}

/// Copy RW payload into the connection's ring; `Some((id, accepted))` when the
/// connection exists and is established.
fn store(
    conns: &mut [Conn; MAX_CONNS],
    conn_bufs: u64,
    stats: &mut Stats,
    h: &Hdr,
    payload: &[u8],
) -> Option<(usize, bool)> {
    let id = conns
        .iter()
        .position(|c| c.matches(h.dst_port, h.src_cid, h.src_port))?;
    let c = &mut conns[id];
    if c.state != State::Established && c.state != State::Closing {
        return None;
    }
    if payload.len() as u32 > c.room(BUF_ALLOC) {
        c.overruns += 1;
        stats.overruns += 1;
        return Some((id, false));
    }
    let base = conn_bufs + id as u64 * u64::from(BUF_ALLOC);
    let start = (c.rx_cnt % BUF_ALLOC) as usize;
    let first = payload.len().min(BUF_ALLOC as usize - start);
    // SAFETY: slot `id`'s ring inside `conn_bufs` (`init`'s contract); the bytes written
    // are free (room checked), `start + first <= BUF_ALLOC`.
    unsafe {
        let ring = core::slice::from_raw_parts_mut(base as *mut u8, BUF_ALLOC as usize);
        ring[start..start + first].copy_from_slice(&payload[..first]);
        ring[..payload.len() - first].copy_from_slice(&payload[first..]);
    }
    c.rx_cnt = c.rx_cnt.wrapping_add(payload.len() as u32);
    stats.rx_bytes += payload.len() as u64;
    Some((id, true))
}

fn find(conns: &[Conn; MAX_CONNS], h: &Hdr) -> Option<usize> {
    conns
        .iter()
        .position(|c| c.matches(h.dst_port, h.src_cid, h.src_port))
}
