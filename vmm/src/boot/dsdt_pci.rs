//! The DSDT's PCI devices (virtio-pci transport): the host bridge `\_SB_.PCI0` and the
//! motherboard resource that reserves its ECAM.
//!
//! ```text
//! Scope (\_SB) {
//!     Device (PCI0) {
//!         Name (_HID, EisaId ("PNP0A08"))     // PCI Express root bridge ...
//!         Name (_CID, EisaId ("PNP0A03"))     // ... compatible with a PCI root bridge
//!         Name (_SEG, Zero)                   // segment group 0, as in the MCFG
//!         Name (_BBN, Zero)                   // its first bus
//!         Name (_UID, Zero)
//!         Name (_CCA, One)                    // DMA is cache-coherent
//!         Name (_CRS, ResourceTemplate () {
//!             WordBusNumber (ResourceProducer, ..., 0x0000, 0x0000, ...)  // bus 0 only
//!             IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08)   // config ports, consumed
//!             WordIO (ResourceProducer, ..., 0x0000, 0x0CF7, ...)  // forwarded I/O
//!             WordIO (ResourceProducer, ..., 0x0D00, 0xFFFF, ...)
//!             DWordMemory (ResourceProducer, ..., NonCacheable, ReadWrite,
//!                          0xC0000000, 0xCFFFFFFF, ...)   // the 32-bit BAR window
//!         })
//!     }
//!     Device (MRES) {
//!         Name (_HID, EisaId ("PNP0C02"))     // motherboard resources
//!         Name (_UID, Zero)
//!         Name (_CRS, ResourceTemplate () {
//!             Memory32Fixed (ReadWrite, 0xE0000000, 0x00100000)  // the ECAM
//!         })
//!     }
//! }
//! ```
//!
//! The I/O ranges are those a PC host bridge forwards: everything but its own configuration
//! ports 0xCF8..=0xCFF, which the bridge consumes (a fixed `IO` descriptor; Linux drops it
//! from the root bus's windows). The legacy devices bulkhead emulates (8250, i8042, PIT) sit
//! in the forwarded range as on a PC. No 64-bit window: no BAR is large (see `layout`).
//!
//! The ECAM is not in `_CRS` (config space is not a window the bridge forwards): it is
//! described by the MCFG ([`super::mcfg`]) and reserved by the PNP0C02 device here and in the
//! e820 map ([`super::e820`]). Linux ignores an MMCONFIG area reserved by neither
//! (`pci_mmcfg_reserved()`: "MMCONFIG ... not reserved in ACPI motherboard resources").
//!
//! No `_PRT`: every virtio-pci function has interrupt pin 0 and uses MSI-X only, so there is
//! no INTx to route (and Linux asks `_PRT` only for a function with a pin).
//!
//! No `_OSC`, deliberately. Without it Linux logs "_OSC: platform retains control of PCIe
//! features (AE_NOT_FOUND)" and keeps native PCIe hotplug, AER, PME, LTR and DPC off and
//! ASPM disabled. None of those exist on this bridge (bus 0, no root ports, no hotplug), so
//! nothing is lost, and an `_OSC` granting control of features the vmm does not implement
//! would invite the guest to drive them. MSI/MSI-X do not depend on `_OSC` (the FADT's
//! "MSI not supported" flag is what would turn them off, and the PCI tables leave it clear);
//! nor does MMCONFIG, which comes from the MCFG.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name, Path,
    ResourceTemplate, IO, ONE, ZERO,
};
use acpi_tables::{Aml, AmlSink};

use super::mcfg::{PCI_FIRST_BUS, PCI_LAST_BUS, PCI_SEGMENT};
use crate::layout;

/// `_HID` of a PCI Express root bridge (PCI Firmware Specification 3.3, 4.1.5).
pub const PCI_HOST_BRIDGE_HID: &str = "PNP0A08";
/// `_CID` of a conventional PCI root bridge, which a PNP0A08 is compatible with.
pub const PCI_BRIDGE_CID: &str = "PNP0A03";
/// `_HID` of motherboard resources (reservations the OS must respect).
pub const MOTHERBOARD_RESOURCES_HID: &str = "PNP0C02";

/// The legacy configuration mechanism's ports: 0xCF8 address, 0xCFC..=0xCFF data.
const CONFIG_PORTS: u16 = 0xcf8;
const CONFIG_PORTS_LEN: u8 = 8;
/// The highest I/O port.
const IO_END: u16 = 0xffff;

/// The 32-bit BAR window as `(first, last)`, checked when compiling to be below 4 GiB.
const MMIO_WINDOW: (u32, u32) = {
    assert!(layout::PCI_MMIO_START < layout::PCI_MMIO_END);
    assert!(layout::PCI_MMIO_END <= 1 << 32);
    (
        layout::PCI_MMIO_START as u32,
        (layout::PCI_MMIO_END - 1) as u32,
    )
};
/// The ECAM as `(base, length)` for a Memory32Fixed descriptor.
const ECAM: (u32, u32) = {
    assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= 1 << 32);
    (layout::PCI_ECAM_START as u32, layout::PCI_ECAM_SIZE as u32)
};

/// `\_SB_.PCI0`, the host bridge.
pub struct HostBridge;

impl Aml for HostBridge {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let buses = AddressSpace::<u16>::new_bus_number(PCI_FIRST_BUS.into(), PCI_LAST_BUS.into());
        let config_ports = IO::new(CONFIG_PORTS, CONFIG_PORTS, 1, CONFIG_PORTS_LEN);
        let io_low = AddressSpace::<u16>::new_io(0, CONFIG_PORTS - 1, None);
        let io_high =
            AddressSpace::<u16>::new_io(CONFIG_PORTS + u16::from(CONFIG_PORTS_LEN), IO_END, None);
        let memory = AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            MMIO_WINDOW.0,
            MMIO_WINDOW.1,
            None,
        );
        let crs = ResourceTemplate::new(vec![&buses, &config_ports, &io_low, &io_high, &memory]);
        let hid = EISAName::new(PCI_HOST_BRIDGE_HID);
        let cid = EISAName::new(PCI_BRIDGE_CID);
        let segment = PCI_SEGMENT;
        let bbn = PCI_FIRST_BUS;
        Device::new(
            Path::new("PCI0"),
            vec![
                &Name::new(Path::new("_HID"), &hid),
                &Name::new(Path::new("_CID"), &cid),
                &Name::new(Path::new("_SEG"), &segment),
                &Name::new(Path::new("_BBN"), &bbn),
                &Name::new(Path::new("_UID"), &ZERO),
                &Name::new(Path::new("_CCA"), &ONE),
                &Name::new(Path::new("_CRS"), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB_.MRES`, a PNP0C02 device reserving the ECAM.
pub struct EcamReservation;

impl Aml for EcamReservation {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let ecam = Memory32Fixed::new(true, ECAM.0, ECAM.1);
        let crs = ResourceTemplate::new(vec![&ecam]);
        let hid = EISAName::new(MOTHERBOARD_RESOURCES_HID);
        Device::new(
            Path::new("MRES"),
            vec![
                &Name::new(Path::new("_HID"), &hid),
                &Name::new(Path::new("_UID"), &ZERO),
                &Name::new(Path::new("_CRS"), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aml(what: &dyn Aml) -> Vec<u8> {
        let mut bytes = Vec::new();
        what.to_aml_bytes(&mut bytes);
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The resource descriptors and names, written out by hand from ACPI 6.5 (6.4 resource
    /// descriptors, 19.3.4 EISAID encoding), not by the library under test.
    #[test]
    fn the_host_bridge_names_and_resources() {
        let b = aml(&HostBridge);
        assert_eq!(&b[..2], &[0x5b, 0x82], "DeviceOp");
        assert!(contains(&b, b"PCI0"));
        // Name (_HID, EisaId ("PNP0A08")), Name (_CID, EisaId ("PNP0A03")): DWordPrefix and
        // the compressed id ("PNP" in 5-bit letters, then the product number).
        assert!(contains(&b, b"\x08_HID\x0c\x41\xd0\x0a\x08"), "{b:02x?}");
        assert!(contains(&b, b"\x08_CID\x0c\x41\xd0\x0a\x03"));
        for zero in ["_SEG", "_BBN", "_UID"] {
            assert!(
                contains(&b, &[b"\x08", zero.as_bytes(), b"\x00"].concat()),
                "{zero}"
            );
        }
        assert!(contains(&b, b"\x08_CCA\x01"));
        // Word Address Space Descriptor (0x88, length 13), type 2 (bus numbers), flags
        // MinFixed|MaxFixed (producer), granularity 0, 0..=0, translation 0, length 1.
        assert!(contains(
            &b,
            &[0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        ));
        // I/O Port Descriptor (0x47, 16-bit decode), 0xCF8..=0xCF8, alignment 1, length 8.
        assert!(contains(&b, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        // Word I/O ranges (type 1, EntireRange): 0..=0xCF7 and 0xD00..=0xFFFF.
        assert!(contains(
            &b,
            &[0x88, 13, 0, 1, 0x0c, 3, 0, 0, 0, 0, 0xf7, 0x0c, 0, 0, 0xf8, 0x0c]
        ));
        assert!(contains(
            &b,
            &[0x88, 13, 0, 1, 0x0c, 3, 0, 0, 0, 0x0d, 0xff, 0xff, 0, 0, 0, 0xf3]
        ));
        // DWord Address Space Descriptor (0x87, length 23), memory, non-cacheable,
        // read-write: 0xC000_0000..=0xCFFF_FFFF, length 0x1000_0000.
        let mut window = vec![0x87, 23, 0, 0, 0x0c, 1, 0, 0, 0, 0];
        window.extend_from_slice(&0xc000_0000u32.to_le_bytes());
        window.extend_from_slice(&0xcfff_ffffu32.to_le_bytes());
        window.extend_from_slice(&0u32.to_le_bytes());
        window.extend_from_slice(&0x1000_0000u32.to_le_bytes());
        assert!(contains(&b, &window), "{b:02x?}");
    }

    #[test]
    fn the_ecam_is_a_motherboard_resource() {
        let b = aml(&EcamReservation);
        assert!(contains(&b, b"MRES"));
        assert!(contains(&b, b"\x08_HID\x0c\x41\xd0\x0c\x02"), "{b:02x?}");
        // Memory32Fixed (0x86, length 9, read-write), base 0xE000_0000, length 1 MiB.
        let mut ecam = vec![0x86, 9, 0, 1];
        ecam.extend_from_slice(&0xe000_0000u32.to_le_bytes());
        ecam.extend_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(contains(&b, &ecam), "{b:02x?}");
    }
}
