//! The Intel MultiProcessor Specification table (v1.4): how many CPUs there are and their
//! APIC ids.
//!
//! The floating pointer structure (`_MP_`, 16-byte aligned) is searched for in the last
//! KiB of conventional memory (0x9fc00..0xa0000) and the BIOS area (0xf0000..0x100000);
//! it points at the configuration table (`PCMP`) whose processor entries list the CPUs.
//! Both checksums are verified and every read is bounds-checked.

use crate::bootparams::E820;
use crate::layout::{LAPIC_BASE, MAX_CPUS};
use crate::phys;
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
}

/// Why there is no usable MP table.
#[derive(Debug, Clone, Copy)]
pub enum MpError {
    /// No floating pointer structure in either window.
    NotFound,
    /// A `_MP_` signature with a bad checksum (and no good one).
    BadFloatingChecksum(u64),
    /// The floating pointer has no configuration table (a "default configuration").
    NoConfigTable,
    /// The configuration table is not in mapped memory or shorter than its header.
    ConfigUnreadable(u64),
    /// The configuration table does not start with `PCMP`.
    BadConfigSignature(u64),
    /// The configuration table's checksum is wrong.
    BadConfigChecksum,
    /// The table's local APIC address is not 0xfee00000.
    UnexpectedLapic(u32),
    /// An entry of unknown type (its length is unknown too).
    UnknownEntry(u8),
    /// The entries run past the table's length.
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
            Self::UnknownEntry(t) => write!(f, "MP table entry of unknown type {t}"),
            Self::Truncated => write!(f, "MP table entries overrun the table"),
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
fn find_floating(e820: &E820) -> Result<u32, MpError> {
    let mut bad = None;
    for (start, end) in SEARCH_WINDOWS {
        for addr in (start..end).step_by(16) {
            let Some(fp) = phys::bytes(e820, addr, FLOATING_LEN) else {
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

/// Find and parse the MP table.
pub fn find(e820: &E820) -> Result<MpTable, MpError> {
    let at = u64::from(find_floating(e820)?);
    let header = phys::bytes(e820, at, HEADER_LEN).ok_or(MpError::ConfigUnreadable(at))?;
    if &header[..4] != b"PCMP" {
        return Err(MpError::BadConfigSignature(at));
    }
    let len = usize::from(u16_at(header, 4));
    let table = phys::bytes(e820, at, len)
        .filter(|_| len >= HEADER_LEN)
        .ok_or(MpError::ConfigUnreadable(at))?;
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
    };
    let mut bsps = 0;
    let mut offset = HEADER_LEN;
    for _ in 0..u16_at(table, 34) {
        let kind = *table.get(offset).ok_or(MpError::Truncated)?;
        let entry_len = match kind {
            PROCESSOR => PROCESSOR_LEN,
            1..=4 => OTHER_ENTRY_LEN,
            other => return Err(MpError::UnknownEntry(other)),
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
