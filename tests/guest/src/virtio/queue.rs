//! A split virtqueue (virtio 1.2, 2.7), driver side, in memory the caller provides.
//!
//! ```text
//! descriptor table  16 bytes x size: {addr u64, len u32, flags u16, next u16}
//! avail ring        flags u16, idx u16, ring[size] u16, used_event u16
//! used ring         flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16
//! ```
//!
//! [`Queue::add`] takes descriptors from a free list and puts a chain's head in the avail
//! ring without showing it to the device; [`Queue::add_indirect`] does the same with one
//! descriptor pointing at an indirect table. [`Queue::publish`] writes the avail index
//! (one store for a whole batch) and says whether the device must be notified: with
//! EVENT_IDX, only when the device's `avail_event` lies in the batch just published
//! ([`super::need_event`]), otherwise unless the device set `VIRTQ_USED_F_NO_NOTIFY`.
//! [`Queue::pop_used`] takes the next used entry, checks the id the device returned and
//! puts the chain back on the free list. [`Queue::set_interrupts`] asks the device for an
//! interrupt at the next used entry, or for none at all (the polling mode used everywhere
//! but the interrupt test): with EVENT_IDX by moving `used_event`, otherwise with
//! `VIRTQ_AVAIL_F_NO_INTERRUPT`.
//!
//! The rings are shared with the device (another process), so every access is volatile;
//! the free list and each chain's length and tail live in the queue itself, never read back
//! from shared memory. Memory ordering is x86's: stores are seen in order, so a compiler
//! barrier between the ring entries and the index is enough, while the store of the avail
//! index must be fenced (`mfence`) before the load of `avail_event` (the device does the
//! mirror image), as Linux does with `virtio_mb`.

use super::need_event;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

/// Largest queue this driver sets up (bulkhead's QueueNumMax).
pub const MAX_SIZE: u16 = 256;
/// With interrupts suppressed under EVENT_IDX, `used_event` is kept this far ahead of the
/// entries taken: the device, at most a queue's length ahead of the driver, never reaches it.
const SUPPRESSED_EVENT_DISTANCE: u16 = 0x8000;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (otherwise it reads it).
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Avail ring flag: no interrupts, please (ignored by the device under EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: no notifications, please (ignored by the driver under EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;

/// One descriptor, as the device reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor of the chain, if `DESC_F_NEXT`.
    pub next: u16,
}

/// Size of a descriptor.
pub const DESC_SIZE: u64 = 16;

/// A buffer to put in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (otherwise it reads it).
    pub writable: bool,
}

impl Buf {
    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// Where a queue's three areas are (guest-physical = virtual addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueMemory {
    /// Descriptor table: [`desc_bytes`] bytes, 16-byte aligned.
    pub desc: u64,
    /// Avail ring ("driver area"): [`avail_bytes`] bytes, 2-byte aligned.
    pub avail: u64,
    /// Used ring ("device area"): [`used_bytes`] bytes, 4-byte aligned.
    pub used: u64,
}

/// Bytes of the descriptor table of a queue of `size`.
pub const fn desc_bytes(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// Bytes of the avail ring, `used_event` included.
pub const fn avail_bytes(size: u16) -> u64 {
    6 + 2 * size as u64
}

/// Bytes of the used ring, `avail_event` included.
pub const fn used_bytes(size: u16) -> u64 {
    6 + 8 * size as u64
}

/// A used-ring entry: which chain the device is done with and how many bytes it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain.
    pub head: u16,
    /// Bytes the device says it wrote into the chain's writable buffers.
    pub len: u32,
}

/// Why a chain could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// No buffers.
    Empty,
    /// Not enough free descriptors.
    Full {
        /// Descriptors needed.
        needed: usize,
        /// Descriptors free.
        free: u16,
    },
    /// The indirect table does not fit in the memory given for it.
    TableTooSmall {
        /// Descriptors in the chain.
        needed: usize,
        /// Descriptors the table holds.
        capacity: usize,
    },
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty descriptor chain"),
            Self::Full { needed, free } => {
                write!(f, "queue full: {needed} descriptors needed, {free} free")
            }
            Self::TableTooSmall { needed, capacity } => write!(
                f,
                "indirect table of {capacity} descriptors cannot hold {needed}"
            ),
        }
    }
}

/// The device broke the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedError {
    /// The used index moved further than there are entries in flight.
    IndexJump {
        /// Our last seen index.
        last: u16,
        /// The device's.
        idx: u16,
    },
    /// A used id that is not the head of a chain in flight.
    BadId(u32),
}

impl fmt::Display for UsedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IndexJump { last, idx } => {
                write!(f, "used index jumped from {last} to {idx}")
            }
            Self::BadId(id) => write!(f, "used ring returned id {id}, not a chain in flight"),
        }
    }
}

/// Why a queue could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSize(pub u16);

impl fmt::Display for BadSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue size {} is not a power of two in 1..={MAX_SIZE}",
            self.0
        )
    }
}

/// What the queue remembers about a chain in flight.
#[derive(Clone, Copy, Default)]
struct Chain {
    /// Descriptors in the table (0: not in flight).
    count: u16,
    /// Last descriptor.
    tail: u16,
}

/// The largest split-queue size this driver accepts for a device's QueueNumMax: a power
/// of two, at most [`MAX_SIZE`]; 0 if `max` is 0.
pub fn choose_size(max: u32) -> u16 {
    let capped = max.min(u32::from(MAX_SIZE));
    if capped == 0 {
        0
    } else {
        1 << (31 - capped.leading_zeros())
    }
}

/// A split virtqueue, driver side.
pub struct Queue {
    mem: QueueMemory,
    size: u16,
    event_idx: bool,
    /// Interrupts wanted (see [`Queue::set_interrupts`]).
    interrupts: bool,
    /// First free descriptor; free descriptors are linked through `next`.
    free_head: u16,
    num_free: u16,
    /// Free-list links: the driver's own copy, never read back from the shared table.
    next: [u16; MAX_SIZE as usize],
    chains: [Chain; MAX_SIZE as usize],
    /// Chains in flight.
    outstanding: u16,
    /// Avail index including entries not yet published.
    next_avail: u16,
    /// Avail index last written to the ring.
    published: u16,
    /// Used index up to which entries were taken.
    last_used: u16,
}

impl Queue {
    /// A queue of `size` entries in `mem`, zeroed here, with every descriptor free and
    /// interrupts suppressed. `event_idx`: VIRTIO_F_EVENT_IDX was negotiated.
    ///
    /// # Safety
    /// The three areas of `mem` must be valid, writable, suitably aligned memory of the
    /// sizes given by [`desc_bytes`], [`avail_bytes`] and [`used_bytes`] for `size`, used
    /// by nothing but this queue and the device it is given to, for as long as the queue
    /// is in use by either.
    pub unsafe fn new(mem: QueueMemory, size: u16, event_idx: bool) -> Result<Self, BadSize> {
        if size == 0 || size > MAX_SIZE || !size.is_power_of_two() {
            return Err(BadSize(size));
        }
        // SAFETY: the caller guarantees the areas and their sizes.
        unsafe {
            core::ptr::write_bytes(mem.desc as *mut u8, 0, desc_bytes(size) as usize);
            core::ptr::write_bytes(mem.avail as *mut u8, 0, avail_bytes(size) as usize);
            core::ptr::write_bytes(mem.used as *mut u8, 0, used_bytes(size) as usize);
        }
        let mut next = [0u16; MAX_SIZE as usize];
        for (i, n) in next.iter_mut().enumerate() {
            *n = (i as u16).wrapping_add(1);
        }
        let mut queue = Self {
            mem,
            size,
            event_idx,
            interrupts: true,
            free_head: 0,
            num_free: size,
            next,
            chains: [Chain::default(); MAX_SIZE as usize],
            outstanding: 0,
            next_avail: 0,
            published: 0,
            last_used: 0,
        };
        queue.set_interrupts(false);
        Ok(queue)
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The memory the queue lives in.
    pub fn memory(&self) -> QueueMemory {
        self.mem
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet returned by the device.
    pub fn outstanding(&self) -> u16 {
        self.outstanding
    }

    /// Is the chain with this head in flight?
    pub fn in_flight(&self, head: u16) -> bool {
        self.chains
            .get(usize::from(head))
            .is_some_and(|c| c.count != 0)
    }

    // -- shared-memory accessors -----------------------------------------------------

    fn desc_ptr(&self, index: u16) -> *mut Desc {
        debug_assert!(index < self.size);
        (self.mem.desc + DESC_SIZE * u64::from(index)) as *mut Desc
    }

    fn write_desc(&mut self, index: u16, desc: Desc) {
        // SAFETY: `index < size`, inside the descriptor table (`new`'s contract).
        unsafe { self.desc_ptr(index).write_volatile(desc) }
    }

    fn read_desc(&self, index: u16) -> Desc {
        // SAFETY: as in `write_desc`.
        unsafe { self.desc_ptr(index).read_volatile() }
    }

    fn avail_u16(&self, offset: u64) -> *mut u16 {
        (self.mem.avail + offset) as *mut u16
    }

    fn used_u16(&self, offset: u64) -> *mut u16 {
        (self.mem.used + offset) as *mut u16
    }

    fn set_avail_flags(&mut self, flags: u16) {
        // SAFETY: offset 0 of the avail ring (`new`'s contract).
        unsafe { self.avail_u16(0).write_volatile(flags) }
    }

    fn set_avail_idx(&mut self, idx: u16) {
        // SAFETY: offset 2 of the avail ring.
        unsafe { self.avail_u16(2).write_volatile(idx) }
    }

    fn set_avail_entry(&mut self, slot: u16, head: u16) {
        // SAFETY: `slot < size`: inside the avail ring's `ring` array.
        unsafe { self.avail_u16(4 + 2 * u64::from(slot)).write_volatile(head) }
    }

    fn set_used_event(&mut self, event: u16) {
        // SAFETY: `used_event` is the u16 after the ring, inside `avail_bytes(size)`.
        unsafe {
            self.avail_u16(4 + 2 * u64::from(self.size))
                .write_volatile(event)
        }
    }

    fn used_flags(&self) -> u16 {
        // SAFETY: offset 0 of the used ring.
        unsafe { self.used_u16(0).read_volatile() }
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        // SAFETY: offset 2 of the used ring.
        unsafe { self.used_u16(2).read_volatile() }
    }

    fn used_entry(&self, slot: u16) -> (u32, u32) {
        let entry = self.mem.used + 4 + 8 * u64::from(slot);
        // SAFETY: `slot < size`: inside the used ring's `ring` array, 4-byte aligned.
        unsafe {
            (
                (entry as *const u32).read_volatile(),
                ((entry + 4) as *const u32).read_volatile(),
            )
        }
    }

    fn avail_event(&self) -> u16 {
        // SAFETY: `avail_event` is the u16 after the used ring's array.
        unsafe { self.used_u16(4 + 8 * u64::from(self.size)).read_volatile() }
    }

    // -- driver operations -----------------------------------------------------------

    /// Take `count` descriptors off the free list; returns (head, tail).
    fn take(&mut self, count: usize) -> Result<(u16, u16), AddError> {
        if count == 0 {
            return Err(AddError::Empty);
        }
        if count > usize::from(self.num_free) {
            return Err(AddError::Full {
                needed: count,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let mut tail = head;
        for _ in 1..count {
            tail = self.next[usize::from(tail)];
        }
        self.free_head = self.next[usize::from(tail)];
        self.num_free -= count as u16;
        Ok((head, tail))
    }

    fn put_in_ring(&mut self, head: u16, count: u16, tail: u16) {
        self.chains[usize::from(head)] = Chain { count, tail };
        self.outstanding += 1;
        let slot = self.next_avail & (self.size - 1);
        self.set_avail_entry(slot, head);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Add a chain of `bufs` (device-readable ones first, by convention) and put its head
    /// in the avail ring, unpublished. Returns the head, which [`pop_used`](Self::pop_used)
    /// will hand back.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16, AddError> {
        let (head, tail) = self.take(bufs.len())?;
        let mut index = head;
        for (i, buf) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let next = if last {
                0
            } else {
                self.next[usize::from(index)]
            };
            let flags =
                if buf.writable { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.write_desc(
                index,
                Desc {
                    addr: buf.addr,
                    len: buf.len,
                    flags,
                    next,
                },
            );
            index = next;
        }
        self.put_in_ring(head, bufs.len() as u16, tail);
        Ok(head)
    }

    /// Add a chain of `bufs` as an indirect table written at `table` (room for `capacity`
    /// descriptors), behind a single descriptor of the queue; unpublished. The table must
    /// stay untouched until the chain comes back. (Only with VIRTIO_F_INDIRECT_DESC.)
    ///
    /// # Safety
    /// `table` must be valid, writable, 16-byte aligned memory of `capacity` descriptors
    /// that nothing else uses until the chain is returned.
    pub unsafe fn add_indirect(
        &mut self,
        table: u64,
        capacity: usize,
        bufs: &[Buf],
    ) -> Result<u16, AddError> {
        if bufs.is_empty() {
            return Err(AddError::Empty);
        }
        if bufs.len() > capacity {
            return Err(AddError::TableTooSmall {
                needed: bufs.len(),
                capacity,
            });
        }
        let (head, tail) = self.take(1)?;
        for (i, buf) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let desc = Desc {
                addr: buf.addr,
                len: buf.len,
                flags: if buf.writable { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { i as u16 + 1 },
            };
            // SAFETY: `i < bufs.len() <= capacity`: inside the caller's table.
            unsafe { ((table + DESC_SIZE * i as u64) as *mut Desc).write_volatile(desc) };
        }
        self.write_desc(
            head,
            Desc {
                addr: table,
                len: (DESC_SIZE as usize * bufs.len()) as u32,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        );
        self.put_in_ring(head, 1, tail);
        Ok(head)
    }

    /// Change descriptor `position` (0 = head) of a chain that was added but not yet
    /// published, e.g. to build a malformed request on purpose. The queue's own free-list
    /// bookkeeping is unaffected. Returns `false` if there is no such descriptor.
    pub fn edit_unpublished(
        &mut self,
        head: u16,
        position: u16,
        edit: impl FnOnce(&mut Desc),
    ) -> bool {
        let Some(chain) = self.chains.get(usize::from(head)).copied() else {
            return false;
        };
        if position >= chain.count {
            return false;
        }
        let mut index = head;
        for _ in 0..position {
            index = self.next[usize::from(index)];
        }
        let mut desc = self.read_desc(index);
        edit(&mut desc);
        self.write_desc(index, desc);
        true
    }

    /// Descriptor index at `position` of the chain with this head (for building chains
    /// that point at each other on purpose).
    pub fn chain_index(&self, head: u16, position: u16) -> Option<u16> {
        let chain = self.chains.get(usize::from(head))?;
        if position >= chain.count {
            return None;
        }
        let mut index = head;
        for _ in 0..position {
            index = self.next[usize::from(index)];
        }
        Some(index)
    }

    /// Show the device every chain added since the last call (one store of the avail
    /// index). Returns whether the device must be notified.
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return false;
        }
        // Descriptors and ring entries before the index (x86: stores stay in order).
        fence(Ordering::Release);
        self.set_avail_idx(new);
        self.published = new;
        // The index store before the load of the device's wish (store-load: mfence).
        fence(Ordering::SeqCst);
        if self.event_idx {
            need_event(self.avail_event(), new, old)
        } else {
            self.used_flags() & USED_F_NO_NOTIFY == 0
        }
    }

    /// Has the device returned an entry that [`pop_used`](Self::pop_used) has not taken?
    /// (Looking does not move `used_event`, taking does.)
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// Take the next used entry, if the device returned one, and free its chain.
    pub fn pop_used(&mut self) -> Result<Option<Used>, UsedError> {
        let idx = self.used_idx();
        if idx == self.last_used {
            return Ok(None);
        }
        if idx.wrapping_sub(self.last_used) > self.outstanding {
            return Err(UsedError::IndexJump {
                last: self.last_used,
                idx,
            });
        }
        // The entry is read after the index that announced it.
        fence(Ordering::Acquire);
        let (id, len) = self.used_entry(self.last_used & (self.size - 1));
        let head = match u16::try_from(id) {
            Ok(head) if self.in_flight(head) => head,
            _ => return Err(UsedError::BadId(id)),
        };
        let chain = core::mem::take(&mut self.chains[usize::from(head)]);
        self.next[usize::from(chain.tail)] = self.free_head;
        self.free_head = head;
        self.num_free += chain.count;
        self.outstanding -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.update_used_event();
        }
        Ok(Some(Used { head, len }))
    }

    /// With EVENT_IDX: interrupt at the very next used entry, or (suppressed) at the entry
    /// half the index space ahead, moved along with every entry taken so that the device
    /// never gets there. (Not the entry just taken: the device may not have made its
    /// decision about that one yet, and would then interrupt for it.)
    fn update_used_event(&mut self) {
        let event = if self.interrupts {
            self.last_used
        } else {
            self.last_used.wrapping_add(SUPPRESSED_EVENT_DISTANCE)
        };
        self.set_used_event(event);
        if self.interrupts {
            // Before the next look at the used index (Linux: `virtio_store_mb`).
            fence(Ordering::SeqCst);
        }
    }

    /// Ask the device to interrupt at the next used entry (`true`), or not at all.
    pub fn set_interrupts(&mut self, on: bool) {
        self.interrupts = on;
        self.set_avail_flags(if on { 0 } else { AVAIL_F_NO_INTERRUPT });
        if self.event_idx {
            self.update_used_event();
        }
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mock::{MockQueue, QueueArea};

    fn queue(size: u16, event_idx: bool) -> (QueueArea, Queue) {
        let area = QueueArea::new(size);
        // SAFETY: the area is allocated for `size` and outlives the queue in each test.
        let q = unsafe { Queue::new(area.memory(), size, event_idx) }.unwrap();
        (area, q)
    }

    #[test]
    fn sizes() {
        assert_eq!(choose_size(256), 256);
        assert_eq!(choose_size(1024), 256);
        assert_eq!(choose_size(200), 128);
        assert_eq!(choose_size(1), 1);
        assert_eq!(choose_size(0), 0);
        assert_eq!(
            (desc_bytes(256), avail_bytes(256), used_bytes(256)),
            (4096, 518, 2054)
        );
        let area = QueueArea::new(8);
        for bad in [0, 3, 512] {
            // SAFETY: rejected before any memory is touched.
            let q = unsafe { Queue::new(area.memory(), bad, false) };
            assert_eq!(q.err(), Some(BadSize(bad)));
        }
    }

    #[test]
    fn chains_are_laid_out_and_returned() {
        let (area, mut q) = queue(8, false);
        let head = q
            .add(&[
                Buf::readable(0x1000, 16),
                Buf::writable(0x2000, 512),
                Buf::writable(0x3000, 1),
            ])
            .unwrap();
        assert_eq!(q.num_free(), 5);
        assert_eq!(area.avail_idx(), 0, "not published yet");
        assert!(q.publish(), "no NO_NOTIFY: notify");
        assert_eq!(area.avail_idx(), 1);
        let mut dev = MockQueue::new(&area, 8, false);
        let chain = dev.next_chain().unwrap();
        assert_eq!(chain.head, head);
        assert_eq!(
            chain.descs,
            vec![(0x1000, 16, false), (0x2000, 512, true), (0x3000, 1, true)]
        );
        dev.complete(head, 513);
        assert_eq!(q.pop_used(), Ok(Some(Used { head, len: 513 })));
        assert_eq!(q.pop_used(), Ok(None));
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn the_free_list_survives_out_of_order_completion() {
        let (area, mut q) = queue(8, false);
        let mut dev = MockQueue::new(&area, 8, false);
        for round in 0..50u64 {
            let a = q
                .add(&[Buf::readable(round, 1), Buf::writable(2, 1)])
                .unwrap();
            let b = q.add(&[Buf::readable(3, 1)]).unwrap();
            let c = q
                .add(&[
                    Buf::readable(4, 1),
                    Buf::readable(5, 1),
                    Buf::writable(6, 1),
                ])
                .unwrap();
            assert_eq!(q.num_free(), 2);
            assert!(matches!(
                q.add(&[Buf::readable(0, 1); 3]),
                Err(AddError::Full { needed: 3, free: 2 })
            ));
            q.publish();
            let chains: Vec<_> = (0..3).map(|_| dev.next_chain().unwrap()).collect();
            assert_eq!(chains[0].descs[0].0, round);
            assert_eq!(chains[2].descs.len(), 3);
            // Complete in another order than submitted.
            for head in [c, a, b] {
                dev.complete(head, 0);
            }
            let got: Vec<_> = (0..3)
                .map(|_| q.pop_used().unwrap().unwrap().head)
                .collect();
            assert_eq!(got, vec![c, a, b]);
            assert_eq!(q.num_free(), 8);
        }
    }

    #[test]
    fn indirect_chains_take_one_descriptor() {
        let (area, mut q) = queue(4, false);
        let table = QueueArea::new(16);
        let bufs: Vec<_> = (0..10)
            .map(|i| Buf::writable(0x1000 * i, 100 + i as u32))
            .collect();
        // SAFETY: the table area holds 16 descriptors (256 bytes) and outlives the chain.
        let head = unsafe { q.add_indirect(table.memory().desc, 16, &bufs) }.unwrap();
        assert_eq!(q.num_free(), 3);
        // SAFETY: as above.
        let e = unsafe { q.add_indirect(table.memory().desc, 4, &bufs) };
        assert_eq!(
            e,
            Err(AddError::TableTooSmall {
                needed: 10,
                capacity: 4
            })
        );
        q.publish();
        let mut dev = MockQueue::new(&area, 4, false);
        let chain = dev.next_chain().unwrap();
        assert!(chain.indirect);
        let expected: Vec<_> = bufs.iter().map(|b| (b.addr, b.len, true)).collect();
        assert_eq!(chain.descs, expected);
        dev.complete(head, 7);
        assert_eq!(q.pop_used().unwrap().unwrap().head, head);
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn a_device_that_lies_is_caught() {
        let (area, mut q) = queue(4, false);
        let head = q.add(&[Buf::readable(0, 1)]).unwrap();
        q.publish();
        let mut dev = MockQueue::new(&area, 4, false);
        dev.next_chain().unwrap();
        dev.complete(head + 1, 0);
        assert_eq!(q.pop_used(), Err(UsedError::BadId(u32::from(head) + 1)));
        area.set_used_idx(3);
        assert_eq!(q.pop_used(), Err(UsedError::IndexJump { last: 0, idx: 3 }));
    }

    #[test]
    fn without_event_idx_the_used_flag_decides() {
        let (area, mut q) = queue(4, false);
        assert_eq!(
            area.avail_flags(),
            AVAIL_F_NO_INTERRUPT,
            "suppressed from the start"
        );
        q.add(&[Buf::readable(0, 1)]).unwrap();
        area.set_used_flags(USED_F_NO_NOTIFY);
        assert!(!q.publish());
        assert!(!q.publish(), "nothing new: nothing to say");
        area.set_used_flags(0);
        q.add(&[Buf::readable(0, 1)]).unwrap();
        assert!(q.publish());
        q.set_interrupts(true);
        assert_eq!(area.avail_flags(), 0);
    }

    #[test]
    fn event_idx_kicks_only_when_the_device_waits_for_the_batch() {
        let (area, mut q) = queue(8, true);
        let mut dev = MockQueue::new(&area, 8, true);
        q.add(&[Buf::readable(0, 1)]).unwrap();
        assert!(q.publish(), "device waits for entry 0");
        q.add(&[Buf::readable(0, 1)]).unwrap();
        assert!(
            !q.publish(),
            "device has not caught up with entry 0: no second kick"
        );
        // The device takes both and re-arms at 2 (vhost-user-backend's enable_notification).
        let a = dev.next_chain().unwrap().head;
        let b = dev.next_chain().unwrap().head;
        dev.arm_avail_event();
        q.add(&[Buf::readable(0, 1)]).unwrap();
        q.add(&[Buf::readable(0, 1)]).unwrap();
        assert!(
            q.publish(),
            "a batch of two that contains entry 2: one kick"
        );
        dev.complete(a, 0);
        dev.complete(b, 0);
        assert_eq!(q.pop_used().unwrap().unwrap().head, a);
    }

    #[test]
    fn event_idx_interrupts_follow_used_event() {
        let (area, mut q) = queue(8, true);
        let mut dev = MockQueue::new(&area, 8, true);
        let mut completed = 0u32;
        let mut round = |q: &mut Queue, dev: &mut MockQueue| {
            let head = q.add(&[Buf::readable(0, 1)]).unwrap();
            q.publish();
            dev.next_chain().unwrap();
            let irq = dev.complete(head, 0);
            assert_eq!(q.pop_used().unwrap().unwrap().head, head);
            completed += 1;
            irq
        };
        // Suppressed: never, over more than 2^16 entries (the index wraps).
        for _ in 0..70_000 {
            assert!(!round(&mut q, &mut dev));
        }
        // Not even when the device decides after the driver took the entry (the device
        // side checks `used_event` only when it completes, i.e. after `pop_used` here).
        let head = q.add(&[Buf::readable(0, 1)]).unwrap();
        q.publish();
        dev.next_chain().unwrap();
        let late = dev.complete_late(head, 0, || {
            assert_eq!(q.pop_used().unwrap().unwrap().head, head);
        });
        assert!(
            !late,
            "suppressed: no interrupt for an entry taken before the check"
        );
        q.set_interrupts(true);
        assert!(
            round(&mut q, &mut dev),
            "enabled: the next entry interrupts"
        );
        assert!(round(&mut q, &mut dev), "and the one after");
        q.set_interrupts(false);
        assert!(!round(&mut q, &mut dev));
        assert_eq!(completed, 70_003);
    }

    #[test]
    fn edits_reach_the_descriptor_not_the_free_list() {
        let (area, mut q) = queue(4, false);
        let head = q
            .add(&[Buf::readable(0x10, 16), Buf::writable(0x20, 1)])
            .unwrap();
        let second = q.chain_index(head, 1).unwrap();
        assert!(q.edit_unpublished(head, 1, |d| {
            d.flags |= DESC_F_NEXT;
            d.next = head;
        }));
        assert!(!q.edit_unpublished(head, 2, |_| {}));
        assert_eq!(q.chain_index(head, 2), None);
        q.publish();
        let mut dev = MockQueue::new(&area, 4, false);
        assert!(
            dev.next_chain().unwrap().error.is_some(),
            "the mock sees the loop"
        );
        dev.complete(head, 0);
        assert_eq!(q.pop_used().unwrap().unwrap().head, head);
        assert_eq!(q.num_free(), 4);
        // The looping descriptor is reused cleanly.
        let h2 = q
            .add(&[
                Buf::readable(1, 1),
                Buf::readable(2, 1),
                Buf::readable(3, 1),
                Buf::readable(4, 1),
            ])
            .unwrap();
        assert!(q.chain_index(h2, 3).is_some());
        let _ = second;
    }
}
