//! The GDT (kernel and user segments, one TSS per CPU) and the TSSes.
//!
//! Both live in `.data` rather than `.bss`: the boot CPU's entry code fills in and loads
//! its TSS before the CPL3 entry code clears `.bss`. The boot CPU's TSS descriptor is
//! written by the entry assembly (`entry.rs`); the APs' by [`install_tss`] before they
//! are started.

use crate::layout::MAX_CPUS;
use crate::sync::RawCell;

/// Kernel code segment (64-bit, DPL 0).
pub const KERNEL_CODE: u16 = 0x08;
/// Kernel data segment.
pub const KERNEL_DATA: u16 = 0x10;
/// User data segment selector with RPL 3.
pub const USER_DATA: u16 = 0x18 | 3;
/// User code segment selector (64-bit) with RPL 3.
pub const USER_CODE: u16 = 0x20 | 3;
/// Selector of CPU 0's TSS; CPU `n` uses `TSS_BASE + 16 * n` (TSS descriptors are 16 bytes).
pub const TSS_BASE: u16 = 0x28;

/// GDT entries: 5 segments, then two 8-byte slots per TSS.
const ENTRIES: usize = 5 + 2 * MAX_CPUS;
/// Value for the limit field of the GDT register.
pub const GDT_LIMIT: u16 = (ENTRIES * 8 - 1) as u16;

/// The GDT, shared by every CPU.
#[link_section = ".data.gdt"]
pub static GDT: RawCell<[u64; ENTRIES]> = RawCell::new(initial_gdt());

const fn initial_gdt() -> [u64; ENTRIES] {
    let mut gdt = [0u64; ENTRIES];
    gdt[1] = 0x00af_9a00_0000_ffff; // kernel code: present, DPL 0, L
    gdt[2] = 0x00cf_9200_0000_ffff; // kernel data: present, DPL 0, writable
    gdt[3] = 0x00cf_f200_0000_ffff; // user data: present, DPL 3, writable
    gdt[4] = 0x00af_fa00_0000_ffff; // user code: present, DPL 3, L
    gdt
}

/// A 64-bit task-state segment (Intel SDM vol. 3, 8.7), kept as 26 dwords because its
/// 64-bit fields are only 4-byte aligned.
#[repr(C, align(16))]
pub struct Tss([u32; 26]);

/// Size of the TSS the descriptor covers; no I/O permission bitmap follows it.
const TSS_SIZE: u32 = 104;

impl Tss {
    const fn new() -> Self {
        let mut words = [0u32; 26];
        // I/O map base at the end of the TSS: no bitmap, port I/O from CPL3 faults.
        words[25] = TSS_SIZE << 16;
        Self(words)
    }
}

/// One TSS per CPU, indexed by CPU number (0 = boot CPU).
#[link_section = ".data.tss"]
pub static TSSES: RawCell<[Tss; MAX_CPUS]> = RawCell::new([const { Tss::new() }; MAX_CPUS]);

/// Byte offset of RSP0 in a TSS (used by the entry assembly too).
pub const TSS_RSP0: usize = 4;
/// Byte offset of IST1 in a TSS.
pub const TSS_IST1: usize = 36;

/// Fill CPU `cpu`'s TSS (`rsp0`: its CPL0 stack top; `ist1`: its double-fault stack top)
/// and write its descriptor into the GDT, ready for `ltr`.
///
/// For APs only (`0 < cpu < MAX_CPUS`), by the boot CPU before starting them.
pub fn install_tss(cpu: usize, rsp0: u64, ist1: u64) {
    assert!(cpu > 0 && cpu < MAX_CPUS, "TSS index {cpu} out of range");
    // SAFETY: `cpu` is in bounds; CPU `cpu` is not running yet, and only the boot CPU
    // writes TSSes and the GDT's TSS slots, so nothing else accesses these words now.
    unsafe {
        let tss = core::ptr::addr_of_mut!((*TSSES.get())[cpu]);
        let words = core::ptr::addr_of_mut!((*tss).0).cast::<u32>();
        for (offset, value) in [(TSS_RSP0, rsp0), (TSS_IST1, ist1)] {
            words.add(offset / 4).write(value as u32);
            words.add(offset / 4 + 1).write((value >> 32) as u32);
        }
        let base = tss as u64;
        let low = u64::from(TSS_SIZE - 1)
            | (base & 0xff_ffff) << 16
            | 0x89 << 40 // present, DPL 0, available 64-bit TSS
            | (base >> 24 & 0xff) << 56;
        let slot = 5 + 2 * cpu;
        let gdt = GDT.get().cast::<u64>();
        gdt.add(slot).write_volatile(low);
        gdt.add(slot + 1).write_volatile(base >> 32);
    }
}
