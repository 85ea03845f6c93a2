//! The Intel MultiProcessor Specification table (v1.4): how many CPUs there are and their
//! APIC ids.
//!
//! The floating pointer structure (`_MP_`, 16-byte aligned) is searched for in the last
//! KiB of conventional memory (0x9fc00..0xa0000) and the BIOS area (0xf0000..0x100000);
//! it points at the configuration table (`PCMP`) whose processor entries list the CPUs.
//! Both checksums are verified and every read is bounds-checked. Guest memory is read
//! through a function `read(address, length)` that returns `None` for unmapped ranges.
//!
//! The entries are walked by the table's base length, as Linux's `smp_read_mpc` does, not
//! by its entry count: Firecracker counts the floating pointer among the entries, so its
//! count is one too high, and a walker trusting it runs off the end. Each entry's size
//! comes from its type; an entry of unknown type ends the walk (its size is unknown too)
//! and the table keeps what came before it, saying where it stopped ([`MpTable::stopped`]).

use crate::layout::{LAPIC_BASE, MAX_CPUS};
use core::fmt;

const SEARCH_WINDOWS: [(u64, u64); 2] = [(0x9_fc00, 0xa_0000), (0xf_0000, 0x10_0000)];
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR: u8 = 0;
const PROCESSOR_LEN: usize = 20;
/// Bus, I/O APIC, I/O interrupt and local interrupt entries.
const OTHER_ENTRY_LEN: usize = 8;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;

/// The CPUs the MP table lists as usable.
pub struct MpTable {
    apic_ids: [u8; MAX_CPUS],
    len: usize,
    bsp: u8,
    stopped: Option<Stopped>,
}

/// Where the walk ended before the table's length: an entry of unknown type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The entry's type byte.
    pub kind: u8,
    /// Its offset from the start of the configuration table.
    pub offset: usize,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MP table walk stopped at offset {} (entry of unknown type {}); the entries after it are ignored",
            self.offset, self.kind
        )
    }
}

impl MpTable {
    /// APIC ids of the enabled processors, in table order.
    pub fn apic_ids(&self) -> &[u8] {
        &self.apic_ids[..self.len]
    }

    /// APIC id of the boot processor.
    pub fn bsp(&self) -> u8 {
        self.bsp
    }

    /// Where the walk stopped early, if it did.
    pub fn stopped(&self) -> Option<Stopped> {
        self.stopped
    }
}

/// Why there is no usable MP table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpError {
    /// No floating pointer structure in either window.
    NotFound,
    /// A `_MP_` signature with a bad checksum (and no good one).
    BadFloatingChecksum(u64),
    /// The floating pointer has no configuration table (a "default configuration").
    NoConfigTable,
    /// The configuration table is not in mapped memory.
    ConfigUnreadable(u64),
    /// The configuration table's base length is shorter than its header.
    BadLength(u16),
    /// The configuration table does not start with `PCMP`.
    BadConfigSignature(u64),
    /// The configuration table's checksum is wrong.
    BadConfigChecksum,
    /// The table's local APIC address is not 0xfee00000.
    UnexpectedLapic(u32),
    /// An entry runs past the table's base length.
    Truncated,
    /// More processors than the guest supports.
    TooManyCpus,
    /// Two enabled processors with the same APIC id.
    DuplicateApicId(u8),
    /// Not exactly one enabled processor flagged as the boot processor.
    BspCount(usize),
}

impl fmt::Display for MpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(f, "no MP floating pointer found"),
            Self::BadFloatingChecksum(a) => {
                write!(f, "MP floating pointer at {a:#x} has a bad checksum")
            }
            Self::NoConfigTable => write!(f, "MP floating pointer has no configuration table"),
            Self::ConfigUnreadable(a) => {
                write!(f, "MP configuration table at {a:#x} is not readable")
            }
            Self::BadConfigSignature(a) => write!(f, "no PCMP signature at {a:#x}"),
            Self::BadConfigChecksum => write!(f, "MP configuration table has a bad checksum"),
            Self::UnexpectedLapic(a) => write!(f, "MP table puts the local APIC at {a:#x}"),
            Self::BadLength(n) => {
                write!(
                    f,
                    "MP configuration table length {n} is shorter than its header"
                )
            }
            Self::Truncated => write!(f, "an MP table entry runs past the table's length"),
            Self::TooManyCpus => write!(f, "MP table lists more than {MAX_CPUS} processors"),
            Self::DuplicateApicId(id) => write!(f, "MP table lists APIC id {id} twice"),
            Self::BspCount(n) => write!(f, "MP table flags {n} boot processors"),
        }
    }
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Find the floating pointer: the address of the configuration table.
fn find_floating<'a>(read: &impl Fn(u64, usize) -> Option<&'a [u8]>) -> Result<u32, MpError> {
    let mut bad = None;
    for (start, end) in SEARCH_WINDOWS {
        for addr in (start..end).step_by(16) {
            let Some(fp) = read(addr, FLOATING_LEN) else {
                continue;
            };
            if &fp[..4] != b"_MP_" {
                continue;
            }
            // Length in 16-byte units: 1 in every published version.
            if fp[8] == 1 && sums_to_zero(fp) {
                return match u32_at(fp, 4) {
                    0 => Err(MpError::NoConfigTable),
                    table => Ok(table),
                };
            }
            bad.get_or_insert(addr);
        }
    }
    Err(bad.map_or(MpError::NotFound, MpError::BadFloatingChecksum))
}

/// Find and parse the MP table in the memory `read` gives access to.
pub fn find<'a>(read: impl Fn(u64, usize) -> Option<&'a [u8]>) -> Result<MpTable, MpError> {
    let at = u64::from(find_floating(&read)?);
    let header = read(at, HEADER_LEN).ok_or(MpError::ConfigUnreadable(at))?;
    if &header[..4] != b"PCMP" {
        return Err(MpError::BadConfigSignature(at));
    }
    let base_len = u16_at(header, 4);
    let len = usize::from(base_len);
    if len < HEADER_LEN {
        return Err(MpError::BadLength(base_len));
    }
    let table = read(at, len).ok_or(MpError::ConfigUnreadable(at))?;
    if !sums_to_zero(table) {
        return Err(MpError::BadConfigChecksum);
    }
    let lapic = u32_at(table, 36);
    if u64::from(lapic) != LAPIC_BASE {
        return Err(MpError::UnexpectedLapic(lapic));
    }
    let mut mp = MpTable {
        apic_ids: [0; MAX_CPUS],
        len: 0,
        bsp: 0,
        stopped: None,
    };
    let mut bsps = 0;
    // The entry count (bytes 34..36) is not used: see the module documentation.
    let mut offset = HEADER_LEN;
    while let Some(&kind) = table.get(offset) {
        let entry_len = match kind {
            PROCESSOR => PROCESSOR_LEN,
            1..=4 => OTHER_ENTRY_LEN,
            kind => {
                mp.stopped = Some(Stopped { kind, offset });
                break;
            }
        };
        let entry = table
            .get(offset..offset + entry_len)
            .ok_or(MpError::Truncated)?;
        offset += entry_len;
        if kind != PROCESSOR || entry[3] & CPU_ENABLED == 0 {
            continue;
        }
        let id = entry[1];
        if mp.apic_ids().contains(&id) {
            return Err(MpError::DuplicateApicId(id));
        }
        *mp.apic_ids.get_mut(mp.len).ok_or(MpError::TooManyCpus)? = id;
        mp.len += 1;
        if entry[3] & CPU_BSP != 0 {
            bsps += 1;
            mp.bsp = id;
        }
    }
    if bsps != 1 {
        return Err(MpError::BspCount(bsps));
    }
    Ok(mp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY: usize = 0x10_0000;
    const TABLE: usize = 0xf_0000;

    fn checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes[at] = sum.wrapping_neg();
    }

    /// A table like the VMMs write: processors (APIC id, flags), a bus, an IOAPIC.
    fn table(cpus: &[(u8, u8)]) -> Vec<u8> {
        let mut entries = Vec::new();
        for &(id, flags) in cpus {
            entries.extend_from_slice(&[
                0, id, 0x14, flags, 0, 6, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
        }
        entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        entries.extend_from_slice(&[2, 9, 0x11, 1, 0, 0, 0xc0, 0xfe]);
        let mut config = vec![0u8; HEADER_LEN];
        config[..4].copy_from_slice(b"PCMP");
        config[4..6].copy_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
        config[6] = 4;
        config[34..36].copy_from_slice(&(cpus.len() as u16 + 2).to_le_bytes());
        config[36..40].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        config.extend_from_slice(&entries);
        checksum(&mut config, 7);
        let mut floating = vec![0u8; FLOATING_LEN];
        floating[..4].copy_from_slice(b"_MP_");
        floating[4..8].copy_from_slice(&((TABLE + FLOATING_LEN) as u32).to_le_bytes());
        floating[8] = 1;
        floating[9] = 4;
        checksum(&mut floating, 10);
        let mut memory = vec![0u8; MEMORY];
        memory[TABLE..TABLE + FLOATING_LEN].copy_from_slice(&floating);
        memory[TABLE + FLOATING_LEN..TABLE + FLOATING_LEN + config.len()].copy_from_slice(&config);
        memory
    }

    fn find_in(memory: &[u8]) -> Result<MpTable, MpError> {
        find(|addr, len| {
            memory
                .get(usize::try_from(addr).ok()?..)
                .and_then(|m| m.get(..len))
        })
    }

    #[test]
    fn lists_enabled_processors_and_the_bsp() {
        let mp = find_in(&table(&[(0, 3), (1, 1), (2, 0), (5, 1)])).unwrap();
        assert_eq!(
            mp.apic_ids(),
            &[0, 1, 5],
            "disabled processor 2 is left out"
        );
        assert_eq!(mp.bsp(), 0);
    }

    #[test]
    fn found_in_the_ebda_too() {
        let mut memory = table(&[(0, 3)]);
        let floating: Vec<u8> = memory[TABLE..TABLE + FLOATING_LEN].to_vec();
        memory[TABLE..TABLE + FLOATING_LEN].fill(0);
        memory[0x9_fc00..0x9_fc00 + FLOATING_LEN].copy_from_slice(&floating);
        assert_eq!(find_in(&memory).unwrap().apic_ids(), &[0]);
    }

    #[test]
    fn bad_tables_are_errors_not_panics() {
        let good = table(&[(0, 3), (1, 1)]);
        assert_eq!(find_in(&vec![0u8; MEMORY]).err(), Some(MpError::NotFound));

        let mut m = good.clone();
        m[TABLE + 10] ^= 1;
        assert_eq!(
            find_in(&m).err(),
            Some(MpError::BadFloatingChecksum(TABLE as u64))
        );

        let mut m = good.clone();
        m[TABLE + FLOATING_LEN + 20] ^= 1;
        assert_eq!(find_in(&m).err(), Some(MpError::BadConfigChecksum));

        let mut m = good.clone();
        m[TABLE + 4..TABLE + 8].copy_from_slice(&0x4000_0000u32.to_le_bytes());
        checksum(&mut m[TABLE..TABLE + FLOATING_LEN], 10);
        assert_eq!(
            find_in(&m).err(),
            Some(MpError::ConfigUnreadable(0x4000_0000))
        );

        let mut m = good.clone();
        m[TABLE + 4..TABLE + 8].copy_from_slice(&0u32.to_le_bytes());
        checksum(&mut m[TABLE..TABLE + FLOATING_LEN], 10);
        assert_eq!(find_in(&m).err(), Some(MpError::NoConfigTable));

        let config = TABLE + FLOATING_LEN;
        let mut m = good.clone();
        set_length(&mut m, 0);
        assert_eq!(find_in(&m).err(), Some(MpError::BadLength(0)));

        let mut m = good.clone();
        m[config + 4..config + 6].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(
            find_in(&m[..config + 200]).err(),
            Some(MpError::ConfigUnreadable(config as u64))
        );
    }

    const CONFIG: usize = TABLE + FLOATING_LEN;
    /// Offset of the first entry after `cpus` processor entries.
    const fn after_processors(cpus: usize) -> usize {
        HEADER_LEN + cpus * PROCESSOR_LEN
    }

    /// Set the configuration table's base length and fix its checksum over that length.
    fn set_length(memory: &mut [u8], len: u16) {
        memory[CONFIG + 4..CONFIG + 6].copy_from_slice(&len.to_le_bytes());
        let end = CONFIG + usize::from(len).max(HEADER_LEN);
        checksum(&mut memory[CONFIG..end], 7);
    }

    /// Set the entry count and fix the checksum.
    fn set_count(memory: &mut [u8], count: u16) {
        memory[CONFIG + 34..CONFIG + 36].copy_from_slice(&count.to_le_bytes());
        let len = usize::from(u16_at(memory, CONFIG + 4));
        checksum(&mut memory[CONFIG..CONFIG + len], 7);
    }

    #[test]
    fn the_entry_count_is_not_trusted() {
        // Firecracker's count includes the floating pointer: one more than the entries.
        let mut m = table(&[(0, 3), (1, 1), (2, 1)]);
        set_count(&mut m, 3 + 2 + 1);
        let mp = find_in(&m).unwrap();
        assert_eq!(mp.apic_ids(), &[0, 1, 2]);
        assert_eq!(mp.stopped(), None);
        // A count too low, or zero, does not hide processors either.
        for count in [0, 1] {
            set_count(&mut m, count);
            assert_eq!(find_in(&m).unwrap().apic_ids(), &[0, 1, 2], "count {count}");
        }
    }

    #[test]
    fn the_walk_ends_at_the_base_length() {
        let mut m = table(&[(0, 3), (1, 1), (2, 1)]);
        // Only the first two processor entries are inside the length: the third is not
        // read, although its bytes are there and the count says so.
        set_length(&mut m, after_processors(2) as u16);
        assert_eq!(find_in(&m).unwrap().apic_ids(), &[0, 1]);
        // A length that ends inside an entry: the entry is not read past it.
        for cut in [1, 4, PROCESSOR_LEN - 1] {
            set_length(&mut m, (after_processors(2) + cut) as u16);
            assert_eq!(find_in(&m).err(), Some(MpError::Truncated), "cut {cut}");
        }
        // A length that ends inside the header.
        set_length(&mut m, HEADER_LEN as u16 - 1);
        assert_eq!(
            find_in(&m).err(),
            Some(MpError::BadLength(HEADER_LEN as u16 - 1))
        );
        // Zero length.
        set_length(&mut m, 0);
        assert_eq!(find_in(&m).err(), Some(MpError::BadLength(0)));
        // A header and no entries: no processors, so no boot processor.
        set_length(&mut m, HEADER_LEN as u16);
        assert_eq!(find_in(&m).err(), Some(MpError::BspCount(0)));
    }

    #[test]
    fn an_unknown_entry_type_stops_the_walk() {
        let mut m = table(&[(0, 3), (1, 1)]);
        let at = after_processors(2);
        // The bus entry after the processors becomes type 9.
        m[CONFIG + at] = 9;
        let len = usize::from(u16_at(&m, CONFIG + 4));
        checksum(&mut m[CONFIG..CONFIG + len], 7);
        let mp = find_in(&m).unwrap();
        assert_eq!(mp.apic_ids(), &[0, 1], "the processors before it count");
        assert_eq!(
            mp.stopped(),
            Some(Stopped {
                kind: 9,
                offset: at
            })
        );

        // At the first entry: nothing is read after it, so no processors at all.
        let mut m = table(&[(0, 3), (1, 1)]);
        m[CONFIG + HEADER_LEN] = 0x80;
        checksum(&mut m[CONFIG..CONFIG + len], 7);
        assert_eq!(find_in(&m).err(), Some(MpError::BspCount(0)));
    }

    #[test]
    fn processor_list_is_checked() {
        assert_eq!(
            find_in(&table(&[(0, 3), (0, 1)])).err(),
            Some(MpError::DuplicateApicId(0))
        );
        assert_eq!(
            find_in(&table(&[(0, 1), (1, 1)])).err(),
            Some(MpError::BspCount(0))
        );
        assert_eq!(
            find_in(&table(&[(0, 3), (1, 3)])).err(),
            Some(MpError::BspCount(2))
        );
    }
}
