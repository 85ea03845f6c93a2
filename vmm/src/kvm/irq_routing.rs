//! What PCI devices ask of KVM while the guest runs: MSI routes (`KVM_SET_GSI_ROUTING`),
//! irqfds on them, and the ioeventfds of queue-notify addresses that follow the BARs.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, and `KVM_CREATE_IRQCHIP` had installed
//! a default one that the serial port's and virtio-mmio's irqfds rely on: GSIs 0..=15 on
//! both PICs and the IOAPIC, 16..=23 on the IOAPIC alone (the kernel's
//! `kvm_setup_default_irq_routing`). Every table this module sets starts with those
//! entries, followed by the MSI routes of the vectors the guest has enabled.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Number of IOAPIC pins (GSIs 0..24 are routed to the irqchip).
pub const IOAPIC_PINS: u32 = 24;
/// The first GSI free for MSI routes.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// The most routes KVM takes in one table (`KVM_MAX_IRQ_ROUTES`).
pub const MAX_ROUTES: u32 = 4096;

/// An MSI message: where the device writes (address) and what (data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Low 32 bits of the address.
    pub address_lo: u32,
    /// High 32 bits of the address.
    pub address_hi: u32,
    /// The data written.
    pub data: u32,
}

impl MsiMessage {
    /// Whether the message is an interrupt to a local APIC (0xFEExxxxx, below 4 GiB);
    /// anything else would be a DMA write the vmm does not emulate.
    pub fn targets_lapic(&self) -> bool {
        self.address_hi == 0 && self.address_lo & 0xfff0_0000 == 0xfee0_0000
    }
}

/// The KVM operations interrupt and notify routing needs; a fake records them in tests.
pub trait InterruptHost: Send + Sync {
    /// Sets (`Some`) or removes (`None`) the MSI routes of some GSIs, keeping every other.
    fn set_msi_routes(&self, changes: &[(u32, Option<MsiMessage>)]) -> io::Result<()>;
    /// Assigns or deassigns `fd` as an irqfd on `gsi`.
    fn irqfd(&self, fd: &EventFd, gsi: u32, assign: bool) -> io::Result<()>;
    /// Registers or removes `fd` as an ioeventfd for any write at MMIO address `addr`.
    fn ioeventfd(&self, fd: &EventFd, addr: u64, assign: bool) -> io::Result<()>;
}

/// [`InterruptHost`] on a KVM VM.
pub struct KvmInterrupts {
    vm: Arc<VmFd>,
    /// The MSI routes KVM has, by GSI.
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl KvmInterrupts {
    /// Routing on `vm` (whose irqchip exists), with no MSI route yet.
    pub fn new(vm: Arc<VmFd>) -> KvmInterrupts {
        KvmInterrupts {
            vm,
            msi: Mutex::new(BTreeMap::new()),
        }
    }
}

/// The routes `KVM_CREATE_IRQCHIP` installs, which every table keeps.
pub fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let entry = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut out = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            out.push(entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            out.push(entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        out.push(entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    out
}

/// The whole table: the irqchip routes and `msi`.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut out = irqchip_routes();
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address_lo;
        e.u.msi.address_hi = m.address_hi;
        e.u.msi.data = m.data;
        out.push(e);
    }
    out
}

fn kvm_err(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl InterruptHost for KvmInterrupts {
    fn set_msi_routes(&self, changes: &[(u32, Option<MsiMessage>)]) -> io::Result<()> {
        let mut msi = self.msi.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = msi.clone();
        for (gsi, m) in changes {
            if *gsi < FIRST_MSI_GSI || *gsi >= MAX_ROUTES {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            match m {
                Some(m) => next.insert(*gsi, *m),
                None => next.remove(gsi),
            };
        }
        if next == *msi {
            return Ok(());
        }
        let table = KvmIrqRouting::from_entries(&routing_table(&next))
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        self.vm.set_gsi_routing(&table).map_err(kvm_err)?;
        *msi = next;
        Ok(())
    }

    fn irqfd(&self, fd: &EventFd, gsi: u32, assign: bool) -> io::Result<()> {
        if assign {
            self.vm.register_irqfd(fd, gsi).map_err(kvm_err)
        } else {
            self.vm.unregister_irqfd(fd, gsi).map_err(kvm_err)
        }
    }

    fn ioeventfd(&self, fd: &EventFd, addr: u64, assign: bool) -> io::Result<()> {
        let at = IoEventAddress::Mmio(addr);
        if assign {
            self.vm
                .register_ioevent(fd, &at, NoDatamatch)
                .map_err(kvm_err)
        } else {
            self.vm
                .unregister_ioevent(fd, &at, NoDatamatch)
                .map_err(kvm_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irqchip_routes_are_the_kernels_defaults() {
        let r = irqchip_routes();
        // 16 GSIs on a PIC and the IOAPIC, 8 on the IOAPIC only.
        assert_eq!(r.len(), 16 * 2 + 8);
        let pins: Vec<(u32, u32, u32)> = r
            .iter()
            .map(|e| {
                // SAFETY: every entry irqchip_routes builds is an irqchip entry, so the
                // union holds a kvm_irq_routing_irqchip (plain integers).
                let chip = unsafe { e.u.irqchip };
                (e.gsi, chip.irqchip, chip.pin)
            })
            .collect();
        assert!(pins.contains(&(4, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(pins.contains(&(12, KVM_IRQCHIP_PIC_SLAVE, 4)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!pins.iter().any(|p| p.0 == 20 && p.1 != KVM_IRQCHIP_IOAPIC));
    }

    #[test]
    fn lapic_addresses_only() {
        let m = |lo, hi| MsiMessage {
            address_lo: lo,
            address_hi: hi,
            data: 0x30,
        };
        assert!(m(0xfee0_0000, 0).targets_lapic());
        assert!(m(0xfeef_f00c, 0).targets_lapic());
        assert!(!m(0xfef0_0000, 0).targets_lapic());
        assert!(!m(0xfee0_0000, 1).targets_lapic());
        assert!(!m(0x1000, 0).targets_lapic(), "guest RAM: a DMA write");
    }

    /// On the real KVM: a table with an MSI route is accepted, the irqchip GSIs keep
    /// taking irqfds, and an irqfd on the MSI GSI can be assigned and deassigned.
    #[test]
    fn kvm_accepts_the_tables() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let host = KvmInterrupts::new(vm.clone());
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x41,
        };
        host.set_msi_routes(&[(24, Some(msg)), (25, Some(msg))])
            .unwrap();
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        host.irqfd(&fd, 24, true).unwrap();
        host.irqfd(&fd, 24, false).unwrap();
        let serial = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        host.irqfd(&serial, 4, true).unwrap();
        host.set_msi_routes(&[(25, None)]).unwrap();
        assert_eq!(host.msi.lock().unwrap().len(), 1);
        assert!(
            host.set_msi_routes(&[(3, Some(msg))]).is_err(),
            "an irqchip GSI"
        );
        host.ioeventfd(&fd, 0xc000_3000, true).unwrap();
        assert!(host.ioeventfd(&fd, 0xc000_3000, true).is_err(), "twice");
        host.ioeventfd(&fd, 0xc000_3000, false).unwrap();
    }
}
