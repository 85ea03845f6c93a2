//! The IOAPIC (KVM's in-kernel one), programmed from CPL3 through its user-accessible,
//! uncached MMIO page: an index register and a data window.

use crate::layout::IOAPIC_BASE;
use core::fmt;

/// IOREGSEL: which register IOWIN shows.
const IOREGSEL: u64 = 0x00;
/// IOWIN: the selected register.
const IOWIN: u64 = 0x10;
/// IOAPICVER: bits 16-23 = number of redirection entries - 1.
const VERSION: u32 = 0x01;
/// First redirection-table register; pin n is 0x10 + 2n (low) and 0x11 + 2n (high).
const REDIRECTION: u32 = 0x10;
/// Redirection entry: masked.
const MASKED: u32 = 1 << 16;

/// A pin the IOAPIC does not have.
#[derive(Debug, Clone, Copy)]
pub struct NoSuchPin {
    /// The pin asked for.
    pub pin: u32,
    /// Pins the IOAPIC has.
    pub pins: u32,
}

impl fmt::Display for NoSuchPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IOAPIC has {} pins, no pin {}", self.pins, self.pin)
    }
}

fn read(reg: u32) -> u32 {
    // SAFETY: the IOAPIC page is mapped user-accessible and uncached by `paging`; only
    // the boot CPU programs the IOAPIC, so the select-then-access pair is not interleaved.
    unsafe {
        ((IOAPIC_BASE + IOREGSEL) as *mut u32).write_volatile(reg);
        ((IOAPIC_BASE + IOWIN) as *const u32).read_volatile()
    }
}

fn write(reg: u32, value: u32) {
    // SAFETY: as in `read`; the registers written affect only interrupt delivery.
    unsafe {
        ((IOAPIC_BASE + IOREGSEL) as *mut u32).write_volatile(reg);
        ((IOAPIC_BASE + IOWIN) as *mut u32).write_volatile(value);
    }
}

/// Number of pins (redirection entries).
pub fn pins() -> u32 {
    ((read(VERSION) >> 16) & 0xff) + 1
}

fn check(pin: u32) -> Result<(), NoSuchPin> {
    let pins = pins();
    if pin < pins {
        Ok(())
    } else {
        Err(NoSuchPin { pin, pins })
    }
}

/// Route `pin` to `vector` on the CPU with `apic_id`: fixed delivery, physical
/// destination, active high, edge-triggered, unmasked.
pub fn route(pin: u32, vector: u8, apic_id: u32) -> Result<(), NoSuchPin> {
    check(pin)?;
    write(REDIRECTION + 2 * pin, MASKED | u32::from(vector));
    write(REDIRECTION + 2 * pin + 1, apic_id << 24);
    write(REDIRECTION + 2 * pin, u32::from(vector));
    Ok(())
}

/// Mask `pin` again.
pub fn mask(pin: u32) -> Result<(), NoSuchPin> {
    check(pin)?;
    write(REDIRECTION + 2 * pin, MASKED);
    Ok(())
}
