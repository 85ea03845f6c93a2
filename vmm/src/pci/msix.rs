//! MSI-X: the capability, the vector table and the pending-bit array (PBA) a function
//! keeps in one of its BARs.
//!
//! The capability's table and PBA locations (offset and BIR) are read-only: the guest
//! cannot move the table, past its BAR or anywhere else. Only the enable and function-mask
//! bits of the message control word are writable. A vector is *active* when MSI-X is
//! enabled, the function is not masked and may master the bus (an MSI is a memory write;
//! the Command register's bus-master bit), its entry is not masked and its address is a
//! local APIC's ([`MsiMessage::targets_lapic`]); only active vectors get KVM routes (see
//! [`super::msix_irqfds`]).

use crate::kvm::irq_routing::MsiMessage;

/// The MSI-X capability ID.
pub const CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
const ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const FUNCTION_MASK: u16 = 1 << 14;
/// Bytes of a table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control: masked.
const ENTRY_MASKED: u32 = 1;
/// Most vectors a table may have (the control word's 11-bit field).
pub const MAX_VECTORS: usize = 2048;

/// The capability's bytes after its ID and next pointer, and their write mask.
pub fn capability(
    vectors: u16,
    bar: u8,
    table_offset: u32,
    pba_offset: u32,
) -> ([u8; 10], [u8; 10]) {
    let mut body = [0u8; 10];
    body[0..2].copy_from_slice(&(vectors.saturating_sub(1) & 0x7ff).to_le_bytes());
    body[2..6].copy_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
    body[6..10].copy_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
    let mut wmask = [0u8; 10];
    wmask[1] = ((ENABLE | FUNCTION_MASK) >> 8) as u8;
    (body, wmask)
}

/// A vector table with its enable and function-mask state.
pub struct Msix {
    /// Per entry: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    enabled: bool,
    function_masked: bool,
    bus_master: bool,
}

impl Msix {
    /// A table of `vectors` entries, all masked (the state after reset).
    pub fn new(vectors: u16) -> Msix {
        let n = usize::from(vectors).min(MAX_VECTORS);
        Msix {
            table: vec![[0, 0, 0, ENTRY_MASKED]; n],
            enabled: false,
            function_masked: false,
            bus_master: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table has no vector.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.table.len().div_ceil(64) as u64 * 8
    }

    /// Takes the enable and function-mask bits of the capability's control word.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & ENABLE != 0;
        self.function_masked = control & FUNCTION_MASK != 0;
    }

    /// Takes the Command register's bus-master bit: without it the function sends no MSI.
    pub fn set_bus_master(&mut self, on: bool) {
        self.bus_master = on;
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reads the table at `offset`, any width; outside it reads 0.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| self.byte(at))
                .unwrap_or(0);
        }
    }

    fn byte(&self, at: u64) -> Option<u8> {
        let entry = self.table.get(usize::try_from(at / ENTRY_SIZE).ok()?)?;
        let word = entry[(at % ENTRY_SIZE / 4) as usize];
        Some(word.to_le_bytes()[(at % 4) as usize])
    }

    /// Writes the table at `offset`, any width; outside it, nothing. Only the mask bit of
    /// the vector control word is writable (the rest is reserved).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                return;
            };
            let Some(entry) = usize::try_from(at / ENTRY_SIZE)
                .ok()
                .and_then(|e| self.table.get_mut(e))
            else {
                return;
            };
            let word = (at % ENTRY_SIZE / 4) as usize;
            let shift = (at % 4) * 8;
            let mut v = (entry[word] & !(0xff << shift)) | (u32::from(*b) << shift);
            if word == 3 {
                v &= ENTRY_MASKED;
            }
            entry[word] = v;
        }
    }

    /// Reads the PBA at `offset`: bit `v` is `pending(v)` for a vector that cannot be
    /// delivered now (an active vector's interrupts go straight to the guest).
    pub fn pba_read(&self, offset: u64, data: &mut [u8], pending: impl Fn(u16) -> bool) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0;
            let Some(first) = offset.checked_add(i as u64).and_then(|o| o.checked_mul(8)) else {
                continue;
            };
            for bit in 0..8u64 {
                let Some(v) = first.checked_add(bit).and_then(|v| u16::try_from(v).ok()) else {
                    continue;
                };
                if usize::from(v) < self.table.len() && !self.is_active(v) && pending(v) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    /// The message of vector `v` if it can be delivered now.
    pub fn active_message(&self, v: u16) -> Option<MsiMessage> {
        let e = self.table.get(usize::from(v))?;
        let m = MsiMessage {
            address_lo: e[0],
            address_hi: e[1],
            data: e[2],
        };
        let deliverable = self.enabled
            && self.bus_master
            && !self.function_masked
            && e[3] & ENTRY_MASKED == 0
            && m.targets_lapic();
        deliverable.then_some(m)
    }

    fn is_active(&self, v: u16) -> bool {
        self.active_message(v).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(m: &mut Msix, v: u64, addr: u32, data: u32, masked: bool) {
        let at = v * ENTRY_SIZE;
        m.table_write(at, &addr.to_le_bytes());
        m.table_write(at + 4, &0u32.to_le_bytes());
        m.table_write(at + 8, &data.to_le_bytes());
        m.table_write(at + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn a_vector_is_active_only_when_everything_allows_it() {
        let mut m = Msix::new(3);
        entry(&mut m, 1, 0xfee0_0000, 0x41, false);
        m.set_bus_master(true);
        assert_eq!(m.active_message(1), None, "MSI-X disabled");
        m.set_control(ENABLE);
        m.set_bus_master(false);
        assert_eq!(m.active_message(1), None, "no bus mastering");
        m.set_bus_master(true);
        let want = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x41,
        };
        assert_eq!(m.active_message(1), Some(want));
        assert_eq!(m.active_message(0), None, "masked at reset");
        m.set_control(ENABLE | FUNCTION_MASK);
        assert_eq!(m.active_message(1), None, "function mask");
        m.set_control(ENABLE);
        entry(&mut m, 1, 0x0010_0000, 0x41, false);
        assert_eq!(m.active_message(1), None, "an address in RAM");
        m.table_write(ENTRY_SIZE + 4, &1u32.to_le_bytes());
        entry(&mut m, 2, 0xfee0_1000, 0x42, false);
        m.table_write(2 * ENTRY_SIZE + 4, &7u32.to_le_bytes());
        assert_eq!(m.active_message(2), None, "an address above 4 GiB");
        assert_eq!(m.active_message(3), None, "no such vector");
    }

    #[test]
    fn table_accesses_of_any_width_and_out_of_range() {
        let mut m = Msix::new(2);
        m.table_write(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut d = [0u8; 8];
        m.table_read(0, &mut d);
        assert_eq!(d, [1, 2, 3, 4, 5, 6, 7, 8]);
        m.table_write(12, &[0xff, 0xff, 0xff, 0xff]);
        let mut c = [0u8; 4];
        m.table_read(12, &mut c);
        assert_eq!(c, [1, 0, 0, 0], "reserved control bits read 0");
        m.table_write(31, &[9, 9, 9]);
        m.table_write(u64::MAX - 1, &[9, 9, 9]);
        let mut e = [0xaau8; 3];
        m.table_read(31, &mut e);
        assert_eq!(e, [0, 0, 0], "past the table");
    }

    #[test]
    fn pba_reports_undeliverable_pending_vectors() {
        let mut m = Msix::new(66);
        m.set_control(ENABLE);
        m.set_bus_master(true);
        entry(&mut m, 65, 0xfee0_0000, 0x50, false);
        let mut d = [0u8; 16];
        m.pba_read(0, &mut d, |_| true);
        assert_eq!(d[0], 0xff);
        assert_eq!(d[8], 0b01, "vector 64 masked and pending; 65 active");
        assert_eq!(d[9], 0, "no vector 66..");
    }

    #[test]
    fn the_capability_locates_table_and_pba_read_only() {
        let (body, wmask) = capability(5, 0, 0x4000, 0x5000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 4);
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x5000);
        assert_eq!(wmask, [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
