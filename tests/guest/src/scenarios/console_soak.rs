//! `console-soak`: for `bulkhead.soak-ms` (default 5000), writes the lines
//! `console-soak <seq>\n` (seq = 0, 1, ...; [`crate::soak::console_line`]), one chain each,
//! on the virtio console's port 0, as fast as the device takes them; then waits until the
//! device has taken every one and passes with `PASS console-soak lines=N max-stall-ms=M`
//! on the serial port. The host checks that lines 0..N-1 reached the console's output in
//! order. Stall lines: `console-soak: stall <ms> ms` between two completions (chains the
//! device gave back). DEVICE_NEEDS_RESET, or no completion for
//! [`PATIENCE_MS`](super::soak::PATIENCE_MS), fails it.

use crate::machine::Machine;
use crate::nics;
use crate::scenarios::soak::{Dev, Error, Patience, Watch};
use crate::soak::{console_line, Summary, CONSOLE_LINE_MAX};
use crate::time::Deadline;

/// Run the scenario.
pub fn run_soak(machine: &mut Machine) -> Result<Summary, Error> {
    let soak = machine.config.soak;
    let mut registry = nics::lock();
    let cons = registry.console(&machine.config.devices, &mut machine.frames)?;
    let dev = Dev("console", 0);
    crate::say!("console0 soak ms={}", soak.ms);
    let mut watch = Watch::new("console-soak", soak.stall_ms);
    let mut patience = Patience::new(dev);
    let end = Deadline::after_ms(soak.ms);
    let mut line = [0u8; CONSOLE_LINE_MAX];
    let (mut written, mut done) = (0u64, 0u64);
    loop {
        let writing = !end.passed();
        if writing {
            let len = console_line(written, &mut line);
            if cons.console.write(&line[..len])? {
                written += 1;
            }
        }
        let flushed = cons.console.flushed()?;
        let now_done = written - u64::from(cons.console.tx.queue.outstanding());
        if now_done > done {
            done = now_done;
            watch.completed();
            patience.progress();
        } else {
            patience.idle(
                cons.console.transport(),
                if writing {
                    "a free transmit buffer"
                } else {
                    "the device to take every line"
                },
            )?;
        }
        if !writing && flushed {
            break;
        }
    }
    Ok(Summary::Console {
        lines: written,
        max_stall_ms: watch.max_ms(),
    })
}
