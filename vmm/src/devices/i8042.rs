//! The i8042 keyboard controller, only as far as a guest needs it to reset the machine
//! (`reboot=k`): command 0xFE on port 0x64 stops the VM. vm-superio's device does the
//! register work.

use std::cell::Cell;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use super::VmStop;

/// First port of the controller (data port 0x60; the command port 0x64 is offset 4).
pub const I8042_BASE: u64 = 0x60;
/// Ports covered: 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// Records that the guest asked for a reset.
#[derive(Default)]
pub struct ResetFlag(Cell<bool>);

impl Trigger for ResetFlag {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(true);
        Ok(())
    }
}

/// The controller on the port bus.
pub struct I8042 {
    inner: I8042Device<ResetFlag>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            inner: I8042Device::new(ResetFlag::default()),
        }
    }
}

// `Cell` makes ResetFlag !Sync; that is fine: the device lives behind the bus's Mutex, so it
// only needs to be Send, which Cell<bool> is.

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.inner.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop> {
        let value = *data.first()?;
        let Ok(()) = self.inner.write(offset as u8, value);
        if self.inner.reset_evt().0.replace(false) {
            Some(VmStop::Reset)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let mut k = I8042::default();
        assert_eq!(k.write(4, &[0xd1]), None);
        assert_eq!(
            k.write(0, &[0xfe]),
            None,
            "data port is not the command port"
        );
        assert_eq!(k.write(4, &[0xfe]), Some(VmStop::Reset));
        let mut status = [0xffu8];
        k.read(4, &mut status);
        assert_eq!(status, [0]);
    }
}
