//! Exit statuses and the last line of every run.

use crate::gates;

/// The byte written to port 0xf4 at power-off: the bulkhead VMM's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Every scenario passed.
    Pass = 0,
    /// A scenario failed, or the VMM broke the boot contract (`FAIL boot: ...`).
    Fail = 1,
    /// Bad command line or unknown scenario.
    BadCommandLine = 2,
    /// Unexpected CPU exception or Rust panic.
    Crash = 3,
}

/// Print `done status=<n>` and power off with that status.
pub fn finish(status: Status) -> ! {
    crate::say!("done status={}", status as u8);
    gates::power_off(status as u8)
}

/// [`finish`] for fatal-error reporters: does not wait for a serial lock that the failed
/// code may hold.
pub fn finish_fatal(status: Status) -> ! {
    crate::serial::line_fatal(format_args!("done status={}", status as u8));
    gates::power_off(status as u8)
}
