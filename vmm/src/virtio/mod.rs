//! Virtio devices of the vmm: the transports the guest talks to (virtio-mmio in [`mmio`],
//! virtio-pci in [`pci`], both on the device state of [`state`]), and the vhost-user
//! frontend that hands each device's queues to a backend process.
//!
//! The data path never crosses the vmm: the guest's queue notification is an ioeventfd
//! that is the backend's kick fd, and the backend's call fd is an irqfd (on an IOAPIC pin
//! for mmio, on the queue's MSI-X vector for pci, [`interrupts`]). The vmm handles only
//! set-up (feature negotiation, queue addresses), config space and reset, and, when a
//! restartable device's backend process dies, hands the device to its successor
//! (`vhost_user::replay`) or marks it DEVICE_NEEDS_RESET.

pub mod backend;
pub mod config_size;
pub mod interrupts;
pub mod local_config;
pub mod mmio;
pub mod monitor;
pub mod net_ctrl;
pub mod pci;
pub mod state;
pub mod vhost_user;

pub use backend::{QueueConfig, ReconnectError, VirtioBackend};

/// What the vmm's control thread does to a device through its transport: tell the driver
/// the configuration changed (a resize), hand the device to a new backend process, or stop
/// it for good. A transport gives its notification, name and device state; handing over
/// and stopping are the same on every transport.
pub trait ConfigChange: Send {
    /// Raises the config-change notification, if a driver is running.
    fn config_changed(&mut self) -> std::io::Result<()>;
    /// The device's name.
    fn name(&self) -> &str;
    /// The device state the transport serves.
    fn device_state(&mut self) -> &mut state::DeviceState;
    /// Replays the device's set-up to a new backend connected through `socket` (see
    /// [`state::DeviceState::reconnect`]); if it cannot take over, the device needs a reset
    /// and a running driver gets a config interrupt.
    fn reconnect(&mut self, socket: std::os::unix::net::UnixStream) -> Result<(), ReconnectError> {
        let (notify, result) = self.device_state().reconnect(socket);
        if notify {
            needs_reset_notification(self);
        }
        result
    }
    /// No backend will come: the device needs a reset and a running driver is told.
    fn give_up(&mut self, why: &str) {
        if self.device_state().stop(why) {
            needs_reset_notification(self);
        }
    }
}

/// Tells a running driver (a config interrupt) that the device needs a reset.
fn needs_reset_notification<T: ConfigChange + ?Sized>(transport: &mut T) {
    if let Err(e) = transport.config_changed() {
        bulkhead_ratelimit::warn_limited!(
            "{}: config interrupt for DEVICE_NEEDS_RESET: {e}",
            transport.name()
        );
    }
}

impl ConfigChange for mmio::MmioTransport {
    fn config_changed(&mut self) -> std::io::Result<()> {
        mmio::MmioTransport::config_changed(self)
    }
    fn name(&self) -> &str {
        mmio::MmioTransport::name(self)
    }
    fn device_state(&mut self) -> &mut state::DeviceState {
        mmio::MmioTransport::device_state(self)
    }
}

/// The transports of a VM's devices, by device name.
pub type Transports = Vec<(String, std::sync::Arc<std::sync::Mutex<dyn ConfigChange>>)>;

/// Guest-physical base of the first virtio-mmio device; each takes one page.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Interrupt line (IOAPIC pin, edge-triggered) of the first device.
pub const FIRST_IRQ: u32 = 5;
/// Highest interrupt line a device can take (IOAPIC has 24 pins).
pub const LAST_IRQ: u32 = 23;

const _: () = assert!(MMIO_BASE >= crate::layout::MMIO_GAP_START);

/// Where a virtio-mmio device lives: its register window and interrupt line. The builder
/// takes each device's from [`slot`] once, and both descriptions the guest gets come from
/// that one value: the command line ([`MmioSlot::cmdline_token`]) and the ACPI DSDT
/// (`boot::dsdt`), so they cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// The device's index: its place in the VM's device list (disks, nets, console).
    pub index: usize,
    /// Guest-physical base of its [`MMIO_SIZE`] window.
    pub base: u64,
    /// Its IOAPIC pin (GSI), raised edge-triggered through an irqfd.
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line token announcing the device (Linux's virtio_mmio.device
    /// syntax).
    pub fn cmdline_token(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// Where device `index` lives, or `None` past the last pin.
pub fn slot(index: usize) -> Option<MmioSlot> {
    let irq = FIRST_IRQ.checked_add(u32::try_from(index).ok()?)?;
    (irq <= LAST_IRQ).then(|| MmioSlot {
        index,
        base: MMIO_BASE + index as u64 * MMIO_SIZE,
        irq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_tokens() {
        let at = |index| slot(index).map(|s| (s.index, s.base, s.irq));
        assert_eq!(at(0), Some((0, 0xd000_0000, 5)));
        assert_eq!(at(2), Some((2, 0xd000_2000, 7)));
        assert_eq!(at(18), Some((18, 0xd001_2000, 23)));
        assert_eq!(at(19), None);
        assert_eq!(
            slot(1).unwrap().cmdline_token(),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
        // The devices stay inside the MMIO gap, below the IOAPIC.
        let last = slot(18).unwrap();
        assert!(last.base + MMIO_SIZE <= crate::layout::IOAPIC_START);
    }
}
