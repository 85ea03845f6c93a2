//! Walking a descriptor chain from its head index, for requests resubmitted from the
//! inflight region: virtio-queue 0.18 builds a `DescriptorChain` only from the available
//! ring (its constructor is crate-private), and a resubmitted request's head comes from
//! the region instead.
//!
//! The walk is virtio-queue's, rule for rule (so [`super::request::ChainParser`] sees the
//! same descriptors either way): direct descriptors, and at most one level of indirect
//! table (a table's length a multiple of 16, at most 65535 entries; an indirect descriptor
//! inside a table ends the walk); at most as many hops as the table in use has entries;
//! the walk ends at a `next` index past the table, at an unreadable descriptor, or when
//! the lengths seen would overflow a u32. Every address is read through guest memory's
//! checked accessors, and address arithmetic is checked.

use std::mem::size_of;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// Size of one split descriptor.
const DESC: u64 = size_of::<Descriptor>() as u64;

/// The descriptors of the chain starting at a head index.
#[derive(Clone, Debug)]
pub struct HeadChain<'m, M: GuestMemory> {
    mem: &'m M,
    table: GuestAddress,
    table_len: u16,
    next: u16,
    ttl: u16,
    yielded: u32,
    indirect: bool,
}

impl<'m, M: GuestMemory> HeadChain<'m, M> {
    /// The chain at `head` in the descriptor table at `desc_table` of `queue_size` entries;
    /// None if `head` is not in the table.
    pub fn new(mem: &'m M, desc_table: GuestAddress, queue_size: u16, head: u16) -> Option<Self> {
        (head < queue_size).then_some(HeadChain {
            mem,
            table: desc_table,
            table_len: queue_size,
            next: head,
            ttl: queue_size,
            yielded: 0,
            indirect: false,
        })
    }

    /// Switches to the indirect table `desc` points at; false if it can't be used.
    fn enter_indirect(&mut self, desc: &Descriptor) -> bool {
        if self.indirect || u64::from(desc.len()) % DESC != 0 {
            return false;
        }
        let Ok(entries) = u16::try_from(u64::from(desc.len()) / DESC) else {
            return false;
        };
        self.table = desc.addr();
        self.table_len = entries;
        self.next = 0;
        self.ttl = entries;
        self.indirect = true;
        true
    }
}

impl<M: GuestMemory> Iterator for HeadChain<'_, M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        // Bounded: each step either lowers ttl (at most 65535 steps per table) or enters
        // the one indirect table allowed.
        loop {
            if self.ttl == 0 || self.next >= self.table_len {
                return None;
            }
            let at = self
                .table
                .checked_add(u64::from(self.next).checked_mul(DESC)?)?;
            let desc: Descriptor = self.mem.read_obj(at).ok()?;
            if desc.refers_to_indirect_table() {
                if !self.enter_indirect(&desc) {
                    self.ttl = 0;
                    return None;
                }
                continue;
            }
            self.yielded = self.yielded.checked_add(desc.len())?;
            if desc.has_next() {
                self.next = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestMemoryMmap;

    type Mem = GuestMemoryMmap<()>;

    fn mem() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u32, next: u16) {
        mem.write_obj(
            RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next)),
            GuestAddress(table + 16 * u64::from(i)),
        )
        .unwrap();
    }

    fn walk(mem: &Mem, head: u16) -> Vec<(u64, u32, bool)> {
        HeadChain::new(mem, GuestAddress(0), 8, head)
            .unwrap()
            .map(|d| (d.addr().raw_value(), d.len(), d.is_write_only()))
            .collect()
    }

    #[test]
    fn direct_and_indirect_chains_are_walked() {
        let m = mem();
        put(&m, 0, 3, 0x1000, 16, VRING_DESC_F_NEXT, 5);
        put(&m, 0, 5, 0x2000, 1, VRING_DESC_F_WRITE, 0);
        assert_eq!(walk(&m, 3), [(0x1000, 16, false), (0x2000, 1, true)]);

        // Head 1 points at a two-entry indirect table at 0x3000.
        put(&m, 0, 1, 0x3000, 32, VRING_DESC_F_INDIRECT, 0);
        put(&m, 0x3000, 0, 0x1000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, 0x3000, 1, 0x2000, 1, VRING_DESC_F_WRITE, 0);
        assert_eq!(walk(&m, 1), [(0x1000, 16, false), (0x2000, 1, true)]);
        assert!(HeadChain::new(&m, GuestAddress(0), 8, 8).is_none());
    }

    #[test]
    fn hostile_chains_end() {
        let m = mem();
        // A loop: bounded by the table's size.
        put(&m, 0, 0, 0x1000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, 0, 1, 0x1000, 16, VRING_DESC_F_NEXT, 0);
        assert_eq!(walk(&m, 0).len(), 8);
        // next past the table.
        put(&m, 0, 2, 0x1000, 16, VRING_DESC_F_NEXT, 200);
        assert_eq!(walk(&m, 2).len(), 1);
        // A nested indirect table, a table of a bad length, a table outside memory.
        put(&m, 0, 3, 0x3000, 16, VRING_DESC_F_INDIRECT, 0);
        put(&m, 0x3000, 0, 0x3000, 16, VRING_DESC_F_INDIRECT, 0);
        assert!(walk(&m, 3).is_empty());
        put(&m, 0, 4, 0x3000, 17, VRING_DESC_F_INDIRECT, 0);
        assert!(walk(&m, 4).is_empty());
        put(&m, 0, 5, 0xfff_0000, 32, VRING_DESC_F_INDIRECT, 0);
        assert!(walk(&m, 5).is_empty());
        // A table at the top of the address space.
        assert_eq!(
            HeadChain::new(&m, GuestAddress(u64::MAX - 8), 8, 7)
                .unwrap()
                .count(),
            0
        );
    }
}
