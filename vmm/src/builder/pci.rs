//! The virtio-pci step of building: a host bridge at 00:00.0, device `i` of the VM's list
//! as function 00:(i+1).0 with its BAR0 in the PCI window, MSI-X vectors on GSIs from 24
//! up, and the ECAM window, the 0xCF8/0xCFC ports and BAR decoding on the buses.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::{BuildError, VirtioDevices};
use crate::config::{ConfigError, VirtioDeviceConfig};
use crate::kvm::irq_routing::{InterruptHost, KvmInterrupts, FIRST_MSI_GSI};
use crate::kvm::run_loop::IoBuses;
use crate::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START};
use crate::memory::GuestMemory;
use crate::pci::bus::{Bdf, PciBus};
use crate::pci::config_ports::{ConfigPorts, CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN};
use crate::pci::ecam::Ecam;
use crate::pci::host_bridge::HostBridge;
use crate::virtio::interrupts::Interrupts;
use crate::virtio::pci::layout::BAR_SIZE;
use crate::virtio::pci::VirtioPciFunction;
use crate::virtio::vhost_user::{SharedMemory, VhostUserDevice};

/// Where device `index`'s BAR0 goes, if it fits the window.
pub fn bar0_address(index: usize) -> Option<u64> {
    let at = PCI_MMIO_START.checked_add((index as u64).checked_mul(BAR_SIZE)?)?;
    (at.checked_add(BAR_SIZE)? <= PCI_MMIO_END).then_some(at)
}

/// Creates the PCI bus and one virtio-pci function per device.
pub(super) fn create(
    vm_fd: &Arc<VmFd>,
    memory: &GuestMemory,
    devices: Vec<VirtioDeviceConfig>,
    io: &mut IoBuses,
) -> Result<VirtioDevices, BuildError> {
    let host: Arc<dyn InterruptHost> = Arc::new(KvmInterrupts::new(vm_fd.clone()));
    let mut bus = PciBus::default();
    bus.insert(0, Arc::new(Mutex::new(HostBridge::default())));
    let mut out = VirtioDevices {
        slots: Vec::new(),
        watched: Vec::new(),
        transports: Vec::new(),
    };
    let shared = SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    };
    let mut next_gsi = FIRST_MSI_GSI;
    for (index, dev) in devices.into_iter().enumerate() {
        let too_many = || ConfigError::TooManyDevices(index + 1);
        let bar0 = bar0_address(index).ok_or_else(too_many)?;
        let bdf = Bdf {
            device: u8::try_from(index + 1).map_err(|_| too_many())?,
            function: 0,
        };
        let name = dev.name.clone();
        let device_err = |what: &'static str| {
            let name = name.clone();
            move |e: std::io::Error| BuildError::VirtioDevice {
                name: name.clone(),
                what,
                source: e,
            }
        };
        let mut kicks = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..dev.queues {
            let kick =
                EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("creating a kick eventfd"))?;
            ours.push(
                kick.try_clone()
                    .map_err(device_err("duplicating a kick eventfd"))?,
            );
            kicks.push(kick);
        }
        let mut irqs = None;
        let device = VhostUserDevice::connect(
            &dev.name,
            dev.device_type,
            dev.socket,
            kicks,
            |n| {
                let i = Interrupts::per_queue(n)?;
                irqs = Some(i.clone());
                Ok(i)
            },
            shared.clone(),
        )?
        .with_local(dev.local_mac, dev.queue_size)?;
        let irqs = irqs.ok_or_else(|| {
            device_err("creating its interrupt eventfds")(std::io::Error::other("none made"))
        })?;
        device.set_restartable(dev.restartable);
        out.watched.push(device.link());
        let function =
            VirtioPciFunction::new(Box::new(device), ours, irqs, host.clone(), next_gsi, bar0)?;
        let vectors = function.vectors() as u32;
        log::info!(
            "{}: virtio-pci {bdf}, BAR0 {bar0:#x}+{BAR_SIZE:#x}, {vectors} MSI-X vectors (GSI {next_gsi}..={})",
            dev.name,
            next_gsi + vectors - 1
        );
        next_gsi += vectors;
        let function = Arc::new(Mutex::new(function));
        bus.insert(bdf.device, function.clone());
        out.transports.push((dev.name.clone(), function));
    }
    let bus = Arc::new(bus);
    io.mmio.insert(
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
        Arc::new(Mutex::new(Ecam::new(bus.clone()))),
    )?;
    io.pio.insert(
        u64::from(CONFIG_ADDRESS_PORT),
        CONFIG_PORTS_LEN,
        Arc::new(Mutex::new(ConfigPorts::new(bus.clone()))),
    )?;
    io.pci = Some(bus);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_the_window_without_overlap() {
        assert_eq!(bar0_address(0), Some(0xc000_0000));
        assert_eq!(bar0_address(30), Some(0xc000_0000 + 30 * 0x8000));
        let last = (PCI_MMIO_END - PCI_MMIO_START) / BAR_SIZE;
        assert!(bar0_address(last as usize - 1).is_some());
        assert_eq!(bar0_address(last as usize), None);
    }
}
