//! Virtio devices of the vmm: the virtio-mmio transport the guest talks to, and the
//! vhost-user frontend that hands each device's queues to a backend process.
//!
//! The data path never crosses the vmm: the guest's QueueNotify write is an ioeventfd that
//! is the backend's kick fd, and the backend's call fd is an irqfd. The vmm handles only
//! set-up (feature negotiation, queue addresses), config space and reset.

pub mod backend;
pub mod config_size;
pub mod mmio;
pub mod monitor;
pub mod net_ctrl;
pub mod vhost_user;

pub use backend::{QueueConfig, VirtioBackend};

/// Guest-physical base of the first virtio-mmio device; each takes one page.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Interrupt line (IOAPIC pin, edge-triggered) of the first device.
pub const FIRST_IRQ: u32 = 5;
/// Highest interrupt line a device can take (IOAPIC has 24 pins).
pub const LAST_IRQ: u32 = 23;

const _: () = assert!(MMIO_BASE >= crate::layout::MMIO_GAP_START);

/// Where device `index` lives: its MMIO base and interrupt line, or `None` past the last pin.
pub fn slot(index: usize) -> Option<(u64, u32)> {
    let irq = FIRST_IRQ.checked_add(u32::try_from(index).ok()?)?;
    (irq <= LAST_IRQ).then(|| (MMIO_BASE + index as u64 * MMIO_SIZE, irq))
}

/// The kernel command-line token announcing a device (Linux's virtio_mmio.device syntax).
pub fn cmdline_token(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_tokens() {
        assert_eq!(slot(0), Some((0xd000_0000, 5)));
        assert_eq!(slot(2), Some((0xd000_2000, 7)));
        assert_eq!(slot(18), Some((0xd001_2000, 23)));
        assert_eq!(slot(19), None);
        assert_eq!(
            cmdline_token(0xd000_1000, 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
        // The devices stay inside the MMIO gap, below the IOAPIC.
        let (last, _) = slot(18).unwrap();
        assert!(last + MMIO_SIZE <= crate::layout::IOAPIC_START);
    }
}
