//! The host bridge at 00:00.0: identification only (no BARs, no capabilities). Operating
//! systems expect function 0 of device 0 to be the bridge the ACPI `PNP0A08` describes.

use super::config_space::{ConfigSpace, Identity};
use super::function::{BarRange, PciFunction};

/// Red Hat's vendor ID and its generic PCIe host bridge device ID, the one virtual
/// machines without a chipset model announce.
const VENDOR: u16 = 0x1b36;
const DEVICE: u16 = 0x0008;
/// Class: bridge, host bridge.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_0000;

/// The host bridge.
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge {
            config: ConfigSpace::new(Identity {
                vendor: VENDOR,
                device: DEVICE,
                revision: 0,
                class: CLASS_HOST_BRIDGE,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bar_ranges(&self) -> Vec<BarRange> {
        Vec::new()
    }
}
