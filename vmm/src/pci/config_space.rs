//! The configuration space of a type-0 PCI function: the 64-byte header, a capability
//! list after it, and the PCIe extended space (which reads as zeros: no extended
//! capabilities). Every byte has a write mask: the guest changes only the bits a real
//! function lets it change, so identification, capability pointers and read-only fields
//! stay what the vmm set whatever is written, at any offset and width.
//!
//! BARs are 64-bit memory BARs. Their write mask is the size's address bits, so the
//! all-ones write of BAR sizing reads back the size mask with the BAR's type bits.

/// Size of a function's configuration space (PCIe: 4 KiB).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Bytes of it that hold registers (the conventional space); the rest reads 0.
const REGISTERS: usize = 256;

/// Command register.
pub const COMMAND: usize = 0x04;
/// Command: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: the function may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register.
const STATUS: usize = 0x06;
/// Status: the function has a capability list.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// First BAR.
pub const BAR0: usize = 0x10;
/// Capabilities pointer.
const CAPABILITIES_POINTER: usize = 0x34;
/// First byte after the type-0 header.
const HEADER_END: usize = 0x40;
/// Interrupt line (a scratch register for the OS).
const INTERRUPT_LINE: usize = 0x3c;
/// BAR type bits: 64-bit memory, not prefetchable.
const BAR_MEM64: u32 = 0b100;

/// The identification registers of a function.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass, programming interface (24 bits).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// A function's configuration space.
pub struct ConfigSpace {
    data: [u8; REGISTERS],
    wmask: [u8; REGISTERS],
    /// Where the next capability goes, and the pointer byte that must point at it.
    next_cap: usize,
    last_next_ptr: usize,
}

impl ConfigSpace {
    /// A type-0 header with `id`, no BARs, no capabilities, the command register 0.
    pub fn new(id: Identity) -> ConfigSpace {
        let mut c = ConfigSpace {
            data: [0; REGISTERS],
            wmask: [0; REGISTERS],
            next_cap: HEADER_END,
            last_next_ptr: CAPABILITIES_POINTER,
        };
        c.set_u16(0x00, id.vendor);
        c.set_u16(0x02, id.device);
        c.set_u32(0x08, u32::from(id.revision) | (id.class << 8));
        c.set_u16(0x2c, id.subsystem_vendor);
        c.set_u16(0x2e, id.subsystem);
        let command_rw = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&command_rw.to_le_bytes());
        c.wmask[INTERRUPT_LINE] = 0xff;
        // Cache line size and latency timer: plain read-write.
        c.wmask[0x0c] = 0xff;
        c.wmask[0x0d] = 0xff;
        c
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the space read as all ones, bytes
    /// of the extended space as zeros.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i) {
                Some(at) if at < REGISTERS => self.data[at],
                Some(at) if at < CONFIG_SPACE_SIZE => 0,
                _ => 0xff,
            };
        }
    }

    /// The guest writes `data` at `offset`: only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i).filter(|&a| a < REGISTERS) else {
                return;
            };
            let m = self.wmask[at];
            self.data[at] = (self.data[at] & !m) | (b & m);
        }
    }

    /// The byte at `offset` (0 outside the registers).
    pub fn u8_at(&self, offset: usize) -> u8 {
        self.data.get(offset).copied().unwrap_or(0)
    }

    /// The 16-bit register at `offset`.
    pub fn u16_at(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The 32-bit register at `offset`.
    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets bytes as the device (write masks do not apply); past the registers, nothing.
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        if let Some(d) = offset
            .checked_add(bytes.len())
            .and_then(|end| self.data.get_mut(offset..end))
        {
            d.copy_from_slice(bytes);
        }
    }

    /// Sets a 16-bit register as the device.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a 32-bit register as the device.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Makes the bits of `mask` at `offset` writable by the guest.
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        if let Some(m) = offset
            .checked_add(mask.len())
            .and_then(|end| self.wmask.get_mut(offset..end))
        {
            m.copy_from_slice(mask);
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Whether the function decodes its memory BARs.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Makes BARs `index` and `index + 1` a 64-bit memory BAR of `size` bytes (a power of
    /// two, at least 16) at `address` (aligned to `size`).
    pub fn add_bar64(&mut self, index: usize, size: u64, address: u64) {
        debug_assert!(index < 5 && size.is_power_of_two() && size >= 16);
        debug_assert!(address % size == 0);
        let at = BAR0 + index * 4;
        let mask = !(size - 1);
        self.set_u32(at, address as u32 | BAR_MEM64);
        self.set_u32(at + 4, (address >> 32) as u32);
        self.set_writable(at, &((mask as u32) & !0xf).to_le_bytes());
        self.set_writable(at + 4, &((mask >> 32) as u32).to_le_bytes());
    }

    /// The address the 64-bit BAR at `index` holds.
    pub fn bar64_address(&self, index: usize) -> u64 {
        let at = BAR0 + index * 4;
        u64::from(self.u32_at(at) & !0xf) | (u64::from(self.u32_at(at + 4)) << 32)
    }

    /// Appends a capability with ID `id`, whose bytes after the ID and next pointer are
    /// `body`, writable where `wmask` (as long as `body`) says; returns its offset, or
    /// `None` when it does not fit.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Option<usize> {
        let at = self.next_cap;
        let end = at.checked_add(2 + body.len())?;
        if end > REGISTERS || wmask.len() != body.len() {
            return None;
        }
        self.data[at] = id;
        self.data[at + 1] = 0;
        self.data[at + 2..end].copy_from_slice(body);
        self.wmask[at + 2..end].copy_from_slice(wmask);
        self.data[self.last_next_ptr] = at as u8;
        self.last_next_ptr = at + 1;
        self.set_u16(STATUS, self.u16_at(STATUS) | STATUS_CAPABILITIES);
        // Capabilities start on a dword boundary.
        self.next_cap = (end + 3) & !3;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_0000,
            subsystem_vendor: 0x1af4,
            subsystem: 2,
        });
        c.add_bar64(0, 0x8000, 0xc000_8000);
        c
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = space();
        c.write(0, &[0xff; 0x10]);
        assert_eq!(c.u32_at(0), 0x1042_1af4);
        assert_eq!(c.u32_at(8), 0x0100_0001);
        assert_eq!(
            c.u16_at(COMMAND),
            COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
        assert_eq!(c.u16_at(STATUS), 0, "no capability yet, status read-only");
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = space();
        assert_eq!(c.u32_at(BAR0), 0xc000_8004);
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.u32_at(BAR0), 0xffff_8004, "32 KiB, 64-bit memory");
        assert_eq!(c.u32_at(BAR0 + 4), 0xffff_ffff);
        c.write(BAR0, &0xc123_4567u32.to_le_bytes());
        c.write(BAR0 + 4, &[0; 4]);
        assert_eq!(
            c.bar64_address(0),
            0xc123_0000,
            "low bits of the size dropped"
        );
        // Other BARs and the expansion ROM are not implemented: they size to 0.
        c.write(BAR0 + 8, &[0xff; 4]);
        c.write(0x30, &[0xff; 4]);
        assert_eq!((c.u32_at(BAR0 + 8), c.u32_at(0x30)), (0, 0));
    }

    #[test]
    fn capabilities_chain_and_stay_read_only() {
        let mut c = space();
        let a = c.add_capability(0x09, &[14, 1, 0, 0], &[0; 4]).unwrap();
        let b = c.add_capability(0x11, &[0, 0], &[0, 0xc0]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(c.u8_at(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.u8_at(a + 1), 0x48);
        assert_eq!(c.u8_at(b + 1), 0);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAPABILITIES, 0);
        c.write(a, &[0xff; 12]);
        assert_eq!(
            (c.u8_at(a), c.u8_at(a + 1), c.u8_at(a + 2)),
            (0x09, 0x48, 14)
        );
        assert_eq!(c.u16_at(b + 2), 0xc000);
        assert!(
            c.add_capability(1, &[0; 250], &[0; 250]).is_none(),
            "too big"
        );
    }

    #[test]
    fn reads_past_the_registers() {
        let c = space();
        let mut d = [0x55u8; 8];
        c.read(0xffc, &mut d);
        assert_eq!(d, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        c.read(usize::MAX, &mut d);
        assert_eq!(d, [0xff; 8]);
    }
}
