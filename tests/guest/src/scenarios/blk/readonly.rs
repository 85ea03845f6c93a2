//! `blk-readonly`: on a read-only disk, the device offers RO; a write comes back with
//! status IOERR; reads still work and return the same data as before the write.
//!
//! The write puts back the very bytes just read from that sector, so that even a device
//! that wrongly accepts it leaves the image unchanged (the guest reports the failure).

use super::{run_ok, Error};
use crate::disks;
use crate::machine::Machine;
use crate::virtio::blk::{feature, status, Request, SECTOR};
use crate::virtio::Transport;

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let options = machine.config.blk;
    let mut registry = disks::lock();
    let disk = registry.open(&machine.config.devices, &mut machine.frames, options.disk)?;
    if disk.blk.transport().offered() & feature::RO == 0 {
        return Err(Error::NotOffered("RO (the disk is writable)"));
    }
    if disk.capacity() == 0 {
        return Err(Error::Empty);
    }
    disk.ensure_slots(&mut machine.frames, 2, SECTOR as u32)?;
    let sector = if options.rw.first < disk.capacity() {
        options.rw.first
    } else {
        0
    };
    run_ok(disk, &Request::read(sector, 1))?;
    let before: [u8; SECTOR as usize] = disk.data(0)[..SECTOR as usize]
        .try_into()
        .expect("one sector");
    let write = Request::write(sector, 1);
    let refused = disk.run(0, &write)?.status;
    if refused != status::IOERR {
        return Err(Error::WriteNotRefused(refused));
    }
    crate::say!(
        "{} write of sector {sector} refused status={}",
        disk.name(),
        status::name(refused)
    );
    disk.data(1)[..SECTOR as usize].fill(0xa5);
    let read = Request::read(sector, 1);
    let done = disk.run(1, &read)?;
    if done.status != status::OK {
        return Err(Error::Status {
            request: read,
            status: done.status,
        });
    }
    let after = &disk.data(1)[..SECTOR as usize];
    if let Some(i) = (0..before.len()).find(|&i| before[i] != after[i]) {
        return Err(Error::Mismatch {
            offset: sector * SECTOR + i as u64,
            expected: before[i],
            found: after[i],
        });
    }
    Ok(())
}
