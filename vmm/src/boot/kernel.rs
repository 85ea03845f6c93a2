//! Kernel images: recognising them, checking them against guest memory, loading them.
//!
//! Two formats are accepted: an ELF `vmlinux` (entered through PVH when it carries the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note, otherwise through the Linux 64-bit boot protocol at its
//! ELF entry), and a `bzImage` (entered through the 64-bit boot protocol at its
//! `startup_64`, 0x200 past the protected-mode code). Loading itself is linux-loader's; this
//! module checks the image first so that a bad file gets a precise error rather than a
//! generic "could not read kernel image".

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::layout;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
const ELF64_EHDR_SIZE: u64 = 64;
const ELF64_PHDR_SIZE: u64 = 56;
/// "HdrS", the setup header magic of a bzImage.
const BZIMAGE_MAGIC: u32 = 0x5372_6448;
/// Offset of the setup header's magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// `xloadflags` bit: the kernel has a 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryProtocol {
    /// Linux 64-bit boot protocol: long mode, zero page in RSI.
    Linux64,
    /// PVH: 32-bit protected mode without paging, `hvm_start_info` in EBX.
    Pvh,
}

/// A kernel placed in guest memory.
#[derive(Debug)]
pub struct LoadedKernel {
    /// Entry point (guest physical).
    pub entry: GuestAddress,
    /// How to enter it.
    pub protocol: EntryProtocol,
    /// First byte past the kernel image in guest memory.
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Errors while recognising or loading a kernel image.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The file cannot be opened or read.
    #[error("reading kernel image {path}")]
    Read {
        /// The kernel path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{0}: not a kernel image (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(PathBuf),
    /// An ELF for another machine or class.
    #[error("{path}: not a 64-bit x86 executable ELF ({why})")]
    WrongElf {
        /// The kernel path.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// The file ends before a part its headers describe.
    #[error(
        "{path}: truncated kernel image: {what} needs bytes up to {needed}, the file has {len}"
    )]
    Truncated {
        /// The kernel path.
        path: PathBuf,
        /// Which part.
        what: String,
        /// End offset that part needs.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// A segment below 1 MiB would overwrite boot structures.
    #[error("{path}: kernel segment at {addr:#x} is below 1 MiB, where boot structures live")]
    SegmentTooLow {
        /// The kernel path.
        path: PathBuf,
        /// Segment address.
        addr: u64,
    },
    /// The kernel does not fit in guest memory.
    #[error("{path}: kernel needs guest memory up to {end:#x} ({end_mib} MiB) but RAM below the MMIO gap ends at {ram_end:#x}; use a larger --memory")]
    TooSmall {
        /// The kernel path.
        path: PathBuf,
        /// End of the kernel.
        end: u64,
        /// The same in MiB, rounded up.
        end_mib: u64,
        /// End of RAM.
        ram_end: u64,
    },
    /// A bzImage without a 64-bit entry point.
    #[error("{0}: bzImage has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64)")]
    No64BitEntry(PathBuf),
    /// linux-loader refused the image.
    #[error("{path}: loading kernel image")]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: linux_loader::loader::Error,
    },
}

/// Where the kernel image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// A file on the host.
    File(crate::config::HostFile),
    /// An image embedded in the binary (the test guest), with a name for messages.
    Embedded(&'static str, &'static [u8]),
}

impl KernelImage {
    /// The name used in messages.
    pub fn display_path(&self) -> PathBuf {
        match self {
            KernelImage::File(f) => f.path.clone(),
            KernelImage::Embedded(name, _) => PathBuf::from(name),
        }
    }
}

/// What a kernel image is read from: a reader that can also read straight into guest
/// memory.
trait Image: Read + ReadVolatile + Seek {}
impl<T: Read + ReadVolatile + Seek> Image for T {}

/// Loads `image` into `mem`, whose RAM below the MMIO gap ends at `ram_end`.
pub fn load(
    mem: &GuestMemoryMmap,
    image: &KernelImage,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let path_buf = image.display_path();
    let path = path_buf.as_path();
    let read_err = |source| KernelError::Read {
        path: path.to_owned(),
        source,
    };
    match image {
        KernelImage::File(f) => {
            let mut file = f.open_read().map_err(read_err)?;
            let len = file.metadata().map_err(read_err)?.len();
            load_image(mem, path, &mut file, len, ram_end)
        }
        // Read in place (an embedded image was once copied into a memfd first: 0.7 ms of
        // CPU per start for the test guest).
        KernelImage::Embedded(_, bytes) => load_image(
            mem,
            path,
            &mut Cursor::new(*bytes),
            bytes.len() as u64,
            ram_end,
        ),
    }
}

/// Loads the kernel image `file` (`len` bytes) into `mem`.
fn load_image(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut impl Image,
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_owned(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut head = vec![0u8; 0x400.min(len as usize)];
    file.read_exact(&mut head).map_err(read_err)?;
    if head.starts_with(ELF_MAGIC) {
        load_elf(mem, path, file, len, ram_end)
    } else if is_bzimage(&head) {
        load_bzimage(mem, path, file, &head, len, ram_end)
    } else {
        Err(KernelError::NotAKernel(path.to_owned()))
    }
}

fn is_bzimage(head: &[u8]) -> bool {
    let off = BZIMAGE_MAGIC_OFFSET as usize;
    head.get(off..off + 4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]) == BZIMAGE_MAGIC)
        .unwrap_or(false)
}

fn load_elf(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut impl Image,
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let segments = check_elf(path, file, len)?;
    check_segments(path, &segments, ram_end)?;
    let result =
        Elf::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START))).map_err(|source| {
            KernelError::Load {
                path: path.to_owned(),
                source,
            }
        })?;
    let (entry, protocol) = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (addr, EntryProtocol::Pvh),
        _ => (result.kernel_load, EntryProtocol::Linux64),
    };
    Ok(LoadedKernel {
        entry,
        protocol,
        end: result.kernel_end,
        setup_header: None,
    })
}

/// A PT_LOAD segment: guest-physical start and in-memory size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    paddr: u64,
    memsz: u64,
}

/// Reads the ELF and program headers and checks that the file holds what they describe.
fn check_elf(path: &Path, file: &mut impl Image, len: u64) -> Result<Vec<Segment>, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_owned(),
        source,
    };
    let truncated = |what: &str, needed: u64| KernelError::Truncated {
        path: path.to_owned(),
        what: what.to_owned(),
        needed,
        len,
    };
    if len < ELF64_EHDR_SIZE {
        return Err(truncated("the ELF header", ELF64_EHDR_SIZE));
    }
    let mut ehdr = [0u8; ELF64_EHDR_SIZE as usize];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    file.read_exact(&mut ehdr).map_err(read_err)?;
    let wrong = |why| KernelError::WrongElf {
        path: path.to_owned(),
        why,
    };
    if ehdr[4] != ELFCLASS64 {
        return Err(wrong("not ELFCLASS64"));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(wrong("not little-endian"));
    }
    if u16_at(&ehdr, 18) != EM_X86_64 {
        return Err(wrong("e_machine is not x86-64"));
    }
    if u16_at(&ehdr, 16) != ET_EXEC {
        return Err(wrong("e_type is not ET_EXEC"));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    if phentsize != ELF64_PHDR_SIZE {
        return Err(wrong("unexpected program header size"));
    }
    let ph_end = phnum
        .checked_mul(ELF64_PHDR_SIZE)
        .and_then(|n| n.checked_add(phoff))
        .unwrap_or(u64::MAX);
    if ph_end > len {
        return Err(truncated("the program header table", ph_end));
    }
    let mut table = vec![0u8; (phnum * ELF64_PHDR_SIZE) as usize];
    file.seek(SeekFrom::Start(phoff)).map_err(read_err)?;
    file.read_exact(&mut table).map_err(read_err)?;
    let mut segments = Vec::new();
    for (i, ph) in table.chunks_exact(ELF64_PHDR_SIZE as usize).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        let end = offset.saturating_add(filesz);
        if end > len {
            return Err(truncated(&format!("program segment {i}"), end));
        }
        if filesz > memsz {
            return Err(wrong("a segment's file size exceeds its memory size"));
        }
        segments.push(Segment { paddr, memsz });
    }
    if segments.is_empty() {
        return Err(wrong("no loadable segment"));
    }
    Ok(segments)
}

fn check_segments(path: &Path, segments: &[Segment], ram_end: u64) -> Result<(), KernelError> {
    for s in segments {
        if s.paddr < layout::HIMEM_START {
            return Err(KernelError::SegmentTooLow {
                path: path.to_owned(),
                addr: s.paddr,
            });
        }
        let end = s.paddr.saturating_add(s.memsz);
        if end > ram_end {
            return Err(too_small(path, end, ram_end));
        }
    }
    Ok(())
}

fn too_small(path: &Path, end: u64, ram_end: u64) -> KernelError {
    KernelError::TooSmall {
        path: path.to_owned(),
        end,
        end_mib: end.div_ceil(1 << 20),
        ram_end,
    }
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut impl Image,
    head: &[u8],
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    // Check the fit first, from the header: the protected-mode code loads at code32_start,
    // and its decompressor needs init_size bytes from there to run in place.
    let setup_sects = match head.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => u64::from(n),
    };
    let code32_start = u64::from(u32_at(head, 0x214));
    let init_size = u64::from(u32_at(head, 0x260));
    let kernel_size = len.saturating_sub((setup_sects + 1) * 512);
    let need_end = code32_start.saturating_add(kernel_size.max(init_size));
    if need_end > ram_end {
        return Err(too_small(path, need_end, ram_end));
    }
    let result = BzImage::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START))).map_err(
        |source| KernelError::Load {
            path: path.to_owned(),
            source,
        },
    )?;
    let hdr = result
        .setup_header
        .ok_or_else(|| KernelError::NotAKernel(path.to_owned()))?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelError::No64BitEntry(path.to_owned()));
    }
    Ok(LoadedKernel {
        entry: GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
        protocol: EntryProtocol::Linux64,
        end: need_end,
        setup_header: Some(hdr),
    })
}

/// Little-endian integers from header bytes; missing bytes (a short file) read as 0.
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([byte(b, off), byte(b, off + 1)])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([
        byte(b, off),
        byte(b, off + 1),
        byte(b, off + 2),
        byte(b, off + 3),
    ])
}

fn byte(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}
