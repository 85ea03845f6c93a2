//! Physical memory for the guest's own use: a bump allocator over the free RAM that
//! follows the guest image in its e820 RAM entry.
//!
//! Nothing is ever freed. Page-table pages are taken first (while only the boot page
//! tables' first 1 GiB is mapped), then AP stacks; the `memory` scenario tests the RAM
//! above [`Frames::free_start`] without allocating it.

use crate::bootparams::E820;
use crate::layout;
use core::fmt;

/// Page size.
pub const PAGE: u64 = 4096;

/// The allocator: hands out `[next, end)` from the bottom up.
pub struct Frames {
    next: u64,
    end: u64,
}

/// Why there is no free RAM to allocate from.
#[derive(Debug)]
pub struct NoFreeRam {
    image_end: u64,
}

impl fmt::Display for NoFreeRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no e820 RAM entry holds the guest image ({:#x}..{:#x}) and free RAM after it",
            layout::IMAGE_BASE,
            self.image_end
        )
    }
}

extern "C" {
    /// End of the image (`.bss` included), defined by the linker.
    static _end: u8;
}

/// First byte after the guest image.
pub fn image_end() -> u64 {
    // Only the address of the linker-defined symbol is taken, never its contents.
    core::ptr::addr_of!(_end) as u64
}

/// Round `value` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

impl Frames {
    /// An allocator over the RAM after the image, in the e820 entry that holds the image.
    pub fn new(e820: &E820) -> Result<Self, NoFreeRam> {
        let image_end = image_end();
        let err = || NoFreeRam { image_end };
        let entry = e820.ram_containing(layout::IMAGE_BASE).ok_or_else(err)?;
        let next = align_up(image_end, PAGE).ok_or_else(err)?;
        if entry.end() <= next || image_end > entry.end() {
            return Err(err());
        }
        Ok(Self {
            next,
            end: entry.end(),
        })
    }

    /// `size` bytes aligned to `align` (a power of two), or `None` when RAM runs out.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let start = align_up(self.next, align)?;
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }

    /// One zeroed, page-aligned page.
    pub fn alloc_zeroed_page(&mut self) -> Option<u64> {
        let page = self.alloc(PAGE, PAGE)?;
        // SAFETY: the page is RAM (inside the e820 entry this allocator covers), identity
        // mapped, and was never handed out before, so nothing else refers to it.
        unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE as usize) };
        Some(page)
    }

    /// First byte not yet allocated.
    pub fn free_start(&self) -> u64 {
        self.next
    }

    /// End of the RAM this allocator covers.
    pub fn free_end(&self) -> u64 {
        self.end
    }
}
