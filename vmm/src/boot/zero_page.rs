//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::BootError;
use crate::layout;

/// `boot_flag` value of a valid setup header.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: "undefined" boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Alignment the kernel was built for (what a vmlinux expects when no header says so).
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

/// `boot_params` as plain bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);

// SAFETY: boot_params is repr(C, packed) plain data (integers and arrays of integers) with
// no padding and no invalid bit patterns.
unsafe impl ByteValued for BootParams {}

/// Where the initrd was put.
#[derive(Clone, Copy, Debug, Default)]
pub struct InitrdPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Builds the zero page; `acpi_rsdp` is where the ACPI RSDP is.
pub fn build(
    header: Option<setup_header>,
    cmdline_addr: GuestAddress,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    acpi_rsdp: GuestAddress,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = cmdline_addr.0 as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
        params.ext_ramdisk_image = (rd.addr >> 32) as u32;
        params.ext_ramdisk_size = (rd.size >> 32) as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(e820.len()));
    }
    let mut table = params.e820_table;
    for (slot, e) in table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_table = table;
    params.e820_entries = e820.len() as u8;
    params.acpi_rsdp_addr = acpi_rsdp.0;
    Ok(params)
}

/// Writes the zero page at [`layout::ZERO_PAGE_START`].
pub fn write(mem: &GuestMemoryMmap, params: boot_params) -> Result<GuestAddress, BootError> {
    let addr = GuestAddress(layout::ZERO_PAGE_START);
    mem.write_obj(BootParams(params), addr)
        .map_err(|e| BootError::GuestWrite("zero page", e))?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820;

    #[test]
    fn zero_page_fields_at_their_abi_offsets() {
        let map = e820::memory_map(256 << 20, Default::default());
        let rd = InitrdPlacement {
            addr: 0x0f00_0000,
            size: 0x1234,
        };
        let rsdp = GuestAddress(0xe_0000);
        let params = build(None, GuestAddress(0x20000), 42, Some(rd), &map, rsdp).unwrap();
        let bytes = BootParams(params);
        let b = bytes.as_slice();
        assert_eq!(b.len(), 4096);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(b[0x1e8], 3, "e820_entries");
        assert_eq!(u32_at(0x228), 0x20000, "cmd_line_ptr");
        assert_eq!(u32_at(0x238), 42, "cmdline_size");
        assert_eq!(u64_at(0x070), 0xe_0000, "acpi_rsdp_addr");
        assert_eq!(u32_at(0x218), 0x0f00_0000, "ramdisk_image");
        assert_eq!(u32_at(0x21c), 0x1234, "ramdisk_size");
        assert_eq!(b[0x210], 0xff, "type_of_loader");
        assert_eq!(u32_at(0x202), KERNEL_HDR_MAGIC);
        assert_eq!(&b[0x1fe..0x200], &[0x55, 0xaa]);
        // e820_table at 0x2d0, 20-byte entries.
        assert_eq!(u64_at(0x2d0), 0);
        assert_eq!(u64_at(0x2d0 + 8), 0x9fc00);
        assert_eq!(u32_at(0x2d0 + 16), 1);
        assert_eq!(u64_at(0x2d0 + 40), 0x100000);
        assert_eq!(u64_at(0x2d0 + 48), (256 << 20) - 0x100000);
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            init_size: 0x1000,
            ..Default::default()
        };
        let p = build(
            Some(hdr),
            GuestAddress(0x20000),
            1,
            None,
            &[],
            GuestAddress(0),
        )
        .unwrap();
        assert_eq!({ p.hdr.setup_sects }, 27);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
    }

    #[test]
    fn too_many_e820_entries() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            200
        ];
        assert!(matches!(
            build(None, GuestAddress(0), 0, None, &map, GuestAddress(0)),
            Err(BootError::TooManyE820Entries(200))
        ));
    }
}
