//! Legacy configuration access through I/O ports: the address at 0xCF8 (a dword write:
//! enable bit 31, bus, device, function, register), the data at 0xCFC..=0xCFF. Same
//! configuration space code as ECAM; only the first 256 bytes of each function are
//! reachable this way, and bus 0 only exists.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::devices::VmStop;

use super::bus::{Bdf, PciBus};

/// First port (the address register); the device takes 8 ports.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Number of ports.
pub const CONFIG_PORTS_LEN: u64 = 8;
const ENABLE: u32 = 1 << 31;

/// The 0xCF8/0xCFC port pair.
pub struct ConfigPorts {
    bus: Arc<PciBus>,
    address: u32,
}

impl ConfigPorts {
    /// Port access to `bus`.
    pub fn new(bus: Arc<PciBus>) -> ConfigPorts {
        ConfigPorts { bus, address: 0 }
    }

    /// The function and register the address register and data port `port` (0..4)
    /// select, if enabled and on bus 0.
    fn target(&self, port: u64) -> Option<(Bdf, usize)> {
        let a = self.address;
        if a & ENABLE == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let bdf = Bdf {
            device: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
        };
        Some((bdf, (a & 0xfc) as usize + port as usize))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            }
            return;
        }
        if let Some((at, reg)) = self.target(offset - 4) {
            // Only the conventional 256 bytes: a dword at 0xfc ends there.
            let n = data.len().min(256usize.saturating_sub(reg));
            self.bus.config_read(at, reg, &mut data[..n]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop> {
        if offset < 4 {
            // Narrower writes (0xCF9 is a reset register on some chipsets) are ignored.
            if let (0, Ok(b)) = (offset, <[u8; 4]>::try_from(data)) {
                self.address = u32::from_le_bytes(b);
            }
            return None;
        }
        if let Some((at, reg)) = self.target(offset - 4) {
            let n = data.len().min(256usize.saturating_sub(reg));
            self.bus.config_write(at, reg, &data[..n]);
        }
        None
    }
}
