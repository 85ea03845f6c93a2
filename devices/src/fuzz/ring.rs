//! A split virtqueue built from fuzz input in a fresh guest memory, and the checks of what
//! a device then reported.
//!
//! The input chooses the queue size, the first available index (so rings wrap), EVENT_IDX,
//! every descriptor (addresses mostly in a data area, sometimes anywhere: in the rings
//! themselves, past the end of memory, at `u64::MAX`; lengths small, sector-sized, 16-bit
//! or any `u32`; any flags, so loops, indirect tables and wrong directions; any `next`,
//! including past the table), the available entries (heads past the table too) and their
//! count (more than the queue holds, sometimes), and the bytes of the data area (request
//! headers, indirect tables).
//!
//! After the device ran, [`Ring::check`] asserts: used entries name the available heads
//! in order, never more than were made available; and, when no device-writable buffer
//! overlaps the rings or a descriptor table (so the chains the device walked are the ones
//! seen here), every used length fits the chain's writable bytes and every byte of guest
//! memory that changed lies in a writable buffer or the used ring.

use std::ops::Range;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::input::Input;

/// Guest memory size.
pub const MEM_SIZE: u64 = 0x4_0000;
/// Where the descriptor table, available ring and used ring live (unless the input moves
/// them) and where the data area starts.
pub const DESC: u64 = 0x0;
/// See [`DESC`].
pub const AVAIL: u64 = 0x1000;
/// See [`DESC`].
pub const USED: u64 = 0x2000;
/// See [`DESC`].
pub const DATA: u64 = 0x3000;
/// Largest queue size.
pub const MAX_SIZE: u16 = 256;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Guest memory as the backends map it.
pub type GuestRam = vm_memory::GuestMemoryMmap<()>;

/// One descriptor as stored in a table.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A queue the driver (the input) set up, and what the checks need to know of it.
pub struct Ring {
    /// Guest memory holding the rings and buffers.
    pub mem: GuestRam,
    /// The device's view of the queue.
    pub queue: Queue,
    /// The size the queue took (its maximum if it refused the driver's).
    size: u16,
    requested_size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    start: u16,
    available: u16,
    snapshot: Vec<u8>,
}

/// A used-ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The chain's head.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

fn address(input: &mut Input) -> u64 {
    match input.u8() {
        0..=0xef => DATA + u64::from(input.u16()) * 4,
        0xf0..=0xfd => u64::from(input.u16()) * 16,
        _ => input.u64(),
    }
}

fn length(input: &mut Input) -> u32 {
    match input.u8() {
        m @ 0..=0x3f => u32::from(m),
        m @ 0x40..=0x7f => (u32::from(m) - 0x3f) * 512,
        0x80..=0xef => u32::from(input.u16()),
        _ => input.u32(),
    }
}

/// `base + offset` as a guest address; `None` past `u64::MAX` (where the device must not
/// wrap around either).
fn at(base: u64, offset: u64) -> Option<GuestAddress> {
    base.checked_add(offset).map(GuestAddress)
}

/// Writes `value` at `base + offset` if that is in memory: what does not fit is simply not
/// there (the device must cope with that too).
fn put<T: vm_memory::ByteValued>(mem: &GuestRam, base: u64, offset: u64, value: T) {
    if let Some(addr) = at(base, offset) {
        let _ = mem.write_obj(value, addr);
    }
}

fn ring_address(input: &mut Input, usual: u64) -> u64 {
    if input.u8() == 0xff {
        input.u64()
    } else {
        usual
    }
}

impl Ring {
    /// Builds a queue from the front of `input`; the data area takes what is left.
    pub fn build(input: &mut Input) -> Ring {
        Ring::build_with(input, false)
    }

    /// As [`build`](Self::build), with the rings' indexes starting at 0 (for a device that
    /// sets its queue up itself, from addresses, as a driver's first activation does).
    pub fn build_from_zero(input: &mut Input) -> Ring {
        Ring::build_with(input, true)
    }

    /// The queue's size and ring addresses, as the driver gave them.
    pub fn layout(&self) -> (u16, u64, u64, u64) {
        (self.requested_size, self.desc, self.avail, self.used)
    }

    fn build_with(input: &mut Input, from_zero: bool) -> Ring {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("anonymous guest memory");
        let size_byte = input.u8();
        let size = match size_byte {
            0xff => input.u16(), // anything, even a size the queue must refuse
            b => 1 << (b % 9),
        };
        let desc = ring_address(input, DESC);
        let avail = ring_address(input, AVAIL);
        let used = ring_address(input, USED);
        let event_idx = input.bool();
        let start = match input.u16() {
            _ if from_zero => 0,
            start => start,
        };
        let ndesc = usize::from(input.u8()).min(usize::from(MAX_SIZE));
        let table: Vec<Desc> = (0..ndesc)
            .map(|_| Desc {
                addr: address(input),
                len: length(input),
                flags: u16::from(input.u8() & 7),
                next: u16::from(input.u8()),
            })
            .collect();
        let count = input.u8();
        let heads: Vec<u16> = (0..count).map(|_| u16::from(input.u8())).collect();
        let avail_idx = match input.u8() {
            0xff => input.u16(), // further ahead than the queue, or behind
            _ => start.wrapping_add(u16::from(count)),
        };
        let used_event = input.u16();

        for (i, d) in table.iter().enumerate() {
            let base = 16 * i as u64;
            put(&mem, desc, base, d.addr);
            put(&mem, desc, base + 8, d.len);
            put(&mem, desc, base + 12, d.flags);
            put(&mem, desc, base + 14, d.next);
        }
        let qsize = u64::from(size.clamp(1, MAX_SIZE));
        for (i, &head) in heads.iter().enumerate() {
            let slot = u64::from(start.wrapping_add(i as u16)) % qsize;
            put(&mem, avail, 4 + 2 * slot, head);
        }
        put(&mem, avail, 2, avail_idx);
        put(&mem, avail, 4 + 2 * qsize, used_event);
        put(&mem, used, 2, start);
        let data = input.rest();
        let room = (MEM_SIZE - DATA) as usize;
        let _ = mem.write_slice(&data[..data.len().min(room)], GuestAddress(DATA));

        let mut queue = Queue::new(MAX_SIZE).expect("256 is a valid queue size");
        // A size or a misaligned address the queue refuses: vhost-user-backend refuses the
        // message (SET_VRING_NUM, SET_VRING_ADDR) and the queue never starts; so here.
        let accepted = queue.try_set_size(size).is_ok()
            && queue.try_set_desc_table_address(GuestAddress(desc)).is_ok()
            && queue
                .try_set_avail_ring_address(GuestAddress(avail))
                .is_ok()
            && queue.try_set_used_ring_address(GuestAddress(used)).is_ok();
        queue.set_event_idx(event_idx);
        queue.set_next_avail(start);
        queue.set_next_used(start);
        queue.set_ready(accepted);

        let mut snapshot = vec![0u8; MEM_SIZE as usize];
        mem.read_slice(&mut snapshot, GuestAddress(0))
            .expect("all of memory");
        Ring {
            mem,
            size: queue.size(),
            requested_size: size,
            queue,
            desc,
            avail,
            used,
            start,
            available: avail_idx.wrapping_sub(start),
            snapshot,
        }
    }

    fn snap_u16(&self, at: u64) -> Option<u16> {
        let at = usize::try_from(at).ok()?;
        let b = self.snapshot.get(at..at.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn snap_desc(&self, table: u64, index: u16) -> Option<Desc> {
        let at = usize::try_from(table.checked_add(16 * u64::from(index))?).ok()?;
        let b = self.snapshot.get(at..at.checked_add(16)?)?;
        let word = |r: Range<usize>| b[r].iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x));
        Some(Desc {
            addr: word(0..8),
            len: word(8..12) as u32,
            flags: word(12..14) as u16,
            next: word(14..16) as u16,
        })
    }

    /// The descriptors reachable in a table of `entries` from `first` (each once).
    fn walk(&self, table: u64, entries: u16, first: u16, out: &mut Vec<(u64, Desc)>) {
        let mut seen = vec![false; usize::from(entries)];
        let mut index = first;
        while let Some(d) = (index < entries)
            .then(|| self.snap_desc(table, index))
            .flatten()
        {
            if std::mem::replace(&mut seen[usize::from(index)], true) {
                break;
            }
            out.push((table, d));
            if d.flags & F_NEXT == 0 {
                break;
            }
            index = d.next;
        }
    }

    /// Every descriptor a device could read for the chain at `head`, direct or indirect.
    fn chain(&self, head: u16) -> Vec<Desc> {
        let mut direct = Vec::new();
        self.walk(self.desc, self.size, head, &mut direct);
        let mut out = Vec::new();
        for (_, d) in direct {
            if d.flags & F_INDIRECT != 0 {
                let entries = (d.len / 16).min(u32::from(u16::MAX)) as u16;
                let mut indirect = Vec::new();
                self.walk(d.addr, entries, 0, &mut indirect);
                out.extend(indirect.into_iter().map(|(_, d)| d));
            } else {
                out.push(d);
            }
        }
        out
    }

    fn read_used<T: vm_memory::ByteValued>(&self, offset: u64) -> Option<T> {
        at(self.used, offset).and_then(|a| self.mem.read_obj(a).ok())
    }

    /// The used entries the device added.
    pub fn used(&self) -> Vec<Used> {
        let Some(idx) = self.read_used::<u16>(2) else {
            return Vec::new();
        };
        let qsize = u64::from(self.size.max(1));
        (0..idx.wrapping_sub(self.start))
            .map(|i| {
                let slot = u64::from(self.start.wrapping_add(i)) % qsize;
                Used {
                    id: self.read_used(4 + 8 * slot).unwrap_or(u32::MAX),
                    len: self.read_used(8 + 8 * slot).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    /// Whether the rings sit where the harness lays them out and no writable buffer of any
    /// descriptor overlaps a ring or a descriptor table: then what the device walked is
    /// what the snapshot says, and the strict checks apply.
    fn chains_are_stable(&self) -> bool {
        if (self.desc, self.avail, self.used) != (DESC, AVAIL, USED) || self.size == 0 {
            return false;
        }
        // The rings, and below the indirect tables.
        let mut meta: Vec<Range<u64>> = Vec::new();
        meta.push(0..DATA);
        let mut writable = Vec::new();
        for i in 0..self.size {
            let Some(d) = self.snap_desc(self.desc, i) else {
                continue;
            };
            if d.flags & F_INDIRECT != 0 {
                meta.push(d.addr..d.addr.saturating_add(u64::from(d.len)));
                // Up to the end of memory: the table's entries are contiguous.
                let entries = (d.len / 16).min(u32::from(u16::MAX)) as u16;
                let table = (0..entries).map_while(|j| self.snap_desc(d.addr, j));
                writable.extend(table.filter(|e| e.flags & F_WRITE != 0));
            } else if d.flags & F_WRITE != 0 {
                writable.push(d);
            }
        }
        !writable.iter().any(|w| {
            let r = w.addr..w.addr.saturating_add(u64::from(w.len));
            meta.iter().any(|m| r.start < m.end && m.start < r.end)
        })
    }

    /// Asserts what any device must respect (see the module documentation) and returns the
    /// used entries. Every device here completes chains in the order it takes them.
    pub fn check(&self) -> Vec<Used> {
        let used = self.used();
        let stable = self.chains_are_stable();
        let available = if self.available <= self.size {
            self.available
        } else {
            0
        };
        assert!(
            used.len() <= usize::from(available),
            "{} used entries for {available} available",
            used.len()
        );
        if !stable {
            return used;
        }
        let qsize = u64::from(self.size);
        let mut allowed: Vec<Range<u64>> = Vec::new();
        allowed.push(USED..USED + 6 + 8 * qsize);
        // A head past the table names no chain: the device can only drop it.
        let heads: Vec<u16> = (0..available)
            .filter_map(|i| {
                let slot = u64::from(self.start.wrapping_add(i)) % qsize;
                self.snap_u16(AVAIL + 4 + 2 * slot)
            })
            .filter(|&head| head < self.size)
            .collect();
        for (i, u) in used.iter().enumerate() {
            let head = heads.get(i).copied();
            assert_eq!(
                Some(u.id),
                head.map(u32::from),
                "used entry {i} names {} but valid available entry {i} is {head:?}",
                u.id
            );
            let head = u.id as u16;
            let chain = self.chain(head);
            let bound: u64 = chain
                .iter()
                .filter(|d| d.flags & F_WRITE != 0)
                .map(|d| u64::from(d.len))
                .sum();
            assert!(
                u64::from(u.len) <= bound,
                "chain {head}: used length {} but only {bound} writable bytes: {chain:x?}",
                u.len
            );
        }
        // Any writable buffer of any available chain may have been written (a device may
        // write a chain it then refuses, e.g. a block status byte).
        for &head in &heads {
            allowed.extend(
                self.chain(head)
                    .iter()
                    .filter(|d| d.flags & F_WRITE != 0)
                    .map(|d| d.addr..d.addr.saturating_add(u64::from(d.len))),
            );
        }
        let mut now = vec![0u8; MEM_SIZE as usize];
        self.mem
            .read_slice(&mut now, GuestAddress(0))
            .expect("all of memory");
        const CHUNK: usize = 64;
        for (c, (was, is)) in self
            .snapshot
            .chunks(CHUNK)
            .zip(now.chunks(CHUNK))
            .enumerate()
        {
            if was == is {
                continue;
            }
            for (i, (a, b)) in was.iter().zip(is).enumerate() {
                let at = (c * CHUNK + i) as u64;
                assert!(
                    a == b || allowed.iter().any(|r| r.contains(&at)),
                    "the device wrote guest memory at {at:#x} ({a:#x} -> {b:#x}), outside \
                     every writable buffer"
                );
            }
        }
        used
    }
}

/// Well-formed inputs for [`Ring::build`], for the harnesses' stable runs: the same byte
/// layout the builder reads, written once (the vmm's harnesses use it too).
pub mod encode {
    /// The queue's opening bytes: 2^`size_log2` entries, the rings where the harness puts
    /// them, `event_idx`, indexes starting at 0.
    pub fn header(out: &mut Vec<u8>, size_log2: u8, event_idx: bool) {
        out.extend([size_log2, 0, 0, 0, u8::from(event_idx)]);
        out.extend(0u16.to_le_bytes());
    }

    /// One descriptor: at `DATA + offset` (a multiple of 4), length code `len` (see
    /// `length`), `flags`, `next`.
    pub fn desc(out: &mut Vec<u8>, offset: u64, len: u8, flags: u8, next: u8) {
        out.push(0);
        out.extend(u16::try_from(offset / 4).unwrap_or(u16::MAX).to_le_bytes());
        out.extend([len, flags, next]);
    }

    /// The available ring: `heads` made available, its index right after them, no used
    /// event; the data area follows.
    pub fn available(out: &mut Vec<u8>, heads: &[u8]) {
        out.push(heads.len() as u8);
        out.extend(heads);
        out.push(0);
        out.extend(0u16.to_le_bytes());
    }

    /// `n` chains of one buffer each, 4 KiB apart from the data area's start, of length
    /// code `len`, device-writable or not, all made available.
    pub fn single_buffer_chains(out: &mut Vec<u8>, n: usize, len: u8, writable: bool) {
        out.push(n as u8);
        for i in 0..n {
            desc(out, 0x1000 * i as u64, len, if writable { 2 } else { 0 }, 0);
        }
        available(out, &(0..n).map(|i| i as u8).collect::<Vec<_>>());
    }
}
