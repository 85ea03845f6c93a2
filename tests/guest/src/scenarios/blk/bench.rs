//! `blk-bench`: 4 KiB random reads and writes and 128 KiB sequential reads and writes,
//! each at queue depth 1 and 32, each for `bulkhead.blk.bench-ms` (default 1000) over
//! `bulkhead.blk.bench=<first>:<count>` (default: the whole disk; its contents are
//! overwritten). CPL3 polls the used ring with interrupts suppressed, resubmits every
//! completed request at once and publishes each batch with one avail-index store and at
//! most one kick (event index decides). One line per run:
//!
//! `blk-bench <kind> bs=<bytes> qd=<n> ios=<n> iops=<n> mbps=<x.y> ms=<elapsed>
//! tsc=<cpuid|assumed> kicks=<n>`
//!
//! MB/s are 10^6 bytes per second; `ms` is measured with the TSC, whose frequency comes
//! from CPUID 0x4000_0010 (`tsc=cpuid`) or is assumed to be 4 GHz (`tsc=assumed`, and
//! then every figure is off by the ratio). Writes on a read-only disk are skipped with a
//! `blk-bench <kind> skipped: read-only disk` line.

use super::{check_range, Error};
use crate::cmdline::SectorRange;
use crate::disks::{self, Disk, REQUEST_TIMEOUT_MS};
use crate::machine::Machine;
use crate::time::{self, Deadline};
use crate::virtio::blk::{status, Request, SECTOR};
use crate::virtio::feature::INDIRECT_DESC;

/// Deepest queue.
const MAX_DEPTH: usize = 32;
/// Largest block.
const MAX_BLOCK: u32 = 128 * 1024;

/// One benchmark run.
#[derive(Clone, Copy)]
struct Run {
    name: &'static str,
    write: bool,
    random: bool,
    block: u32,
    depth: usize,
}

const RUNS: [Run; 8] = {
    const fn run(name: &'static str, write: bool, random: bool, block: u32, depth: usize) -> Run {
        Run {
            name,
            write,
            random,
            block,
            depth,
        }
    }
    [
        run("randread", false, true, 4096, 1),
        run("randread", false, true, 4096, MAX_DEPTH),
        run("randwrite", true, true, 4096, 1),
        run("randwrite", true, true, 4096, MAX_DEPTH),
        run("seqread", false, false, MAX_BLOCK, 1),
        run("seqread", false, false, MAX_BLOCK, MAX_DEPTH),
        run("seqwrite", true, false, MAX_BLOCK, 1),
        run("seqwrite", true, false, MAX_BLOCK, MAX_DEPTH),
    ]
};

/// Where the next request goes.
struct Offsets {
    first: u64,
    blocks: u64,
    sectors_per_block: u64,
    random: bool,
    next: u64,
    state: u64,
}

impl Offsets {
    fn new(range: SectorRange, run: &Run) -> Self {
        let sectors_per_block = u64::from(run.block) / SECTOR;
        Self {
            first: range.first,
            blocks: range.count / sectors_per_block,
            sectors_per_block,
            random: run.random,
            next: 0,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// xorshift64* for random blocks, else the next block, wrapping at the end.
    fn next(&mut self) -> u64 {
        let block = if self.random {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.blocks
        } else {
            let b = self.next;
            self.next = (self.next + 1) % self.blocks;
            b
        };
        self.first + block * self.sectors_per_block
    }
}

/// Result of a run.
struct Figures {
    ios: u64,
    cycles: u64,
    kicks: u64,
}

fn request(run: &Run, sector: u64, indirect: bool) -> Request {
    let sectors = (u64::from(run.block) / SECTOR) as u32;
    let req = if run.write {
        Request::write(sector, sectors)
    } else {
        Request::read(sector, sectors)
    };
    if indirect {
        req.indirect()
    } else {
        req
    }
}

fn measure(disk: &mut Disk, range: SectorRange, run: &Run, ms: u64) -> Result<Figures, Error> {
    let mut offsets = Offsets::new(range, run);
    // A SIZE_MAX that splits a block into many descriptors would fill the queue at depth
    // 32: then one descriptor per request, behind an indirect table.
    let size_max = disk.blk.config.size_max;
    let indirect = size_max != 0 && run.block > size_max && disk.blk.has(INDIRECT_DESC);
    let request = |sector| request(run, sector, indirect);
    let kicks = disk.blk.kicks();
    let start = time::now();
    let stop = start.saturating_add(time::ms(ms));
    for i in 0..run.depth {
        disk.submit(i, &request(offsets.next()))?;
    }
    disk.kick();
    let mut ios = 0u64;
    let mut last = start;
    let mut progress = Deadline::after_ms(REQUEST_TIMEOUT_MS);
    while disk.in_flight() > 0 {
        let mut resubmitted = false;
        while let Some(done) = disk.poll()? {
            if done.status != status::OK {
                return Err(Error::Status {
                    request: done.request,
                    status: done.status,
                });
            }
            ios += 1;
            last = time::now();
            if last < stop {
                disk.submit(done.slot, &request(offsets.next()))?;
                resubmitted = true;
            }
        }
        if resubmitted {
            disk.kick();
            progress = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        } else if progress.passed() {
            return Err(
                disks::DiskError::Timeout(disks::Waiting::InFlight(disk.in_flight())).into(),
            );
        }
        core::hint::spin_loop();
    }
    Ok(Figures {
        ios,
        cycles: last - start,
        kicks: disk.blk.kicks() - kicks,
    })
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    let options = machine.config.blk;
    let mut registry = disks::lock();
    let disk = registry.open(&machine.config.devices, &mut machine.frames, options.disk)?;
    let range = options.bench.unwrap_or(SectorRange {
        first: 0,
        count: disk.capacity(),
    });
    check_range(disk, "bulkhead.blk.bench", range)?;
    if range.count < u64::from(MAX_BLOCK) / SECTOR {
        return Err(Error::OutOfRange {
            key: "bulkhead.blk.bench (at least 256 sectors)",
            range,
            capacity: disk.capacity(),
        });
    }
    disk.ensure_slots(&mut machine.frames, MAX_DEPTH, MAX_BLOCK)?;
    for i in 0..MAX_DEPTH {
        disk.data(i).fill(0xb5);
    }
    for run in &RUNS {
        if run.write && disk.blk.read_only() {
            crate::say!("blk-bench {} skipped: read-only disk", run.name);
            continue;
        }
        let f = measure(disk, range, run, options.bench_ms)?;
        let khz = u128::from(time::tsc_khz());
        let cycles = u128::from(f.cycles.max(1));
        let iops = u128::from(f.ios) * khz * 1000 / cycles;
        let bytes = u128::from(f.ios) * u128::from(run.block);
        // Bytes per second / 10^5 = tenths of MB/s.
        let tenths = bytes * khz * 1000 / cycles / 100_000;
        crate::say!(
            "blk-bench {} bs={} qd={} ios={} iops={iops} mbps={}.{} ms={} tsc={} kicks={}",
            run.name,
            run.block,
            run.depth,
            f.ios,
            tenths / 10,
            tenths % 10,
            time::cycles_to_us(f.cycles) / 1000,
            time::tsc_source(),
            f.kicks
        );
    }
    Ok(())
}
