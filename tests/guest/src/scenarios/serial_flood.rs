//! `serial-flood`: prints `bulkhead.serial.bytes` bytes (default 1 MiB) on the serial port
//! as 64-byte lines `bulkhead-guest: flood <n> xxxx...`, then `serial-flood printed <n>
//! bytes`: a guest that floods its console, for the host's output size limits.

use crate::machine::Machine;

/// One line's length on the wire: "bulkhead-guest: " (16) + "flood " (6) + 10 digits +
/// " " + [`PAD`] (30) + "\n".
const LINE: u64 = 64;
/// The rest of a line.
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// `serial-flood`.
pub fn run(machine: &mut Machine) {
    let bytes = machine.config.serial_bytes;
    let mut printed = 0u64;
    let mut n = 0u64;
    while printed < bytes {
        crate::say!("flood {n:010} {PAD}");
        printed += LINE;
        n += 1;
    }
    crate::say!("serial-flood printed {printed} bytes");
}
