//! PCI bus 0: up to 32 devices of one function each, addressed by configuration accesses
//! (ECAM or ports 0xCF8/0xCFC) and by the memory their BARs decode.
//!
//! BAR decoding is looked up on every access, from each function's BARs as they are
//! now, so a BAR the guest moves is found at its new address at once. Where the guest
//! makes BARs overlap, the lowest device number wins; where it puts one over RAM, KVM
//! serves the RAM and the BAR is never reached. Either way only the guest is affected.

use std::sync::{Arc, Mutex};

use super::function::{inside_config_space, PciFunction};

/// Devices on a bus.
pub const DEVICES: usize = 32;

/// A shared function.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// Bus 0.
#[derive(Default)]
pub struct PciBus {
    devices: [Option<SharedFunction>; DEVICES],
}

/// A PCI address on bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00:{:02x}.{}", self.device, self.function)
    }
}

fn lock(f: &SharedFunction) -> std::sync::MutexGuard<'_, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

impl PciBus {
    /// Puts `function` at device `device`, function 0; false if taken or out of range.
    pub fn insert(&mut self, device: u8, function: SharedFunction) -> bool {
        match self.devices.get_mut(usize::from(device)) {
            Some(slot @ None) => {
                *slot = Some(function);
                true
            }
            _ => false,
        }
    }

    fn get(&self, at: Bdf) -> Option<&SharedFunction> {
        if at.function != 0 {
            return None;
        }
        self.devices.get(usize::from(at.device))?.as_ref()
    }

    /// A configuration read; an absent function reads all ones.
    pub fn config_read(&self, at: Bdf, offset: usize, data: &mut [u8]) {
        data.fill(0xff);
        let n = inside_config_space(offset, data.len());
        if let (Some(f), true) = (self.get(at), n > 0) {
            lock(f).config_read(offset, &mut data[..n]);
        }
    }

    /// A configuration write; to an absent function it is dropped.
    pub fn config_write(&self, at: Bdf, offset: usize, data: &[u8]) {
        let n = inside_config_space(offset, data.len());
        if let (Some(f), true) = (self.get(at), n > 0) {
            lock(f).config_write(offset, &data[..n]);
        }
    }

    /// A read at guest-physical `addr`; false if no BAR decodes it.
    pub fn bar_read(&self, addr: u64, data: &mut [u8]) -> bool {
        for f in self.devices.iter().flatten() {
            let mut f = lock(f);
            let hit = f
                .bar_ranges()
                .into_iter()
                .find_map(|r| r.offset_of(addr).map(|o| (r.bar, o)));
            if let Some((bar, offset)) = hit {
                f.bar_read(bar, offset, data);
                return true;
            }
        }
        false
    }

    /// A write at guest-physical `addr`; false if no BAR decodes it.
    pub fn bar_write(&self, addr: u64, data: &[u8]) -> bool {
        for f in self.devices.iter().flatten() {
            let mut f = lock(f);
            let hit = f
                .bar_ranges()
                .into_iter()
                .find_map(|r| r.offset_of(addr).map(|o| (r.bar, o)));
            if let Some((bar, offset)) = hit {
                f.bar_write(bar, offset, data);
                return true;
            }
        }
        false
    }
}
