//! The guest's memory map and the fixed numbers of its CPU set-up, in one place.
//!
//! ```text
//! 0x0000_0000  page 0: never mapped (catches null pointers)
//! 0x0000_7000  zero page from the VMM (read once at boot, address passed in RSI)
//! 0x0000_8000  AP start-up trampoline (copied here before the APs are started)
//! 0x0009_fc00 / 0x000f_0000  MP table from the VMM (read once at boot)
//! 0x0020_0000  the guest image: text, data (GDT, TSSes, boot page tables), bss
//! _end ..      free RAM handed out by `frames`: page directories, AP stacks, memory test
//! 0xc000_0000 .. 0x1_0000_0000  MMIO hole, mapped uncached: IOAPIC, LAPIC, virtio-mmio
//! ```
//! Every mapping is an identity map (virtual == physical) and user-accessible, so that
//! the CPL3 Rust code can reach RAM, page tables and device registers directly.

/// Where the image is linked (`--image-base` in build.rs).
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Page holding the AP start-up trampoline; the STARTUP IPI vector is its page number.
///
/// Inside the VMM's boot stack page (stack top 0x8ff0), which nothing uses once the boot
/// CPU has switched to its own stack in its first instructions; RAM in every e820 map of
/// the Linux boot protocol (conventional memory up to 0x9fc00).
pub const TRAMPOLINE: u64 = 0x8000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// IOAPIC registers.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Start of the legacy VGA / ROM area, never RAM.
pub const LEGACY_HOLE_START: u64 = 0xa_0000;
/// End of the legacy area (1 MiB).
pub const LEGACY_HOLE_END: u64 = 0x10_0000;
/// Physical addresses the page tables can map (one PDPT: 512 GiB).
pub const MAPPABLE_END: u64 = 512 << 30;

/// Most CPUs the guest supports: the MP table has 8-bit APIC ids.
pub const MAX_CPUS: usize = 256;

/// CPL3 stack of each CPU.
pub const USER_STACK_SIZE: usize = 64 * 1024;
/// CPL0 stack of each CPU (TSS.RSP0): interrupt and gate frames only.
pub const KERNEL_STACK_SIZE: usize = 8 * 1024;
/// Double-fault stack of each CPU (TSS.IST1).
pub const FAULT_STACK_SIZE: usize = 4 * 1024;

/// Control register values set by the entry code of every CPU.
pub mod cr {
    /// CR0: PG | WP | NE | ET | MP | PE (EM, TS, CD, NW clear: SSE usable, caches on).
    pub const CR0: u32 = 0x8001_0033;
    /// CR4: PAE | OSFXSR | OSXMMEXCPT, nothing else (no SMEP/SMAP: CPL0 code lives in
    /// user-accessible pages and reads user buffers).
    pub const CR4: u32 = 0x620;
    /// EFER: LME only (the APs set it; the VMM sets it for the boot CPU).
    pub const EFER_LME: u32 = 0x100;
}

/// First byte of the low window that is always mapped, whatever e820 says: everything
/// below 2 MiB except page 0 (zero page, command line, MP table, BIOS area, trampoline).
pub const LOW_WINDOW_START: u64 = 0x1000;
/// End of that window.
pub const LOW_WINDOW_END: u64 = 0x20_0000;
