//! The zero page (Linux `struct boot_params`) and the e820 memory map it carries.
//!
//! Offsets are those of Linux's `arch/x86/include/uapi/asm/bootparam.h`. Everything read
//! here comes from the VMM and is checked before use.

use crate::layout;
use core::fmt;

/// `ext_cmd_line_ptr`: high 32 bits of the command line address.
const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `e820_entries`: number of valid entries in `e820_table`.
const E820_ENTRIES: usize = 0x1e8;
/// `hdr.cmd_line_ptr`: low 32 bits of the command line address.
const CMD_LINE_PTR: usize = 0x228;
/// `e820_table`: packed `{ u64 addr, u64 size, u32 type }` entries.
const E820_TABLE: usize = 0x2d0;
/// Size of one e820 entry.
const E820_ENTRY_SIZE: usize = 20;
/// Entries that fit in the zero page's table (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX: usize = 128;
/// Size of the zero page.
const ZERO_PAGE_SIZE: u64 = 4096;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One e820 entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// 1 = RAM, anything else is not for the guest to use.
    pub kind: u32,
}

impl E820Entry {
    /// One past the last byte (saturating: an overflowing entry is caught by `check`).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// Usable RAM?
    pub fn is_ram(&self) -> bool {
        self.kind == E820_RAM
    }
}

/// The e820 map, copied out of the zero page.
#[derive(Clone)]
pub struct E820 {
    entries: [E820Entry; E820_MAX],
    len: usize,
}

/// Why an e820 map is not sane (the `memory` scenario's checks).
#[derive(Debug, PartialEq, Eq)]
pub enum E820Problem {
    /// No entries at all.
    Empty,
    /// An entry of zero bytes.
    ZeroSize(usize),
    /// An entry whose end does not fit in 64 bits.
    Overflow(usize),
    /// Two RAM entries overlap.
    Overlap(usize, usize),
    /// RAM inside the legacy VGA/ROM area or the 3-4 GiB MMIO hole.
    RamInHole(usize),
    /// No RAM below 640 KiB.
    NoLowRam,
    /// The guest image is not inside one RAM entry.
    ImageNotInRam,
}

impl fmt::Display for E820Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "e820 map is empty"),
            Self::ZeroSize(i) => write!(f, "e820 entry {i} is empty"),
            Self::Overflow(i) => write!(f, "e820 entry {i} ends beyond 2^64"),
            Self::Overlap(i, j) => write!(f, "e820 RAM entries {i} and {j} overlap"),
            Self::RamInHole(i) => write!(f, "e820 entry {i} puts RAM in a memory hole"),
            Self::NoLowRam => write!(f, "e820 map has no RAM below 640 KiB"),
            Self::ImageNotInRam => write!(f, "the guest image is not in e820 RAM"),
        }
    }
}

impl E820 {
    /// The entries, in the VMM's order.
    pub fn entries(&self) -> &[E820Entry] {
        &self.entries[..self.len]
    }

    /// The RAM entries.
    pub fn ram(&self) -> impl Iterator<Item = &E820Entry> {
        self.entries().iter().filter(|e| e.is_ram())
    }

    /// Total bytes of RAM.
    pub fn ram_total(&self) -> u64 {
        self.ram().fold(0u64, |sum, e| sum.saturating_add(e.size))
    }

    /// Is `[start, end)` inside a single RAM entry?
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        start < end && self.ram().any(|e| e.addr <= start && end <= e.end())
    }

    /// The RAM entry containing `addr`, if any.
    pub fn ram_containing(&self, addr: u64) -> Option<&E820Entry> {
        self.ram().find(|e| e.addr <= addr && addr < e.end())
    }

    /// Check that the map is one the guest (and a Linux kernel) can live with.
    pub fn check(&self) -> Result<(), E820Problem> {
        if self.len == 0 {
            return Err(E820Problem::Empty);
        }
        let holes = [
            (layout::LEGACY_HOLE_START, layout::LEGACY_HOLE_END),
            (layout::MMIO_HOLE_START, layout::MMIO_HOLE_END),
        ];
        for (i, e) in self.entries().iter().enumerate() {
            if e.size == 0 {
                return Err(E820Problem::ZeroSize(i));
            }
            if e.addr.checked_add(e.size).is_none() {
                return Err(E820Problem::Overflow(i));
            }
            if !e.is_ram() {
                continue;
            }
            if holes.iter().any(|&(s, h)| e.addr < h && s < e.end()) {
                return Err(E820Problem::RamInHole(i));
            }
            for (j, other) in self.entries().iter().enumerate().skip(i + 1) {
                if other.is_ram() && e.addr < other.end() && other.addr < e.end() {
                    return Err(E820Problem::Overlap(i, j));
                }
            }
        }
        if !self.ram().any(|e| e.addr < layout::LEGACY_HOLE_START) {
            return Err(E820Problem::NoLowRam);
        }
        if !self.is_ram(layout::IMAGE_BASE, layout::image_end()) {
            return Err(E820Problem::ImageNotInRam);
        }
        Ok(())
    }
}

/// What the guest takes from the zero page.
pub struct BootParams {
    /// The memory map.
    pub e820: E820,
    /// Physical address of the NUL-terminated command line (0: none).
    pub cmdline: u64,
}

/// Why the zero page could not be read.
#[derive(Debug)]
pub enum BootParamsError {
    /// RSI did not point at a page the boot page tables map.
    BadAddress(u64),
    /// `e820_entries` is larger than the table in the zero page.
    TooManyE820Entries(u8),
}

impl fmt::Display for BootParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadAddress(a) => write!(f, "zero page address {a:#x} (RSI) is not usable"),
            Self::TooManyE820Entries(n) => {
                write!(f, "zero page has {n} e820 entries, at most {E820_MAX} fit")
            }
        }
    }
}

/// Copy what the guest needs out of the zero page at `zero_page`.
///
/// Runs on the boot page tables, which map the first 1 GiB.
pub fn read(zero_page: u64) -> Result<BootParams, BootParamsError> {
    const BOOT_MAP_END: u64 = 1 << 30;
    if !(layout::LOW_WINDOW_START..=BOOT_MAP_END - ZERO_PAGE_SIZE).contains(&zero_page) {
        return Err(BootParamsError::BadAddress(zero_page));
    }
    let base = zero_page as *const u8;
    // SAFETY: [zero_page, zero_page + 4096) is inside the boot identity map (checked
    // above) and every offset read below is smaller than 4096; the zero page is not
    // written by anyone while the boot CPU reads it. Reads are unaligned-safe.
    let read_u32 = |offset: usize| unsafe { base.add(offset).cast::<u32>().read_unaligned() };
    // SAFETY: as above.
    let read_u64 = |offset: usize| unsafe { base.add(offset).cast::<u64>().read_unaligned() };
    // SAFETY: as above.
    let count = unsafe { base.add(E820_ENTRIES).read() };
    if usize::from(count) > E820_MAX {
        return Err(BootParamsError::TooManyE820Entries(count));
    }
    let mut e820 = E820 {
        entries: [E820Entry::default(); E820_MAX],
        len: usize::from(count),
    };
    for (i, entry) in e820.entries[..usize::from(count)].iter_mut().enumerate() {
        let offset = E820_TABLE + i * E820_ENTRY_SIZE;
        *entry = E820Entry {
            addr: read_u64(offset),
            size: read_u64(offset + 8),
            kind: read_u32(offset + 16),
        };
    }
    let cmdline = u64::from(read_u32(CMD_LINE_PTR)) | u64::from(read_u32(EXT_CMD_LINE_PTR)) << 32;
    Ok(BootParams { e820, cmdline })
}
