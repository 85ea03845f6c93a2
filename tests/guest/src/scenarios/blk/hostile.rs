//! `blk-hostile`: malformed requests, one at a time, each followed by a good one-sector
//! read that must complete OK with the data read before it all. The malformed requests and
//! the exact answer each must get (bulkhead-blk's, as `devices/src/block/request.rs` and
//! `execute.rs` document it: a chain that cannot be parsed but has a status byte is
//! completed with IOERR; a parsed request the device cannot serve gets IOERR, one of a
//! type it does not know UNSUPP; none of them makes the device ask for a reset):
//!
//! | case | what is wrong | answer |
//! | --- | --- | --- |
//! | `addr-outside-ram` | a data descriptor at 64 TiB, far outside guest RAM | IOERR |
//! | `addr-wraps` | a data descriptor whose end wraps past 2^64 | IOERR |
//! | `desc-loop` | the last descriptor points back at the head (NEXT set): a loop | IOERR |
//! | `header-writable` | the request header in a device-writable descriptor | IOERR |
//! | `sector-past-end` | a read of the sector just past the end | IOERR |
//! | `sector-straddles-end` | a read of the last sector and the one after | IOERR |
//! | `unknown-type` | request type 0xff | UNSUPP |
//! | `chain-too-long` | an indirect chain of queue size + 1 descriptors (INDIRECT_DESC) | IOERR |
//!
//! Each must complete within [`BAD_WAIT_MS`] with exactly its answer; anything else (OK,
//! another error, no status byte written, no completion) fails the scenario. One line per
//! case: `<disk> hostile <case> status=<OK|IOERR|UNSUPP|none|invalid|pending>
//! expected=<IOERR|UNSUPP> good_read=OK`, then `<disk> hostile device_status=0x<status
//! register> late_completions=<n>` (chains returned after their case gave up on them, or
//! twice, or after an earlier scenario did), after a quiet [`LATE_WAIT_MS`] in which
//! nothing may come back. The device status must be exactly what the driver set
//! (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK: no DEVICE_NEEDS_RESET, no FAILED) and
//! late completions 0.

use super::Error;
use crate::disks::{self, Disk};
use crate::machine::Machine;
use crate::time::Deadline;
use crate::virtio::blk::{req, slot, status, Request, Slot, HEADER_BYTES, SECTOR};
use crate::virtio::feature::INDIRECT_DESC;
use crate::virtio::queue::{AddError, Buf, DESC_F_NEXT, DESC_SIZE};
use crate::virtio::status as virtio_status;
use crate::virtio::Transport;

/// How long a malformed request gets to come back.
const BAD_WAIT_MS: u64 = 500;
/// How long the queue is watched after the last case for completions nobody waits for.
const LATE_WAIT_MS: u64 = 50;
/// The device status a driver that is done negotiating has set, and nothing more.
const DRIVER_READY: u32 = virtio_status::ACKNOWLEDGE
    | virtio_status::DRIVER
    | virtio_status::FEATURES_OK
    | virtio_status::DRIVER_OK;
/// Data buffer of each slot: room for the long indirect table and a sector.
const DATA_BYTES: u32 = 16 * 1024;

/// The cases, in order, with the status each must complete with.
const CASES: [(&str, u8); 8] = [
    ("addr-outside-ram", status::IOERR),
    ("addr-wraps", status::IOERR),
    ("desc-loop", status::IOERR),
    ("header-writable", status::IOERR),
    ("sector-past-end", status::IOERR),
    ("sector-straddles-end", status::IOERR),
    ("unknown-type", status::UNSUPP),
    ("chain-too-long", status::IOERR),
];

/// Build and queue malformed request `case` in slot `s`; `None` if it does not apply.
fn queue_bad(disk: &mut Disk, s: usize, case: &str) -> Result<Option<u16>, AddError> {
    let slot: Slot = disk.slot(s);
    let capacity = disk.capacity();
    let (kind, sector) = match case {
        "sector-past-end" => (req::IN, capacity),
        "sector-straddles-end" => (req::IN, capacity.saturating_sub(1)),
        "unknown-type" => (0xff, 0),
        _ => (req::IN, 0),
    };
    // SAFETY: slot `s` is idle (the caller's), its memory valid (`ensure_slots`).
    unsafe { slot.prepare(kind, sector) };
    let header = Buf::readable(slot.meta() + slot::HEADER, HEADER_BYTES);
    let status = Buf::writable(slot.meta() + slot::STATUS, 1);
    let sector_buf = Buf::writable(slot.data(), SECTOR as u32);
    let indirect = disk.blk.has(INDIRECT_DESC);
    let q = &mut disk.blk.queue;
    let head = match case {
        "addr-outside-ram" => q.add(&[header, Buf::writable(1 << 46, 512), status])?,
        "addr-wraps" => q.add(&[header, Buf::writable(0xffff_ffff_ffff_fe00, 4096), status])?,
        "desc-loop" => {
            let head = q.add(&[header, sector_buf, status])?;
            q.edit_unpublished(head, 2, |d| {
                d.flags |= DESC_F_NEXT;
                d.next = head;
            });
            head
        }
        "header-writable" => {
            q.add(&[Buf::writable(header.addr, HEADER_BYTES), sector_buf, status])?
        }
        "sector-past-end" => q.add(&[header, sector_buf, status])?,
        "sector-straddles-end" => q.add(&[
            header,
            Buf::writable(slot.data(), 2 * SECTOR as u32),
            status,
        ])?,
        "unknown-type" => q.add(&[header, status])?,
        "chain-too-long" => {
            if !indirect {
                return Ok(None);
            }
            let n = usize::from(q.size()) + 1;
            let table = slot.data();
            let sector_at = table + (n as u64 * DESC_SIZE).next_multiple_of(SECTOR);
            let mut bufs = [Buf::writable(sector_at, SECTOR as u32); 512];
            bufs[0] = header;
            bufs[n - 1] = status;
            // SAFETY: the table (n * 16 bytes) and the sector after it lie in the slot's
            // data buffer (DATA_BYTES), idle and the request's until it comes back.
            unsafe { q.add_indirect(table, n, &bufs[..n])? }
        }
        _ => return Ok(None),
    };
    disk.claim(s, head, Request::read(sector, 1));
    disk.kick();
    Ok(Some(head))
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    if disk.capacity() == 0 {
        return Err(Error::Empty);
    }
    disk.ensure_slots(&mut machine.frames, 1 + CASES.len(), DATA_BYTES)?;
    let good = Request::read(0, 1);
    super::run_ok(disk, &good)?;
    let mut reference = [0u8; SECTOR as usize];
    reference.copy_from_slice(&disk.data(0)[..SECTOR as usize]);
    let mut first_failure = None;
    for (i, &(case, expected)) in CASES.iter().enumerate() {
        let s = 1 + i;
        match queue_bad(disk, s, case) {
            Ok(Some(_)) => {}
            Ok(None) => {
                crate::say!(
                    "{} hostile {case} skipped: INDIRECT_DESC not offered",
                    disk.name()
                );
                continue;
            }
            Err(e) => {
                crate::say!("{} hostile {case} not queued: {e}", disk.name());
                continue;
            }
        }
        let deadline = Deadline::after_ms(BAD_WAIT_MS);
        while !disk.idle(s) && !deadline.passed() {
            disk.poll()?;
        }
        let answer = disk.idle(s).then(|| disk.slot(s).status());
        let bad_status = answer.map_or("pending", status::name);
        disk.data(0)[..SECTOR as usize].fill(0xa5);
        let done = disk
            .run(0, &good)
            .map_err(|error| Error::HostileWedged { case, error })?;
        if done.status != status::OK {
            return Err(Error::HostileBadRead(case, done.status));
        }
        if let Some(at) = (0..reference.len()).find(|&k| disk.data(0)[k] != reference[k]) {
            return Err(Error::Mismatch {
                offset: at as u64,
                expected: reference[at],
                found: disk.data(0)[at],
            });
        }
        crate::say!(
            "{} hostile {case} status={bad_status} expected={} good_read=OK",
            disk.name(),
            status::name(expected)
        );
        if answer != Some(expected) && first_failure.is_none() {
            first_failure = Some(Error::HostileAnswer {
                case,
                expected,
                found: bad_status,
            });
        }
    }
    // A device that completes a chain twice, or late, shows it here.
    let quiet = Deadline::after_ms(LATE_WAIT_MS);
    while !quiet.passed() {
        disk.poll()?;
    }
    let device_status = disk.blk.transport().status();
    let late = disk.strays();
    crate::say!(
        "{} hostile device_status={device_status:#x} late_completions={late}",
        disk.name(),
    );
    if let Some(failure) = first_failure {
        return Err(failure);
    }
    if device_status != DRIVER_READY || late != 0 {
        return Err(Error::HostileDevice {
            device_status,
            late,
        });
    }
    Ok(())
}
