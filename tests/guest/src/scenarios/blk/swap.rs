//! `blk-swap`: the disk's image is changed under a running guest (`bulkhead ctl disk`,
//! Firecracker's `PATCH /drives/{id}`). Prints `<disk> swap before capacity=<n>
//! sector0=<first 8 bytes, hex>`, then `<disk> swap waiting`, on which the host swaps the
//! image; watches ConfigGeneration (bumped with the configuration-change interrupt) for
//! up to [`WAIT_MS`], checks InterruptStatus says a configuration change (bit 1), reads
//! the configuration again and prints `<disk> swap after
//! capacity=<n> sector0=<hex>`, then writes [`WRITTEN`] over sector 1, flushes, and
//! prints `<disk> swap wrote sector 1`.

use super::{run_ok, Error};
use crate::disks::{self, Disk};
use crate::machine::Machine;
use crate::time::Deadline;
use crate::virtio::blk::Request;
use crate::virtio::Transport;

/// How long the image has to change.
const WAIT_MS: u64 = 60_000;
/// The byte written over sector 1 of the new image.
pub const WRITTEN: u8 = 0xa5;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    disk.ensure_slots(&mut machine.frames, 1, 512)?;
    let before = disk.blk.transport().config_generation();
    report(disk, "before")?;
    crate::say!("{} swap waiting", disk.name());
    let deadline = Deadline::after_ms(WAIT_MS);
    while disk.blk.transport().config_generation() == before {
        if deadline.passed() {
            return Err(Error::NoConfigChange(WAIT_MS));
        }
        core::hint::spin_loop();
    }
    // The configuration-change interrupt came with it: InterruptStatus (ISR) bit 1.
    let isr = disk.blk.transport().interrupt_status();
    if isr & 2 == 0 {
        return Err(Error::NoConfigInterrupt(isr));
    }
    disk.blk.reread_config().map_err(Error::Config)?;
    report(disk, "after")?;
    disk.data(0).fill(WRITTEN);
    run_ok(disk, &Request::write(1, 1))?;
    run_ok(disk, &Request::flush())?;
    crate::say!("{} swap wrote sector 1", disk.name());
    Ok(())
}

/// Prints the capacity and the first bytes of sector 0.
fn report(disk: &mut Disk, when: &str) -> Result<(), Error> {
    run_ok(disk, &Request::read(0, 1))?;
    let mut hex = [0u8; 16];
    for (i, b) in disk.data(0)[..8].iter().enumerate() {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        hex[2 * i] = DIGITS[usize::from(b >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    let hex = core::str::from_utf8(&hex).unwrap_or("?");
    crate::say!(
        "{} swap {when} capacity={} sector0={hex}",
        disk.name(),
        disk.capacity()
    );
    Ok(())
}
