//! Test doubles for the host unit tests: a fake virtio-mmio register block
//! ([`FakeRegs`]), the device side of a split queue ([`MockQueue`]) and a virtio-blk
//! device serving it from an in-memory disk ([`MockBlk`]). Addresses in descriptors are
//! host pointers here: the tests allocate queue and buffer memory with [`QueueArea`] and
//! [`Dma`] and hand their addresses to the driver, as the guest hands physical addresses.

use super::blk::{req, status as blk_status, ID_BYTES, SECTOR};
use super::mmio::reg;
use super::queue::{self, QueueMemory, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use super::{feature, need_event, status, Regs};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;

/// Page-aligned, zeroed memory that stays put until dropped.
pub struct Dma {
    ptr: *mut u8,
    layout: Layout,
}

impl Dma {
    /// `bytes` bytes (at least 1).
    pub fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.max(1), 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }

    /// Its address.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for Dma {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Memory for a queue of some size: three separate allocations, as the guest uses.
pub struct QueueArea {
    desc: Dma,
    avail: Dma,
    used: Dma,
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the tests only put addresses of live `Dma`/`QueueArea` allocations (or
    // offsets inside them) where the mock reads.
    unsafe { (addr as *const T).read_volatile() }
}

fn write<T: Copy>(addr: u64, value: T) {
    // SAFETY: as in `read`.
    unsafe { (addr as *mut T).write_volatile(value) }
}

impl QueueArea {
    /// Room for a queue of `size`.
    pub fn new(size: u16) -> Self {
        Self {
            desc: Dma::new(queue::desc_bytes(size) as usize),
            avail: Dma::new(queue::avail_bytes(size) as usize),
            used: Dma::new(queue::used_bytes(size) as usize),
        }
    }

    /// The addresses.
    pub fn memory(&self) -> QueueMemory {
        QueueMemory {
            desc: self.desc.addr(),
            avail: self.avail.addr(),
            used: self.used.addr(),
        }
    }

    /// The avail ring's flags.
    pub fn avail_flags(&self) -> u16 {
        read(self.avail.addr())
    }

    /// The avail ring's index.
    pub fn avail_idx(&self) -> u16 {
        read(self.avail.addr() + 2)
    }

    /// Set the used ring's flags.
    pub fn set_used_flags(&self, flags: u16) {
        write(self.used.addr(), flags);
    }

    /// Set the used ring's index.
    pub fn set_used_idx(&self, idx: u16) {
        write(self.used.addr() + 2, idx);
    }
}

/// A chain as the device sees it.
#[derive(Debug)]
pub struct Chain {
    /// Head descriptor.
    pub head: u16,
    /// (addr, len, writable) of each buffer.
    pub descs: Vec<(u64, u32, bool)>,
    /// It came through an indirect table.
    pub indirect: bool,
    /// Why it is malformed, if it is.
    pub error: Option<&'static str>,
}

/// The device side of a split queue.
pub struct MockQueue {
    mem: QueueMemory,
    size: u16,
    event_idx: bool,
    next_avail: u16,
    used_idx: u16,
}

impl MockQueue {
    /// Serve the queue in `mem`.
    pub fn new(area: &QueueArea, size: u16, event_idx: bool) -> Self {
        Self::at(area.memory(), size, event_idx)
    }

    /// Serve the queue at these addresses.
    pub fn at(mem: QueueMemory, size: u16, event_idx: bool) -> Self {
        Self {
            mem,
            size,
            event_idx,
            next_avail: 0,
            used_idx: 0,
        }
    }

    fn desc(&self, table: u64, index: u16) -> (u64, u32, u16, u16) {
        let at = table + 16 * u64::from(index);
        (read(at), read(at + 8), read(at + 12), read(at + 14))
    }

    /// The next chain the driver published, if any.
    pub fn next_chain(&mut self) -> Option<Chain> {
        let idx: u16 = read(self.mem.avail + 2);
        if idx == self.next_avail {
            return None;
        }
        let slot = self.next_avail % self.size;
        let head: u16 = read(self.mem.avail + 4 + 2 * u64::from(slot));
        self.next_avail = self.next_avail.wrapping_add(1);
        let mut chain = Chain {
            head,
            descs: Vec::new(),
            indirect: false,
            error: None,
        };
        let (mut table, mut limit, mut index) = (self.mem.desc, self.size, head);
        let first = self.desc(table, head);
        if first.2 & DESC_F_INDIRECT != 0 {
            chain.indirect = true;
            table = first.0;
            limit = (first.1 / 16) as u16;
            index = 0;
        }
        loop {
            if chain.descs.len() >= usize::from(limit) || index >= limit {
                chain.error = Some("chain loops or leaves the table");
                return Some(chain);
            }
            let (addr, len, flags, next) = self.desc(table, index);
            chain.descs.push((addr, len, flags & DESC_F_WRITE != 0));
            if flags & DESC_F_NEXT == 0 {
                return Some(chain);
            }
            index = next;
        }
    }

    /// Return a chain; says whether the device would interrupt.
    pub fn complete(&mut self, head: u16, len: u32) -> bool {
        self.complete_late(head, len, || {})
    }

    /// Return a chain, let `between` run (the driver) before the device checks whether to
    /// interrupt; says whether it would.
    pub fn complete_late(&mut self, head: u16, len: u32, between: impl FnOnce()) -> bool {
        let slot = self.used_idx % self.size;
        let entry = self.mem.used + 4 + 8 * u64::from(slot);
        write(entry, u32::from(head));
        write(entry + 4, len);
        let old = self.used_idx;
        self.used_idx = self.used_idx.wrapping_add(1);
        write(self.mem.used + 2, self.used_idx);
        between();
        if self.event_idx {
            let event: u16 = read(self.mem.avail + 4 + 2 * u64::from(self.size));
            need_event(event, self.used_idx, old)
        } else {
            read::<u16>(self.mem.avail) & queue::AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Ask for a notification at the next avail entry (as vhost-user-backend's
    /// `enable_notification` does when it runs out of work).
    pub fn arm_avail_event(&mut self) {
        if self.event_idx {
            write(
                self.mem.used + 4 + 8 * u64::from(self.size),
                self.next_avail,
            );
        }
    }
}

/// A virtio-blk device on a [`MockQueue`].
pub struct MockBlk {
    queue: MockQueue,
    /// The disk.
    pub disk: Vec<u8>,
    /// Refuse writes.
    pub read_only: bool,
    /// GET_ID answer.
    pub serial: Vec<u8>,
    /// FLUSH requests seen.
    pub flushes: u32,
    /// Interrupts it would have sent.
    pub interrupts: u32,
    /// Lengths of every data descriptor seen.
    pub segment_lengths: Vec<u32>,
    /// Data descriptors of the last request.
    pub last_data_descriptors: usize,
}

impl MockBlk {
    /// A device with a zeroed disk of `sectors`.
    pub fn new(mem: QueueMemory, size: u16, event_idx: bool, sectors: u64) -> Self {
        Self {
            queue: MockQueue::at(mem, size, event_idx),
            disk: vec![0; (sectors * SECTOR) as usize],
            read_only: false,
            serial: Vec::new(),
            flushes: 0,
            interrupts: 0,
            segment_lengths: Vec::new(),
            last_data_descriptors: 0,
        }
    }

    /// Serve every published request, then re-arm; returns how many were served.
    pub fn serve(&mut self) -> usize {
        let mut served = 0;
        while let Some(chain) = self.queue.next_chain() {
            let len = self.execute(&chain);
            if self.queue.complete(chain.head, len) {
                self.interrupts += 1;
            }
            served += 1;
        }
        self.queue.arm_avail_event();
        served
    }

    /// Run one request; returns the used length.
    fn execute(&mut self, chain: &Chain) -> u32 {
        if chain.error.is_some() || chain.descs.len() < 2 {
            return 0;
        }
        let (status_addr, status_len, status_w) = *chain.descs.last().unwrap();
        if !status_w || status_len < 1 {
            return 0;
        }
        let (result, written) = self.request(chain);
        write(status_addr, result);
        written + 1
    }

    fn request(&mut self, chain: &Chain) -> (u8, u32) {
        let (hdr, hdr_len, hdr_w) = chain.descs[0];
        if hdr_w || hdr_len < 16 {
            return (blk_status::IOERR, 0);
        }
        let kind: u32 = read(hdr);
        let sector: u64 = read(hdr + 8);
        let data = &chain.descs[1..chain.descs.len() - 1];
        self.last_data_descriptors = data.len();
        self.segment_lengths.extend(data.iter().map(|d| d.1));
        let total: u64 = data.iter().map(|d| u64::from(d.1)).sum();
        let disk_len = self.disk.len() as u64;
        let in_range = |start: u64, bytes: u64| {
            start
                .checked_mul(SECTOR)
                .and_then(|s| s.checked_add(bytes))
                .is_some_and(|end| end <= disk_len)
        };
        match kind {
            req::IN | req::OUT => {
                let writing = kind == req::OUT;
                if data.iter().any(|d| d.2 == writing) || !in_range(sector, total) {
                    return (blk_status::IOERR, 0);
                }
                if writing && self.read_only {
                    return (blk_status::IOERR, 0);
                }
                let mut at = (sector * SECTOR) as usize;
                for &(addr, len, _) in data {
                    let len = len as usize;
                    // SAFETY: the tests put only live buffers in descriptors.
                    let buf = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
                    if writing {
                        self.disk[at..at + len].copy_from_slice(buf);
                    } else {
                        buf.copy_from_slice(&self.disk[at..at + len]);
                    }
                    at += len;
                }
                (blk_status::OK, if writing { 0 } else { total as u32 })
            }
            req::FLUSH => {
                self.flushes += 1;
                (blk_status::OK, 0)
            }
            req::GET_ID => {
                let Some(&(addr, len, true)) = data.first() else {
                    return (blk_status::IOERR, 0);
                };
                let n = (len as usize).min(ID_BYTES as usize);
                for i in 0..n {
                    write(addr + i as u64, self.serial.get(i).copied().unwrap_or(0));
                }
                (blk_status::OK, n as u32)
            }
            req::DISCARD | req::WRITE_ZEROES => {
                for &(addr, len, w) in data {
                    if w || len % 16 != 0 {
                        return (blk_status::IOERR, 0);
                    }
                    for seg in (0..u64::from(len)).step_by(16) {
                        let start: u64 = read(addr + seg);
                        let count: u32 = read(addr + seg + 8);
                        let bytes = u64::from(count) * SECTOR;
                        if !in_range(start, bytes) || self.read_only {
                            return (blk_status::IOERR, 0);
                        }
                        let at = (start * SECTOR) as usize;
                        self.disk[at..at + bytes as usize].fill(0);
                    }
                }
                (blk_status::OK, 0)
            }
            _ => (blk_status::UNSUPP, 0),
        }
    }
}

/// Registers of a queue other than 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeQueueRegs {
    /// QueueNum.
    pub num: u32,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub driver: u64,
    /// Used ring.
    pub device: u64,
    /// QueueReady.
    pub ready: bool,
}

/// The state behind [`FakeRegs`].
pub struct FakeState {
    /// MagicValue.
    pub magic: u32,
    /// Version.
    pub version: u32,
    /// DeviceID.
    pub device_id: u32,
    /// Offered features.
    pub features: u64,
    /// Features the driver wrote.
    pub driver_features: u64,
    device_sel: u32,
    driver_sel: u32,
    /// Status register.
    pub status: u32,
    /// Every value written to the status register.
    pub status_writes: Vec<u32>,
    /// Clear FEATURES_OK when the driver sets it.
    pub refuse_features: bool,
    /// The status register reads this whatever was written.
    pub stuck_status: Option<u32>,
    queue_sel: u32,
    /// QueueNum of queue 0.
    pub queue_num: u32,
    /// Queue 0's areas.
    pub queue_desc: u64,
    /// Avail ring.
    pub queue_driver: u64,
    /// Used ring.
    pub queue_device: u64,
    /// QueueReady of queue 0.
    pub queue_ready: bool,
    /// Configuration space.
    pub config: Vec<u8>,
    /// ConfigGeneration.
    pub generation: u32,
    /// Configuration changes still to happen, one per field read.
    pub generation_bumps: u32,
    /// (offset, width) of every configuration read.
    pub config_widths: Vec<(u32, u8)>,
    /// InterruptStatus (InterruptACK clears the bits written).
    pub interrupt_status: u32,
    /// Every value written to InterruptACK.
    pub interrupt_acks: Vec<u32>,
    /// A console resize to (cols, rows) that happens right after the next configuration
    /// read has returned its value: that read and the ones after it disagree (torn).
    pub resize_after_read: Option<(u16, u16)>,
    /// Queue indexes written to QueueNotify.
    pub notifies: Vec<u32>,
    /// Queues 1.. (queue 0 is the fields above).
    pub extra_queues: Vec<FakeQueueRegs>,
}

/// A fake virtio-mmio register block.
pub struct FakeRegs {
    /// Its state, for tests to look at and change.
    pub state: RefCell<FakeState>,
}

impl FakeState {
    /// QueueSel.
    pub fn queue_sel(&self) -> u32 {
        self.queue_sel
    }
}

fn set_half(value: &mut u64, half: u32, bits: u32) {
    let shift = 32 * half;
    *value = (*value & !(0xffff_ffffu64 << shift)) | (u64::from(bits) << shift);
}

impl FakeRegs {
    /// A virtio-blk device of `capacity` sectors offering what bulkhead's back-end offers.
    pub fn blk(capacity: u64) -> Self {
        let mut config = vec![0u8; 64];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&126u32.to_le_bytes());
        config[20..24].copy_from_slice(&512u32.to_le_bytes());
        config[34..36].copy_from_slice(&1u16.to_le_bytes());
        Self {
            state: RefCell::new(FakeState {
                magic: super::mmio::MAGIC,
                version: 2,
                device_id: 2,
                features: feature::VERSION_1
                    | feature::EVENT_IDX
                    | feature::INDIRECT_DESC
                    | feature::VHOST_USER_PROTOCOL_FEATURES
                    | 1 << 2
                    | 1 << 6
                    | 1 << 9
                    | 1 << 12
                    | 1 << 13
                    | 1 << 14,
                driver_features: 0,
                device_sel: 0,
                driver_sel: 0,
                status: 0,
                status_writes: Vec::new(),
                refuse_features: false,
                stuck_status: None,
                queue_sel: 0,
                queue_num: 0,
                queue_desc: 0,
                queue_driver: 0,
                queue_device: 0,
                queue_ready: false,
                config,
                generation: 0,
                generation_bumps: 0,
                config_widths: Vec::new(),
                interrupt_status: 1,
                interrupt_acks: Vec::new(),
                resize_after_read: None,
                notifies: Vec::new(),
                extra_queues: Vec::new(),
            }),
        }
    }

    /// A virtio-net device with MAC `mac`, link up, 4 queue pairs, MTU 1500, offering
    /// what the contract says bulkhead-net offers; two queues.
    pub fn net(mac: [u8; 6]) -> Self {
        let regs = Self::blk(0);
        {
            let mut s = regs.state.borrow_mut();
            s.device_id = 1;
            let mut config = vec![0u8; 16];
            config[0..6].copy_from_slice(&mac);
            config[6..8].copy_from_slice(&1u16.to_le_bytes());
            config[8..10].copy_from_slice(&4u16.to_le_bytes());
            config[10..12].copy_from_slice(&1500u16.to_le_bytes());
            s.config = config;
            s.features = feature::VERSION_1 | feature::EVENT_IDX | 1 << 5 | 1 << 15 | 1 << 16;
            s.extra_queues = vec![FakeQueueRegs::default()];
        }
        regs
    }

    /// A virtio-console device of `cols` x `rows`, offering SIZE; two queues.
    pub fn console(cols: u16, rows: u16) -> Self {
        let regs = Self::blk(0);
        {
            let mut s = regs.state.borrow_mut();
            s.device_id = 3;
            let mut config = vec![0u8; 12];
            config[0..2].copy_from_slice(&cols.to_le_bytes());
            config[2..4].copy_from_slice(&rows.to_le_bytes());
            config[4..8].copy_from_slice(&1u32.to_le_bytes());
            s.config = config;
            s.features = feature::VERSION_1 | feature::EVENT_IDX | 1;
            s.extra_queues = vec![FakeQueueRegs::default()];
        }
        regs
    }

    /// A virtio-vsock device with guest CID `cid`, offering STREAM; three queues.
    pub fn vsock(cid: u64) -> Self {
        let regs = Self::blk(0);
        {
            let mut s = regs.state.borrow_mut();
            s.device_id = 19;
            s.config = cid.to_le_bytes().to_vec();
            s.features = feature::VERSION_1 | feature::EVENT_IDX | 1;
            s.extra_queues = vec![FakeQueueRegs::default(); 2];
        }
        regs
    }

    /// Resize the console to `cols` x `rows` as a device does: new configuration,
    /// ConfigGeneration + 1, configuration-change bit set in InterruptStatus.
    pub fn resize_console(&self, cols: u16, rows: u16) {
        resize(&mut self.state.borrow_mut(), cols, rows);
    }

    fn config_read(&self, offset: u32, width: u8) -> u64 {
        let mut s = self.state.borrow_mut();
        let at = (offset - reg::CONFIG) as usize;
        s.config_widths.push((at as u32, width));
        if s.generation_bumps > 0 {
            s.generation_bumps -= 1;
            s.generation += 1;
        }
        let mut value = 0u64;
        for i in 0..usize::from(width) {
            value |= u64::from(s.config.get(at + i).copied().unwrap_or(0)) << (8 * i);
        }
        if let Some((cols, rows)) = s.resize_after_read.take() {
            resize(&mut s, cols, rows);
        }
        value
    }
}

fn resize(s: &mut FakeState, cols: u16, rows: u16) {
    s.config[0..2].copy_from_slice(&cols.to_le_bytes());
    s.config[2..4].copy_from_slice(&rows.to_le_bytes());
    s.generation = s.generation.wrapping_add(1);
    s.interrupt_status |= super::mmio::INT_CONFIG;
}

impl Regs for FakeRegs {
    fn read32(&self, offset: u32) -> u32 {
        if offset >= reg::CONFIG {
            return self.config_read(offset, 4) as u32;
        }
        let s = self.state.borrow();
        let q0 = s.queue_sel == 0;
        if let Some(q) = (s.queue_sel as usize)
            .checked_sub(1)
            .and_then(|i| s.extra_queues.get(i))
        {
            match offset {
                reg::QUEUE_NUM_MAX => return 256,
                reg::QUEUE_READY => return u32::from(q.ready),
                _ => {}
            }
        }
        match offset {
            reg::MAGIC => s.magic,
            reg::VERSION => s.version,
            reg::DEVICE_ID => s.device_id,
            reg::VENDOR_ID => 0x554d_4551,
            reg::DEVICE_FEATURES => (s.features >> (32 * s.device_sel.min(1))) as u32,
            reg::QUEUE_NUM_MAX if q0 => 256,
            reg::QUEUE_READY => u32::from(q0 && s.queue_ready),
            reg::STATUS => s.stuck_status.unwrap_or(s.status),
            reg::INTERRUPT_STATUS => s.interrupt_status,
            reg::CONFIG_GENERATION => s.generation,
            _ => 0,
        }
    }

    fn write32(&self, offset: u32, value: u32) {
        let mut s = self.state.borrow_mut();
        let q0 = s.queue_sel == 0;
        let extra = (s.queue_sel as usize).checked_sub(1);
        if let Some(q) = extra.and_then(|i| s.extra_queues.get_mut(i)) {
            match offset {
                reg::QUEUE_NUM => return q.num = value,
                reg::QUEUE_READY => return q.ready = value == 1,
                reg::QUEUE_DESC_LOW => return set_half(&mut q.desc, 0, value),
                reg::QUEUE_DESC_HIGH => return set_half(&mut q.desc, 1, value),
                reg::QUEUE_DRIVER_LOW => return set_half(&mut q.driver, 0, value),
                reg::QUEUE_DRIVER_HIGH => return set_half(&mut q.driver, 1, value),
                reg::QUEUE_DEVICE_LOW => return set_half(&mut q.device, 0, value),
                reg::QUEUE_DEVICE_HIGH => return set_half(&mut q.device, 1, value),
                _ => {}
            }
        }
        match offset {
            reg::DEVICE_FEATURES_SEL => s.device_sel = value,
            reg::DRIVER_FEATURES_SEL => s.driver_sel = value,
            reg::DRIVER_FEATURES => {
                let half = s.driver_sel.min(1);
                set_half(&mut s.driver_features, half, value);
            }
            reg::QUEUE_SEL => s.queue_sel = value,
            reg::QUEUE_NUM if q0 => s.queue_num = value,
            reg::QUEUE_READY if q0 => s.queue_ready = value == 1,
            reg::QUEUE_DESC_LOW if q0 => set_half(&mut s.queue_desc, 0, value),
            reg::QUEUE_DESC_HIGH if q0 => set_half(&mut s.queue_desc, 1, value),
            reg::QUEUE_DRIVER_LOW if q0 => set_half(&mut s.queue_driver, 0, value),
            reg::QUEUE_DRIVER_HIGH if q0 => set_half(&mut s.queue_driver, 1, value),
            reg::QUEUE_DEVICE_LOW if q0 => set_half(&mut s.queue_device, 0, value),
            reg::QUEUE_DEVICE_HIGH if q0 => set_half(&mut s.queue_device, 1, value),
            reg::QUEUE_NOTIFY => s.notifies.push(value),
            reg::INTERRUPT_ACK => {
                s.interrupt_acks.push(value);
                s.interrupt_status &= !value;
            }
            reg::STATUS => {
                s.status_writes.push(value);
                if value == 0 {
                    s.status = 0;
                    s.queue_ready = false;
                    for q in s.extra_queues.iter_mut() {
                        q.ready = false;
                    }
                    s.driver_features = 0;
                } else if s.refuse_features {
                    s.status = value & !status::FEATURES_OK;
                } else {
                    s.status = value;
                }
            }
            _ => {}
        }
    }

    fn read16(&self, offset: u32) -> u16 {
        assert!(
            offset >= reg::CONFIG,
            "16-bit access to register {offset:#x}"
        );
        self.config_read(offset, 2) as u16
    }

    fn read8(&self, offset: u32) -> u8 {
        assert!(
            offset >= reg::CONFIG,
            "8-bit access to register {offset:#x}"
        );
        self.config_read(offset, 1) as u8
    }

    fn write16(&self, offset: u32, _: u16) {
        panic!("16-bit write to virtio-mmio register {offset:#x}");
    }

    fn write8(&self, offset: u32, _: u8) {
        panic!("8-bit write to virtio-mmio register {offset:#x}");
    }
}
