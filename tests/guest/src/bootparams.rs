//! The zero page (Linux `struct boot_params`) and the e820 memory map it carries.
//!
//! Offsets are those of Linux's `arch/x86/include/uapi/asm/bootparam.h`. Everything read
//! here comes from the VMM and is checked before use; the caller finds the page (RSI).

use crate::layout;
use core::fmt;

/// `acpi_rsdp_addr`: where the ACPI RSDP is (0: not given; search for it).
const ACPI_RSDP_ADDR: usize = 0x070;
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
pub const ZERO_PAGE_SIZE: usize = 4096;
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

    /// Check that the map is one the guest (and a Linux kernel) can live with; the guest
    /// image occupies `image.0..image.1`.
    pub fn check(&self, image: (u64, u64)) -> Result<(), E820Problem> {
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
        if !self.is_ram(image.0, image.1) {
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
    /// Physical address of the ACPI RSDP (0: not given).
    pub acpi_rsdp: u64,
}

/// Why the zero page could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum BootParamsError {
    /// Fewer bytes than a zero page.
    Short(usize),
    /// `e820_entries` is larger than the table in the zero page.
    TooManyE820Entries(u8),
}

impl fmt::Display for BootParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short(n) => write!(f, "zero page is {n} bytes, not {ZERO_PAGE_SIZE}"),
            Self::TooManyE820Entries(n) => {
                write!(f, "zero page has {n} e820 entries, at most {E820_MAX} fit")
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// Take what the guest needs from the zero page's bytes.
pub fn parse(zero_page: &[u8]) -> Result<BootParams, BootParamsError> {
    if zero_page.len() < ZERO_PAGE_SIZE {
        return Err(BootParamsError::Short(zero_page.len()));
    }
    // Every offset below is under ZERO_PAGE_SIZE: 0x2d0 + 128 * 20 = 0xcd0.
    let count = zero_page[E820_ENTRIES];
    if usize::from(count) > E820_MAX {
        return Err(BootParamsError::TooManyE820Entries(count));
    }
    let mut e820 = E820 {
        entries: [E820Entry::default(); E820_MAX],
        len: usize::from(count),
    };
    for (i, entry) in e820.entries[..usize::from(count)].iter_mut().enumerate() {
        let at = E820_TABLE + i * E820_ENTRY_SIZE;
        *entry = E820Entry {
            addr: u64_at(zero_page, at),
            size: u64_at(zero_page, at + 8),
            kind: u32_at(zero_page, at + 16),
        };
    }
    let cmdline = u64::from(u32_at(zero_page, CMD_LINE_PTR))
        | u64::from(u32_at(zero_page, EXT_CMD_LINE_PTR)) << 32;
    Ok(BootParams {
        e820,
        cmdline,
        acpi_rsdp: u64_at(zero_page, ACPI_RSDP_ADDR),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: (u64, u64) = (0x20_0000, 0x24_0000);

    /// `(addr, size, type)` of each entry.
    type Entries<'a> = &'a [(u64, u64, u32)];

    fn zero_page(entries: &[(u64, u64, u32)], cmdline: u64) -> Vec<u8> {
        let mut page = vec![0u8; ZERO_PAGE_SIZE];
        page[E820_ENTRIES] = entries.len() as u8;
        for (i, &(addr, size, kind)) in entries.iter().enumerate() {
            let at = E820_TABLE + i * E820_ENTRY_SIZE;
            page[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            page[at + 8..at + 16].copy_from_slice(&size.to_le_bytes());
            page[at + 16..at + 20].copy_from_slice(&kind.to_le_bytes());
        }
        page[CMD_LINE_PTR..CMD_LINE_PTR + 4].copy_from_slice(&(cmdline as u32).to_le_bytes());
        page[EXT_CMD_LINE_PTR..EXT_CMD_LINE_PTR + 4]
            .copy_from_slice(&((cmdline >> 32) as u32).to_le_bytes());
        page
    }

    /// The map bulkhead and Firecracker give a 256 MiB guest.
    fn vmm_map() -> Vec<(u64, u64, u32)> {
        vec![
            (0, 0x9_fc00, 1),
            (0x9_fc00, 0x6_0400, 2),
            (0x10_0000, (256 << 20) - 0x10_0000, 1),
        ]
    }

    fn e820(entries: &[(u64, u64, u32)]) -> E820 {
        parse(&zero_page(entries, 0)).expect("valid zero page").e820
    }

    #[test]
    fn parses_e820_and_command_line_pointer() {
        let mut page = zero_page(&vmm_map(), 0x1_2002_0000);
        page[ACPI_RSDP_ADDR..ACPI_RSDP_ADDR + 8].copy_from_slice(&0xe_0000u64.to_le_bytes());
        let boot = parse(&page).unwrap();
        assert_eq!(boot.cmdline, 0x1_2002_0000);
        assert_eq!(boot.acpi_rsdp, 0xe_0000);
        assert_eq!(boot.e820.entries().len(), 3);
        assert_eq!(
            boot.e820.entries()[2],
            E820Entry {
                addr: 0x10_0000,
                size: (256 << 20) - 0x10_0000,
                kind: 1
            }
        );
        assert_eq!(boot.e820.ram_total(), (256 << 20) - 0x6_0400);
        assert_eq!(boot.e820.check(IMAGE), Ok(()));
    }

    #[test]
    fn rejects_short_pages_and_too_many_entries() {
        assert_eq!(parse(&[0; 100]).err(), Some(BootParamsError::Short(100)));
        let mut page = zero_page(&[], 0);
        page[E820_ENTRIES] = 129;
        assert_eq!(
            parse(&page).err(),
            Some(BootParamsError::TooManyE820Entries(129))
        );
    }

    #[test]
    fn ram_queries() {
        let map = e820(&vmm_map());
        assert!(map.is_ram(0x8000, 0x9000));
        assert!(
            !map.is_ram(0x9_f000, 0xa_1000),
            "crosses into the reserved EBDA"
        );
        assert!(!map.is_ram(0x5000, 0x5000), "empty range");
        assert_eq!(
            map.ram_containing(0x20_0000).map(|e| e.addr),
            Some(0x10_0000)
        );
        assert!(map.ram_containing(0xa_0000).is_none());
    }

    #[test]
    fn insane_maps_are_caught() {
        let cases: [(Entries, E820Problem); 7] = [
            (&[], E820Problem::Empty),
            (
                &[(0, 0x9_fc00, 1), (0x10_0000, 0, 1)],
                E820Problem::ZeroSize(1),
            ),
            (
                &[(0, 0x9_fc00, 1), (u64::MAX - 5, 10, 2)],
                E820Problem::Overflow(1),
            ),
            (
                &[
                    (0, 0x9_fc00, 1),
                    (0x10_0000, 8 << 20, 1),
                    (0x20_0000, 1 << 20, 1),
                ],
                E820Problem::Overlap(1, 2),
            ),
            (&[(0, 0xb_0000, 1)], E820Problem::RamInHole(0)),
            (
                &[(0, 0x9_fc00, 1), (0x10_0000, 4 << 30, 1)],
                E820Problem::RamInHole(1),
            ),
            (&[(0x10_0000, 8 << 20, 1)], E820Problem::NoLowRam),
        ];
        for (entries, problem) in cases {
            assert_eq!(e820(entries).check(IMAGE), Err(problem), "{entries:x?}");
        }
        let small = e820(&[(0, 0x9_fc00, 1), (0x10_0000, 0x12_0000, 1)]);
        assert_eq!(small.check(IMAGE), Err(E820Problem::ImageNotInRam));
    }

    #[test]
    fn reserved_entries_may_overlap_and_sit_in_holes() {
        let map = e820(&[
            (0, 0x9_fc00, 1),
            (0x9_f000, 0x6_1000, 2),
            (0x10_0000, 8 << 20, 1),
            (0xfec0_0000, 0x1000, 2),
        ]);
        assert_eq!(map.check(IMAGE), Ok(()));
    }
}
