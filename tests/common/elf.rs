//! Hand-made ELF files for the bad-input tests: the smallest x86-64 executables whose
//! headers say what a test needs (a segment at some address, a file cut short).

/// An ELF64 x86-64 ET_EXEC with one PT_LOAD segment of `filesz` bytes from file offset
/// 0x1000, loaded at `paddr` with `memsz` bytes; the file is `file_len` bytes long.
pub fn elf_with_segment(paddr: u64, filesz: u64, memsz: u64, file_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; file_len.max(64 + 56)];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut f[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
    ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
    ph[32..40].copy_from_slice(&filesz.to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    f.truncate(file_len);
    f
}

/// An ELF64 executable whose one segment, loaded and entered at `paddr`, is `code`.
pub fn elf_with_code(paddr: u64, code: &[u8]) -> Vec<u8> {
    let len = code.len() as u64;
    let mut f = elf_with_segment(paddr, len, len, 0x1000 + code.len());
    f[0x1000..].copy_from_slice(code);
    f
}
