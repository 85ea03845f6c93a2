//! virtio-blk (virtio 1.2, 5.2): feature bits, the configuration space, and requests.
//!
//! A request is a descriptor chain: a 16-byte header the device reads (type, reserved,
//! sector), the data (device-written for IN and GET_ID, device-read for OUT and for the
//! DISCARD / WRITE_ZEROES segments), and one status byte the device writes. Each request
//! in flight owns a [`Slot`]: a 4 KiB metadata page (header, status, discard segment, ID
//! buffer, indirect table; [`slot`]) and a data buffer. Data can be split over several
//! descriptors, on byte boundaries that need not be sector boundaries, and put behind an
//! indirect table, within the device's SEG_MAX and SIZE_MAX.
//!
//! [`Blk`] does not wait: [`Blk::submit`] adds requests, [`Blk::kick`] publishes them and
//! notifies the device only when event-index suppression says so (counting the kicks),
//! [`Blk::poll`] takes completions. The guest binary adds timeouts around it.

use super::queue::{self, AddError, Buf, Queue, QueueMemory, Used, UsedError};
use super::transport::{InitError, Transport};
use super::{device_id, feature as common};
use core::fmt;

/// Bytes per sector: the unit of `sector` and of capacity, whatever BLK_SIZE says.
pub const SECTOR: u64 = 512;
/// Bytes of a GET_ID answer (the serial, NUL-padded if shorter).
pub const ID_BYTES: u32 = 20;
/// Bytes of a request header.
pub const HEADER_BYTES: u32 = 16;
/// Bytes of a DISCARD / WRITE_ZEROES segment.
pub const SEGMENT_BYTES: u32 = 16;

/// virtio-blk feature bits.
pub mod feature {
    /// `size_max`: largest single data segment.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max`: most data segments per request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// `geometry`.
    pub const GEOMETRY: u64 = 1 << 4;
    /// Read-only disk.
    pub const RO: u64 = 1 << 5;
    /// `blk_size`: logical block size.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// FLUSH requests.
    pub const FLUSH: u64 = 1 << 9;
    /// `topology`.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Writeback toggle in the config space.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// `num_queues`: several request queues.
    pub const MQ: u64 = 1 << 12;
    /// DISCARD requests.
    pub const DISCARD: u64 = 1 << 13;
    /// WRITE_ZEROES requests.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the device's write cache.
    pub const FLUSH: u32 = 4;
    /// Device serial.
    pub const GET_ID: u32 = 8;
    /// Discard sectors.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status bytes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also: request refused, e.g. a write to a read-only disk).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
    /// Written by the driver before submitting: no device writes it, so a request that
    /// comes back with it was never given a status.
    pub const NONE: u8 = 0xff;

    /// A name for messages.
    pub fn name(s: u8) -> &'static str {
        match s {
            OK => "OK",
            IOERR => "IOERR",
            UNSUPP => "UNSUPP",
            NONE => "none",
            _ => "invalid",
        }
    }
}

/// Features this driver accepts when offered. Not CONFIG_WCE (it would have to manage the
/// cache mode) and never the vhost-user protocol bit (the transport strips it anyway).
pub const WANTED: u64 = common::VERSION_1
    | common::EVENT_IDX
    | common::INDIRECT_DESC
    | feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::GEOMETRY
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH
    | feature::TOPOLOGY
    | feature::MQ
    | feature::DISCARD
    | feature::WRITE_ZEROES;

/// Configuration-space offsets (struct virtio_blk_config).
mod config_offset {
    pub const CAPACITY: u32 = 0;
    pub const SIZE_MAX: u32 = 8;
    pub const SEG_MAX: u32 = 12;
    pub const BLK_SIZE: u32 = 20;
    pub const NUM_QUEUES: u32 = 34;
    pub const MAX_DISCARD_SECTORS: u32 = 36;
    pub const MAX_DISCARD_SEG: u32 = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: u32 = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: u32 = 48;
    pub const MAX_WRITE_ZEROES_SEG: u32 = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: u32 = 56;
}

/// The configuration space; fields of features not negotiated read as 0 (not read at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest data segment in bytes (SIZE_MAX).
    pub size_max: u32,
    /// Most data segments per request (SEG_MAX).
    pub seg_max: u32,
    /// Logical block size (BLK_SIZE).
    pub blk_size: u32,
    /// Request queues (MQ; 1 without it).
    pub num_queues: u16,
    /// DISCARD limits.
    pub max_discard_sectors: u32,
    /// Segments per DISCARD.
    pub max_discard_seg: u32,
    /// DISCARD alignment in sectors.
    pub discard_sector_alignment: u32,
    /// WRITE_ZEROES limits.
    pub max_write_zeroes_sectors: u32,
    /// Segments per WRITE_ZEROES.
    pub max_write_zeroes_seg: u32,
    /// The device may unmap on WRITE_ZEROES.
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// Read the fields that `features` (negotiated) make valid.
    pub fn read<T: Transport>(t: &T, features: u64) -> Result<Self, InitError> {
        use config_offset as o;
        let has = |f: u64| features & f != 0;
        t.read_config(|c| {
            let mut cfg = BlkConfig {
                capacity: c.u64(o::CAPACITY),
                num_queues: 1,
                ..BlkConfig::default()
            };
            if has(feature::SIZE_MAX) {
                cfg.size_max = c.u32(o::SIZE_MAX);
            }
            if has(feature::SEG_MAX) {
                cfg.seg_max = c.u32(o::SEG_MAX);
            }
            if has(feature::BLK_SIZE) {
                cfg.blk_size = c.u32(o::BLK_SIZE);
            }
            if has(feature::MQ) {
                cfg.num_queues = c.u16(o::NUM_QUEUES);
            }
            if has(feature::DISCARD) {
                cfg.max_discard_sectors = c.u32(o::MAX_DISCARD_SECTORS);
                cfg.max_discard_seg = c.u32(o::MAX_DISCARD_SEG);
                cfg.discard_sector_alignment = c.u32(o::DISCARD_SECTOR_ALIGNMENT);
            }
            if has(feature::WRITE_ZEROES) {
                cfg.max_write_zeroes_sectors = c.u32(o::MAX_WRITE_ZEROES_SECTORS);
                cfg.max_write_zeroes_seg = c.u32(o::MAX_WRITE_ZEROES_SEG);
                cfg.write_zeroes_may_unmap = c.u8(o::WRITE_ZEROES_MAY_UNMAP);
            }
            cfg
        })
    }
}

/// Layout of a slot's metadata page.
pub mod slot {
    /// Request header (16 bytes, device-readable).
    pub const HEADER: u64 = 0;
    /// Status byte (device-writable).
    pub const STATUS: u64 = 16;
    /// DISCARD / WRITE_ZEROES segment (16 bytes, device-readable).
    pub const SEGMENT: u64 = 32;
    /// GET_ID answer (20 bytes, device-writable).
    pub const ID: u64 = 64;
    /// Indirect descriptor table, to the end of the page.
    pub const INDIRECT: u64 = 256;
    /// Size of the metadata page.
    pub const META_BYTES: u64 = 4096;
    /// Descriptors the indirect table holds.
    pub const INDIRECT_CAPACITY: usize =
        ((META_BYTES - INDIRECT) / super::queue::DESC_SIZE) as usize;
}

/// Memory owned by one request in flight: a metadata page and a data buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    meta: u64,
    data: u64,
    data_len: u32,
}

impl Slot {
    /// A slot over a metadata page at `meta` ([`slot::META_BYTES`], 16-byte aligned) and
    /// a data buffer of `data_len` bytes at `data`.
    ///
    /// # Safety
    /// Both must be valid, writable memory (identity-mapped: the addresses are also what
    /// the device is given) for as long as the slot or a copy of it is used, touched by
    /// nothing but the slot's user and, while one of its requests is in flight, the device.
    pub unsafe fn new(meta: u64, data: u64, data_len: u32) -> Self {
        Self {
            meta,
            data,
            data_len,
        }
    }

    /// Address of the metadata page.
    pub fn meta(&self) -> u64 {
        self.meta
    }

    /// Address of the data buffer.
    pub fn data(&self) -> u64 {
        self.data
    }

    /// Size of the data buffer.
    pub fn data_len(&self) -> u32 {
        self.data_len
    }

    /// The status byte the device wrote ([`status::NONE`] if it wrote none).
    pub fn status(&self) -> u8 {
        // SAFETY: the metadata page is valid (`new`'s contract); a byte read races with
        // nothing that could make it invalid.
        unsafe { ((self.meta + slot::STATUS) as *const u8).read_volatile() }
    }

    /// The GET_ID answer.
    pub fn id(&self) -> [u8; ID_BYTES as usize] {
        // SAFETY: as in `status`; the ID buffer is inside the metadata page.
        unsafe { ((self.meta + slot::ID) as *const [u8; ID_BYTES as usize]).read_volatile() }
    }

    /// Write a request header and reset the status byte to [`status::NONE`].
    ///
    /// # Safety
    /// No request of this slot may be in flight.
    pub unsafe fn prepare(&self, kind: u32, sector: u64) {
        let header = self.meta + slot::HEADER;
        // SAFETY: the page is valid (`new`), idle (the caller); the fields are inside it
        // and aligned.
        unsafe {
            (header as *mut u32).write_volatile(kind);
            ((header + 4) as *mut u32).write_volatile(0);
            ((header + 8) as *mut u64).write_volatile(sector);
            ((self.meta + slot::STATUS) as *mut u8).write_volatile(status::NONE);
        }
    }

    /// The data buffer.
    ///
    /// # Safety
    /// No request of this slot may be in flight, and no other reference to the buffer may
    /// exist while the returned one (of any lifetime the caller picks) is used.
    pub unsafe fn data_mut<'a>(&self) -> &'a mut [u8] {
        // SAFETY: valid memory (`new`), exclusively ours (the caller).
        unsafe { core::slice::from_raw_parts_mut(self.data as *mut u8, self.data_len as usize) }
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `sectors` sectors into the slot's data buffer.
    Read,
    /// Write `sectors` sectors from the slot's data buffer.
    Write,
    /// Flush.
    Flush,
    /// Read the serial.
    GetId,
    /// Discard `sectors` sectors.
    Discard,
    /// Write zeroes over `sectors` sectors (may unmap, if `unmap` and the device allows).
    WriteZeroes {
        /// Set VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
        unmap: bool,
    },
}

/// One request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What.
    pub op: Op,
    /// First sector.
    pub sector: u64,
    /// Sectors (data size for reads and writes, range for discard and write-zeroes).
    pub sectors: u32,
    /// Data descriptors to split a read's or write's data into (at least 1; more when
    /// SIZE_MAX requires it).
    pub segments: u16,
    /// Put the chain behind an indirect table (needs INDIRECT_DESC).
    pub indirect: bool,
}

impl Request {
    fn new(op: Op, sector: u64, sectors: u32) -> Self {
        Self {
            op,
            sector,
            sectors,
            segments: 1,
            indirect: false,
        }
    }

    /// Read.
    pub fn read(sector: u64, sectors: u32) -> Self {
        Self::new(Op::Read, sector, sectors)
    }

    /// Write.
    pub fn write(sector: u64, sectors: u32) -> Self {
        Self::new(Op::Write, sector, sectors)
    }

    /// Flush.
    pub fn flush() -> Self {
        Self::new(Op::Flush, 0, 0)
    }

    /// GET_ID.
    pub fn get_id() -> Self {
        Self::new(Op::GetId, 0, 0)
    }

    /// Discard.
    pub fn discard(sector: u64, sectors: u32) -> Self {
        Self::new(Op::Discard, sector, sectors)
    }

    /// Write zeroes.
    pub fn write_zeroes(sector: u64, sectors: u32, unmap: bool) -> Self {
        Self::new(Op::WriteZeroes { unmap }, sector, sectors)
    }

    /// Split the data over `n` descriptors.
    pub fn split(mut self, n: u16) -> Self {
        self.segments = n.max(1);
        self
    }

    /// Behind an indirect table.
    pub fn indirect(mut self) -> Self {
        self.indirect = true;
        self
    }

    /// Bytes of data moved.
    pub fn data_bytes(&self) -> u64 {
        match self.op {
            Op::Read | Op::Write => u64::from(self.sectors) * SECTOR,
            _ => 0,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.op {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => return write!(f, "FLUSH"),
            Op::GetId => return write!(f, "GET_ID"),
            Op::Discard => "DISCARD",
            Op::WriteZeroes { .. } => "WRITE_ZEROES",
        };
        let end = self.sector.saturating_add(u64::from(self.sectors));
        write!(f, "{name} of sectors {}..{end}", self.sector)
    }
}

/// Why the driver could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkInitError {
    /// Not a block device.
    NotBlock(u32),
    /// The handshake failed.
    Init(InitError),
    /// QueueNumMax of queue 0 is 0.
    NoQueue,
}

impl fmt::Display for BlkInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBlock(id) => write!(
                f,
                "device type {id} ({}) is not a block device",
                device_id::name(*id)
            ),
            Self::Init(e) => e.fmt(f),
            Self::NoQueue => write!(f, "queue 0 does not exist (QueueNumMax 0)"),
        }
    }
}

impl From<InitError> for BlkInitError {
    fn from(e: InitError) -> Self {
        Self::Init(e)
    }
}

/// Why a request could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The data does not fit in the slot's buffer.
    TooBig {
        /// Bytes the request moves.
        bytes: u64,
        /// Bytes the slot holds.
        capacity: u32,
    },
    /// More data segments than SEG_MAX (or the queue or indirect table) allow.
    TooManySegments {
        /// Segments needed.
        segments: usize,
        /// Most allowed.
        max: usize,
    },
    /// The feature the request needs was not negotiated.
    NotNegotiated(&'static str),
    /// More sectors than the device takes in one DISCARD / WRITE_ZEROES.
    TooManySectors {
        /// Sectors asked for.
        sectors: u32,
        /// The device's limit.
        max: u32,
    },
    /// The queue refused the chain.
    Queue(AddError),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooBig { bytes, capacity } => {
                write!(f, "{bytes} bytes do not fit a {capacity}-byte buffer")
            }
            Self::TooManySegments { segments, max } => {
                write!(f, "{segments} data segments, at most {max} allowed")
            }
            Self::NotNegotiated(what) => write!(f, "device does not offer {what}"),
            Self::TooManySectors { sectors, max } => {
                write!(
                    f,
                    "{sectors} sectors in one request, the device takes at most {max}"
                )
            }
            Self::Queue(e) => e.fmt(f),
        }
    }
}

/// A virtio-blk device with queue 0 set up.
pub struct Blk<T> {
    transport: T,
    /// The queue in use ([`Blk::use_queue`]; queue 0 at first): requests are added to it,
    /// kicks notify it, completions are taken from it.
    pub queue: Queue,
    /// Its index.
    active: u16,
    /// The request queues not in use, by index (a multi-queue device's; `None` for the
    /// one in use and for queues not set up).
    parked: [Option<Queue>; MAX_QUEUES],
    /// The configuration space as read at set-up.
    pub config: BlkConfig,
    kicks: u64,
}

/// Request queues this driver sets up at most (queue 0 and, with MQ, up to three more).
pub const MAX_QUEUES: usize = 4;

impl<T: Transport> Blk<T> {
    /// Negotiate `want` (typically [`WANTED`]), read the configuration, set up queue 0 in
    /// `mem` and, when MQ was negotiated, queues 1.. (as many as the device has, up to
    /// [`MAX_QUEUES`] and `others.len() + 1`) in `others`, each sized for
    /// [`queue::MAX_SIZE`], and set DRIVER_OK. Interrupts start suppressed.
    ///
    /// # Safety
    /// `mem` and each of `others` must satisfy [`Queue::new`]'s contract for
    /// [`queue::MAX_SIZE`] entries, for as long as the device is live.
    pub unsafe fn init(
        mut transport: T,
        mem: QueueMemory,
        others: &[QueueMemory],
        want: u64,
    ) -> Result<Self, BlkInitError> {
        if transport.device_id() != device_id::BLOCK {
            return Err(BlkInitError::NotBlock(transport.device_id()));
        }
        let features = transport.negotiate(want)?;
        let config = BlkConfig::read(&transport, features).inspect_err(|_| transport.fail())?;
        let size = queue::choose_size(transport.queue_max(0));
        if size == 0 {
            transport.fail();
            return Err(BlkInitError::NoQueue);
        }
        let event_idx = features & common::EVENT_IDX != 0;
        // SAFETY: the caller's memory holds MAX_SIZE >= size entries.
        let queue =
            unsafe { Queue::new(mem, size, event_idx) }.map_err(|_| BlkInitError::NoQueue)?;
        transport.setup_queue(0, size, &mem)?;
        let mut parked = [const { None }; MAX_QUEUES];
        let count = usize::from(config.num_queues).min(MAX_QUEUES);
        for (i, mem) in others.iter().enumerate().take(count.saturating_sub(1)) {
            let index = i as u16 + 1;
            let size = queue::choose_size(transport.queue_max(index));
            if size == 0 {
                transport.fail();
                return Err(BlkInitError::NoQueue);
            }
            // SAFETY: the caller's memory for this queue holds MAX_SIZE >= size entries.
            let q =
                unsafe { Queue::new(*mem, size, event_idx) }.map_err(|_| BlkInitError::NoQueue)?;
            transport.setup_queue(index, size, mem)?;
            parked[usize::from(index)] = Some(q);
        }
        transport.driver_ok()?;
        Ok(Self {
            transport,
            queue,
            active: 0,
            parked,
            config,
            kicks: 0,
        })
    }

    /// Request queues set up (1 unless MQ was negotiated).
    pub fn queue_count(&self) -> u16 {
        1 + self.parked.iter().filter(|q| q.is_some()).count() as u16
    }

    /// The index of the queue in use.
    pub fn active_queue(&self) -> u16 {
        self.active
    }

    /// Makes queue `index` the one requests go to and come back from. Only with nothing
    /// in flight (heads are per queue, and a caller tracks requests by head); `false` if
    /// there is no such queue.
    pub fn use_queue(&mut self, index: u16) -> bool {
        if index == self.active {
            return true;
        }
        let Some(next) = self
            .parked
            .get_mut(usize::from(index))
            .and_then(Option::take)
        else {
            return false;
        };
        let previous = core::mem::replace(&mut self.queue, next);
        self.parked[usize::from(self.active)] = Some(previous);
        self.active = index;
        true
    }

    /// Reads the configuration space again (after a configuration change: a disk whose
    /// image was swapped); returns the generation it belongs to.
    pub fn reread_config(&mut self) -> Result<u32, InitError> {
        let features = self.features();
        let generation = self.transport.config_generation();
        self.config = BlkConfig::read(&self.transport, features)?;
        Ok(generation)
    }

    /// The transport (registers).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.transport.accepted()
    }

    /// Was `f` negotiated?
    pub fn has(&self, f: u64) -> bool {
        self.features() & f != 0
    }

    /// The device is read-only.
    pub fn read_only(&self) -> bool {
        self.has(feature::RO)
    }

    /// Notifications sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Most data segments in one request: SEG_MAX if the device set one, and what fits in
    /// a queue (direct) or an indirect table, beside header and status.
    pub fn max_segments(&self, indirect: bool) -> usize {
        let room = if indirect {
            slot::INDIRECT_CAPACITY
        } else {
            usize::from(self.queue.size())
        } - 2;
        match self.config.seg_max {
            0 => room,
            n => room.min(n as usize),
        }
    }

    /// Most sectors in one DISCARD (`discard`) or WRITE_ZEROES request.
    pub fn max_zeroing_sectors(&self, discard: bool) -> u32 {
        let max = if discard {
            self.config.max_discard_sectors
        } else {
            self.config.max_write_zeroes_sectors
        };
        if max == 0 {
            u32::MAX
        } else {
            max
        }
    }

    /// Build `req` in `slot` and add its chain to the queue, unpublished ([`kick`]
    /// publishes). Returns the chain's head, which [`poll`] hands back on completion.
    ///
    /// [`kick`]: Self::kick
    /// [`poll`]: Self::poll
    ///
    /// # Safety
    /// The slot's memory must be valid and used by nothing else (no other request in
    /// flight with it) until the request completes; for a write its data must be ready.
    pub unsafe fn submit(&mut self, slot: &Slot, req: &Request) -> Result<u16, SubmitError> {
        let bytes = req.data_bytes();
        if bytes > u64::from(slot.data_len) {
            return Err(SubmitError::TooBig {
                bytes,
                capacity: slot.data_len,
            });
        }
        if req.indirect && !self.has(common::INDIRECT_DESC) {
            return Err(SubmitError::NotNegotiated("INDIRECT_DESC"));
        }
        let (kind, need) = match req.op {
            Op::Read => (req::IN, 0),
            Op::Write => (req::OUT, 0),
            Op::Flush => (req::FLUSH, feature::FLUSH),
            Op::GetId => (req::GET_ID, 0),
            Op::Discard => (req::DISCARD, feature::DISCARD),
            Op::WriteZeroes { .. } => (req::WRITE_ZEROES, feature::WRITE_ZEROES),
        };
        if need != 0 && !self.has(need) {
            return Err(SubmitError::NotNegotiated(match need {
                feature::FLUSH => "FLUSH",
                feature::DISCARD => "DISCARD",
                _ => "WRITE_ZEROES",
            }));
        }
        let sector = match req.op {
            Op::Read | Op::Write => req.sector,
            _ => 0,
        };
        // SAFETY: the caller guarantees the slot's memory.
        unsafe { slot.prepare(kind, sector) };
        let mut bufs = [Buf::readable(0, 0); slot::INDIRECT_CAPACITY];
        bufs[0] = Buf::readable(slot.meta + slot::HEADER, HEADER_BYTES);
        let mut n = 1;
        match req.op {
            Op::Read | Op::Write => {
                let writable = req.op == Op::Read;
                let mut segments = u64::from(req.segments.max(1));
                if self.config.size_max != 0 {
                    segments = segments.max(bytes.div_ceil(u64::from(self.config.size_max)));
                }
                let max = self.max_segments(req.indirect);
                if segments > max as u64 || (segments > bytes && bytes > 0) {
                    return Err(SubmitError::TooManySegments {
                        segments: segments as usize,
                        max,
                    });
                }
                let (base, extra) = (bytes / segments, bytes % segments);
                let mut addr = slot.data;
                for i in 0..segments {
                    let len = base + u64::from(i < extra);
                    bufs[n] = Buf {
                        addr,
                        len: len as u32,
                        writable,
                    };
                    addr += len;
                    n += 1;
                }
            }
            Op::Flush => {}
            Op::GetId => {
                bufs[n] = Buf::writable(slot.meta + slot::ID, ID_BYTES);
                n += 1;
            }
            Op::Discard | Op::WriteZeroes { .. } => {
                let discard = req.op == Op::Discard;
                let max = self.max_zeroing_sectors(discard);
                if req.sectors > max {
                    return Err(SubmitError::TooManySectors {
                        sectors: req.sectors,
                        max,
                    });
                }
                let flags = u32::from(matches!(req.op, Op::WriteZeroes { unmap: true }));
                let seg = slot.meta + slot::SEGMENT;
                // SAFETY: the segment is inside the caller's metadata page.
                unsafe {
                    (seg as *mut u64).write_volatile(req.sector);
                    ((seg + 8) as *mut u32).write_volatile(req.sectors);
                    ((seg + 12) as *mut u32).write_volatile(flags);
                }
                bufs[n] = Buf::readable(seg, SEGMENT_BYTES);
                n += 1;
            }
        }
        bufs[n] = Buf::writable(slot.meta + slot::STATUS, 1);
        n += 1;
        let result = if req.indirect {
            // SAFETY: the indirect table is inside the caller's metadata page, 16-byte
            // aligned, and the slot is the request's until it completes.
            unsafe {
                self.queue.add_indirect(
                    slot.meta + slot::INDIRECT,
                    slot::INDIRECT_CAPACITY,
                    &bufs[..n],
                )
            }
        } else {
            self.queue.add(&bufs[..n])
        };
        result.map_err(SubmitError::Queue)
    }

    /// Publish the requests added since the last kick and notify the device if it asked
    /// to be (event index) or did not ask not to be. Returns whether it was notified.
    pub fn kick(&mut self) -> bool {
        if self.queue.publish() {
            self.transport.notify(self.active);
            self.kicks += 1;
            true
        } else {
            false
        }
    }

    /// Take a completed request, if any.
    pub fn poll(&mut self) -> Result<Option<Used>, UsedError> {
        self.queue.pop_used()
    }
}

/// The test pattern: the byte at absolute disk offset `offset`.
pub fn pattern_byte(offset: u64) -> u8 {
    // Only the low 8 bits matter, so wrapping arithmetic gives the same byte.
    (offset / SECTOR)
        .wrapping_mul(131)
        .wrapping_add((offset % SECTOR) * 7)
        .wrapping_add(0x5a) as u8
}

/// Fill `buf` with the pattern of the disk bytes from `offset` on.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// The first byte of `buf` that differs from the pattern at `offset`: (disk offset,
/// expected, found).
pub fn check_pattern(buf: &[u8], offset: u64) -> Option<(u64, u8, u8)> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        let at = offset + i as u64;
        let expected = pattern_byte(at);
        (b != expected).then_some((at, expected, b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::mock::{Dma, FakeRegs, MockBlk, QueueArea};

    struct Rig {
        regs: &'static FakeRegs,
        _area: QueueArea,
        blk: Blk<MmioTransport<&'static FakeRegs>>,
        dev: MockBlk,
        slots: Vec<(Dma, Dma, Slot)>,
    }

    fn rig(sectors: u64, features: Option<u64>, want: u64) -> Rig {
        let regs: &'static FakeRegs = Box::leak(Box::new(FakeRegs::blk(sectors)));
        if let Some(f) = features {
            regs.state.borrow_mut().features = f;
        }
        let area = QueueArea::new(queue::MAX_SIZE);
        let t = MmioTransport::probe(regs).unwrap();
        // SAFETY: the area is sized for MAX_SIZE and lives as long as the rig.
        let blk = unsafe { Blk::init(t, area.memory(), &[], want) }.unwrap();
        let s = regs.state.borrow();
        assert_eq!(s.queue_num, 256);
        let mut dev = MockBlk::new(area.memory(), 256, blk.has(common::EVENT_IDX), sectors);
        dev.serial = b"serial-123".to_vec();
        dev.read_only = blk.read_only();
        drop(s);
        let slots = (0..8)
            .map(|_| {
                let meta = Dma::new(4096);
                let data = Dma::new(256 * 1024);
                // SAFETY: both allocations live as long as the rig and serve only this slot.
                let slot = unsafe { Slot::new(meta.addr(), data.addr(), 256 * 1024) };
                (meta, data, slot)
            })
            .collect();
        Rig {
            regs,
            _area: area,
            blk,
            dev,
            slots,
        }
    }

    impl Rig {
        fn slot(&self, i: usize) -> Slot {
            self.slots[i].2
        }

        fn try_submit(&mut self, i: usize, req: &Request) -> Result<u16, SubmitError> {
            let slot = self.slot(i);
            // SAFETY: the rig's slots are live; tests submit on idle slots only.
            unsafe { self.blk.submit(&slot, req) }
        }

        #[allow(clippy::mut_from_ref)]
        fn data(&self, i: usize, bytes: u64) -> &mut [u8] {
            // SAFETY: tests look at the data of idle slots only, one reference at a time.
            unsafe { &mut self.slots[i].2.data_mut()[..bytes as usize] }
        }

        /// Submit, kick, let the device serve, return the status.
        fn run(&mut self, i: usize, req: Request) -> u8 {
            let slot = self.slot(i);
            let head = self.try_submit(i, &req).unwrap();
            self.blk.kick();
            self.dev.serve();
            let used = self.blk.poll().unwrap().unwrap();
            assert_eq!(used.head, head);
            slot.status()
        }
    }

    #[test]
    fn init_reads_the_config_it_negotiated() {
        let r = rig(8192, None, WANTED);
        assert_eq!(r.blk.config.capacity, 8192);
        assert_eq!(r.blk.config.seg_max, 126);
        assert_eq!(r.blk.config.blk_size, 512);
        assert_eq!(r.blk.config.num_queues, 1);
        assert!(r.blk.has(common::EVENT_IDX));
        assert!(!r.blk.has(common::VHOST_USER_PROTOCOL_FEATURES));
        assert!(!r.blk.read_only());
        let r = rig(8192, Some(common::VERSION_1 | feature::RO), WANTED);
        assert_eq!(r.blk.config.seg_max, 0, "not negotiated: not read");
        assert_eq!(r.blk.config.num_queues, 1);
        assert!(r.blk.read_only());
        assert!(r
            .regs
            .state
            .borrow()
            .config_widths
            .iter()
            .all(|&(off, _)| off < 8));
    }

    #[test]
    fn write_then_read_the_pattern_in_every_shape() {
        for want in [WANTED, WANTED & !common::EVENT_IDX] {
            let mut r = rig(4096, None, want);
            let shapes = [
                Request::write(100, 1),
                Request::write(101, 7),
                Request::write(108, 8).split(3),
                Request::write(116, 16).split(5).indirect(),
                Request::write(132, 4).split(4),
            ];
            for (i, req) in shapes.iter().enumerate() {
                fill_pattern(r.data(i, req.data_bytes()), req.sector * SECTOR);
                assert_eq!(r.run(i, *req), status::OK, "{req:?}");
            }
            assert_eq!(
                check_pattern(&r.dev.disk[100 * 512..136 * 512], 100 * 512),
                None
            );
            assert!(r.dev.disk[..100 * 512].iter().all(|&b| b == 0));
            assert!(r.dev.disk[136 * 512..].iter().all(|&b| b == 0));
            let read = Request::read(100, 36).split(9).indirect();
            assert_eq!(r.run(0, read), status::OK);
            assert_eq!(check_pattern(r.data(0, 36 * 512), 100 * 512), None);
            assert!(r.dev.segment_lengths.contains(&1365), "odd split lengths");
        }
    }

    #[test]
    fn several_in_flight_and_one_kick_per_batch() {
        let mut r = rig(4096, None, WANTED);
        for i in 0..8 {
            r.try_submit(i, &Request::read(i as u64 * 8, 8)).unwrap();
        }
        assert!(r.blk.kick());
        assert_eq!(r.blk.queue.outstanding(), 8);
        r.dev.serve();
        let mut done = 0;
        while let Some(u) = r.blk.poll().unwrap() {
            assert!(u.len >= 1);
            done += 1;
        }
        assert_eq!(done, 8);
        assert_eq!(r.blk.kicks(), 1);
        // Device busy (has not re-armed): the next batch needs no kick... once it re-armed,
        // it does.
        r.try_submit(0, &Request::read(0, 1)).unwrap();
        assert!(r.blk.kick(), "the mock re-arms after serving");
        assert_eq!(r.regs.state.borrow().notifies, vec![0, 0]);
    }

    #[test]
    fn flush_id_discard_zeroes() {
        let mut r = rig(4096, None, WANTED);
        assert_eq!(r.run(0, Request::flush()), status::OK);
        assert_eq!(r.dev.flushes, 1);
        assert_eq!(r.run(1, Request::get_id()), status::OK);
        let id = r.slot(1).id();
        assert_eq!(&id[..10], b"serial-123");
        assert!(id[10..].iter().all(|&b| b == 0));
        r.dev.disk.iter_mut().for_each(|b| *b = 0xee);
        assert_eq!(r.run(2, Request::discard(10, 4)), status::OK);
        assert_eq!(r.run(2, Request::write_zeroes(20, 4, true)), status::OK);
        let zero = |r: &Rig, s: usize| r.dev.disk[s * 512..(s + 4) * 512].iter().all(|&b| b == 0);
        assert!(zero(&r, 10) && zero(&r, 20));
        assert_eq!(r.dev.disk[9 * 512], 0xee);
        assert_eq!(r.dev.disk[24 * 512], 0xee);
    }

    #[test]
    fn device_errors_come_back_as_status() {
        let mut r = rig(64, Some(common::VERSION_1 | feature::RO), WANTED);
        assert_eq!(r.run(0, Request::write(0, 1)), status::IOERR);
        assert_eq!(r.run(0, Request::read(63, 2)), status::IOERR);
        assert_eq!(r.run(0, Request::read(63, 1)), status::OK);
        assert_eq!(
            r.try_submit(0, &Request::flush()),
            Err(SubmitError::NotNegotiated("FLUSH"))
        );
        // SAFETY: as above.
        assert_eq!(
            r.try_submit(0, &Request::read(0, 1).indirect()),
            Err(SubmitError::NotNegotiated("INDIRECT_DESC"))
        );
    }

    #[test]
    fn limits_are_respected() {
        let mut r = rig(1 << 20, None, WANTED);
        let e = r.try_submit(0, &Request::read(0, 1024));
        assert_eq!(
            e,
            Err(SubmitError::TooBig {
                bytes: 512 * 1024,
                capacity: 256 * 1024
            })
        );
        let e = r.try_submit(0, &Request::read(0, 8).split(127));
        assert_eq!(
            e,
            Err(SubmitError::TooManySegments {
                segments: 127,
                max: 126
            })
        );
        r.blk.config.max_discard_sectors = 8;
        let e = r.try_submit(0, &Request::discard(0, 9));
        assert_eq!(e, Err(SubmitError::TooManySectors { sectors: 9, max: 8 }));
        // SIZE_MAX forces a split.
        r.blk.config.size_max = 4096;
        assert_eq!(r.run(0, Request::read(0, 64)), status::OK);
        assert_eq!(r.dev.last_data_descriptors, 8);
        assert_eq!(r.blk.queue.num_free(), 256);
    }

    #[test]
    fn requests_describe_themselves() {
        assert_eq!(Request::read(8, 2).to_string(), "read of sectors 8..10");
        assert_eq!(
            Request::write(0, 1).split(3).to_string(),
            "write of sectors 0..1"
        );
        assert_eq!(Request::flush().to_string(), "FLUSH");
        assert_eq!(Request::get_id().to_string(), "GET_ID");
        assert_eq!(
            Request::discard(4096, 16).to_string(),
            "DISCARD of sectors 4096..4112"
        );
        let wz = Request::write_zeroes(1, 1, false);
        assert_eq!(wz.to_string(), "WRITE_ZEROES of sectors 1..2");
    }

    #[test]
    fn pattern_is_the_contracts() {
        assert_eq!(pattern_byte(0), 0x5a);
        assert_eq!(pattern_byte(1), 0x61);
        assert_eq!(pattern_byte(512), 0x5a + 131);
        assert_eq!(
            pattern_byte(2048 * 512 + 3),
            ((2048u64 * 131 + 21 + 0x5a) % 256) as u8
        );
        assert_eq!(
            pattern_byte(u64::MAX),
            ((u64::MAX / 512) as u128 * 131 + 511 * 7 + 0x5a) as u8
        );
        let mut buf = [0u8; 1024];
        fill_pattern(&mut buf, 4096);
        assert_eq!(check_pattern(&buf, 4096), None);
        buf[700] ^= 1;
        assert_eq!(
            check_pattern(&buf, 4096),
            Some((4796, pattern_byte(4796), pattern_byte(4796) ^ 1))
        );
    }
}
