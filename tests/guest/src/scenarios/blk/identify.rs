//! `blk-identify`: prints the identify line of the disk (capacity, GET_ID serial,
//! read-only flag, limits, queues, features offered and accepted) and checks it: capacity
//! above 0, and whatever `bulkhead.blk.capacity`, `bulkhead.blk.serial` and
//! `bulkhead.blk.ro` say.

use super::{id_str, identify, Error};
use crate::disks;
use crate::machine::Machine;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let options = machine.config.blk;
    let mut registry = disks::lock();
    let disk = registry.open(&machine.config.devices, &mut machine.frames, options.disk)?;
    disk.ensure_slots(&mut machine.frames, 1, 512)?;
    let id = identify(disk)?;
    let capacity = disk.capacity();
    if capacity == 0 {
        return Err(Error::Empty);
    }
    if let Some(expected) = options.capacity.filter(|&c| c != capacity) {
        return Err(Error::Capacity {
            expected,
            found: capacity,
        });
    }
    if let Some(expected) = options.serial.filter(|s| s.as_bytes() != id_str(&id)) {
        return Err(Error::Serial {
            expected,
            found: id,
        });
    }
    if let Some(expected) = options.ro.filter(|&ro| ro != disk.blk.read_only()) {
        return Err(Error::ReadOnly { expected });
    }
    Ok(())
}
