//! `memory`: the e820 map is sane, and RAM holds what is written to it.
//!
//! Written and read back, 64 bits at a time, with an address-dependent pattern and then
//! its complement (so aliased pages and stuck bits both show):
//! - [`FREE_TEST`] bytes of free RAM just above the guest's allocations;
//! - the last [`EDGE_TEST`] bytes of every RAM entry above 1 MiB, and the first ones of
//!   every such entry that does not hold the image: the VMM must back all the RAM it
//!   announces, up to its last byte.

use crate::bootparams::E820Problem;
use crate::layout;
use crate::machine::Machine;
use core::fmt;

/// Free RAM tested above the allocations.
const FREE_TEST: u64 = 2 << 20;
/// RAM tested at each edge of each RAM entry.
const EDGE_TEST: u64 = 1 << 20;

/// Why `memory` failed.
#[derive(Debug)]
pub enum Error {
    /// The e820 map is not sane.
    E820(E820Problem),
    /// A word read back differs from what was written.
    Mismatch { addr: u64, wrote: u64, read: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::E820(p) => write!(f, "{p}"),
            Self::Mismatch { addr, wrote, read } => {
                write!(
                    f,
                    "at {addr:#x} wrote {wrote:#018x}, read back {read:#018x}"
                )
            }
        }
    }
}

fn pattern(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5a5a_a5a5_0f0f_f0f0
}

/// Write and check `[start, end)` (8-byte aligned, free, identity-mapped RAM).
fn test_range(start: u64, end: u64) -> Result<(), Error> {
    for invert in [0, u64::MAX] {
        for addr in (start..end).step_by(8) {
            // SAFETY: the caller passes free RAM that the page tables map and nothing
            // else uses; `addr` is 8-byte aligned and inside it.
            unsafe { (addr as *mut u64).write_volatile(pattern(addr) ^ invert) };
        }
        for addr in (start..end).step_by(8) {
            // SAFETY: as above.
            let read = unsafe { (addr as *const u64).read_volatile() };
            let wrote = pattern(addr) ^ invert;
            if read != wrote {
                return Err(Error::Mismatch { addr, wrote, read });
            }
        }
    }
    Ok(())
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    machine
        .e820
        .check((layout::IMAGE_BASE, crate::frames::image_end()))
        .map_err(Error::E820)?;
    let free_start = machine.frames.free_start();
    let free_end = machine.frames.free_end();
    test_range(free_start, free_end.min(free_start + FREE_TEST))?;
    for entry in machine.e820.ram() {
        if entry.addr < layout::LEGACY_HOLE_END {
            continue;
        }
        let holds_image = entry.addr <= layout::IMAGE_BASE && layout::IMAGE_BASE < entry.end();
        // The part of the entry nobody uses: above the allocations in the image's entry.
        let usable_start = (if holds_image { free_start } else { entry.addr } + 7) & !7;
        let end = entry.end().min(layout::MAPPABLE_END) & !7;
        if end <= usable_start {
            continue;
        }
        test_range(end.saturating_sub(EDGE_TEST).max(usable_start), end)?;
        if !holds_image {
            test_range(usable_start, end.min(usable_start + EDGE_TEST))?;
        }
    }
    Ok(())
}
