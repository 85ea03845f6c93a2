//! `blk-flush`: a FLUSH request completes with status OK; then prints
//! `<disk> flushed` (an end-to-end test kills the block process on that line and checks
//! that what was written before is in the image).

use super::{run_ok, Error};
use crate::disks;
use crate::machine::Machine;
use crate::virtio::blk::{feature, Request};

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    if !disk.blk.has(feature::FLUSH) {
        return Err(Error::NotOffered("FLUSH"));
    }
    disk.ensure_slots(&mut machine.frames, 1, 512)?;
    run_ok(disk, &Request::flush())?;
    crate::say!("{} flushed", disk.name());
    Ok(())
}
