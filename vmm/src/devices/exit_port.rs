//! The exit port: a guest writes one byte to I/O port 0xf4 to power off with that status.
//!
//! The same idea as QEMU's `isa-debug-exit`, without its `(value << 1) | 1` encoding: the
//! byte written is the status `bulkhead run` exits with. The test guest uses it; a guest
//! that does not know it (Linux) powers off through the i8042 instead.

use super::bus::BusDevice;
use super::VmStop;

/// The port.
pub const EXIT_PORT: u64 = 0xf4;

/// The exit-port device.
#[derive(Default)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<VmStop> {
        data.first().map(|status| VmStop::GuestStatus(*status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stops_with_status() {
        assert_eq!(ExitPort.write(0, &[3]), Some(VmStop::GuestStatus(3)));
        assert_eq!(ExitPort.write(0, &[]), None);
    }
}
