//! `blk-rw`: writes the test pattern (`virtio::blk::pattern_byte`: a function of the
//! absolute disk offset, which the host recomputes) over the sectors of
//! `bulkhead.blk.rw=<first>:<count>` (default 2048:64), prints
//! `<disk> wrote sectors <first>..<end>` (end exclusive), reads them back in other
//! chunks and compares.
//!
//! Requests of several shapes, up to [`DEPTH`] in flight: single sectors, multi-sector
//! requests in one descriptor, data split over several descriptors at byte boundaries
//! that are not sector boundaries, and (with INDIRECT_DESC) chains behind an indirect
//! table.

use super::{check_range, pipeline, Error};
use crate::cmdline::SectorRange;
use crate::disks;
use crate::machine::Machine;
use crate::virtio::blk::{check_pattern, fill_pattern, Request, SECTOR};
use crate::virtio::feature::INDIRECT_DESC;

/// Requests in flight.
const DEPTH: usize = 8;
/// Largest request, in sectors.
const MAX_SECTORS: u32 = 128;

/// (sectors, data descriptors, indirect) of the writes, in turn.
const WRITE_SHAPES: [(u32, u16, bool); 9] = [
    (1, 1, false),
    (7, 1, false),
    (8, 3, false),
    (16, 5, true),
    (3, 2, false),
    (32, 1, false),
    (64, 8, false),
    (MAX_SECTORS, 1, false),
    (2, 2, false),
];
/// The same for the reads: other boundaries than the writes'.
const READ_SHAPES: [(u32, u16, bool); 6] = [
    (5, 1, false),
    (1, 1, false),
    (64, 7, false),
    (13, 1, false),
    (MAX_SECTORS, 9, true),
    (24, 4, false),
];

/// The requests that cover a range, in shapes taken in turn.
pub struct Plan {
    next: u64,
    end: u64,
    shapes: &'static [(u32, u16, bool)],
    turn: usize,
    indirect: bool,
    write: bool,
}

impl Plan {
    /// Writes (`write`) or reads over `range`; `indirect`: INDIRECT_DESC negotiated.
    pub fn new(range: SectorRange, write: bool, indirect: bool) -> Self {
        Self {
            next: range.first,
            end: range.first + range.count,
            shapes: if write { &WRITE_SHAPES } else { &READ_SHAPES },
            turn: 0,
            indirect,
            write,
        }
    }
}

impl Iterator for Plan {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        if self.next >= self.end {
            return None;
        }
        let (sectors, segments, indirect) = self.shapes[self.turn % self.shapes.len()];
        self.turn += 1;
        let sectors = u64::from(sectors).min(self.end - self.next) as u32;
        let req = if self.write {
            Request::write(self.next, sectors)
        } else {
            Request::read(self.next, sectors)
        };
        self.next += u64::from(sectors);
        let req = req.split(segments);
        Some(if indirect && self.indirect {
            req.indirect()
        } else {
            req
        })
    }
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let range = machine.config.blk.rw;
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    check_range(disk, "bulkhead.blk.rw", range)?;
    disk.ensure_slots(&mut machine.frames, DEPTH, MAX_SECTORS * SECTOR as u32)?;
    let indirect = disk.blk.has(INDIRECT_DESC);
    pipeline(
        disk,
        Plan::new(range, true, indirect),
        DEPTH,
        |data, req| fill_pattern(data, req.sector * SECTOR),
        |_, _| Ok(()),
    )?;
    crate::say!(
        "{} wrote sectors {}..{}",
        disk.name(),
        range.first,
        range.first + range.count
    );
    pipeline(
        disk,
        Plan::new(range, false, indirect),
        DEPTH,
        |data, _| data.fill(0xa5),
        |data, req| match check_pattern(data, req.sector * SECTOR) {
            None => Ok(()),
            Some((offset, expected, found)) => Err(Error::Mismatch {
                offset,
                expected,
                found,
            }),
        },
    )
}
