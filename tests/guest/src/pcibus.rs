//! PCI bus 0 through the ECAM that the ACPI MCFG table gives (as a kernel finds it), and
//! where each virtio device is: a virtio-mmio register block or a virtio-pci function.
//!
//! The scan reads each device's vendor ID (one exit each), and of every virtio function
//! its header, capability list and BAR. BARs are used where the VMM put them: this guest,
//! like a kernel on firmware that assigned the BARs, does not move them (only
//! `pci-hostile` writes a BAR, to see what the VMM does with it).

use crate::acpi::Ecam;
use crate::mmio::{self, Mmio};
use crate::pci::{self, Bdf, Header, DEVICES, FUNCTIONS};
use crate::virtio::mmio::DeviceSpec;
use crate::virtio::pci::{layout, virtio_type, Layout, LayoutError};
use core::fmt;

/// Most PCI functions remembered by a scan.
pub const MAX_FUNCTIONS: usize = 32;

/// A virtio-pci function, ready to drive.
#[derive(Clone, Copy, Debug)]
pub struct PciDevice {
    /// Where it is.
    pub bdf: Bdf,
    /// Physical address of its configuration space (in the ECAM).
    pub cfg: u64,
    /// The address of the BAR holding its structures (as the VMM assigned it).
    pub bar: u64,
    /// Its capabilities.
    pub layout: Layout,
}

/// Where a virtio device is.
#[derive(Clone, Copy, Debug)]
pub enum Place {
    /// A virtio-mmio register block from the command line.
    Mmio(DeviceSpec),
    /// A virtio-pci function.
    Pci(PciDevice),
}

impl Place {
    /// The register block's base, or the BAR address.
    pub fn base(&self) -> u64 {
        match self {
            Self::Mmio(s) => s.base,
            Self::Pci(p) => p.bar,
        }
    }

    /// `irq=<n>` for virtio-mmio (the IOAPIC pin), `irq=msix` for virtio-pci.
    pub fn irq(&self) -> IrqName {
        IrqName(*self)
    }
}

/// See [`Place::irq`].
pub struct IrqName(Place);

impl fmt::Display for IrqName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Place::Mmio(s) => write!(f, "{}", s.irq),
            Place::Pci(_) => write!(f, "msix"),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mmio(s) => write!(f, "virtio-mmio {:#x}", s.base),
            Self::Pci(p) => write!(f, "virtio-pci {}", p.bdf),
        }
    }
}

/// Why a virtio-pci function cannot be driven.
#[derive(Clone, Copy, Debug)]
pub enum PciProblem {
    /// Its capabilities or BAR.
    Layout(Bdf, LayoutError),
    /// Its structures are not inside the MMIO hole the guest maps.
    Unreachable(Bdf, u64, u64),
}

impl fmt::Display for PciProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout(bdf, e) => write!(f, "virtio-pci {bdf}: {e}"),
            Self::Unreachable(bdf, bar, len) => write!(
                f,
                "virtio-pci {bdf}: BAR at {bar:#x} (+{len:#x} used) is outside the MMIO hole 0xc0000000..4G"
            ),
        }
    }
}

/// A function found on the bus.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    /// Where.
    pub bdf: Bdf,
    /// Its header.
    pub header: Header,
    /// Physical address of its configuration space.
    pub cfg: u64,
}

impl Function {
    /// Its configuration space.
    pub fn regs(&self) -> Mmio {
        // SAFETY: `cfg` is a 4 KiB function slot inside an ECAM the scan checked was
        // reachable; configuration reads have no side effects, and only the boot CPU
        // drives PCI.
        unsafe { Mmio::new(self.cfg) }
    }

    /// Its virtio device type, if it is a modern virtio function.
    pub fn virtio_type(&self) -> Option<u32> {
        virtio_type(self.header.vendor, self.header.device)
    }

    /// Read its capabilities and BAR, check that the guest can reach them.
    pub fn virtio(&self) -> Result<PciDevice, PciProblem> {
        let cfg = self.regs();
        let layout = layout(&cfg).map_err(|e| PciProblem::Layout(self.bdf, e))?;
        let bar = pci::bar(&cfg, layout.bar())
            .map_err(|e| PciProblem::Layout(self.bdf, LayoutError::Cap(e)))?;
        if !mmio::reachable(bar.address, layout.extent().max(1)) {
            return Err(PciProblem::Unreachable(
                self.bdf,
                bar.address,
                layout.extent(),
            ));
        }
        Ok(PciDevice {
            bdf: self.bdf,
            cfg: self.cfg,
            bar: bar.address,
            layout,
        })
    }
}

/// The functions of bus 0.
pub struct Bus {
    functions: [Option<Function>; MAX_FUNCTIONS],
    len: usize,
}

impl Bus {
    /// The functions, in BDF order.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions[..self.len].iter().flatten()
    }
}

/// Why the bus cannot be scanned.
#[derive(Clone, Copy, Debug)]
pub struct Unreachable(pub Ecam);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ECAM at {:#x} (bus 0) is outside the MMIO hole 0xc0000000..4G",
            self.0.base
        )
    }
}

/// Scan bus 0: every device's function 0, and functions 1-7 of multi-function devices.
pub fn scan(ecam: &Ecam) -> Result<Bus, Unreachable> {
    if !mmio::reachable(ecam.base, 1 << 20) {
        return Err(Unreachable(*ecam));
    }
    let mut bus = Bus {
        functions: [None; MAX_FUNCTIONS],
        len: 0,
    };
    for device in 0..DEVICES {
        for function in 0..FUNCTIONS {
            let bdf = Bdf {
                bus: 0,
                device,
                function,
            };
            let Some(offset) = bdf.ecam_offset(ecam.start_bus) else {
                break;
            };
            let cfg = ecam.base + offset;
            // SAFETY: inside the ECAM's first MiB, checked reachable above.
            let header = pci::header(&unsafe { Mmio::new(cfg) });
            let Some(header) = header else {
                if function == 0 {
                    break;
                }
                continue;
            };
            if bus.len < MAX_FUNCTIONS {
                bus.functions[bus.len] = Some(Function { bdf, header, cfg });
                bus.len += 1;
            }
            if function == 0 && !header.multi_function {
                break;
            }
        }
    }
    Ok(bus)
}
