//! The i8042 keyboard controller, as far as a guest needs it to reset the machine
//! (`reboot=k`: command 0xFE on port 0x64 stops the VM; vm-superio's device does that
//! register work) and as far as an orchestrator needs it to ask the guest to stop
//! (Firecracker's `SendCtrlAltDel`): [`I8042::press_ctrl_alt_del`] puts the scancodes of
//! Ctrl, Alt and Del (set 2, as Firecracker's controller sends them) into the output buffer,
//! raises IRQ 1, and the guest reads them from port 0x60 while bit 0 of the status register
//! (port 0x64) says a byte is waiting.

use std::cell::Cell;
use std::collections::VecDeque;

use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use super::VmStop;

/// First port of the controller (data port 0x60; the command port 0x64 is offset 4).
pub const I8042_BASE: u64 = 0x60;
/// Ports covered: 0x60..=0x64.
pub const I8042_LEN: u64 = 5;
/// The keyboard's interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;

/// Offset of the data port (0x60).
const DATA: u64 = 0;
/// Offset of the status/command port (0x64).
const STATUS: u64 = 4;
/// Status bit: the output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Ctrl (make code), Alt (make code), Del (extended make code): set 2 scancodes.
pub const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
/// Bytes the output buffer holds at most: presses beyond it are refused, not queued
/// without bound (an orchestrator pressing in a loop while the guest never reads).
const OUTPUT_CAPACITY: usize = 16;

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
    /// Scancodes waiting for the guest, oldest first.
    output: VecDeque<u8>,
    /// IRQ 1 (an irqfd in the VM); `None` in unit tests without a VM.
    irq: Option<EventFd>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042::new(None)
    }
}

// `Cell` makes ResetFlag !Sync; that is fine: the device lives behind the bus's Mutex, so it
// only needs to be Send, which Cell<bool> is.

impl I8042 {
    /// A controller raising `irq` (registered for IRQ 1) when a key is pressed.
    pub fn new(irq: Option<EventFd>) -> I8042 {
        I8042 {
            inner: I8042Device::new(ResetFlag::default()),
            output: VecDeque::new(),
            irq,
        }
    }

    /// Presses Ctrl+Alt+Del: its scancodes into the output buffer, then IRQ 1. Refused
    /// when the guest has not read earlier presses yet.
    pub fn press_ctrl_alt_del(&mut self) -> Result<(), String> {
        if self.output.len() + CTRL_ALT_DEL.len() > OUTPUT_CAPACITY {
            return Err("i8042: the guest has not read the keys pressed before".into());
        }
        self.output.extend(CTRL_ALT_DEL);
        self.interrupt()
    }

    fn interrupt(&self) -> Result<(), String> {
        match &self.irq {
            Some(irq) => irq
                .write(1)
                .map_err(|e| format!("i8042: raising IRQ {I8042_KBD_IRQ}: {e}")),
            None => Ok(()),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => match self.output.pop_front() {
                Some(byte) => {
                    // Each byte its own interrupt, as a keyboard sends them.
                    if !self.output.is_empty() {
                        if let Err(e) = self.interrupt() {
                            log::warn!("{e}");
                        }
                    }
                    byte
                }
                None => self.inner.read(offset as u8),
            },
            STATUS if !self.output.is_empty() => self.inner.read(offset as u8) | STATUS_OUTPUT_FULL,
            _ => self.inner.read(offset as u8),
        };
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

    #[test]
    fn ctrl_alt_del_is_read_from_the_data_port_with_an_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut k = I8042::new(Some(irq.try_clone().unwrap()));
        k.press_ctrl_alt_del().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut got = Vec::new();
        loop {
            let mut status = [0u8];
            k.read(STATUS, &mut status);
            if status[0] & STATUS_OUTPUT_FULL == 0 {
                break;
            }
            let mut byte = [0u8];
            k.read(DATA, &mut byte);
            got.push(byte[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL);
        // One interrupt per byte after the first.
        assert_eq!(irq.read().unwrap(), 3);
        let mut empty = [0xffu8];
        k.read(DATA, &mut empty);
        assert_eq!(empty, [0]);
    }

    #[test]
    fn presses_the_guest_never_reads_are_bounded() {
        let mut k = I8042::default();
        for _ in 0..OUTPUT_CAPACITY / CTRL_ALT_DEL.len() {
            k.press_ctrl_alt_del().unwrap();
        }
        assert!(k.press_ctrl_alt_del().is_err());
    }
}
