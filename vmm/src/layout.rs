//! The guest-physical memory map of an x86-64 bulkhead VM.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (RAM)
//! 0x0000_0500  boot GDT            0x0000_0520  boot IDT (empty)
//! 0x0000_6000  PVH start info + memory map
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  boot page tables (PML4, PDPT, PD: identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: from here to 1 MiB is reserved in e820
//! 0x000a_0000  legacy VGA / ROM hole (not RAM)
//! 0x000e_0000  ACPI tables: RSDP, then DSDT, FADT, MADT, XSDT
//! 0x000f_0000  MP table
//! 0x0010_0000  high memory: kernel, initrd (RAM up to the MMIO gap)
//! 0xc000_0000  32-bit MMIO gap: PCI BAR window (to 0xd000_0000), virtio-mmio devices
//!              (0xd000_0000), PCI ECAM (0xe000_0000, 1 MiB), IOAPIC 0xfec0_0000,
//!              LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than 3 GiB
//! ```

/// Boot GDT (Linux boot protocol: __BOOT_CS = 0x10, __BOOT_DS = 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT: empty, interrupts stay disabled until the guest loads its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` followed by its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, then PDPT, then one PD.
pub const PML4_START: u64 = 0x9000;
/// Second level of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// Third level of the boot page tables (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line (including the NUL) for an ELF or PVH kernel: x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA: from here to [`HIMEM_START`] is reserved in e820 (the ACPI tables and
/// the MP table live in this range).
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory below 1 MiB.
pub const EBDA_END: u64 = 0xa0000;
/// The ACPI tables, starting with the RSDP (16-byte aligned, and inside 0xe0000..0x100000,
/// the range Linux scans for it when the boot protocol does not say where it is).
pub const ACPI_START: u64 = 0xe_0000;
/// The MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = 0xf_0000;
/// Room for the ACPI tables: up to the MP table.
pub const ACPI_MAX_SIZE: u64 = MPTABLE_START - ACPI_START;
/// First address of high memory: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Start of the PCI host bridge's 32-bit memory window, where virtio-pci BARs go (the
/// start of the MMIO gap, up to the virtio-mmio slots).
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
/// End (exclusive) of the PCI 32-bit memory window: 256 MiB.
pub const PCI_MMIO_END: u64 = 0xd000_0000;
/// The PCI host bridge's ECAM (enhanced configuration access) region: 4 KiB per function,
/// 1 MiB per bus; only bus 0 exists.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM region (bus 0 only).
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages inside the guest-physical space but outside RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (one page just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The boot structures must not overlap; checked when compiling.
const _: () = {
    assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
    assert!(PVH_INFO_START + 0x1000 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    // ACPI tables and MP table: inside the e820-reserved range, in this order, disjoint.
    assert!(EBDA_END <= ACPI_START);
    assert!(ACPI_START >= 0xe_0000 && ACPI_START % 16 == 0);
    assert!(ACPI_START + ACPI_MAX_SIZE <= MPTABLE_START);
    assert!(MPTABLE_START < HIMEM_START);
    assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 == KVM_TSS_ADDRESS);
    // PCI: window and ECAM inside the MMIO gap, clear of each other and of the APICs.
    assert!(MMIO_GAP_START <= PCI_MMIO_START && PCI_MMIO_END <= PCI_ECAM_START);
    assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
    assert!(KVM_TSS_ADDRESS > APIC_START);
};

/// Memory ranges `(start, size)` of guest RAM for `mem_size` bytes.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// Highest RAM address + 1 below the MMIO gap.
pub fn ram_end_below_gap(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        let total: u64 = r.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 4 << 30);
    }
}
