//! Timeouts from the time-stamp counter (RDTSC works at CPL3).
//!
//! The TSC frequency is not known, so timeouts are in cycles, sized for "about a second
//! at 4 GHz": longer on slower TSCs, which only matters when something has already failed.

/// One nominal second: 4e9 TSC cycles.
pub const SECOND: u64 = 4_000_000_000;

/// Current TSC value.
pub fn now() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear, so it works at CPL3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A point in TSC time.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `cycles` from now.
    pub fn after(cycles: u64) -> Self {
        Self(now().saturating_add(cycles))
    }

    /// Has it passed?
    pub fn passed(self) -> bool {
        now() >= self.0
    }
}
