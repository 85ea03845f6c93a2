//! Reading boot data that the VMM left at physical addresses, with bounds checks.
//!
//! Valid only after `paging::build`: mapped are the low window (below 2 MiB except
//! page 0) and e820 RAM.

use crate::bootparams::E820;
use crate::layout;

/// How many bytes from `addr` on (at most `max`) are mapped and readable as boot data:
/// inside the low window, or inside one e820 RAM entry.
pub fn readable_len(e820: &E820, addr: u64, max: usize) -> usize {
    let end = if (layout::LOW_WINDOW_START..layout::LOW_WINDOW_END).contains(&addr) {
        layout::LOW_WINDOW_END
    } else {
        match e820.ram_containing(addr) {
            Some(e) => e.end().min(layout::MAPPABLE_END),
            None => return 0,
        }
    };
    usize::try_from(end.saturating_sub(addr)).map_or(max, |n| n.min(max))
}

/// The `len` bytes at `addr`, if all of them are mapped.
pub fn bytes(e820: &E820, addr: u64, len: usize) -> Option<&'static [u8]> {
    if readable_len(e820, addr, len) < len {
        return None;
    }
    // SAFETY: `[addr, addr + len)` is identity-mapped memory (checked above) that stays
    // mapped for the life of the guest; boot data is not written while the guest reads it.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}
