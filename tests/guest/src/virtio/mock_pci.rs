//! Test doubles for the virtio-pci transport: a function's configuration space
//! ([`FakeCfg`], bytes with a virtio capability list laid out as a VMM might) and its BAR
//! ([`FakeBar`]), which translates the common configuration, ISR, device configuration and
//! notify area onto a [`FakeRegs`] virtio-mmio device, so every fake device (blk, net,
//! console) serves PCI too. Every access must have its field's width.

use super::mmio::reg;
use super::mock::FakeRegs;
use super::pci::{cfg_type, common};
use super::Regs;
use crate::pci::cfg;
use std::cell::RefCell;

/// Where the fake BAR holds each structure.
pub mod at {
    /// Common configuration.
    pub const COMMON: u32 = 0x0000;
    /// ISR.
    pub const ISR: u32 = 0x1000;
    /// Device configuration.
    pub const DEVICE: u32 = 0x2000;
    /// Notify area (multiplier [`NOTIFY_MULTIPLIER`]).
    pub const NOTIFY: u32 = 0x3000;
    /// Bytes between queues' notify addresses.
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    /// MSI-X table.
    pub const TABLE: u32 = 0x4000;
    /// MSI-X PBA.
    pub const PBA: u32 = 0x5000;
    /// MSI-X table entries.
    pub const VECTORS: u16 = 4;
}

/// 4 KiB of configuration space.
pub struct FakeCfg {
    bytes: RefCell<Vec<u8>>,
    caps: Vec<u32>,
}

impl FakeCfg {
    /// A virtio function of `device_type`, BAR0 (64-bit) at `bar`, capabilities: MSI-X,
    /// common, notify, ISR, device, PCI cfg.
    pub fn virtio(device_type: u16, bar: u64) -> Self {
        let c = Self {
            bytes: RefCell::new(vec![0; 4096]),
            caps: vec![0x40, 0x50, 0x60, 0x78, 0x88, 0x98],
        };
        c.set16(cfg::VENDOR_ID, 0x1af4);
        c.set16(cfg::DEVICE_ID, 0x1040 + device_type);
        c.set16(cfg::STATUS, 1 << 4);
        c.set32(cfg::REVISION, 0x0100_0001);
        c.set32(cfg::BAR0, bar as u32 | 0b100);
        c.set32(cfg::BAR0 + 4, (bar >> 32) as u32);
        c.set8(cfg::CAPABILITIES, 0x40);
        // MSI-X: table size - 1, table and PBA in BAR0.
        c.cap(0x40, 0x11, 0x50);
        c.set16(0x42, at::VECTORS - 1);
        c.set32(0x44, at::TABLE);
        c.set32(0x48, at::PBA);
        c.virtio_cap(0x50, 0x60, 16, cfg_type::COMMON, at::COMMON, 0x40);
        c.virtio_cap(0x60, 0x78, 20, cfg_type::NOTIFY, at::NOTIFY, 0x1000);
        c.set32(0x60 + 16, at::NOTIFY_MULTIPLIER);
        c.virtio_cap(0x78, 0x88, 16, cfg_type::ISR, at::ISR, 4);
        c.virtio_cap(0x88, 0x98, 16, cfg_type::DEVICE, at::DEVICE, 0x100);
        c.virtio_cap(0x98, 0, 20, cfg_type::PCI_CFG, 0, 0);
        c
    }

    fn cap(&self, offset: u32, id: u8, next: u8) {
        self.set8(offset, id);
        self.set8(offset + 1, next);
    }

    /// Set a virtio capability at `offset`.
    pub fn virtio_cap(&self, offset: u32, next: u8, len: u8, kind: u8, at: u32, length: u32) {
        self.cap(offset, 0x09, next);
        self.set8(offset + 2, len);
        self.set8(offset + 3, kind);
        self.set8(offset + 4, 0);
        self.set32(offset + 8, at);
        self.set32(offset + 12, length);
    }

    /// Offsets of the capabilities, in list order.
    pub fn cap_offsets(&self) -> &[u32] {
        &self.caps
    }

    /// Set a byte.
    pub fn set8(&self, offset: u32, v: u8) {
        self.bytes.borrow_mut()[offset as usize] = v;
    }

    /// Set a u16.
    pub fn set16(&self, offset: u32, v: u16) {
        let o = offset as usize;
        self.bytes.borrow_mut()[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Set a u32.
    pub fn set32(&self, offset: u32, v: u32) {
        let o = offset as usize;
        self.bytes.borrow_mut()[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Read `n` bytes at `offset` as a little-endian number.
    pub fn get(&self, offset: u32, n: usize) -> u32 {
        let b = self.bytes.borrow();
        (0..n).fold(0, |v, i| v | u32::from(b[offset as usize + i]) << (8 * i))
    }
}

impl Regs for FakeCfg {
    fn read32(&self, offset: u32) -> u32 {
        self.get(offset, 4)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.set32(offset, value)
    }
    fn read16(&self, offset: u32) -> u16 {
        self.get(offset, 2) as u16
    }
    fn read8(&self, offset: u32) -> u8 {
        self.get(offset, 1) as u8
    }
    fn write16(&self, offset: u32, value: u16) {
        self.set16(offset, value)
    }
    fn write8(&self, offset: u32, value: u8) {
        self.set8(offset, value)
    }
}

/// What the fake BAR keeps beyond the virtio-mmio device.
#[derive(Default)]
pub struct BarState {
    /// `msix_config`.
    pub msix_config: u16,
    /// `queue_msix_vector` per queue.
    pub queue_vectors: [u16; 8],
    /// Vectors from this one on are refused (read back 0xffff).
    pub refuse_from: Option<u16>,
    /// The MSI-X table, as u32 words.
    pub table: Vec<u32>,
    /// (offset in the notify area, value) of every notification.
    pub notifies: Vec<(u32, u16)>,
    /// `queue_notify_off` answers this for every queue instead of its index.
    pub notify_off: Option<u16>,
    /// ISR reads (each clears it).
    pub isr_reads: u32,
}

/// A virtio-pci BAR in front of a fake virtio-mmio device.
pub struct FakeBar {
    /// The device.
    pub dev: FakeRegs,
    /// The PCI-only state.
    pub state: RefCell<BarState>,
}

impl FakeBar {
    /// In front of `dev`.
    pub fn new(dev: FakeRegs) -> Self {
        Self {
            dev,
            state: RefCell::new(BarState {
                table: vec![0; usize::from(at::VECTORS) * 4],
                queue_vectors: [0xffff; 8],
                msix_config: 0xffff,
                ..BarState::default()
            }),
        }
    }

    fn vector(&self, v: u16) -> u16 {
        match self.state.borrow().refuse_from {
            Some(from) if v >= from => 0xffff,
            _ => v,
        }
    }

    fn queue(&self) -> usize {
        self.dev.state.borrow().queue_sel() as usize
    }
}

/// The mmio register for a 32-bit common-configuration field.
fn common32(offset: u32) -> u32 {
    match offset {
        common::DEVICE_FEATURE_SELECT => reg::DEVICE_FEATURES_SEL,
        common::DEVICE_FEATURE => reg::DEVICE_FEATURES,
        common::DRIVER_FEATURE_SELECT => reg::DRIVER_FEATURES_SEL,
        common::DRIVER_FEATURE => reg::DRIVER_FEATURES,
        0x20 => reg::QUEUE_DESC_LOW,
        0x24 => reg::QUEUE_DESC_HIGH,
        0x28 => reg::QUEUE_DRIVER_LOW,
        0x2c => reg::QUEUE_DRIVER_HIGH,
        0x30 => reg::QUEUE_DEVICE_LOW,
        0x34 => reg::QUEUE_DEVICE_HIGH,
        _ => panic!("32-bit access to common configuration {offset:#x}"),
    }
}

impl Regs for FakeBar {
    fn read32(&self, offset: u32) -> u32 {
        match offset {
            0..0x40 => self.dev.read32(common32(offset)),
            at::DEVICE..0x2100 => self.dev.read32(reg::CONFIG + offset - at::DEVICE),
            at::TABLE..at::PBA => self.state.borrow().table[((offset - at::TABLE) / 4) as usize],
            _ => panic!("32-bit read at BAR offset {offset:#x}"),
        }
    }

    fn write32(&self, offset: u32, value: u32) {
        match offset {
            0..0x40 => self.dev.write32(common32(offset), value),
            at::TABLE..at::PBA => {
                self.state.borrow_mut().table[((offset - at::TABLE) / 4) as usize] = value
            }
            _ => panic!("32-bit write at BAR offset {offset:#x}"),
        }
    }

    fn read16(&self, offset: u32) -> u16 {
        let q = self.queue();
        match offset {
            common::MSIX_CONFIG => self.state.borrow().msix_config,
            common::NUM_QUEUES => 1 + self.dev.state.borrow().extra_queues.len() as u16,
            common::QUEUE_SELECT => q as u16,
            common::QUEUE_SIZE => self.dev.read32(reg::QUEUE_NUM_MAX) as u16,
            common::QUEUE_MSIX_VECTOR => self.state.borrow().queue_vectors[q],
            common::QUEUE_ENABLE => self.dev.read32(reg::QUEUE_READY) as u16,
            common::QUEUE_NOTIFY_OFF => self.state.borrow().notify_off.unwrap_or(q as u16),
            at::DEVICE..0x2100 => self.dev.read16(reg::CONFIG + offset - at::DEVICE),
            _ => panic!("16-bit read at BAR offset {offset:#x}"),
        }
    }

    fn write16(&self, offset: u32, value: u16) {
        match offset {
            common::MSIX_CONFIG => {
                let v = self.vector(value);
                self.state.borrow_mut().msix_config = v;
            }
            common::QUEUE_SELECT => self.dev.write32(reg::QUEUE_SEL, u32::from(value)),
            common::QUEUE_SIZE => self.dev.write32(reg::QUEUE_NUM, u32::from(value)),
            common::QUEUE_MSIX_VECTOR => {
                let v = self.vector(value);
                let q = self.queue();
                self.state.borrow_mut().queue_vectors[q] = v;
            }
            common::QUEUE_ENABLE => self.dev.write32(reg::QUEUE_READY, u32::from(value)),
            at::NOTIFY..at::TABLE => {
                self.state
                    .borrow_mut()
                    .notifies
                    .push((offset - at::NOTIFY, value));
                self.dev.write32(reg::QUEUE_NOTIFY, u32::from(value));
            }
            _ => panic!("16-bit write at BAR offset {offset:#x}"),
        }
    }

    fn read8(&self, offset: u32) -> u8 {
        match offset {
            common::DEVICE_STATUS => self.dev.read32(reg::STATUS) as u8,
            common::CONFIG_GENERATION => self.dev.read32(reg::CONFIG_GENERATION) as u8,
            at::ISR => {
                self.state.borrow_mut().isr_reads += 1;
                let isr = self.dev.read32(reg::INTERRUPT_STATUS);
                self.dev.write32(reg::INTERRUPT_ACK, isr);
                isr as u8
            }
            at::DEVICE..0x2100 => self.dev.read8(reg::CONFIG + offset - at::DEVICE),
            _ => panic!("8-bit read at BAR offset {offset:#x}"),
        }
    }

    fn write8(&self, offset: u32, value: u8) {
        match offset {
            common::DEVICE_STATUS => {
                if value == 0 {
                    let mut s = self.state.borrow_mut();
                    s.msix_config = 0xffff;
                    s.queue_vectors = [0xffff; 8];
                }
                self.dev.write32(reg::STATUS, u32::from(value))
            }
            _ => panic!("8-bit write at BAR offset {offset:#x}"),
        }
    }
}
