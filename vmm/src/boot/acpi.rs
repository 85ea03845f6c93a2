//! ACPI tables: how a stock distribution kernel learns its processors, IOAPIC, interrupt
//! routing and virtio-mmio devices.
//!
//! Distribution kernels (Debian's cloud kernel, for one) are built without
//! `CONFIG_X86_MPPARSE`, ignore the MP table and would run on one CPU. Like Firecracker and
//! Cloud Hypervisor, bulkhead describes a hardware-reduced ACPI platform (no PM timer, SCI or
//! other fixed hardware):
//!
//! ```text
//! RSDP (layout::ACPI_START) -> XSDT -> FADT (HW_REDUCED_ACPI) -> DSDT (an LNRO0005
//!                                                                  device per virtio-mmio
//!                                                                  slot; on PCI the
//!                                                                  PNP0A08 host bridge and
//!                                                                  a PNP0C02 ECAM reservation)
//!                                   -> MADT (a local APIC per vCPU, the IOAPIC,
//!                                            IRQ 0 -> GSI 2, NMI on every LINT1)
//!                                   -> MCFG (PCI only: the ECAM, bus 0 of segment 0)
//! ```
//!
//! The DSDT's AML is written by [`super::dsdt`] and [`super::dsdt_pci`], the MCFG by
//! [`super::mcfg`]. With the mmio transport the tables are what they were before PCI.
//!
//! [`write`] puts them in the e820-reserved BIOS area below the MP table and returns the
//! RSDP's address, which the kernel gets in the zero page (`acpi_rsdp_addr`) or the PVH start
//! info (`rsdp_paddr`); it is also where Linux's fallback scan of 0xe0000..0x100000 looks.
//! The MP table stays for guests without ACPI.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes};

use super::mptable::{MAX_CPUS, PIT_IOAPIC_PIN};
use super::{checksum, dsdt, mcfg, BootError};
use crate::config::Transport;
use crate::layout;
use crate::virtio::MmioSlot;

/// OEM id of every table (and the RSDP).
const OEM_ID: [u8; 6] = *b"BULKHD";
const OEM_REVISION: u32 = 1;
/// Tables start on 16-byte boundaries (the RSDP must; the others need not, it is tidy).
const TABLE_ALIGN: usize = 16;
/// Length of the header every system description table starts with.
pub(super) const SDT_HEADER_LEN: usize = 36;
/// Offset of the header's checksum byte.
const SDT_CHECKSUM_OFFSET: usize = 9;

/// Offset of the MADT's flags.
const MADT_FLAGS_OFFSET: usize = 40;
/// MADT flag: dual 8259 PICs are present too (KVM's in-kernel irqchip has them).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// The PIT's ISA IRQ, which KVM's default routing delivers to IOAPIC pin [`PIT_IOAPIC_PIN`].
const PIT_ISA_IRQ: u8 = 0;
/// MPS INTI flags "conforms to the bus" (ISA: edge-triggered, active high).
const MPS_INTI_CONFORMS: u16 = 0;
/// Processor UID meaning "all processors" in a local APIC NMI entry.
const ALL_PROCESSORS: u8 = 0xff;
/// The local APIC input NMIs arrive on.
const LINT1: u8 = 1;

/// FADT IA-PC boot architecture flags. The 8042 bit keeps Linux probing the i8042 (which
/// bulkhead emulates for `reboot=k`) as it does without ACPI; there is no VGA, no CMOS RTC
/// (so no `rtc_cmos` platform device poking unhandled ports) and, on virtio-mmio, no PCI, so
/// no MSI.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT Interrupt Source Override (ACPI 6.5, 5.2.12.5): an ISA IRQ wired to another GSI.
#[repr(C)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32,
    flags: U16,
}

impl InterruptSourceOverride {
    fn new(source: u8, gsi: u32, flags: u16) -> Self {
        Self {
            r#type: MADT_INTERRUPT_SOURCE_OVERRIDE,
            length: std::mem::size_of::<Self>() as u8,
            bus: 0, // ISA
            source,
            gsi: gsi.into(),
            flags: flags.into(),
        }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT Local APIC NMI (ACPI 6.5, 5.2.12.7): which LINT input of which processor is the NMI.
#[repr(C)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: U16,
    lint: u8,
}

impl LocalApicNmi {
    fn new(processor_uid: u8, flags: u16, lint: u8) -> Self {
        Self {
            r#type: MADT_LOCAL_APIC_NMI,
            length: std::mem::size_of::<Self>() as u8,
            processor_uid,
            flags: flags.into(),
            lint,
        }
    }
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

const _: () = {
    assert!(std::mem::size_of::<InterruptSourceOverride>() == 10);
    assert!(std::mem::size_of::<LocalApicNmi>() == 6);
};

/// The tables laid out one after another from [`layout::ACPI_START`].
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    /// Starts with room for the RSDP, which is written last (it needs the XSDT's address).
    fn new() -> Self {
        Image {
            bytes: vec![0; Rsdp::len()],
        }
    }

    /// Appends `table` at the next aligned address and returns that address.
    fn push(&mut self, table: &dyn Aml) -> u64 {
        let mut bytes = Vec::new();
        table.to_aml_bytes(&mut bytes);
        self.push_bytes(&bytes)
    }

    /// Appends a serialized table at the next aligned address and returns that address.
    fn push_bytes(&mut self, table: &[u8]) -> u64 {
        self.bytes
            .resize(self.bytes.len().next_multiple_of(TABLE_ALIGN), 0);
        let at = layout::ACPI_START + self.bytes.len() as u64;
        self.bytes.extend_from_slice(table);
        at
    }
}

/// Builds the tables for `cpus` vCPUs and the virtio-mmio `devices` (or, with `transport`
/// PCI, the host bridge and its ECAM); the result goes at [`layout::ACPI_START`] and starts
/// with the RSDP.
pub fn build(cpus: u8, devices: &[MmioSlot], transport: Transport) -> Result<Vec<u8>, BootError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(BootError::BadCpuCount(cpus.into()));
    }
    let mut image = Image::new();
    let dsdt_addr = image.push_bytes(&dsdt::build(devices, transport, OEM_ID, OEM_REVISION)?);
    let fadt_addr = image.push(&fadt(dsdt_addr, transport));
    let madt_addr = image.push_bytes(&madt(cpus));
    let mut xsdt = XSDT::new(OEM_ID, *b"BKHDXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if transport == Transport::Pci {
        xsdt.add_entry(image.push_bytes(&mcfg::build(OEM_ID, OEM_REVISION)));
    }
    let xsdt_addr = image.push(&xsdt);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    image.bytes[..Rsdp::len()].copy_from_slice(rsdp.as_bytes());

    let room = layout::ACPI_MAX_SIZE;
    if image.bytes.len() as u64 > room {
        return Err(BootError::AcpiTablesTooBig {
            cpus,
            size: image.bytes.len(),
            room,
        });
    }
    Ok(image.bytes)
}

/// Writes the tables for `cpus` vCPUs and the virtio-mmio `devices` into guest memory;
/// returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    cpus: u8,
    devices: &[MmioSlot],
    transport: Transport,
) -> Result<GuestAddress, BootError> {
    let bytes = build(cpus, devices, transport)?;
    let rsdp = GuestAddress(layout::ACPI_START);
    mem.write_slice(&bytes, rsdp)
        .map_err(|e| BootError::GuestWrite("ACPI tables", e))?;
    Ok(rsdp)
}

/// The FADT of a hardware-reduced platform, pointing at the DSDT.
fn fadt(dsdt_addr: u64, transport: Transport) -> impl Aml {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"BKHDFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // No fixed-feature power or sleep button (they would be control-method devices).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    let mut iapc_boot_arch =
        IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;
    // Linux reads "MSI not supported" as pci_no_msi(): on PCI, whose functions have MSI-X
    // and no INTx pin, that would leave them without interrupts.
    if transport == Transport::Mmio {
        iapc_boot_arch |= IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED;
    }
    fadt.iapc_boot_arch = iapc_boot_arch.into();
    fadt.finalize()
}

/// The MADT: local APIC ids are vCPU indexes (as KVM assigns them), the IOAPIC takes the id
/// after the last vCPU (as in the MP table).
fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"BKHDAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, layout::IOAPIC_START as u32, 0));
    madt.add_structure(InterruptSourceOverride::new(
        PIT_ISA_IRQ,
        PIT_IOAPIC_PIN.into(),
        MPS_INTI_CONFORMS,
    ));
    madt.add_structure(LocalApicNmi::new(ALL_PROCESSORS, MPS_INTI_CONFORMS, LINT1));

    // acpi_tables' MADT has no setter for its flags: set PCAT_COMPAT in the bytes.
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4]
        .copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    bytes[SDT_CHECKSUM_OFFSET] = 0;
    bytes[SDT_CHECKSUM_OFFSET] = checksum(&bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_COUNTS: [u8; 5] = [1, 2, 4, 32, MAX_CPUS];

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// The table at guest address `addr` of `image`, by its header's length; checks its
    /// signature and checksum.
    fn table<'a>(image: &'a [u8], addr: u64, signature: &[u8; 4]) -> &'a [u8] {
        let off = usize::try_from(addr - layout::ACPI_START).unwrap();
        let len = u32_at(image, off + 4) as usize;
        let t = &image[off..off + len];
        assert_eq!(&t[..4], signature, "table at {addr:#x}");
        assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(signature));
        assert_eq!(&t[10..16], &OEM_ID);
        t
    }

    /// The XSDT's entries, from a checked RSDP.
    fn xsdt_entries(image: &[u8]) -> Vec<u64> {
        let rsdp = &image[..Rsdp::len()];
        let xsdt = table(image, u64_at(rsdp, 24), b"XSDT");
        xsdt[SDT_HEADER_LEN..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// The table the XSDT lists with `signature`.
    fn find<'a>(image: &'a [u8], signature: &[u8; 4]) -> &'a [u8] {
        let entries = xsdt_entries(image);
        let at = entries
            .iter()
            .find(|&&a| {
                let off = (a - layout::ACPI_START) as usize;
                &image[off..off + 4] == signature
            })
            .unwrap_or_else(|| panic!("XSDT lists no {signature:?}"));
        table(image, *at, signature)
    }

    #[test]
    fn rsdp_checksums_and_xsdt_address() {
        for cpus in CPU_COUNTS {
            let image = build(cpus, &[], Transport::Mmio).unwrap();
            let rsdp = &image[..Rsdp::len()];
            assert_eq!(&rsdp[..8], b"RSD PTR ");
            assert_eq!(sum(&rsdp[..20]), 0, "checksum (ACPI 1.0 part)");
            assert_eq!(sum(rsdp), 0, "extended checksum");
            assert_eq!(rsdp[15], 2, "revision");
            assert_eq!(u32_at(rsdp, 20) as usize, Rsdp::len(), "length");
            assert_eq!(&rsdp[9..15], &OEM_ID);
            let xsdt_addr = u64_at(rsdp, 24);
            assert!(xsdt_addr > layout::ACPI_START);
            assert!(xsdt_addr < layout::ACPI_START + image.len() as u64);
            table(&image, xsdt_addr, b"XSDT");
        }
    }

    #[test]
    fn xsdt_lists_fadt_and_madt_with_valid_checksums() {
        for cpus in CPU_COUNTS {
            let image = build(cpus, &[], Transport::Mmio).unwrap();
            let entries = xsdt_entries(&image);
            assert_eq!(entries.len(), 2);
            find(&image, b"FACP");
            find(&image, b"APIC");
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_and_points_at_the_dsdt() {
        let image = build(2, &[], Transport::Mmio).unwrap();
        let fadt = find(&image, b"FACP");
        assert_eq!(fadt.len(), 276, "ACPI 6.x FADT length");
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = table(&image, u64_at(fadt, 140), b"DSDT");
        assert_eq!(dsdt.len(), SDT_HEADER_LEN, "no AML");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0, "HW_REDUCED_ACPI");
        let iapc = u16_at(fadt, 109);
        assert_ne!(iapc & IAPC_BOOT_ARCH_8042, 0);
        assert_ne!(iapc & IAPC_BOOT_ARCH_VGA_NOT_PRESENT, 0);
    }

    #[test]
    fn the_fadt_points_at_the_dsdt_of_the_devices_given() {
        let slots: Vec<_> = (0..3).filter_map(crate::virtio::slot).collect();
        let image = build(2, &slots, Transport::Mmio).unwrap();
        let fadt = find(&image, b"FACP");
        let dsdt = table(&image, u64_at(fadt, 140), b"DSDT");
        let want = dsdt::build(&slots, Transport::Mmio, OEM_ID, OEM_REVISION).unwrap();
        assert_eq!(dsdt, &want[..]);
        assert!(dsdt.len() > SDT_HEADER_LEN);
    }

    #[test]
    fn pci_adds_the_mcfg_with_the_ecam_and_mmio_has_none() {
        for cpus in CPU_COUNTS {
            let image = build(cpus, &[], Transport::Pci).unwrap();
            assert_eq!(xsdt_entries(&image).len(), 3);
            let mcfg = find(&image, b"MCFG");
            assert_eq!(mcfg, &mcfg::build(OEM_ID, OEM_REVISION)[..]);
            assert_eq!(u64_at(mcfg, 44), layout::PCI_ECAM_START, "ECAM base");
            assert_eq!(u16_at(mcfg, 52), 0, "segment");
            assert_eq!((mcfg[54], mcfg[55]), (0, 0), "bus range");
            assert!(image.len() as u64 <= layout::ACPI_MAX_SIZE);
        }
        let image = build(2, &[], Transport::Mmio).unwrap();
        let signatures: Vec<_> = xsdt_entries(&image)
            .into_iter()
            .map(|a| {
                let off = (a - layout::ACPI_START) as usize;
                image[off..off + 4].to_vec()
            })
            .collect();
        assert_eq!(signatures, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    }

    #[test]
    fn msi_is_declared_unsupported_only_without_pci() {
        let iapc = |t| u16_at(find(&build(2, &[], t).unwrap(), b"FACP"), 109);
        assert_ne!(iapc(Transport::Mmio) & IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED, 0);
        assert_eq!(iapc(Transport::Pci) & IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED, 0);
    }

    #[test]
    fn madt_lists_cpus_ioapic_irq0_override_and_nmi() {
        for cpus in CPU_COUNTS {
            let image = build(cpus, &[], Transport::Mmio).unwrap();
            let madt = find(&image, b"APIC");
            assert_eq!(u32_at(madt, 36), 0xfee0_0000, "local APIC address");
            assert_eq!(u32_at(madt, 40), MADT_PCAT_COMPAT, "flags");
            let mut lapic_ids = Vec::new();
            let (mut ioapics, mut overrides, mut nmis) = (Vec::new(), Vec::new(), Vec::new());
            let mut off = 44;
            while off < madt.len() {
                let (kind, len) = (madt[off], usize::from(madt[off + 1]));
                let e = &madt[off..off + len];
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(e[2], e[3], "processor uid == APIC id");
                        assert_eq!(u32_at(e, 4), 1, "enabled");
                        lapic_ids.push(e[3]);
                    }
                    1 => {
                        assert_eq!(len, 12);
                        ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8)));
                    }
                    2 => {
                        assert_eq!(len, 10);
                        overrides.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8)));
                    }
                    4 => {
                        assert_eq!(len, 6);
                        nmis.push((e[2], u16_at(e, 3), e[5]));
                    }
                    other => panic!("unexpected MADT entry type {other}"),
                }
                off += len;
            }
            assert_eq!(off, madt.len(), "entries fill the table exactly");
            assert_eq!(lapic_ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(cpus, 0xfec0_0000, 0)]);
            // bus 0 (ISA), IRQ 0 -> GSI 2, flags "conforms to the bus".
            assert_eq!(overrides, vec![(0, 0, 2, 0)]);
            // All processors, flags 0, LINT1.
            assert_eq!(nmis, vec![(0xff, 0, 1)]);
        }
    }

    #[test]
    fn tables_are_aligned_and_fit_for_the_most_cpus() {
        let image = build(MAX_CPUS, &[], Transport::Mmio).unwrap();
        assert!(image.len() as u64 <= layout::ACPI_MAX_SIZE);
        for at in xsdt_entries(&image) {
            assert_eq!(at % TABLE_ALIGN as u64, 0);
        }
        let madt = find(&image, b"APIC");
        assert_eq!(madt.len(), 44 + 8 * usize::from(MAX_CPUS) + 12 + 10 + 6);
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(matches!(
            build(0, &[], Transport::Mmio),
            Err(BootError::BadCpuCount(0))
        ));
        assert!(matches!(
            build(255, &[], Transport::Mmio),
            Err(BootError::BadCpuCount(255))
        ));
    }

    #[test]
    fn write_puts_the_rsdp_at_acpi_start() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let at = write(&m, 4, &[], Transport::Mmio).unwrap();
        assert_eq!(at, GuestAddress(layout::ACPI_START));
        let image = build(4, &[], Transport::Mmio).unwrap();
        let mut back = vec![0; image.len()];
        m.read_slice(&mut back, at).unwrap();
        assert_eq!(back, image);
        assert_eq!(&back[..8], b"RSD PTR ");
    }
}
