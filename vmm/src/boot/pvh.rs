//! PVH boot: `hvm_start_info` and its memory map, for ELF kernels with a PVH entry note.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::zero_page::InitrdPlacement;
use super::BootError;
use crate::layout;

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 carries the memory map.
const START_INFO_VERSION: u32 = 1;

/// Writes the start info, the module list (initrd) and the memory map at
/// [`layout::PVH_INFO_START`], with `acpi_rsdp` as the ACPI RSDP's address; returns the start
/// info's address (for EBX).
pub fn write(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    acpi_rsdp: GuestAddress,
) -> Result<GuestAddress, BootError> {
    let info_addr = GuestAddress(layout::PVH_INFO_START);
    let modlist_addr = info_addr.0 + std::mem::size_of::<hvm_start_info>() as u64;
    let memmap_addr = modlist_addr + std::mem::size_of::<hvm_modlist_entry>() as u64;
    let memmap_bytes = e820.len() * std::mem::size_of::<hvm_memmap_table_entry>();
    if memmap_addr + memmap_bytes as u64 > layout::ZERO_PAGE_START {
        return Err(BootError::TooManyE820Entries(e820.len()));
    }
    let write_err = |e| BootError::GuestWrite("PVH start info", e);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr: cmdline_addr.0,
        memmap_paddr: memmap_addr,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: acpi_rsdp.0,
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let module = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))
            .map_err(write_err)?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
    }
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = memmap_addr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at)).map_err(write_err)?;
    }
    mem.write_obj(info, info_addr).map_err(write_err)?;
    Ok(info_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820;

    #[test]
    fn start_info_points_at_the_memory_map() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = e820::memory_map(256 << 20, Default::default());
        let rd = InitrdPlacement {
            addr: 0x800_0000,
            size: 4096,
        };
        let rsdp = GuestAddress(0xe_0000);
        let at = write(&m, GuestAddress(0x20000), Some(rd), &map, rsdp).unwrap();
        let info: hvm_start_info = m.read_obj(at).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        // The ABI offset of rsdp_paddr in struct hvm_start_info.
        let raw: u64 = m.read_obj(GuestAddress(at.0 + 32)).unwrap();
        assert_eq!(raw, 0xe_0000);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x800_0000, 4096));
        let last: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x100000, (256 << 20) - 0x100000, 1)
        );
    }
}
