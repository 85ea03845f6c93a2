//! `blk-mq`: every request queue of a multi-queue disk carries requests. The range of
//! `bulkhead.blk.rw=<first>:<count>` (default 2048:64) is cut into one part per queue;
//! on queue *q* the test pattern is written over part *q* and read back, up to [`DEPTH`]
//! requests in flight, every completion taken from queue *q*'s own used ring. One line
//! per queue, `<disk> mq queue=<q> requests=<n> completions=<n>`, then
//! `<disk> mq queues=<n>`. Fails when the device offers fewer than two queues, or more
//! than this driver sets up ([`blk::MAX_QUEUES`]): then some would go unused.

use super::{check_range, chunks, pipeline, Error};
use crate::cmdline::SectorRange;
use crate::disks::{self, Disk};
use crate::machine::Machine;
use crate::virtio::blk::{self, check_pattern, fill_pattern, SECTOR};

/// Requests in flight per queue.
const DEPTH: usize = 4;
/// Largest request, in sectors (several requests per part).
const CHUNK: u32 = 4;

/// Writes and reads back `part` on the queue in use; returns (requests, completions).
fn exercise(disk: &mut Disk, part: SectorRange) -> Result<(u32, u32), Error> {
    let (mut requests, mut completions) = (0u32, 0u32);
    pipeline(
        disk,
        chunks(part, CHUNK, true),
        DEPTH,
        |data, req| {
            requests += 1;
            fill_pattern(data, req.sector * SECTOR);
        },
        |_, _| {
            completions += 1;
            Ok(())
        },
    )?;
    pipeline(
        disk,
        chunks(part, CHUNK, false),
        DEPTH,
        |data, _| {
            requests += 1;
            data.fill(0xa5);
        },
        |data, req| {
            completions += 1;
            match check_pattern(data, req.sector * SECTOR) {
                None => Ok(()),
                Some((offset, expected, found)) => Err(Error::Mismatch {
                    offset,
                    expected,
                    found,
                }),
            }
        },
    )?;
    Ok((requests, completions))
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let range = machine.config.blk.rw;
    let mut registry = disks::lock();
    let disk = registry.open_configured(machine)?;
    check_range(disk, "bulkhead.blk.rw", range)?;
    let offered = disk.blk.config.num_queues;
    let queues = disk.blk.queue_count();
    if offered < 2 || queues != offered {
        return Err(Error::Queues { offered, queues });
    }
    disk.ensure_slots(&mut machine.frames, DEPTH, CHUNK * SECTOR as u32)?;
    let per = range.count / u64::from(queues);
    if per == 0 {
        return Err(Error::OutOfRange {
            key: "bulkhead.blk.rw",
            range,
            capacity: disk.capacity(),
        });
    }
    let mut result = Ok(());
    for q in 0..queues {
        // Nothing is in flight between parts: each pipeline waits for all it started.
        if !disk.blk.use_queue(q) {
            result = Err(Error::Queues { offered, queues: q });
            break;
        }
        let part = SectorRange {
            first: range.first + u64::from(q) * per,
            count: per,
        };
        match exercise(disk, part) {
            Ok((requests, completions)) => crate::say!(
                "{} mq queue={q} requests={requests} completions={completions}",
                disk.name()
            ),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Later scenarios use queue 0.
    disk.blk.use_queue(0);
    result?;
    crate::say!("{} mq queues={queues}", disk.name());
    Ok(())
}

const _: () = assert!(blk::MAX_QUEUES >= 2);
