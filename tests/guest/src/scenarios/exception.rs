//! `exception`: a page fault at CPL3, to test the exception report (exit status 3).
//!
//! Reads address [`ADDRESS`] in page 0, which is never mapped, so the report reads
//! `vector=14 error=0x4 ... cr2=0xbad` (error 0x4: user-mode read of a non-present page).

use super::Failure;

/// The faulting address.
pub const ADDRESS: u64 = 0xbad;

/// Fault; does not return (the exception handler ends the run).
pub fn run() -> Result<(), Failure> {
    // SAFETY: the read faults (page 0 is not mapped) and the exception path powers the
    // VM off, so execution never continues past it; no Rust-visible memory is involved.
    unsafe {
        core::arch::asm!(
            "mov al, byte ptr [{addr}]",
            addr = in(reg) ADDRESS,
            out("al") _,
            options(nostack, readonly)
        );
    }
    unreachable!("reading {ADDRESS:#x} did not fault");
}
