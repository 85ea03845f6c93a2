//! Reading boot data that the VMM left at physical addresses, with bounds checks: the
//! zero page (on the boot page tables), then the command line and the MP table (on the
//! final page tables, which map the low window below 2 MiB except page 0, and e820 RAM).

use crate::bootparams::{self, BootParams, BootParamsError, E820, ZERO_PAGE_SIZE};
use crate::cmdline;
use crate::layout;
use crate::sync::RawCell;
use core::fmt;

/// End of what the boot page tables map.
const BOOT_MAP_END: u64 = 1 << 30;

/// Why the zero page could not be read.
#[derive(Debug)]
pub enum ZeroPageError {
    /// RSI does not point into the boot page tables' 0x1000..1 GiB.
    Address(u64),
    /// Its contents are not usable.
    Parse(BootParamsError),
}

impl fmt::Display for ZeroPageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(a) => write!(f, "zero page address {a:#x} (RSI) is not in 0x1000..1 GiB"),
            Self::Parse(e) => write!(f, "{e}"),
        }
    }
}

/// Read the zero page at `addr`, on the boot page tables (first 1 GiB mapped).
pub fn boot_params(addr: u64) -> Result<BootParams, ZeroPageError> {
    let size = ZERO_PAGE_SIZE as u64;
    if !(layout::LOW_WINDOW_START..=BOOT_MAP_END - size).contains(&addr) {
        return Err(ZeroPageError::Address(addr));
    }
    // SAFETY: [addr, addr + 4096) is inside the boot identity map (checked above), which
    // is active now; nobody writes the zero page while the guest runs; `parse` copies what
    // it needs, so the slice does not outlive this call.
    let page = unsafe { core::slice::from_raw_parts(addr as *const u8, ZERO_PAGE_SIZE) };
    bootparams::parse(page).map_err(ZeroPageError::Parse)
}

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

static COMMAND_LINE: RawCell<[u8; cmdline::MAX_LEN]> = RawCell::new([0; cmdline::MAX_LEN]);

/// Why the command line could not be read (the VMM broke the boot contract).
#[derive(Debug)]
pub struct UnreadableCommandLine(pub u64);

impl fmt::Display for UnreadableCommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command line at {:#x} is not in mapped memory", self.0)
    }
}

/// Copy the NUL-terminated command line at `addr` (0: none) and return it without the
/// NUL. At most `cmdline::MAX_LEN` bytes are kept: a longer line is cut there.
///
/// Called once, by the boot CPU, after `paging::build`.
pub fn command_line(e820: &E820, addr: u64) -> Result<&'static [u8], UnreadableCommandLine> {
    if addr == 0 {
        return Ok(&[]);
    }
    let readable = readable_len(e820, addr, cmdline::MAX_LEN);
    let source = bytes(e820, addr, readable)
        .filter(|s| !s.is_empty())
        .ok_or(UnreadableCommandLine(addr))?;
    let len = source.iter().position(|&b| b == 0).unwrap_or(source.len());
    // SAFETY: only the boot CPU calls this, once, before anything reads `COMMAND_LINE`;
    // `len` is at most `MAX_LEN`. The returned slice is never written again.
    unsafe {
        let copy = &mut *COMMAND_LINE.get();
        copy[..len].copy_from_slice(&source[..len]);
        Ok(&(&*COMMAND_LINE.get())[..len])
    }
}
