//! The ECAM window (PCIe enhanced configuration access) at `layout::PCI_ECAM_START`: 4 KiB
//! of configuration space per function, bus 0 only. Any width at any offset is accepted;
//! the part of an access past its function's 4 KiB reads all ones and is not written.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::devices::VmStop;

use super::bus::{Bdf, PciBus};

/// The ECAM MMIO device.
pub struct Ecam {
    bus: Arc<PciBus>,
}

impl Ecam {
    /// ECAM access to `bus`.
    pub fn new(bus: Arc<PciBus>) -> Ecam {
        Ecam { bus }
    }
}

/// The function and register an ECAM offset addresses (bus bits above 20 are outside the
/// 1 MiB window, so never seen).
fn decode(offset: u64) -> (Bdf, usize) {
    let bdf = Bdf {
        device: ((offset >> 15) & 0x1f) as u8,
        function: ((offset >> 12) & 0x7) as u8,
    };
    (bdf, (offset & 0xfff) as usize)
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (at, reg) = decode(offset);
        self.bus.config_read(at, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop> {
        let (at, reg) = decode(offset);
        self.bus.config_write(at, reg, data);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_device_function_register() {
        assert_eq!(
            decode(0x0_8ffc).0,
            Bdf {
                device: 1,
                function: 0
            }
        );
        assert_eq!(decode(0x0_8ffc).1, 0xffc);
        assert_eq!(
            decode(0xf_f123),
            (
                Bdf {
                    device: 31,
                    function: 7
                },
                0x123
            )
        );
    }
}
