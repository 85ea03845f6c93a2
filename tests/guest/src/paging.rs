//! The final page tables: an identity map of all e820 RAM and the 3-4 GiB MMIO hole, every
//! page user-accessible, built at CPL3 by the boot CPU and loaded through the CR3 gate.
//!
//! - 0..2 MiB: 4 KiB pages, all present except page 0 (null pointers fault), whatever
//!   e820 says (the zero page, command line, MP table and trampoline live there);
//! - RAM: 2 MiB pages covering every e820 RAM entry (rounded out to 2 MiB), up to 512 GiB;
//! - 0xc000_0000..0x1_0000_0000: 2 MiB pages with PCD|PWT (uncached) for device registers.
//!
//! The PML4, PDPT and low page table are statics (the AP trampoline loads [`PML4`] by its
//! link address); page directories come from [`Frames`], one per GiB that needs one, and
//! must lie in the first GiB that the boot page tables map while they are built.

use crate::bootparams::E820;
use crate::frames::Frames;
use crate::layout;
use crate::sync::RawCell;
use core::fmt;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const LARGE: u64 = 1 << 7;
const TABLE: u64 = PRESENT | WRITABLE | USER;

const SIZE_2M: u64 = 2 << 20;
const SIZE_1G: u64 = 1 << 30;
/// End of what the boot page tables map.
const BOOT_MAP_END: u64 = SIZE_1G;

/// A 4 KiB page-table page.
#[repr(C, align(4096))]
pub struct PageTable([u64; 512]);

impl PageTable {
    const fn new() -> Self {
        Self([0; 512])
    }
}

/// Root of the final page tables (its address goes into CR3 on every CPU).
pub static PML4: RawCell<PageTable> = RawCell::new(PageTable::new());
static PDPT: RawCell<PageTable> = RawCell::new(PageTable::new());
static LOW_PT: RawCell<PageTable> = RawCell::new(PageTable::new());

/// Why the page tables could not be built.
#[derive(Debug)]
pub enum PagingError {
    /// No free RAM left for a page directory.
    OutOfMemory,
    /// A page directory landed beyond the boot page tables' reach.
    NotBootMapped(u64),
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory => write!(f, "out of RAM for page directories"),
            Self::NotBootMapped(a) => write!(f, "page directory at {a:#x} is above 1 GiB"),
        }
    }
}

fn overlaps_ram(e820: &E820, start: u64, end: u64) -> bool {
    e820.ram().any(|e| e.addr < end && start < e.end())
}

/// Build the final page tables from `e820` and switch this CPU to them.
pub fn build(e820: &E820, frames: &mut Frames) -> Result<(), PagingError> {
    let low_pt = LOW_PT.get().cast::<u64>();
    let pdpt = PDPT.get().cast::<u64>();
    let pml4 = PML4.get().cast::<u64>();
    for i in 1..512u64 {
        // SAFETY: `i < 512` indexes the low page table, which nothing uses before the
        // CR3 switch below; only the boot CPU runs.
        unsafe { low_pt.add(i as usize).write((i * 4096) | TABLE) };
    }
    for gib in 0..(layout::MAPPABLE_END / SIZE_1G) {
        let start = gib * SIZE_1G;
        let hole = start == layout::MMIO_HOLE_START;
        if gib != 0 && !hole && !overlaps_ram(e820, start, start + SIZE_1G) {
            continue;
        }
        let pd = frames.alloc_zeroed_page().ok_or(PagingError::OutOfMemory)?;
        if pd + 4096 > BOOT_MAP_END {
            return Err(PagingError::NotBootMapped(pd));
        }
        let pd_entries = pd as *mut u64;
        for slot in 0..512u64 {
            let addr = start + slot * SIZE_2M;
            let entry = if addr == 0 {
                LOW_PT.get() as u64 | TABLE
            } else if hole {
                addr | TABLE | LARGE | WRITE_THROUGH | CACHE_DISABLE
            } else if overlaps_ram(e820, addr, addr + SIZE_2M) {
                addr | TABLE | LARGE
            } else {
                continue;
            };
            // SAFETY: `pd` is a fresh, identity-mapped page (below 1 GiB, checked above)
            // owned by these tables, and `slot < 512`.
            unsafe { pd_entries.add(slot as usize).write(entry) };
        }
        // SAFETY: `gib < 512` indexes the PDPT, unused until the CR3 switch below.
        unsafe { pdpt.add(gib as usize).write(pd | TABLE) };
    }
    // SAFETY: entry 0 of the PML4 covers the first 512 GiB; unused until the switch.
    unsafe { pml4.write(PDPT.get() as u64 | TABLE) };
    // SAFETY: the new tables identity-map the image (e820 RAM, checked by `Frames::new`)
    // and the low 2 MiB, i.e. all code, data and stacks in use, at unchanged addresses.
    unsafe { crate::gates::load_cr3(PML4.get() as u64) };
    Ok(())
}
