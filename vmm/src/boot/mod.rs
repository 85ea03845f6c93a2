//! Booting: kernel, initrd, command line, and the tables the guest reads at entry.
//!
//! [`load`] writes everything into guest memory and returns the [`BootEntry`] the vCPUs
//! are set up from. Formats: ELF vmlinux (PVH or 64-bit boot protocol) and bzImage
//! (64-bit boot protocol); see [`kernel`].

pub mod cmdline;
pub mod cpu_tables;
pub mod e820;
pub mod initrd;
pub mod kernel;
pub mod mptable;
pub mod pvh;
pub mod zero_page;

use std::path::PathBuf;

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use kernel::{EntryProtocol, KernelImage};

use crate::layout;

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: kernel::KernelImage,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// How the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    /// Entry point.
    pub entry: GuestAddress,
    /// Protocol.
    pub protocol: EntryProtocol,
    /// The zero page (Linux64, in RSI) or start info (PVH, in EBX).
    pub boot_info: GuestAddress,
}

/// Errors while preparing the boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image is unusable.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The command line is unusable.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The initrd cannot be read.
    #[error("reading initrd {path}")]
    Initrd {
        /// The initrd path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path} is {size} bytes but only {room} bytes of RAM are free above the kernel; use a larger --memory")]
    InitrdTooBig {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room available.
        room: u64,
    },
    /// A CPU count the MP table cannot describe.
    #[error("{0} vCPUs cannot be described by an MP table (1 to 254)")]
    BadCpuCount(u32),
    /// More memory-map entries than the boot protocol holds.
    #[error("{0} e820 entries do not fit in the boot protocol's table")]
    TooManyE820Entries(usize),
    /// Writing a boot structure into guest memory failed.
    #[error("writing the {0} into guest memory")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Loads the kernel and initrd, writes the command line, e820 map, MP table and the
/// protocol's boot information into `mem` (`mem_size` bytes of RAM, `cpus` vCPUs).
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cpus: u8,
    cfg: &BootConfig,
) -> Result<BootEntry, BootError> {
    let ram_end = layout::ram_end_below_gap(mem_size);
    let kernel = kernel::load(mem, &cfg.kernel, ram_end)?;
    let cmdline_max = match &kernel.setup_header {
        // Protocol 2.06+ states its limit (without the NUL); older ones allow 255.
        Some(hdr) if hdr.version >= 0x0206 => hdr.cmdline_size as usize + 1,
        Some(_) => 256,
        None => layout::CMDLINE_MAX_SIZE,
    };
    let cmdline_addr = cmdline::write(mem, &cfg.cmdline, cmdline_max)?;
    let initrd = match &cfg.initrd {
        Some(path) => {
            let limit = initrd_limit(&kernel, ram_end);
            Some(initrd::load(mem, path, kernel.end, limit)?)
        }
        None => None,
    };
    let e820 = e820::memory_map(mem_size);
    mptable::write(mem, cpus)?;
    let boot_info = match kernel.protocol {
        EntryProtocol::Linux64 => {
            let params = zero_page::build(
                kernel.setup_header,
                cmdline_addr,
                cfg.cmdline.len() + 1,
                initrd,
                &e820,
            )?;
            zero_page::write(mem, params)?
        }
        EntryProtocol::Pvh => pvh::write(mem, cmdline_addr, initrd, &e820)?,
    };
    Ok(BootEntry {
        entry: kernel.entry,
        protocol: kernel.protocol,
        boot_info,
    })
}

/// The initrd must end below the kernel's `initrd_addr_max` (bzImage) and RAM's end.
fn initrd_limit(kernel: &kernel::LoadedKernel, ram_end: u64) -> u64 {
    match &kernel.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => ram_end.min(u64::from(hdr.initrd_addr_max) + 1),
        _ => ram_end,
    }
}
