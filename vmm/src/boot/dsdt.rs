//! The DSDT: the virtio-mmio devices, described in AML for kernels that do not read
//! `virtio_mmio.device=` from their command line; with the PCI transport, the host bridge
//! and its ECAM reservation instead (see [`super::dsdt_pci`]).
//!
//! Distribution kernels (Debian's has `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` unset) find
//! virtio-mmio devices only through ACPI: Linux's virtio_mmio driver matches `_HID`
//! `LNRO0005`. Each slot becomes, as Firecracker and QEMU's microvm describe theirs:
//!
//! ```text
//! Scope (\_SB) {
//!     Device (VR00) {
//!         Name (_HID, "LNRO0005")
//!         Name (_UID, 0)              // the slot's index
//!         Name (_CCA, One)            // DMA is cache-coherent
//!         Name (_CRS, ResourceTemplate () {
//!             Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
//!         })
//!     }
//!     ...
//! }
//! ```
//!
//! The interrupt is edge-triggered and active high because that is how the vmm raises it: a
//! device's call fd is a KVM irqfd on the slot's GSI, and KVM injects an irqfd as a pulse
//! (line up, then down) into the in-kernel IOAPIC. Described level-triggered, the guest
//! would program the pin so, and KVM's IOAPIC drops a pulse that comes while the previous
//! interrupt awaits its EOI (remote IRR): completions would be lost. It also matches the
//! MP table, which puts every pin on the ISA bus (edge, active high).

use acpi_tables::aml::{Device, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate, Scope};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::acpi::SDT_HEADER_LEN;
use super::dsdt_pci::{EcamReservation, HostBridge};
use super::BootError;
use crate::config::Transport;
use crate::virtio::{MmioSlot, MMIO_SIZE};

/// `_HID` Linux's virtio_mmio driver matches (`virtio_mmio_acpi_match`).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// Revision 2: the DSDT's AML integers are 64-bit.
const DSDT_REVISION: u8 = 2;

/// The DSDT for the virtio-mmio `devices` and, with `transport` PCI, the host bridge,
/// serialized, with `oem_id` and `oem_revision` as the other tables have them.
pub fn build(
    devices: &[MmioSlot],
    transport: Transport,
    oem_id: [u8; 6],
    oem_revision: u32,
) -> Result<Vec<u8>, BootError> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN as u32,
        DSDT_REVISION,
        oem_id,
        *b"BKHDDSDT",
        oem_revision,
    );
    let described = devices
        .iter()
        .map(VirtioMmioDevice::new)
        .collect::<Result<Vec<_>, _>>()?;
    let mut children: Vec<&dyn Aml> = described.iter().map(|d| d as &dyn Aml).collect();
    if transport == Transport::Pci {
        children.push(&HostBridge);
        children.push(&EcamReservation);
    }
    if children.is_empty() {
        return Ok(dsdt.as_slice().to_vec());
    }
    let mut aml = Vec::new();
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut aml);
    dsdt.append_slice(&aml);
    Ok(dsdt.as_slice().to_vec())
}

/// One slot's `Device` in AML.
struct VirtioMmioDevice {
    /// `VRxx`, xx the slot's index in hex: AML names are exactly four characters.
    name: String,
    uid: u32,
    base: u32,
    irq: u32,
}

impl VirtioMmioDevice {
    fn new(slot: &MmioSlot) -> Result<Self, BootError> {
        let cannot = || BootError::AcpiDevice {
            index: slot.index,
            base: slot.base,
        };
        // Two hex digits name 256 devices; the IOAPIC has 24 pins, so slot() hands out 19.
        let uid = u8::try_from(slot.index).map_err(|_| cannot())?;
        // Memory32Fixed: the window must lie below 4 GiB (it is in the 32-bit MMIO gap).
        let base = u32::try_from(slot.base).map_err(|_| cannot())?;
        if u64::from(base) + MMIO_SIZE > 1 << 32 {
            return Err(cannot());
        }
        Ok(VirtioMmioDevice {
            name: format!("VR{uid:02X}"),
            uid: uid.into(),
            base,
            irq: slot.irq,
        })
    }
}

/// [`MMIO_SIZE`] as the descriptor's 32-bit length.
const MMIO_WINDOW: u32 = {
    assert!(MMIO_SIZE <= u32::MAX as u64);
    MMIO_SIZE as u32
};

impl Aml for VirtioMmioDevice {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let memory = Memory32Fixed::new(true, self.base, MMIO_WINDOW);
        // consumer, edge-triggered, active high, exclusive: see the module documentation.
        let interrupt = Interrupt::new(true, true, false, false, self.irq);
        let crs = ResourceTemplate::new(vec![&memory, &interrupt]);
        let hid = Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID);
        let uid = Name::new(Path::new("_UID"), &self.uid);
        let cca = Name::new(Path::new("_CCA"), &acpi_tables::aml::ONE);
        let crs = Name::new(Path::new("_CRS"), &crs);
        Device::new(Path::new(&self.name), vec![&hid, &uid, &cca, &crs]).to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::slot;

    const OEM: [u8; 6] = *b"BULKHD";

    fn dsdt_bytes(count: usize) -> Vec<u8> {
        let slots: Vec<_> = (0..count).map(|i| slot(i).unwrap()).collect();
        build(&slots, Transport::Mmio, OEM, 1).unwrap()
    }

    /// The AML of one device, written out by hand from the ACPI 6.5 encodings (20.2 AML
    /// grammar, 6.4 resource descriptors), not by the library under test.
    fn expected_device(index: u8, base: u32, irq: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(format!("VR{index:02X}").as_bytes());
        // Name (_HID, "LNRO0005"): NameOp, name, StringPrefix, ASCII, NUL.
        body.extend_from_slice(b"\x08_HID\x0dLNRO0005\x00");
        // Name (_UID, index): Zero, One or BytePrefix n.
        body.extend_from_slice(b"\x08_UID");
        match index {
            0 => body.push(0x00),
            1 => body.push(0x01),
            n => body.extend_from_slice(&[0x0a, n]),
        }
        // Name (_CCA, One).
        body.extend_from_slice(b"\x08_CCA\x01");
        // Name (_CRS, Buffer): Memory32Fixed (0x86, length 9, RW), Extended Interrupt
        // (0x89, length 6, flags consumer|edge = 0x03, one interrupt), End Tag (0x79, 0).
        let mut res = vec![0x86, 9, 0, 1];
        res.extend_from_slice(&base.to_le_bytes());
        res.extend_from_slice(&0x1000u32.to_le_bytes());
        res.extend_from_slice(&[0x89, 6, 0, 0x03, 1]);
        res.extend_from_slice(&irq.to_le_bytes());
        res.extend_from_slice(&[0x79, 0]);
        assert_eq!(res.len(), 23);
        // BufferOp, PkgLength (1 byte: itself + BytePrefix size + data), BytePrefix size.
        body.extend_from_slice(b"\x08_CRS\x11");
        body.extend_from_slice(&[1 + 2 + 23, 0x0a, 23]);
        body.extend_from_slice(&res);
        // ExtOpPrefix DeviceOp PkgLength: counts itself; one byte holds up to 63, two
        // bytes (bits 6-7 = 1, low nibble, then the next 8 bits) up to 4095.
        let mut dev = vec![0x5b, 0x82];
        let len = body.len() + 2;
        assert!((64..4096).contains(&len));
        dev.extend_from_slice(&[0x40 | (len & 0xf) as u8, (len >> 4) as u8]);
        dev.extend_from_slice(&body);
        dev
    }

    #[test]
    fn no_devices_means_no_aml() {
        let t = dsdt_bytes(0);
        assert_eq!(t.len(), 36);
        assert_eq!(&t[..4], b"DSDT");
    }

    #[test]
    fn each_slot_is_an_lnro0005_device_with_its_window_and_irq() {
        for count in [1, 3, 19] {
            let t = dsdt_bytes(count);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len(),
                "length field"
            );
            assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
            let aml = &t[36..];
            // ScopeOp, PkgLength (2 bytes once the scope passes 63 bytes), \_SB_.
            assert_eq!(aml[0], 0x10, "ScopeOp");
            let pkg_bytes = 1 + usize::from(aml[1] >> 6);
            assert_eq!(&aml[1 + pkg_bytes..1 + pkg_bytes + 5], b"\\_SB_");
            let mut devices = &aml[1 + pkg_bytes + 5..];
            for index in 0..count {
                let s = slot(index).unwrap();
                let want = expected_device(index as u8, s.base as u32, s.irq);
                assert_eq!(
                    &devices[..want.len()],
                    &want[..],
                    "device {index} at {:#x}, irq {}",
                    s.base,
                    s.irq
                );
                devices = &devices[want.len()..];
            }
            assert!(devices.is_empty(), "nothing after the last device");
        }
    }

    #[test]
    fn pci_puts_the_host_bridge_and_ecam_reservation_in_sb_and_mmio_does_not() {
        let bridge = |transport| {
            let t = build(&[], transport, OEM, 1).unwrap();
            assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
            t
        };
        assert_eq!(bridge(Transport::Mmio).len(), 36, "no AML without devices");
        let t = bridge(Transport::Pci);
        let aml = &t[36..];
        assert_eq!(aml[0], 0x10, "ScopeOp");
        let pkg_bytes = 1 + usize::from(aml[1] >> 6);
        assert_eq!(&aml[1 + pkg_bytes..1 + pkg_bytes + 5], b"\\_SB_");
        let mut want = Vec::new();
        HostBridge.to_aml_bytes(&mut want);
        EcamReservation.to_aml_bytes(&mut want);
        assert_eq!(&aml[1 + pkg_bytes + 5..], &want[..]);
    }

    #[test]
    fn a_slot_that_cannot_be_described_is_an_error() {
        let high = MmioSlot {
            index: 0,
            base: 0x1_0000_0000,
            irq: 5,
        };
        let err = build(&[high], Transport::Mmio, OEM, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtio-mmio device 0 at 0x100000000 cannot be described in the DSDT \
             (Memory32Fixed needs its window below 4 GiB, the device name an index below 256)"
        );
        let many = MmioSlot {
            index: 256,
            base: 0xd000_0000,
            irq: 5,
        };
        assert!(matches!(
            build(&[many], Transport::Mmio, OEM, 1),
            Err(BootError::AcpiDevice { index: 256, .. })
        ));
        let wraps = MmioSlot {
            index: 0,
            base: 0xffff_f001,
            irq: 5,
        };
        assert!(build(&[wraps], Transport::Mmio, OEM, 1).is_err());
    }
}
