//! Virtio drivers, written against a register interface so that they run on the host too.
//!
//! - [`mmio`]: the virtio-mmio transport (version 2, "modern"): devices announced on the
//!   command line, probing, the status handshake, feature negotiation, queue set-up and the
//!   device-specific configuration space, all through the [`Regs`] trait;
//! - [`pci`]: the virtio-pci modern transport (4.1): the function's capabilities (common,
//!   notify, ISR, device configuration, MSI-X), read through its PCI configuration space,
//!   and the structures they point at in its BAR;
//! - [`transport`]: the [`Transport`] trait both implement, which the drivers use;
//! - [`queue`]: a split virtqueue in memory the caller provides (descriptor table, avail
//!   and used rings), with a free list, event-index notification suppression and polling
//!   of the used ring;
//! - [`blk`]: virtio-blk requests (header, data, status) on top of both;
//! - [`bufs`]: fixed-size receive and transmit buffers on a queue, which
//!   [`net`] (virtio-net: frames behind a 12-byte header) and [`console`] (virtio-console
//!   port 0: bytes) use;
//! - [`vsock`]: virtio-vsock stream connections with credit-based flow control.
//!
//! The guest binary supplies the real [`Regs`] (volatile accesses to the device's
//! registers, `src/mmio.rs`), the memory (frames from its allocator; the guest identity-maps
//! RAM, so a pointer's value is the guest-physical address a descriptor needs) and the
//! waiting (TSC deadlines). The unit tests supply a fake register block and a fake
//! virtio-blk device (`mock`) that serves the queue from the same memory.

pub mod blk;
pub mod bufs;
pub mod console;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod queue;
pub mod transport;
pub mod vsock;

pub use transport::{Either, Transport};

#[cfg(test)]
mod mock;
#[cfg(test)]
pub(crate) mod mock_pci;

/// Device registers: the virtio-mmio register block, a virtio-pci function's BAR or its
/// PCI configuration space, as the driver sees them.
///
/// Offsets are from the block's base. Virtio-mmio control registers are 32-bit; the
/// device-specific configuration space (from [`mmio::reg::CONFIG`] on) must be read with
/// accesses of each field's own width (virtio 1.2, 4.2.2.2), and virtio-pci's common
/// configuration has 8- and 16-bit fields (4.1.3.1), hence the narrower accesses.
pub trait Regs {
    /// 32-bit read.
    fn read32(&self, offset: u32) -> u32;
    /// 32-bit write.
    fn write32(&self, offset: u32, value: u32);
    /// 16-bit read (configuration space only).
    fn read16(&self, offset: u32) -> u16;
    /// 8-bit read (configuration space only).
    fn read8(&self, offset: u32) -> u8;
    /// 16-bit write (virtio-pci common configuration and PCI configuration space).
    fn write16(&self, offset: u32, value: u16);
    /// 8-bit write (virtio-pci device status).
    fn write8(&self, offset: u32, value: u8);
}

impl<R: Regs + ?Sized> Regs for &R {
    fn read32(&self, offset: u32) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        (**self).write32(offset, value)
    }
    fn read16(&self, offset: u32) -> u16 {
        (**self).read16(offset)
    }
    fn read8(&self, offset: u32) -> u8 {
        (**self).read8(offset)
    }
    fn write16(&self, offset: u32, value: u16) {
        (**self).write16(offset, value)
    }
    fn write8(&self, offset: u32, value: u8) {
        (**self).write8(offset, value)
    }
}

/// Feature bits that every device type shares (virtio 1.2, 6).
pub mod feature {
    /// Descriptors may point at indirect descriptor tables.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` replace the ring flags for notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// Bit 30 is `VHOST_USER_F_PROTOCOL_FEATURES` between a vhost-user front-end and its
    /// back-end; it leaks into what some back-ends offer. A driver must never accept it.
    pub const VHOST_USER_PROTOCOL_FEATURES: u64 = 1 << 30;
    /// Virtio 1.x (non-legacy) device.
    pub const VERSION_1: u64 = 1 << 32;
    /// The device sees addresses through an IOMMU / platform translation.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// Packed virtqueues.
    pub const RING_PACKED: u64 = 1 << 34;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest has noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may process queues.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Device types (virtio 1.2, 5).
pub mod device_id {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Socket device.
    pub const VSOCK: u32 = 19;

    /// A short name for messages.
    pub fn name(id: u32) -> &'static str {
        match id {
            0 => "none",
            NET => "net",
            BLOCK => "block",
            CONSOLE => "console",
            4 => "entropy",
            5 => "balloon",
            8 => "scsi",
            9 => "9p",
            16 => "gpu",
            18 => "input",
            VSOCK => "vsock",
            26 => "fs",
            _ => "other",
        }
    }
}

/// The event-index rule (virtio 1.2, 2.7.10; Linux `vring_need_event`): after moving an
/// index from `old` to `new`, notify the other side iff it asked to hear about the entry at
/// `event`, i.e. `event` lies in `[old, new)`, modulo 2^16.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_is_event_in_old_to_new() {
        // One entry added, the other side waits for exactly that one.
        assert!(need_event(0, 1, 0));
        assert!(need_event(5, 6, 5));
        // It waits for an earlier one it has already been told about: no.
        assert!(!need_event(4, 6, 5));
        // It waits for a later one: no.
        assert!(!need_event(6, 6, 5));
        assert!(!need_event(7, 6, 5));
        // A batch that passes the event: yes, wherever the event lies in it.
        for event in 10..20 {
            assert!(need_event(event, 20, 10), "{event}");
        }
        assert!(!need_event(20, 20, 10));
        assert!(!need_event(9, 20, 10));
        // Nothing added: never.
        for event in [0, 1, 0x7fff, 0xffff] {
            assert!(!need_event(event, 42, 42));
        }
    }

    #[test]
    fn need_event_wraps_at_2_to_16() {
        assert!(need_event(0xffff, 0, 0xffff));
        assert!(need_event(0xfffe, 2, 0xfffe));
        assert!(need_event(0, 2, 0xfffe));
        assert!(need_event(1, 2, 0xfffe));
        assert!(!need_event(2, 2, 0xfffe));
        assert!(!need_event(0xfffd, 2, 0xfffe));
    }

    #[test]
    fn need_event_matches_a_brute_force_model() {
        for old in [0u16, 1, 100, 0x7fff, 0xfff0, 0xffff] {
            for added in [0u16, 1, 2, 31, 256] {
                let new = old.wrapping_add(added);
                for back in 0..300u16 {
                    let event = new.wrapping_sub(back);
                    // Entries `old..new`, by how far back from `new` they are: 1..=added.
                    let expected = back >= 1 && back <= added;
                    assert_eq!(
                        need_event(event, new, old),
                        expected,
                        "{old} {added} {back}"
                    );
                }
            }
        }
    }
}
