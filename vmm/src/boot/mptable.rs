//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns its
//! processors, IOAPIC and interrupt routing.
//!
//! Placed in the BIOS area at [`MPTABLE_START`] (inside the e820-reserved range below 1 MiB),
//! where Linux's `smp_scan_config` looks for the `_MP_` floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{checksum, BootError};
use crate::layout;

/// Guest-physical address of the MP floating pointer structure.
pub use crate::layout::MPTABLE_START;
/// Highest APIC id an MP table can name is 254 (0xff is broadcast); the IOAPIC takes the
/// id after the last CPU.
pub const MAX_CPUS: u8 = 254;
/// IOAPIC pins. IRQ lines are routed to them one for one, except ISA IRQ 0 (the PIT).
const IOAPIC_PINS: u8 = 24;
/// KVM's default GSI routing sends the PIT's IRQ 0 to IOAPIC pin 2 (where a PC's IOAPIC has
/// it); the ACPI MADT says the same with an interrupt source override.
pub const PIT_IOAPIC_PIN: u8 = 2;
/// The 8259 cascade: never raised, and its pin is the PIT's.
const ISA_CASCADE_IRQ: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Stepping/model/family signature reported per CPU (family 6).
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags: FPU, APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// Builds the table bytes for `cpus` processors, to be placed at [`MPTABLE_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>, BootError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(BootError::BadCpuCount(cpus.into()));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.push(ENTRY_PROCESSOR);
        entries.extend_from_slice(&[id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    let mut irq_entries: u16 = 0;
    for irq in (0..IOAPIC_PINS).filter(|&irq| irq != ISA_CASCADE_IRQ) {
        let pin = if irq == 0 { PIT_IOAPIC_PIN } else { irq };
        // type, interrupt type, flags (bus default polarity/trigger), source bus, source
        // IRQ, destination IOAPIC, destination pin.
        entries.extend_from_slice(&[ENTRY_IOINTSRC, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, pin]);
        irq_entries += 1;
    }
    // Local interrupts: ExtINT to every LAPIC's LINT0, NMI to LINT1.
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);

    let table_addr = MPTABLE_START + FLOATING_POINTER_LEN as u64;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, set below
    header.extend_from_slice(b"BULKHEAD");
    header.extend_from_slice(b"VIRTUAL-VM  ");
    header.extend_from_slice(&[0u8; 4]); // OEM table pointer
    header.extend_from_slice(&[0u8; 2]); // OEM table size
                                         // Entry count: processors, bus, IOAPIC, I/O interrupts, two local interrupts.
    header.extend_from_slice(&(u16::from(cpus) + 2 + irq_entries + 2).to_le_bytes());
    header.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0u8; 4]);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, set below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = a configuration table is present
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the table for `cpus` processors into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), BootError> {
    let bytes = build(cpus)?;
    if MPTABLE_START + bytes.len() as u64 > layout::HIMEM_START {
        return Err(BootError::BadCpuCount(cpus.into()));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| BootError::GuestWrite("MP table", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        for cpus in [1u8, 2, 4, 32, MAX_CPUS] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let table_addr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            let off = (table_addr - MPTABLE_START) as usize;
            assert_eq!(&t[off..off + 4], b"PCMP");
            let len = u16::from_le_bytes(t[off + 4..off + 6].try_into().unwrap()) as usize;
            assert_eq!(off + len, t.len());
            assert_eq!(sum(&t[off..off + len]), 0);
            assert!(MPTABLE_START + t.len() as u64 <= layout::HIMEM_START);
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_bsp_first() {
        let t = build(3).unwrap();
        let entries = &t[16 + HEADER_LEN..];
        for id in 0..3usize {
            let e = &entries[id * 20..id * 20 + 20];
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(e[1] as usize, id, "apic id");
            assert_eq!(e[3] & CPU_BSP != 0, id == 0);
            assert_ne!(e[3] & CPU_ENABLED, 0);
        }
        assert_eq!(entries[60], ENTRY_BUS);
    }

    /// The table's entries after the processors, as 8-byte records, checked against the
    /// header's entry count.
    fn other_entries(t: &[u8], cpus: u8) -> Vec<[u8; 8]> {
        let table = &t[16..];
        let count = u16::from_le_bytes(table[34..36].try_into().unwrap()) as usize;
        let rest = &table[HEADER_LEN + usize::from(cpus) * 20..];
        assert_eq!(rest.len() % 8, 0);
        let entries: Vec<[u8; 8]> = rest.chunks(8).map(|c| c.try_into().unwrap()).collect();
        assert_eq!(usize::from(cpus) + entries.len(), count, "entry count");
        entries
    }

    #[test]
    fn isa_irq0_goes_to_pin_2_and_the_rest_one_for_one() {
        let cpus = 4;
        let ioapic_id = cpus;
        let routes: Vec<(u8, u8)> = other_entries(&build(cpus).unwrap(), cpus)
            .iter()
            .filter(|e| e[0] == ENTRY_IOINTSRC)
            .map(|e| {
                assert_eq!((e[1], e[2], e[4], e[6]), (INT_TYPE_INT, 0, 0, ioapic_id));
                (e[5], e[7])
            })
            .collect();
        let mut want = vec![(0, PIT_IOAPIC_PIN)];
        want.extend((1..IOAPIC_PINS).filter(|&i| i != 2).map(|i| (i, i)));
        assert_eq!(routes, want);
        // Every pin has at most one source.
        let mut pins: Vec<u8> = routes.iter().map(|r| r.1).collect();
        pins.sort_unstable();
        pins.dedup();
        assert_eq!(pins.len(), routes.len());
    }

    #[test]
    fn bus_ioapic_and_local_interrupts() {
        let e = other_entries(&build(2).unwrap(), 2);
        assert_eq!(
            &e[0][..],
            &[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']
        );
        assert_eq!(&e[1][..4], &[ENTRY_IOAPIC, 2, IOAPIC_VERSION, 1]);
        assert_eq!(
            u32::from_le_bytes(e[1][4..].try_into().unwrap()),
            0xfec0_0000
        );
        let n = e.len();
        assert_eq!(
            e[n - 2],
            [ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]
        );
        assert_eq!(e[n - 1], [ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    }

    /// Walk the entries as Linux's `smp_read_mpc` does, by the base length and each type's
    /// size, and as a count-trusting walker does: both must see the same entries, ending
    /// exactly at the length (Firecracker's count is one too high; ours must not be).
    #[test]
    fn entry_count_and_base_length_agree() {
        for cpus in [1u8, 2, 7, MAX_CPUS] {
            let t = build(cpus).unwrap();
            let table = &t[FLOATING_POINTER_LEN..];
            let len = usize::from(u16::from_le_bytes(table[4..6].try_into().unwrap()));
            let count = usize::from(u16::from_le_bytes(table[34..36].try_into().unwrap()));
            assert_eq!(len, table.len(), "{cpus} cpus: base length");
            let (mut offset, mut entries, mut processors) = (HEADER_LEN, 0, 0);
            while offset < len {
                let size = match table[offset] {
                    ENTRY_PROCESSOR => 20,
                    ENTRY_BUS | ENTRY_IOAPIC | ENTRY_IOINTSRC | ENTRY_LINTSRC => 8,
                    other => panic!("{cpus} cpus: entry type {other} at offset {offset}"),
                };
                processors += usize::from(table[offset] == ENTRY_PROCESSOR);
                offset += size;
                entries += 1;
            }
            assert_eq!(
                offset, len,
                "{cpus} cpus: the last entry ends at the length"
            );
            assert_eq!(entries, count, "{cpus} cpus: entry count");
            assert_eq!(processors, usize::from(cpus));
        }
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(build(0).is_err());
        assert!(build(255).is_err());
    }
}
