//! The GDT, empty IDT and identity page tables the boot vCPU starts with.
//!
//! The 64-bit boot protocol wants long mode with `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18)
//! flat segments and an identity mapping covering the kernel, zero page and command line;
//! PVH wants flat 32-bit segments with paging off. The guest replaces all of this early.

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kernel::EntryProtocol;
use super::BootError;
use crate::layout;

/// `__BOOT_CS`.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;
/// Task register selector.
const BOOT_TSS: u16 = 0x20;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry bits: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: 2 MiB page.
const PDE_PS: u64 = 0x80;

/// A GDT descriptor from its flags (access byte in bits 0..8, flags nibble in 12..16),
/// base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The four descriptors after the two null entries: code, data, TSS.
fn gdt(protocol: EntryProtocol) -> [u64; 5] {
    let code = match protocol {
        EntryProtocol::Linux64 => gdt_entry(0xa09b, 0, 0xfffff), // 64-bit, present, exec/read
        EntryProtocol::Pvh => gdt_entry(0xc09b, 0, 0xfffff),     // 32-bit, present, exec/read
    };
    [
        0,
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff), // data, read/write, 4 GiB
        gdt_entry(0x008b, 0, 0x67),    // busy TSS
    ]
}

fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: 0,
    }
}

/// Writes the GDT and IDT, and for the 64-bit protocol the page tables; fills `sregs`.
pub fn setup(
    mem: &GuestMemoryMmap,
    protocol: EntryProtocol,
    sregs: &mut kvm_sregs,
) -> Result<(), BootError> {
    let write_err = |e| BootError::GuestWrite("boot GDT and page tables", e);
    let table = gdt(protocol);
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + 8 * i as u64))
            .map_err(write_err)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(write_err)?;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment_from_gdt(table[2], BOOT_CS);
    let data = segment_from_gdt(table[3], BOOT_DS);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(table[4], BOOT_TSS);

    match protocol {
        EntryProtocol::Linux64 => {
            write_identity_map(mem).map_err(write_err)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first 1 GiB with 2 MiB pages.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj(
        layout::PDPTE_START | PTE_PRESENT_RW,
        GuestAddress(layout::PML4_START),
    )?;
    mem.write_obj(
        layout::PDE_START | PTE_PRESENT_RW,
        GuestAddress(layout::PDPTE_START),
    )?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PDE_PS | PTE_PRESENT_RW,
            GuestAddress(layout::PDE_START + i * 8),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entry_encodes_flat_code64() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn long_mode_sregs() {
        let m = mem();
        let mut s = kvm_sregs::default();
        setup(&m, EntryProtocol::Linux64, &mut s).unwrap();
        assert_eq!(s.cs.selector, BOOT_CS);
        assert_eq!((s.cs.l, s.cs.db, s.cs.limit), (1, 0, 0xffff_ffff));
        assert_eq!(s.ds.selector, BOOT_DS);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr3, layout::PML4_START);
        let pde: u64 = m.read_obj(GuestAddress(layout::PDE_START + 8)).unwrap();
        assert_eq!(pde, 0x20_0000 | 0x83);
        let gdt2: u64 = m
            .read_obj(GuestAddress(layout::BOOT_GDT_START + 16))
            .unwrap();
        assert_eq!(gdt2, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn pvh_sregs_are_32_bit_without_paging() {
        let mut s = kvm_sregs::default();
        setup(&mem(), EntryProtocol::Pvh, &mut s).unwrap();
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
    }
}
