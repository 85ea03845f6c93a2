//! `blk-discard`: over `bulkhead.blk.discard=<first>:<count>` (default 4096:16): writes
//! the test pattern, DISCARDs the range, reads it back (discarded data is undefined, so
//! this is only reported: `zeroes`, `pattern` or `mixed`), WRITE_ZEROES the range (with
//! the unmap flag if the device allows it) and reads back zeroes. Prints
//! `<disk> zeroed sectors <first>..<end> after_discard=<zeroes|pattern|mixed>`.
//!
//! Requests stay within the device's max_discard_sectors / max_write_zeroes_sectors.

use super::{check_range, chunks, pipeline, Error};
use crate::cmdline::SectorRange;
use crate::disks;
use crate::disks::Disk;
use crate::machine::Machine;
use crate::virtio::blk::{feature, fill_pattern, pattern_byte, Request, SECTOR};

/// Requests in flight.
const DEPTH: usize = 4;
/// Largest read or write, in sectors.
const CHUNK: u32 = 128;

/// DISCARD (`discard`) or WRITE_ZEROES requests over `range`, within the device's limit.
fn zeroing(disk: &Disk, range: SectorRange, discard: bool) -> impl Iterator<Item = Request> {
    let max = u64::from(disk.blk.max_zeroing_sectors(discard)).min(u64::from(u32::MAX));
    let unmap = disk.blk.config.write_zeroes_may_unmap != 0;
    let end = range.first + range.count;
    (range.first..end).step_by(max as usize).map(move |s| {
        let n = (end - s).min(max) as u32;
        if discard {
            Request::discard(s, n)
        } else {
            Request::write_zeroes(s, n, unmap)
        }
    })
}

/// What a range reads back as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    Nothing,
    Zeroes,
    Pattern,
    Mixed,
}

impl Content {
    fn add(self, other: Content) -> Content {
        match (self, other) {
            (Content::Nothing, x) => x,
            (x, y) if x == y => x,
            _ => Content::Mixed,
        }
    }

    fn of(data: &[u8], offset: u64) -> Content {
        let mut zero = true;
        let mut pattern = true;
        for (i, &b) in data.iter().enumerate() {
            zero &= b == 0;
            pattern &= b == pattern_byte(offset + i as u64);
        }
        match (zero, pattern) {
            (true, _) => Content::Zeroes,
            (false, true) => Content::Pattern,
            _ => Content::Mixed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Content::Nothing => "nothing",
            Content::Zeroes => "zeroes",
            Content::Pattern => "pattern",
            Content::Mixed => "mixed",
        }
    }
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let range = machine.config.blk.discard;
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    for (f, name) in [
        (feature::DISCARD, "DISCARD"),
        (feature::WRITE_ZEROES, "WRITE_ZEROES"),
    ] {
        if !disk.blk.has(f) {
            return Err(Error::NotOffered(name));
        }
    }
    check_range(disk, "bulkhead.blk.discard", range)?;
    disk.ensure_slots(&mut machine.frames, DEPTH, CHUNK * SECTOR as u32)?;
    let no_data = |_: &mut [u8], _: &Request| {};
    let garbage = |data: &mut [u8], _: &Request| data.fill(0xa5);
    pipeline(
        disk,
        chunks(range, CHUNK, true),
        DEPTH,
        |data, req| fill_pattern(data, req.sector * SECTOR),
        |_, _| Ok(()),
    )?;
    let discards = zeroing(disk, range, true);
    pipeline(disk, discards, DEPTH, no_data, |_, _| Ok(()))?;
    let mut after_discard = Content::Nothing;
    pipeline(
        disk,
        chunks(range, CHUNK, false),
        DEPTH,
        garbage,
        |data, req| {
            after_discard = after_discard.add(Content::of(data, req.sector * SECTOR));
            Ok(())
        },
    )?;
    let zeroes = zeroing(disk, range, false);
    pipeline(disk, zeroes, DEPTH, no_data, |_, _| Ok(()))?;
    pipeline(
        disk,
        chunks(range, CHUNK, false),
        DEPTH,
        garbage,
        |data, req| match data.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(Error::Mismatch {
                offset: req.sector * SECTOR + i as u64,
                expected: 0,
                found: data[i],
            }),
        },
    )?;
    crate::say!(
        "{} zeroed sectors {}..{} after_discard={}",
        disk.name(),
        range.first,
        range.first + range.count,
        after_discard.name()
    );
    Ok(())
}
