//! Booting: kernel, initrd, command line, and the tables the guest reads at entry.
//!
//! [`load`] writes everything (kernel, initrd, command line, MP table, ACPI tables, zero page
//! or PVH start info) into guest memory and returns the [`BootEntry`] the vCPUs
//! are set up from. Formats: ELF vmlinux (PVH or 64-bit boot protocol) and bzImage
//! (64-bit boot protocol); see [`kernel`].

pub mod acpi;
pub mod cmdline;
pub mod cpu_tables;
pub mod dsdt;
pub mod dsdt_pci;
pub mod e820;
pub mod initrd;
pub mod kernel;
pub mod mcfg;
pub mod mptable;
pub mod pvh;
pub mod zero_page;

use std::path::PathBuf;

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use kernel::{EntryProtocol, KernelImage};

use crate::layout;
use crate::virtio::MmioSlot;

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: kernel::KernelImage,
    /// Optional initial ramdisk.
    pub initrd: Option<crate::config::HostFile>,
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
    /// A CPU count the MP and ACPI tables cannot describe.
    #[error("{0} vCPUs cannot be described by the MP and ACPI tables (1 to 254)")]
    BadCpuCount(u32),
    /// A virtio-mmio slot the DSDT cannot describe (a bug in the slot assignment).
    #[error("virtio-mmio device {index} at {base:#x} cannot be described in the DSDT (Memory32Fixed needs its window below 4 GiB, the device name an index below 256)")]
    AcpiDevice {
        /// The slot's index.
        index: usize,
        /// Its base address.
        base: u64,
    },
    /// The ACPI tables do not fit below the MP table.
    #[error("the ACPI tables for {cpus} vCPUs take {size} bytes but only {room} bytes are reserved for them")]
    AcpiTablesTooBig {
        /// The vCPU count.
        cpus: u8,
        /// Size of the tables.
        size: usize,
        /// Room reserved for them.
        room: u64,
    },
    /// More memory-map entries than the boot protocol holds.
    #[error("{0} e820 entries do not fit in the boot protocol's table")]
    TooManyE820Entries(usize),
    /// Writing a boot structure into guest memory failed.
    #[error("writing the {0} into guest memory")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Opens the kernel and initrd files that are not open yet (the vmm run by hand, with
/// paths): before the jail, which takes the filesystem away; they are read in [`load`].
pub fn open_files(cfg: &mut BootConfig) -> Result<(), BootError> {
    if let kernel::KernelImage::File(f) = &mut cfg.kernel {
        if f.opened.is_none() {
            let file = f.open_read().map_err(|source| kernel::KernelError::Read {
                path: f.path.clone(),
                source,
            })?;
            f.opened = Some(std::sync::Arc::new(file));
        }
    }
    if let Some(f) = &mut cfg.initrd {
        if f.opened.is_none() {
            let file = f.open_read().map_err(|source| BootError::Initrd {
                path: f.path.clone(),
                source,
            })?;
            f.opened = Some(std::sync::Arc::new(file));
        }
    }
    Ok(())
}

/// Loads the kernel and initrd, writes the command line, e820 map, MP table, ACPI tables and
/// the protocol's boot information into `mem` (`mem_size` bytes of RAM, `cpus` vCPUs, the
/// virtio-mmio devices at `mmio`, which the DSDT describes; the command line already names
/// them; with `transport` PCI, the host bridge and its ECAM instead).
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cpus: u8,
    cfg: &BootConfig,
    mmio: &[MmioSlot],
    transport: crate::config::Transport,
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
    let e820 = e820::memory_map(mem_size, transport);
    mptable::write(mem, cpus)?;
    let rsdp = acpi::write(mem, cpus, mmio, transport)?;
    let boot_info = match kernel.protocol {
        EntryProtocol::Linux64 => {
            let params = zero_page::build(
                kernel.setup_header,
                cmdline_addr,
                cfg.cmdline.len() + 1,
                initrd,
                &e820,
                rsdp,
            )?;
            zero_page::write(mem, params)?
        }
        EntryProtocol::Pvh => pvh::write(mem, cmdline_addr, initrd, &e820, rsdp)?,
    };
    Ok(BootEntry {
        entry: kernel.entry,
        protocol: kernel.protocol,
        boot_info,
    })
}

/// The byte that makes `bytes` sum to zero: the checksum of BIOS-era tables (MP, ACPI).
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The initrd must end below the kernel's `initrd_addr_max` (bzImage) and RAM's end.
fn initrd_limit(kernel: &kernel::LoadedKernel, ram_end: u64) -> u64 {
    match &kernel.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => ram_end.min(u64::from(hdr.initrd_addr_max) + 1),
        _ => ram_end,
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn load_writes_the_acpi_tables_and_tells_the_kernel_where() {
        let mem_size = 64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let cfg = BootConfig {
            kernel: KernelImage::Embedded("test guest", crate::TEST_GUEST),
            initrd: None,
            cmdline: "console=ttyS0".to_string(),
        };
        let slots: Vec<_> = (0..2).filter_map(crate::virtio::slot).collect();
        let entry = load(&mem, mem_size, 4, &cfg, &slots, Default::default()).unwrap();
        // The test guest uses the 64-bit protocol: acpi_rsdp_addr is at 0x070 of the zero page.
        assert_eq!(entry.protocol, EntryProtocol::Linux64);
        let rsdp: u64 = mem
            .read_obj(GuestAddress(entry.boot_info.0 + 0x70))
            .unwrap();
        assert_eq!(rsdp, layout::ACPI_START);
        let tables = acpi::build(4, &slots, Default::default()).unwrap();
        let mut written = vec![0; tables.len()];
        mem.read_slice(&mut written, GuestAddress(rsdp)).unwrap();
        assert_eq!(written, tables);
        // The MP table is still there, untouched by the ACPI tables.
        let mp = mptable::build(4).unwrap();
        let mut written = vec![0; mp.len()];
        mem.read_slice(&mut written, GuestAddress(mptable::MPTABLE_START))
            .unwrap();
        assert_eq!(written, mp);
    }

    /// With PCI, the tables written are the PCI ones (with the MCFG) and the zero page's e820
    /// map reserves the ECAM.
    #[test]
    fn load_on_pci_writes_the_pci_tables_and_reserves_the_ecam() {
        use crate::config::Transport;
        let mem_size = 64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let cfg = BootConfig {
            kernel: KernelImage::Embedded("test guest", crate::TEST_GUEST),
            initrd: None,
            cmdline: "console=ttyS0".to_string(),
        };
        let entry = load(&mem, mem_size, 2, &cfg, &[], Transport::Pci).unwrap();
        let tables = acpi::build(2, &[], Transport::Pci).unwrap();
        let mut written = vec![0; tables.len()];
        mem.read_slice(&mut written, GuestAddress(layout::ACPI_START))
            .unwrap();
        assert_eq!(written, tables);
        assert_ne!(tables, acpi::build(2, &[], Transport::Mmio).unwrap());
        // boot_params: e820_entries at 0x1e8, the table (20-byte entries) at 0x2d0.
        let zp = entry.boot_info.0;
        let count: u8 = mem.read_obj(GuestAddress(zp + 0x1e8)).unwrap();
        let entries: Vec<(u64, u64, u32)> = (0..u64::from(count))
            .map(|i| {
                let at = zp + 0x2d0 + 20 * i;
                (
                    mem.read_obj(GuestAddress(at)).unwrap(),
                    mem.read_obj(GuestAddress(at + 8)).unwrap(),
                    mem.read_obj(GuestAddress(at + 16)).unwrap(),
                )
            })
            .collect();
        assert!(
            entries.contains(&(
                layout::PCI_ECAM_START,
                layout::PCI_ECAM_SIZE,
                e820::E820_RESERVED
            )),
            "{entries:x?}"
        );
    }
}
