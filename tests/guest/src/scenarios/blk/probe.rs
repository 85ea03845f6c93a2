//! `blk-probe` (part of the default self-test): every virtio-mmio device on the command
//! line answers as a version-2 device; every virtio-blk device among them sets up,
//! identifies itself (the identify line) and reads its first sectors. Writes nothing.
//! Passes when there are no devices at all.

use super::{identify, Error};
use crate::disks;
use crate::machine::Machine;
use crate::virtio::blk::{Request, SECTOR};
use crate::virtio::device_id;

/// Sectors read from the start of each disk.
const READ_SECTORS: u64 = 8;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let mut registry = disks::lock();
    let devices = machine.config.devices;
    if let Some(problem) = registry.problems(&devices).next() {
        // The VMM announced something that is not there: a broken contract.
        return Err(Error::Disk(disks::DiskError::Announced(*problem)));
    }
    let mut counts = [0usize; 4];
    for (place, id) in registry.found(&devices) {
        // Which transport each device was found on: `blk0: virtio-pci 00:01.0`.
        let (kind, slot) = match id {
            device_id::BLOCK => ("blk", 0),
            device_id::NET => ("net", 1),
            device_id::CONSOLE => ("console", 2),
            _ => ("other", 3),
        };
        let n = &mut counts[slot];
        crate::say!("{kind}{n}: {place}");
        *n += 1;
        if id != device_id::BLOCK {
            crate::say!(
                "{place} irq={} device={id} ({}): not a disk",
                place.irq(),
                device_id::name(id)
            );
        }
    }
    for n in 0..registry.blk_count(&devices) {
        let disk = registry.open(&devices, &mut machine.frames, n)?;
        disk.ensure_slots(&mut machine.frames, 1, (READ_SECTORS * SECTOR) as u32)?;
        identify(disk)?;
        let sectors = READ_SECTORS.min(disk.capacity());
        if sectors > 0 {
            super::run_ok(disk, &Request::read(0, sectors as u32))?;
            crate::say!("{} read sectors 0..{sectors}", disk.name());
        }
    }
    Ok(())
}
