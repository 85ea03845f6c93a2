//! `blk-soak`: for `bulkhead.soak-ms` (default 5000), on the disk `bulkhead.blk.disk`:
//! write `n` = 1, 2, ... goes to sector `(n - 1) % area` (area = the first
//! min(capacity, 2048) sectors), one sector holding [`crate::soak::fill_blk`]'s pattern;
//! once it completed it is read back and compared; a FLUSH follows every 16th write and
//! the last one. One request at a time, so "completed" is exact: every write the guest
//! saw complete must be in the image afterwards (the host checks the last `area` writes).
//!
//! Prints `blk<N> soak area=<sectors> ms=<ms>` first, stall lines
//! (`blk-soak: stall <ms> ms`, see `super::super::soak`) meanwhile, and passes with
//! `PASS blk-soak writes=W reads=R flushes=F last=N max-stall-ms=M`. Any status other than
//! OK, a mismatch, a completion of no request in flight (one completed twice),
//! DEVICE_NEEDS_RESET or [`PATIENCE_MS`](super::super::soak::PATIENCE_MS)
//! without a completion fails it.

use super::Error as BlkError;
use crate::disks::{self, Disk};
use crate::machine::Machine;
use crate::scenarios::soak::{Dev, Error, Patience, Watch};
use crate::soak::{blk_area, blk_sector, check_blk, fill_blk, Summary, FLUSH_EVERY, SECTOR};
use crate::time::Deadline;
use crate::virtio::blk::{feature, status, Request};

/// Run `req` in slot 0 and wait for it, however long the device is away (within
/// patience); its status.
fn run(disk: &mut Disk, req: &Request, waiting: &'static str) -> Result<u8, Error> {
    let dev = Dev("blk", disk.name().0);
    disk.submit(0, req)?;
    disk.kick();
    let mut patience = Patience::new(dev);
    loop {
        match disk.poll()? {
            Some(done) if done.slot == 0 => return Ok(done.status),
            Some(_) => continue,
            None => patience.idle(disk.blk.transport(), waiting)?,
        }
    }
}

/// Require status OK of write `n`'s `op`.
fn ok(op: &'static str, n: u64, status: u8) -> Result<(), Error> {
    if status == status::OK {
        Ok(())
    } else {
        Err(Error::BlkStatus { op, n, status })
    }
}

/// Run the scenario.
pub fn run_soak(machine: &mut Machine) -> Result<Summary, Error> {
    let opts = machine.config.soak;
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    if !disk.blk.has(feature::FLUSH) {
        return Err(BlkError::NotOffered("FLUSH").into());
    }
    let area = blk_area(disk.capacity());
    if area == 0 {
        return Err(BlkError::Empty.into());
    }
    disk.ensure_slots(&mut machine.frames, 1, SECTOR as u32)?;
    crate::say!("{} soak area={area} ms={}", disk.name(), opts.ms);
    let strays = disk.strays();
    let mut watch = Watch::new("blk-soak", opts.stall_ms);
    let end = Deadline::after_ms(opts.ms);
    let (mut writes, mut reads, mut flushes, mut n) = (0u64, 0u64, 0u64, 0u64);
    while !end.passed() {
        n += 1;
        let sector = blk_sector(n, area);
        fill_blk(&mut disk.data(0)[..SECTOR], n, sector);
        ok(
            "write",
            n,
            run(disk, &Request::write(sector, 1), "a write")?,
        )?;
        writes += 1;
        watch.completed();
        disk.data(0)[..SECTOR].fill(0);
        ok("read", n, run(disk, &Request::read(sector, 1), "a read")?)?;
        reads += 1;
        watch.completed();
        if let Some((byte, expected, found)) = check_blk(&disk.data(0)[..SECTOR], n, sector) {
            return Err(Error::BlkMismatch {
                n,
                sector,
                byte,
                expected,
                found,
            });
        }
        if n % FLUSH_EVERY == 0 {
            ok("flush", n, run(disk, &Request::flush(), "a flush")?)?;
            flushes += 1;
            watch.completed();
        }
    }
    ok("flush", n, run(disk, &Request::flush(), "the last flush")?)?;
    flushes += 1;
    watch.completed();
    // A request completed twice shows as a completion nobody waited for.
    if disk.strays() != strays {
        return Err(Error::Strays(disk.strays() - strays));
    }
    Ok(Summary::Blk {
        writes,
        reads,
        flushes,
        last: n,
        max_stall_ms: watch.max_ms(),
    })
}
