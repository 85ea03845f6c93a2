//! The MCFG table (PCI Firmware Specification 3.3, 4.1.2): where the PCI host bridge's ECAM
//! (memory-mapped configuration space) is.
//!
//! bulkhead's bridge has one ECAM allocation: segment 0, bus 0 only, at
//! [`layout::PCI_ECAM_START`] ([`layout::PCI_ECAM_SIZE`] = 1 MiB, 4 KiB per function). Linux
//! uses it for configuration accesses once the area is also reserved by a PNP0C02 device in
//! the DSDT or in the e820 map (bulkhead does both, see [`super::dsdt`] and
//! [`super::e820`]); the test guest finds the ECAM here.

use acpi_tables::mcfg::MCFG;
use acpi_tables::Aml;

use crate::layout;

/// PCI segment group of the only host bridge.
pub const PCI_SEGMENT: u16 = 0;
/// First bus the ECAM decodes.
pub const PCI_FIRST_BUS: u8 = 0;
/// Last bus the ECAM decodes (1 MiB of ECAM per bus).
pub const PCI_LAST_BUS: u8 = {
    let buses = layout::PCI_ECAM_SIZE >> 20;
    assert!(buses >= 1 && buses <= 256);
    assert!(layout::PCI_ECAM_SIZE == buses << 20, "ECAM is whole buses");
    (buses - 1) as u8
};

/// The MCFG, serialized, with the other tables' OEM id and revision.
pub fn build(oem_id: [u8; 6], oem_revision: u32) -> Vec<u8> {
    let mut mcfg = MCFG::new(oem_id, *b"BKHDMCFG", oem_revision);
    mcfg.add_ecam(
        layout::PCI_ECAM_START,
        PCI_SEGMENT,
        PCI_FIRST_BUS,
        PCI_LAST_BUS,
    );
    let mut bytes = Vec::new();
    mcfg.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout written out from the PCI Firmware Specification, not by the library: the
    /// 36-byte header, 8 reserved bytes, then one 16-byte allocation (base address, segment,
    /// start bus, end bus, 4 reserved bytes).
    #[test]
    fn one_allocation_for_bus_0_at_the_ecam() {
        let t = build(*b"BULKHD", 1);
        assert_eq!(t.len(), 36 + 8 + 16);
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()),
            60,
            "length"
        );
        assert_eq!(t[8], 1, "revision");
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
        assert_eq!(&t[10..16], b"BULKHD");
        assert_eq!(&t[16..24], b"BKHDMCFG");
        assert_eq!(&t[36..44], &[0; 8], "reserved");
        let entry = &t[44..];
        assert_eq!(
            u64::from_le_bytes(entry[..8].try_into().unwrap()),
            0xe000_0000,
            "ECAM base"
        );
        assert_eq!(u16::from_le_bytes([entry[8], entry[9]]), 0, "segment");
        assert_eq!((entry[10], entry[11]), (0, 0), "buses 0..=0");
        assert_eq!(&entry[12..], &[0; 4], "reserved");
    }
}
