//! Device registers through the uncached, user-accessible MMIO hole: the [`Regs`] the
//! virtio drivers (`bulkhead_guest::virtio`) use in the guest.
//!
//! Each access is one `mov` that the hypervisor emulates: an exit to the VMM, except the
//! queue-notify write, which hits an ioeventfd (see `virtio::mmio`).

use crate::layout::{IOAPIC_BASE, LAPIC_BASE, MMIO_HOLE_END, MMIO_HOLE_START};
use crate::virtio::Regs;

/// A register block in the MMIO hole.
pub struct Mmio {
    base: u64,
}

/// Is `[base, base + size)` inside the MMIO hole the page tables map, clear of the
/// IOAPIC and LAPIC pages?
pub fn reachable(base: u64, size: u64) -> bool {
    let Some(end) = base.checked_add(size) else {
        return false;
    };
    let overlaps = |page: u64| base < page + 0x1000 && page < end;
    base >= MMIO_HOLE_START
        && end <= MMIO_HOLE_END
        && !overlaps(IOAPIC_BASE)
        && !overlaps(LAPIC_BASE)
}

impl Mmio {
    /// The register block at `base`.
    ///
    /// # Safety
    /// `[base, base + 0x1000)` must be [`reachable`] and hold a device's registers (or
    /// nothing: unbacked MMIO reads return what the VMM answers), which nothing else
    /// drives.
    pub unsafe fn new(base: u64) -> Self {
        Self { base }
    }
}

impl Regs for Mmio {
    fn read32(&self, offset: u32) -> u32 {
        // SAFETY: inside the device's block in the mapped MMIO hole (`new`'s contract).
        unsafe { ((self.base + u64::from(offset)) as *const u32).read_volatile() }
    }

    fn write32(&self, offset: u32, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { ((self.base + u64::from(offset)) as *mut u32).write_volatile(value) }
    }

    fn read16(&self, offset: u32) -> u16 {
        // SAFETY: as in `read32`.
        unsafe { ((self.base + u64::from(offset)) as *const u16).read_volatile() }
    }

    fn read8(&self, offset: u32) -> u8 {
        // SAFETY: as in `read32`.
        unsafe { ((self.base + u64::from(offset)) as *const u8).read_volatile() }
    }

    fn write16(&self, offset: u32, value: u16) {
        // SAFETY: as in `read32`.
        unsafe { ((self.base + u64::from(offset)) as *mut u16).write_volatile(value) }
    }

    fn write8(&self, offset: u32, value: u8) {
        // SAFETY: as in `read32`.
        unsafe { ((self.base + u64::from(offset)) as *mut u8).write_volatile(value) }
    }
}
