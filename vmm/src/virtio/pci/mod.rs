//! The virtio-pci transport (virtio 1.x "modern"): one PCI function per device, with the
//! virtio capabilities ([`caps`]) and a 64-bit BAR0 holding the common configuration
//! ([`common_cfg`]), the ISR byte, the device configuration, the notify area and the
//! MSI-X table and PBA ([`layout`]).
//!
//! The data path does not pass through here: each queue's notify address is an ioeventfd
//! (the backend's kick fd, [`notify`]) and each queue's call fd an irqfd on its MSI-X
//! vector's route (`pci::msix_irqfds`). What exits to the vmm is set-up: configuration
//! space, the common configuration, device configuration, and the MSI-X table.
//!
//! ## The ISR byte
//! As virtio-mmio's InterruptStatus (see `virtio::mmio`): bit 0 always reads set, since
//! the vmm cannot see the backend's used-buffer interrupts; bit 1 is set while a config
//! change the vmm raised is unread. A read clears it. Drivers using MSI-X never read it.

pub mod caps;
pub mod common_cfg;
pub mod layout;
pub mod notify;

use std::sync::Arc;

use bulkhead_ratelimit::debug_limited;

use self::layout::*;
use self::notify::Notifiers;
use super::interrupts::Interrupts;
use super::state::DeviceState;
use super::VirtioBackend;
use crate::kvm::irq_routing::InterruptHost;
use crate::pci::config_space::{
    ConfigSpace, Identity, COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY,
};
use crate::pci::function::{BarRange, PciFunction};
use crate::pci::msix::{self, Msix};
use crate::pci::msix_irqfds::MsixIrqfds;

/// Red Hat's PCI vendor ID, which virtio uses.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Device IDs of modern virtio devices: this plus the virtio device type.
pub const MODERN_DEVICE_BASE: u16 = 0x1040;

/// The PCI class code conventional for a virtio device type.
pub fn class_of(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_0000, // network controller, Ethernet
        2 => 0x01_8000, // mass storage, other
        3 => 0x07_8000, // communication controller, other
        _ => 0xff_0000,
    }
}

/// Why a function could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// More queues than the BAR layout holds.
    #[error("{name}: {queues} queues, at most {MAX_QUEUES} fit a virtio-pci function")]
    TooManyQueues {
        /// Device name.
        name: String,
        /// Its queue count.
        queues: usize,
    },
    /// The capabilities do not fit the configuration space (a bug).
    #[error("{name}: the virtio-pci capabilities do not fit the configuration space")]
    Capabilities {
        /// Device name.
        name: String,
    },
    /// The interrupts do not match the queues (a bug).
    #[error("{name}: {fds} call eventfds for {queues} queues")]
    Interrupts {
        /// Device name.
        name: String,
        /// Eventfds given.
        fds: usize,
        /// Queues.
        queues: usize,
    },
}

/// A virtio device as a PCI function.
pub struct VirtioPciFunction {
    name: String,
    config: ConfigSpace,
    state: DeviceState,
    msix: Msix,
    msix_cap: usize,
    window_cap: usize,
    irqfds: MsixIrqfds,
    notifiers: Notifiers,
    /// The config-change bit of the ISR byte.
    isr_config: bool,
}

impl VirtioPciFunction {
    /// Puts `backend` behind a function whose BAR0 is at `bar0` (aligned to
    /// [`BAR_SIZE`]), decoding from the start (the vmm plays the firmware's part). Queue
    /// `q` is kicked through `kicks[q]` (queues past `kicks` are served by the vmm) and
    /// signals `interrupts.queues[q]`; vector `v` uses GSI `gsi_base + v`.
    pub fn new(
        backend: Box<dyn VirtioBackend>,
        kicks: Vec<vmm_sys_util::eventfd::EventFd>,
        interrupts: Interrupts,
        host: Arc<dyn InterruptHost>,
        gsi_base: u32,
        bar0: u64,
    ) -> Result<VirtioPciFunction, VirtioPciError> {
        let name = backend.name().to_owned();
        let queues = backend.queue_max_sizes().len();
        if queues > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues { name, queues });
        }
        if interrupts.queues.len() != queues {
            return Err(VirtioPciError::Interrupts {
                name,
                fds: interrupts.queues.len(),
                queues,
            });
        }
        let device_type = backend.device_type();
        let device_id = MODERN_DEVICE_BASE.wrapping_add(device_type as u16);
        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_VENDOR,
            device: device_id,
            revision: 1,
            class: class_of(device_type),
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: device_id,
        });
        config.add_bar64(0, BAR_SIZE, bar0);
        config.set_u16(COMMAND, COMMAND_MEMORY);
        let device_len = backend.config_size() as u64;
        let window_cap = caps::add(&mut config, queues, device_len);
        let vectors = queues + 1;
        let (body, wmask) = msix::capability(vectors as u16, 0, MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = config.add_capability(msix::CAP_ID, &body, &wmask);
        // The capabilities take a fixed 0x6c bytes of the 0xc0 after the header.
        let (Some(window_cap), Some(msix_cap)) = (window_cap, msix_cap) else {
            return Err(VirtioPciError::Capabilities { name });
        };
        let mut fds = vec![interrupts.config];
        fds.extend(interrupts.queues);
        let mut f = VirtioPciFunction {
            irqfds: MsixIrqfds::new(&name, host.clone(), gsi_base, vectors, fds),
            notifiers: Notifiers::new(&name, host, kicks),
            name,
            config,
            state: DeviceState::new(backend),
            msix: Msix::new(vectors as u16),
            msix_cap,
            window_cap,
            isr_config: false,
        };
        f.follow_bar();
        Ok(f)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of MSI-X vectors.
    pub fn vectors(&self) -> usize {
        self.msix.len()
    }

    /// Where BAR0 decodes now.
    fn bar0(&self) -> Option<u64> {
        self.config
            .memory_enabled()
            .then(|| self.config.bar64_address(0))
    }

    fn follow_bar(&mut self) {
        let base = self.bar0();
        self.notifiers.follow(base);
    }

    /// Tells the driver the configuration changed: a new generation, the ISR's config bit,
    /// and the config vector's interrupt. Nothing before the driver is running.
    pub fn config_changed(&mut self) -> std::io::Result<()> {
        if !self.state.driver_ok() {
            return Ok(());
        }
        self.state.bump_config_generation();
        self.isr_config = true;
        self.state.backend().interrupt()
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let inside = |start: u64, size: u64| offset >= start && offset - start < size;
        if inside(COMMON, common_cfg::LEN as u64) {
            let image = common_cfg::image(&self.state, &self.irqfds);
            let at = (offset - COMMON) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = image.get(at + i).copied().unwrap_or(0);
            }
        } else if offset == ISR {
            if let Some(isr) = data.first_mut() {
                *isr = 1 | if std::mem::take(&mut self.isr_config) {
                    2
                } else {
                    0
                };
            }
        } else if inside(DEVICE, DEVICE_MAX) {
            let at = offset - DEVICE;
            let n = DEVICE_MAX.saturating_sub(at).min(len) as usize;
            self.state.read_config(at, &mut data[..n]);
        } else if inside(MSIX_TABLE, MSIX_TABLE_MAX) {
            self.msix.table_read(offset - MSIX_TABLE, data);
        } else if inside(MSIX_PBA, self.msix.pba_size()) {
            let irqfds = &self.irqfds;
            self.msix
                .pba_read(offset - MSIX_PBA, data, |v| irqfds.pending(v));
        } else {
            debug_limited!("{}: {len}-byte read of BAR0 at {offset:#x}", self.name);
        }
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        let inside = |start: u64, size: u64| offset >= start && offset - start < size;
        if inside(COMMON, common_cfg::LEN as u64) {
            let fx = common_cfg::write(
                &mut self.state,
                &mut self.irqfds,
                (offset - COMMON) as usize,
                data,
            );
            if fx.reset {
                self.isr_config = false;
            }
            if fx.vectors {
                self.irqfds.sync(&self.msix);
            }
        } else if inside(DEVICE, DEVICE_MAX) {
            let at = offset - DEVICE;
            let n = DEVICE_MAX.saturating_sub(at).min(data.len() as u64) as usize;
            self.state.write_config(at, &data[..n]);
        } else if inside(NOTIFY, NOTIFY_MAX) {
            let q = ((offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
            // Queues the backend serves have an ioeventfd that catches this before it
            // exits; this is the slow path (a refused registration, the window
            // capability), or a queue the vmm serves.
            if q < self.state.queues().len() && self.state.driver_ok() && !self.notifiers.kick(q) {
                self.state.notify(q as u32);
            }
        } else if inside(MSIX_TABLE, MSIX_TABLE_MAX) {
            self.msix.table_write(offset - MSIX_TABLE, data);
            self.irqfds.sync(&self.msix);
        } else {
            debug_limited!(
                "{}: {}-byte write to BAR0 at {offset:#x} ignored",
                self.name,
                data.len()
            );
        }
    }

    /// The window capability's target, if the driver set a valid one.
    fn window(&self) -> Option<(u64, usize)> {
        let c = self.window_cap;
        let bar = self.config.u8_at(c + caps::WINDOW_BAR);
        let offset = u64::from(self.config.u32_at(c + caps::WINDOW_OFFSET));
        let len = self.config.u32_at(c + caps::WINDOW_LENGTH) as usize;
        let ok = bar == 0
            && matches!(len, 1 | 2 | 4)
            && offset % len as u64 == 0
            && offset + len as u64 <= BAR_SIZE;
        ok.then_some((offset, len))
    }

    fn touches_window_data(&self, offset: usize, len: usize) -> bool {
        let data = self.window_cap + caps::WINDOW_DATA;
        offset < data + 4 && data < offset.saturating_add(len)
    }
}

impl PciFunction for VirtioPciFunction {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if self.touches_window_data(offset, data.len()) {
            let mut buf = [0u8; 4];
            if let Some((at, len)) = self.window() {
                self.bar0_read(at, &mut buf[..len]);
            }
            self.config
                .set_bytes(self.window_cap + caps::WINDOW_DATA, &buf);
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        self.msix.set_control(self.config.u16_at(self.msix_cap + 2));
        self.msix
            .set_bus_master(self.config.command() & COMMAND_BUS_MASTER != 0);
        self.irqfds.sync(&self.msix);
        self.follow_bar();
        if self.touches_window_data(offset, data.len()) {
            if let Some((at, len)) = self.window() {
                let mut buf = [0u8; 4];
                self.config
                    .read(self.window_cap + caps::WINDOW_DATA, &mut buf);
                self.bar0_write(at, &buf[..len]);
            }
        }
    }

    fn bar_ranges(&self) -> Vec<BarRange> {
        self.bar0()
            .map(|base| BarRange {
                bar: 0,
                base,
                size: BAR_SIZE,
            })
            .into_iter()
            .collect()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.bar0_read(offset, data);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == 0 {
            self.bar0_write(offset, data);
        }
    }
}

impl super::ConfigChange for VirtioPciFunction {
    fn config_changed(&mut self) -> std::io::Result<()> {
        VirtioPciFunction::config_changed(self)
    }
    fn name(&self) -> &str {
        VirtioPciFunction::name(self)
    }
    fn device_state(&mut self) -> &mut DeviceState {
        &mut self.state
    }
}

#[cfg(test)]
impl VirtioPciFunction {
    /// Another handle on interrupt source `source`'s eventfd (0: config, 1 + q: queue q).
    fn irqfds_source_for_test(&self, source: usize) -> Arc<vmm_sys_util::eventfd::EventFd> {
        self.irqfds.source_fd(source).clone()
    }
}

#[cfg(test)]
mod tests;
