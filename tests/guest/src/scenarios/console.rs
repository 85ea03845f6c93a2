//! The virtio-console scenarios, on the first virtio-console device (port 0).
//!
//! - `console-probe` (part of the default self-test): sets the console up, prints its
//!   identify line, writes [`PROBE_LINE`] as one chain on port 0's transmit queue and waits
//!   until the device returned it in the used ring, then prints `console0 probe wrote <n>
//!   bytes`. Passes when there is no virtio-console device (like `blk-probe`, `net-probe`).
//! - `console-write`: writes `bulkhead-guest console: hello <n>\n` for n = 0 ..
//!   `bulkhead.console.lines` (default 3), one chain per line, to the console (not the
//!   serial port), waits until the device consumed them, prints `console0 wrote <n> lines`.
//! - `console-echo`: prints `console0 echoing ms=<ms>`, then for `bulkhead.console.echo-ms`
//!   (default 5000) writes every byte read back (one chain per buffer received), ending
//!   early at a byte 0x04 (Ctrl-D; neither it nor what follows it in the same buffer is
//!   echoed), and prints `console echoed <n> bytes`.
//! - `console-resize`: prints `console0 size cols=<c> rows=<r>` (the size read at set-up),
//!   then for `bulkhead.console.resize-ms` (default 5000) reads ConfigGeneration every
//!   [`RESIZE_POLL_MS`] ms (each read is an exit to the VMM: it sleeps in between, spinning
//!   on the TSC). Whenever the generation moved, it reads `cols`/`rows` again (retried until
//!   the generation is the same around the read), acknowledges the configuration-change
//!   interrupt (InterruptACK = `VIRTIO_MMIO_INT_CONFIG`, bit 1) and prints
//!   `console0 size cols=<c> rows=<r>` again; several changes between two polls count as
//!   one. It stops once it saw `bulkhead.console.resizes` changes (default 1) and prints
//!   `console0 resized <n> times` (also when the time ran out); PASS with at least that
//!   many changes, otherwise `FAIL console-resize: timeout waiting for console0 size
//!   changes: saw <n> of <wanted> in <ms> ms`.

use super::net::Error;
use crate::gates::{self, VIRTIO_CONFIG_IRQS};
use crate::machine::Machine;
use crate::nics::{self, Cons};
use crate::time::Deadline;
use crate::virtio::console::RX_BUF;
use crate::virtio::device_id;
use crate::virtio::pci::NO_VECTOR;
use crate::virtio::Either;
use crate::virtio::Transport;
use core::fmt::Write;
use core::sync::atomic::Ordering;

/// How long the device may take to consume what was written.
const FLUSH_TIMEOUT_MS: u64 = 5000;
/// `console-resize` reads ConfigGeneration this often.
pub const RESIZE_POLL_MS: u64 = 20;

/// What `console-probe` writes: the end-to-end tests look for it where the console goes.
pub const PROBE_LINE: &[u8] = b"bulkhead-guest console-probe: port 0 transmits\n";

/// The identify line.
pub fn identify(cons: &Cons) {
    let c = cons.console.config;
    let t = cons.console.transport();
    crate::say!(
        "console0 cols={} rows={} max_nr_ports={} features={:#x} accepted={:#x} rx_queue={} tx_queue={} base={:#x} irq={}",
        c.cols,
        c.rows,
        c.max_nr_ports,
        t.offered(),
        t.accepted(),
        cons.console.rx.queue.size(),
        cons.console.tx.queue.size(),
        cons.place.base(),
        cons.place.irq()
    );
}

/// Queue `bytes` as one chain, waiting for a free buffer until `deadline`.
fn write_all(cons: &mut Cons, bytes: &[u8], deadline: Deadline) -> Result<(), Error> {
    while !cons.console.write(bytes)? {
        if deadline.passed() {
            return Err(Error::Timeout("a free console transmit buffer"));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

fn flush(cons: &mut Cons) -> Result<(), Error> {
    let deadline = Deadline::after_ms(FLUSH_TIMEOUT_MS);
    while !cons.console.flushed()? {
        if deadline.passed() {
            return Err(Error::Timeout("the console to take what was written"));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// A line in a fixed buffer.
struct Line {
    buf: [u8; 96],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `console-probe`.
pub fn probe(machine: &mut Machine) -> Result<(), Error> {
    let devices = machine.config.devices;
    if nics::count(&devices, device_id::CONSOLE) == 0 {
        return Ok(());
    }
    let mut registry = nics::lock();
    let cons = registry.console(&devices, &mut machine.frames)?;
    identify(cons);
    write_all(cons, PROBE_LINE, Deadline::after_ms(FLUSH_TIMEOUT_MS))?;
    // The used ring must give the chain back: the device read it.
    flush(cons)?;
    crate::say!("console0 probe wrote {} bytes", PROBE_LINE.len());
    Ok(())
}

/// `console-write`.
pub fn write(machine: &mut Machine) -> Result<(), Error> {
    let lines = machine.config.console.lines;
    let mut registry = nics::lock();
    let cons = registry.console(&machine.config.devices, &mut machine.frames)?;
    let deadline = Deadline::after_ms(FLUSH_TIMEOUT_MS);
    for n in 0..lines {
        let mut line = Line {
            buf: [0; 96],
            len: 0,
        };
        // Cannot overflow: the text is under 50 bytes.
        let _ = writeln!(line, "bulkhead-guest console: hello {n}");
        write_all(cons, &line.buf[..line.len], deadline)?;
    }
    flush(cons)?;
    crate::say!("console0 wrote {lines} lines");
    Ok(())
}

/// `console-echo`.
pub fn echo(machine: &mut Machine) -> Result<(), Error> {
    let ms = machine.config.console.echo_ms;
    let mut registry = nics::lock();
    let cons = registry.console(&machine.config.devices, &mut machine.frames)?;
    crate::say!("console0 echoing ms={ms}");
    let deadline = Deadline::after_ms(ms);
    let mut echoed = 0u64;
    let mut buf = [0u8; RX_BUF as usize];
    'outer: while !deadline.passed() {
        let n = cons.console.read(&mut buf)?;
        if n == 0 {
            core::hint::spin_loop();
            continue;
        }
        let (data, end) = match buf[..n].iter().position(|&b| b == 0x04) {
            Some(at) => (&buf[..at], true),
            None => (&buf[..n], false),
        };
        if !data.is_empty() {
            write_all(cons, data, Deadline::after_ms(FLUSH_TIMEOUT_MS))?;
            echoed += data.len() as u64;
        }
        if end {
            break 'outer;
        }
    }
    flush(cons)?;
    crate::say!("console echoed {echoed} bytes");
    Ok(())
}

/// Wait `ms` milliseconds at CPL3 without touching a device, but not past `end`.
fn pause(ms: u64, end: Deadline) {
    let wake = Deadline::after_ms(ms);
    while !wake.passed() && !end.passed() {
        core::hint::spin_loop();
    }
}

/// `console-resize`.
pub fn resize(machine: &mut Machine) -> Result<(), Error> {
    let (ms, wanted) = (
        machine.config.console.resize_ms,
        machine.config.console.resizes,
    );
    let mut registry = nics::lock();
    let cons = registry.console(&machine.config.devices, &mut machine.frames)?;
    let c = cons.console.config;
    crate::say!("console0 size cols={} rows={}", c.cols, c.rows);
    // On virtio-pci the configuration-change interrupt is an MSI-X message to this CPU
    // (vector VIRTIO_CONFIG, programmed at set-up): take interrupts while watching, and
    // count them.
    let msix = match cons.console.transport() {
        Either::Pci(t) => t.msi().is_some() && t.config_vector() != NO_VECTOR,
        Either::Mmio(_) => false,
    };
    let config_irqs = VIRTIO_CONFIG_IRQS.load(Ordering::SeqCst);
    if msix {
        gates::interrupts_on();
    }
    let result = watch(cons, ms, wanted);
    if msix && matches!(result, Ok(n) if n > 0) {
        // The interrupt may trail the generation change a little.
        let grace = Deadline::after_ms(100);
        while VIRTIO_CONFIG_IRQS.load(Ordering::SeqCst) == config_irqs && !grace.passed() {
            core::hint::spin_loop();
        }
    }
    if msix {
        gates::interrupts_off();
    }
    let seen = result?;
    crate::say!("console0 resized {seen} times");
    if msix {
        let n = VIRTIO_CONFIG_IRQS
            .load(Ordering::SeqCst)
            .wrapping_sub(config_irqs);
        crate::say!("console0 config_interrupts={n}");
        if seen > 0 && n == 0 {
            return Err(Error::NoConfigInterrupt(seen));
        }
    }
    if seen < wanted {
        return Err(Error::TooFewResizes { seen, wanted, ms });
    }
    Ok(())
}

/// Poll for size changes until `wanted` were seen or `ms` ran out; prints each.
fn watch(cons: &mut Cons, ms: u64, wanted: u32) -> Result<u32, Error> {
    let deadline = Deadline::after_ms(ms);
    let mut seen = 0u32;
    while seen < wanted {
        if let Some(c) = cons.console.poll_config().map_err(Error::ConsoleConfig)? {
            seen += 1;
            crate::say!("console0 size cols={} rows={}", c.cols, c.rows);
            continue;
        }
        if deadline.passed() {
            break;
        }
        pause(RESIZE_POLL_MS, deadline);
    }
    Ok(seen)
}
