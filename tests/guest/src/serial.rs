//! Line output on COM1 (8250/16550 UART at port 0x3f8) through the serial-write gate.
//!
//! Every line starts with `bulkhead-guest: ` and ends with `\n`. A line is collected in a
//! buffer and sent with one gate call per [`BUFFER`] bytes, under a lock so that lines
//! from different CPUs do not interleave. Before each burst of bytes the gate waits for
//! LSR.THRE; a burst is 16 bytes when the UART reports a 16550A FIFO (IIR bits 7:6 after
//! enabling it in FCR) and 1 byte otherwise, which is correct for a real 8250 too. Each
//! byte is one `out`, i.e. one exit to the VMM; the LSR polls add one exit per 16 bytes.

use crate::gates;
use crate::sync::SpinLock;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Prefix of every line the guest prints.
pub const PREFIX: &str = "bulkhead-guest: ";

const COM1: u16 = 0x3f8;
/// Interrupt identification register (read) / FIFO control register (write).
const IIR_FCR: u16 = COM1 + 2;
/// FCR: enable the FIFOs and clear both.
const FCR_ENABLE_AND_CLEAR: u8 = 0x07;
/// IIR bits 7:6 both set: the FIFOs are enabled (16550A).
const IIR_FIFO_ENABLED: u8 = 0xc0;
/// Depth of a 16550A transmit FIFO.
const FIFO_DEPTH: usize = 16;
/// Bytes collected before a gate call.
const BUFFER: usize = 256;
/// Spins a fatal-error reporter waits for the lock before taking it anyway.
const FATAL_LOCK_SPINS: u32 = 10_000_000;

/// Bytes the gate may send per poll of LSR.THRE (1 until `init` finds a FIFO).
static BURST: AtomicUsize = AtomicUsize::new(1);
static LOCK: SpinLock<()> = SpinLock::new(());

/// Enable the UART's FIFO if it has one. Interrupts stay off (IER is left at zero) and
/// the line settings are the VMM's: its UART has no real line to drive.
pub fn init() {
    gates::outb(IIR_FCR, FCR_ENABLE_AND_CLEAR);
    if gates::inb(IIR_FCR) & IIR_FIFO_ENABLED == IIR_FIFO_ENABLED {
        BURST.store(FIFO_DEPTH, Ordering::Relaxed);
    }
}

/// Collects a line and sends it through the gate in chunks of [`BUFFER`] bytes.
struct LineWriter {
    buf: [u8; BUFFER],
    len: usize,
}

impl LineWriter {
    fn new() -> Self {
        Self {
            buf: [0; BUFFER],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            gates::serial_write(&self.buf[..self.len], BURST.load(Ordering::Relaxed));
            self.len = 0;
        }
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == BUFFER {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

fn write_line(args: fmt::Arguments) {
    let mut w = LineWriter::new();
    // `LineWriter` never fails; a failing `Display` impl only truncates its own output.
    let _ = w.write_str(PREFIX);
    let _ = w.write_fmt(args);
    let _ = w.write_str("\n");
    w.flush();
}

/// Print one line (prefix and newline added).
pub fn line(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    write_line(args);
}

/// Print one line for a fatal-error report: takes the lock even if its holder never
/// releases it (it may be the code that just faulted).
pub fn line_fatal(args: fmt::Arguments) {
    let _guard = LOCK.lock_or_steal(FATAL_LOCK_SPINS);
    write_line(args);
}

/// Print a `bulkhead-guest: ` line, `format!` style.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::serial::line(format_args!($($arg)*))
    };
}
