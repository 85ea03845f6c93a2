//! Dispatch of port I/O and MMIO exits to the device that owns the address.

use std::sync::{Arc, Mutex};

use super::VmStop;

/// A device on a bus. Offsets are relative to the device's base address.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset`; a device may ask the VM to stop.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop>;
}

/// No device is at the address accessed.
#[derive(Debug, PartialEq, Eq)]
pub struct Unclaimed;

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors while building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

/// An address space (port I/O or MMIO) of non-overlapping device ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if len == 0 || self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.push((base, len, device));
        self.ranges.sort_by_key(|(b, _, _)| *b);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let i = self.ranges.partition_point(|(b, _, _)| *b <= addr);
        let (base, len, dev) = self.ranges.get(i.checked_sub(1)?)?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Reads from `addr`; returns false (and fills `data` with 0xff, as an empty bus
    /// reads) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to `addr`; `Err(Unclaimed)` when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<VmStop>, Unclaimed> {
        match self.find(addr) {
            Some((offset, dev)) => Ok(lock(dev).write(offset, data)),
            None => Err(Unclaimed),
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device's state stays usable even if
/// another vCPU thread panicked while holding it.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop> {
            self.0.push((offset, data.to_vec()));
            None
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::default();
        let a = Arc::new(Mutex::new(Reg(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Reg(vec![]))))
            .unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d, [0xff]);
        assert!(!bus.read(0x3f7, &mut d));
        assert_eq!(bus.write(0x3f8, &[7]), Ok(None));
        assert_eq!(bus.write(0x61, &[7]), Err(Unclaimed));
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![7])]);
    }

    #[test]
    fn rejects_overlap() {
        let mut bus = Bus::default();
        bus.insert(0x10, 0x10, Arc::new(Mutex::new(Reg(vec![]))))
            .unwrap();
        assert!(bus
            .insert(0x1f, 1, Arc::new(Mutex::new(Reg(vec![]))))
            .is_err());
        assert!(bus
            .insert(0x8, 9, Arc::new(Mutex::new(Reg(vec![]))))
            .is_err());
        assert!(bus
            .insert(0x20, 1, Arc::new(Mutex::new(Reg(vec![]))))
            .is_ok());
        assert!(bus.insert(0, 0, Arc::new(Mutex::new(Reg(vec![])))).is_err());
    }
}
