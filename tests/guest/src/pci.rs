//! PCI configuration space as a kernel reads it through ECAM (PCI Express enhanced
//! configuration access): where a function's 4 KiB of configuration space lies, its header
//! (IDs, class, header type), its capability list and its memory BARs. Accesses go
//! through [`Regs`] over one function's configuration space, so the unit tests can hand
//! in a fake.

use crate::virtio::Regs;
use core::fmt;

/// Configuration-space offsets of a type-0 header.
pub mod cfg {
    /// Vendor ID (u16); 0xffff = no function.
    pub const VENDOR_ID: u32 = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: u32 = 0x02;
    /// Command (u16).
    pub const COMMAND: u32 = 0x04;
    /// Status (u16).
    pub const STATUS: u32 = 0x06;
    /// Revision ID (u8), then class code (3 bytes: prog-if, subclass, class).
    pub const REVISION: u32 = 0x08;
    /// Header type (u8); bit 7 = multi-function device.
    pub const HEADER_TYPE: u32 = 0x0e;
    /// BAR 0 (each BAR a u32; a 64-bit BAR takes two).
    pub const BAR0: u32 = 0x10;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR: u32 = 0x2c;
    /// Subsystem ID (u16).
    pub const SUBSYSTEM_ID: u32 = 0x2e;
    /// First capability (u8, low two bits reserved).
    pub const CAPABILITIES: u32 = 0x34;
    /// Interrupt pin (u8; 0 = none).
    pub const INTERRUPT_PIN: u32 = 0x3d;
}

/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (the device may do DMA and send MSIs).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: legacy INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Capability ID: vendor-specific (virtio's structures).
pub const CAP_VENDOR: u8 = 0x09;
/// Capability ID: MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Capabilities walked at most: 256 bytes of configuration space hold at most 48 (4 bytes
/// each, above the 64-byte header), so a longer walk is a loop.
pub const MAX_CAPS: usize = 48;
/// Devices on one bus.
pub const DEVICES: u8 = 32;
/// Functions per device.
pub const FUNCTIONS: u8 = 8;

/// Bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0..32).
    pub device: u8,
    /// Function (0..8).
    pub function: u8,
}

impl Bdf {
    /// The offset of this function's configuration space in an ECAM region whose first bus
    /// is `start_bus` (PCI Express base specification 7.2.2: bus << 20 | device << 15 |
    /// function << 12). `None` for a bus below `start_bus`.
    pub fn ecam_offset(&self, start_bus: u8) -> Option<u64> {
        let bus = self.bus.checked_sub(start_bus)?;
        Some(
            u64::from(bus) << 20
                | u64::from(self.device & 0x1f) << 15
                | u64::from(self.function & 7) << 12,
        )
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The identifying part of a function's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: class << 16 | subclass << 8 | prog-if.
    pub class: u32,
    /// Header type (bit 7 masked off).
    pub header_type: u8,
    /// Multi-function device (header type bit 7).
    pub multi_function: bool,
}

/// The header of the function behind `cfg`, or `None` if there is none (vendor 0xffff or
/// 0: nothing answers there).
pub fn header<C: Regs>(cfg: &C) -> Option<Header> {
    let ids = cfg.read32(cfg::VENDOR_ID);
    let vendor = ids as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let class_rev = cfg.read32(cfg::REVISION);
    let header_type = cfg.read8(cfg::HEADER_TYPE);
    Some(Header {
        vendor,
        device: (ids >> 16) as u16,
        revision: class_rev as u8,
        class: class_rev >> 8,
        header_type: header_type & 0x7f,
        multi_function: header_type & 0x80 != 0,
    })
}

/// A capability: its ID and where it is in configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Capability ID.
    pub id: u8,
    /// Its offset.
    pub offset: u32,
}

/// Why a function's capabilities or BARs cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// The status register says there is no capability list.
    NoList,
    /// A capability pointer into the header or past 256 bytes.
    BadPointer(u32),
    /// The list is longer than [`MAX_CAPS`] (a loop).
    Loop,
    /// A BAR that is not a memory BAR.
    IoBar(u8),
    /// BAR index 5 as the low half of a 64-bit BAR, or an index past 5.
    BadBar(u8),
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoList => write!(f, "no capability list (status bit 4 clear)"),
            Self::BadPointer(p) => write!(f, "capability pointer {p:#x} outside 0x40..0x100"),
            Self::Loop => write!(f, "capability list longer than {MAX_CAPS} entries (a loop)"),
            Self::IoBar(b) => write!(f, "BAR{b} is an I/O BAR, not memory"),
            Self::BadBar(b) => write!(f, "BAR{b} does not exist or cannot hold a 64-bit BAR"),
        }
    }
}

/// Walk the capability list: call `each` with every capability, in list order, until it
/// returns `false` or the list ends. Bounded: a pointer into the header or past 256
/// bytes, or more than [`MAX_CAPS`] entries, is an error.
pub fn walk_caps<C: Regs>(cfg: &C, mut each: impl FnMut(Cap) -> bool) -> Result<(), CapError> {
    if cfg.read16(cfg::STATUS) & STATUS_CAPABILITIES == 0 {
        return Err(CapError::NoList);
    }
    let mut ptr = u32::from(cfg.read8(cfg::CAPABILITIES) & 0xfc);
    for _ in 0..MAX_CAPS {
        if ptr == 0 {
            return Ok(());
        }
        if !(0x40..0x100).contains(&ptr) {
            return Err(CapError::BadPointer(ptr));
        }
        let word = cfg.read16(ptr);
        if !each(Cap {
            id: word as u8,
            offset: ptr,
        }) {
            return Ok(());
        }
        ptr = u32::from((word >> 8) as u8 & 0xfc);
    }
    Err(CapError::Loop)
}

/// A memory BAR as the function's configuration space holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Its index.
    pub index: u8,
    /// The address the firmware (here: the VMM) assigned.
    pub address: u64,
    /// 64-bit (type 2) rather than 32-bit.
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// Memory BAR `index`, read as it is: the address the VMM assigned (this guest, like a
/// kernel on firmware that set the BARs up, does not reassign them).
pub fn bar<C: Regs>(cfg: &C, index: u8) -> Result<Bar, CapError> {
    if index > 5 {
        return Err(CapError::BadBar(index));
    }
    let at = cfg::BAR0 + 4 * u32::from(index);
    let low = cfg.read32(at);
    if low & 1 != 0 {
        return Err(CapError::IoBar(index));
    }
    let is_64 = (low >> 1) & 3 == 2;
    let high = if is_64 {
        if index == 5 {
            return Err(CapError::BadBar(index));
        }
        cfg.read32(at + 4)
    } else {
        0
    };
    Ok(Bar {
        index,
        address: u64::from(high) << 32 | u64::from(low & !0xf),
        is_64,
        prefetchable: low & 8 != 0,
    })
}

/// Turn on memory decoding and bus mastering, and turn INTx off (MSI-X only).
pub fn enable<C: Regs>(cfg: &C) {
    let command = cfg.read16(cfg::COMMAND);
    cfg.write16(
        cfg::COMMAND,
        command | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mock_pci::FakeCfg;

    #[test]
    fn ecam_offsets() {
        let bdf = |bus, device, function| Bdf {
            bus,
            device,
            function,
        };
        assert_eq!(bdf(0, 0, 0).ecam_offset(0), Some(0));
        assert_eq!(bdf(0, 1, 0).ecam_offset(0), Some(0x8000));
        assert_eq!(bdf(0, 31, 7).ecam_offset(0), Some(0xff000));
        assert_eq!(bdf(2, 3, 1).ecam_offset(0), Some(0x21_9000));
        assert_eq!(bdf(2, 3, 1).ecam_offset(2), Some(0x1_9000));
        assert_eq!(bdf(1, 0, 0).ecam_offset(2), None);
        assert_eq!(bdf(0, 1, 0).to_string(), "00:01.0");
        assert_eq!(bdf(0x1a, 0x1f, 7).to_string(), "1a:1f.7");
    }

    #[test]
    fn header_and_bar() {
        let cfg = FakeCfg::virtio(2, 0xc000_4000);
        let h = header(&cfg).unwrap();
        assert_eq!((h.vendor, h.device, h.revision), (0x1af4, 0x1042, 1));
        let b = bar(&cfg, 0).unwrap();
        assert_eq!(b.address, 0xc000_4000);
        assert!(b.is_64);
        cfg.set32(cfg::BAR0 + 4, 1);
        assert_eq!(bar(&cfg, 0).unwrap().address, 0x1_c000_4000);
        cfg.set32(cfg::BAR0, 0xc000_0001);
        assert_eq!(bar(&cfg, 0), Err(CapError::IoBar(0)));
        assert_eq!(bar(&cfg, 6), Err(CapError::BadBar(6)));
        cfg.set32(cfg::VENDOR_ID, 0xffff_ffff);
        assert_eq!(header(&cfg), None);
    }

    #[test]
    fn capability_walk_is_bounded() {
        let cfg = FakeCfg::virtio(1, 0xc000_0000);
        let mut ids = Vec::new();
        walk_caps(&cfg, |c| {
            ids.push(c.id);
            true
        })
        .unwrap();
        assert_eq!(ids, vec![0x11, 9, 9, 9, 9, 9]);
        // A loop: the last capability points back at the first.
        let last = cfg.cap_offsets().last().copied().unwrap();
        let first = cfg.cap_offsets()[0];
        cfg.set8(last + 1, first as u8);
        assert_eq!(walk_caps(&cfg, |_| true), Err(CapError::Loop));
        cfg.set8(last + 1, 0x20);
        assert_eq!(walk_caps(&cfg, |_| true), Err(CapError::BadPointer(0x20)));
        cfg.set16(cfg::STATUS, 0);
        assert_eq!(walk_caps(&cfg, |_| true), Err(CapError::NoList));
    }
}
