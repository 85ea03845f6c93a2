//! Kernel image checks: every malformed image gets its own precise error before anything
//! is loaded, and good images load where their headers say.

#[path = "../../tests/common/elf.rs"]
mod elf;

use bulkhead_vmm::boot::kernel::{load, EntryProtocol, KernelError, KernelImage};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RAM_END: u64 = 32 << 20;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_END as usize)]).unwrap()
}

fn image(bytes: Vec<u8>) -> KernelImage {
    KernelImage::Embedded("test image", Box::leak(bytes.into_boxed_slice()))
}

fn load_bytes(bytes: Vec<u8>) -> Result<bulkhead_vmm::boot::kernel::LoadedKernel, KernelError> {
    load(&mem(), &image(bytes), RAM_END)
}

#[test]
fn elf_loads_at_its_physical_address() {
    let m = mem();
    let k = load(
        &m,
        &image(elf::elf_with_code(0x20_0000, b"\x90\x90\xf4")),
        RAM_END,
    )
    .unwrap();
    assert_eq!(k.entry, GuestAddress(0x20_0000));
    assert_eq!(k.protocol, EntryProtocol::Linux64);
    assert_eq!(k.end, 0x20_0003);
    let mut b = [0u8; 3];
    m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&b, b"\x90\x90\xf4");
}

#[test]
fn wrong_class_machine_and_type() {
    let good = elf::elf_with_code(0x20_0000, &[0xf4]);
    let mut e = good.clone();
    e[4] = 1; // ELFCLASS32
    assert!(matches!(
        load_bytes(e),
        Err(KernelError::WrongElf {
            why: "not ELFCLASS64",
            ..
        })
    ));
    let mut e = good.clone();
    e[18] = 3; // EM_386
    assert!(matches!(
        load_bytes(e),
        Err(KernelError::WrongElf {
            why: "e_machine is not x86-64",
            ..
        })
    ));
    let mut e = good.clone();
    e[16] = 3; // ET_DYN
    assert!(matches!(
        load_bytes(e),
        Err(KernelError::WrongElf {
            why: "e_type is not ET_EXEC",
            ..
        })
    ));
    let mut e = good;
    e[64] = 4; // the only segment becomes PT_NOTE
    assert!(matches!(
        load_bytes(e),
        Err(KernelError::WrongElf {
            why: "no loadable segment",
            ..
        })
    ));
}

#[test]
fn truncated_headers_and_segments() {
    assert!(matches!(
        load_bytes(b"\x7fELF\x02\x01".to_vec()),
        Err(KernelError::Truncated {
            needed: 64,
            len: 6,
            ..
        })
    ));
    assert!(matches!(
        load_bytes(elf::elf_with_segment(0x20_0000, 0, 0, 100)),
        Err(KernelError::Truncated {
            needed: 120,
            len: 100,
            ..
        })
    ));
    let e = load_bytes(elf::elf_with_segment(0x20_0000, 0x1000, 0x1000, 0x1800)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "test image: truncated kernel image: program segment 0 needs bytes up to 8192, the file has 6144"
    );
}

#[test]
fn segment_sizes_and_addresses() {
    assert!(matches!(
        load_bytes(elf::elf_with_segment(0x20_0000, 0x100, 0x10, 0x1100)),
        Err(KernelError::WrongElf {
            why: "a segment's file size exceeds its memory size",
            ..
        })
    ));
    assert!(matches!(
        load_bytes(elf::elf_with_segment(0x8000, 0x10, 0x10, 0x1010)),
        Err(KernelError::SegmentTooLow { addr: 0x8000, .. })
    ));
    assert!(matches!(
        load_bytes(elf::elf_with_segment(RAM_END - 0x10, 0x10, 0x20, 0x1010)),
        Err(KernelError::TooSmall { .. })
    ));
    // An address so large that adding the size overflows is "too small", not a panic.
    assert!(matches!(
        load_bytes(elf::elf_with_segment(u64::MAX - 4, 0x10, 0x10, 0x1010)),
        Err(KernelError::TooSmall { .. })
    ));
}

#[test]
fn huge_program_header_count_is_truncation_not_allocation() {
    let mut e = elf::elf_with_code(0x20_0000, &[0xf4]);
    e[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    assert!(matches!(load_bytes(e), Err(KernelError::Truncated { .. })));
}

#[test]
fn neither_elf_nor_bzimage() {
    assert!(matches!(
        load_bytes(vec![0u8; 4096]),
        Err(KernelError::NotAKernel(_))
    ));
    assert!(matches!(
        load_bytes(vec![]),
        Err(KernelError::NotAKernel(_))
    ));
}

/// A bzImage header with boot protocol 2.15, the 64-bit entry flag as given, one setup
/// sector and a protected-mode part of `payload` bytes.
fn bzimage(xloadflags: u16, payload: usize) -> Vec<u8> {
    let mut b = vec![0u8; 1024 + payload];
    b[0x1f1] = 1; // setup_sects
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x211] = 1; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    b[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
    b
}

#[test]
fn bzimage_is_entered_at_startup_64() {
    let k = load_bytes(bzimage(1, 4096)).unwrap();
    assert_eq!(k.protocol, EntryProtocol::Linux64);
    assert_eq!(k.entry, GuestAddress(0x10_0200));
    assert_eq!(
        k.end,
        0x10_0000 + 0x40_0000,
        "init_size reserved for the decompressor"
    );
    assert_eq!(k.setup_header.map(|h| h.cmdline_size), Some(2047));
}

#[test]
fn bzimage_without_64_bit_entry_is_refused() {
    assert!(matches!(
        load_bytes(bzimage(0, 4096)),
        Err(KernelError::No64BitEntry(_))
    ));
}

#[test]
fn bzimage_larger_than_memory_names_the_size_needed() {
    let e = load(&mem(), &image(bzimage(1, 4096)), 0x20_0000).unwrap_err();
    assert_eq!(
        e.to_string(),
        "test image: kernel needs guest memory up to 0x500000 (5 MiB) but RAM below the MMIO gap ends at 0x200000; use a larger --memory"
    );
}

#[test]
fn truncated_bzimage_header_is_not_a_kernel() {
    let mut b = bzimage(1, 0);
    b.truncate(0x210);
    assert!(load_bytes(b).is_err());
}
