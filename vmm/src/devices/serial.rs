//! The 8250 UART at 0x3f8 (COM1, IRQ 4): the guest's early console.
//!
//! vm-superio emulates the registers; this module connects it to the host: output to a
//! writer (stdout, a file, or nowhere), input from the host pushed into its FIFO, and its
//! interrupt delivered through an eventfd registered as a KVM irqfd.

use std::io::{self, Write};

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use super::VmStop;

/// Base port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Registers of an 8250.
pub const COM1_LEN: u64 = 8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by writing to an eventfd (an irqfd in the VM).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's serial output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// The guest's output, noting when its first line ends (for the start-up trace).
struct FirstLine(SerialOut);

impl Write for FirstLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        if buf.get(..n).unwrap_or(buf).contains(&b'\n') {
            crate::trace::mark(crate::trace::Step::FirstLine);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The UART on the port bus.
pub struct SerialDevice {
    inner: Serial<IrqTrigger, NoEvents, SerialOut>,
    /// Set once writing the output failed, so the error is logged once, not per byte.
    output_failed: bool,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        SerialDevice {
            inner: Serial::new(IrqTrigger(irq), Box::new(FirstLine(out))),
            output_failed: false,
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.inner.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(SerialError::FullFifo) => Ok(0),
            Err(SerialError::Trigger(e)) | Err(SerialError::IOError(e)) => Err(e),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.inner.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop> {
        let value = *data.first()?;
        if let Err(e) = self.inner.write(offset as u8, value) {
            if !self.output_failed {
                log::warn!("serial: writing guest output failed, dropping it from now on: {e}");
                self.output_failed = true;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LSR: u64 = 5;
    const IER: u64 = 1;
    const LSR_DATA_READY: u8 = 1;
    const LSR_THR_EMPTY: u8 = 0x20;

    #[test]
    fn guest_output_reaches_the_writer() {
        let cap = Capture::default();
        let mut s = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(cap.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn host_input_is_readable_and_interrupts() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        s.write(IER, &[1]); // enable the received-data interrupt
        assert_eq!(s.enqueue_input(b"ok").unwrap(), 2);
        assert_eq!(irq.read().unwrap(), 1, "interrupt raised");
        let mut b = [0u8];
        s.read(LSR, &mut b);
        assert_ne!(b[0] & LSR_DATA_READY, 0);
        s.read(0, &mut b);
        assert_eq!(b, *b"o");
        s.read(0, &mut b);
        assert_eq!(b, *b"k");
        s.read(LSR, &mut b);
        assert_eq!(b[0] & LSR_DATA_READY, 0);
    }

    #[test]
    fn full_fifo_takes_nothing_more() {
        let mut s = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(io::sink()));
        let big = vec![b'x'; 1000];
        let n = s.enqueue_input(&big).unwrap();
        assert!(n > 0 && n < 1000);
        assert_eq!(s.enqueue_input(b"y").unwrap(), 0);
    }

    #[test]
    fn failing_output_does_not_stop_the_guest() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(Broken));
        assert_eq!(s.write(0, b"a"), None);
        assert_eq!(s.write(0, b"b"), None);
        assert!(s.output_failed);
    }
}
