//! What the guest learned at boot, handed to every scenario.

use crate::bootparams::E820;
use crate::cmdline::Config;
use crate::frames::Frames;
use crate::mptable::{MpError, MpTable};
use crate::smp::SmpError;

/// The machine as the boot CPU found it.
pub struct Machine {
    /// The e820 map from the zero page.
    pub e820: E820,
    /// The parsed command line.
    pub config: Config,
    /// The MP table, or why there is none.
    pub mp: Result<MpTable, MpError>,
    /// Whether every AP the MP table lists came up.
    pub smp: Result<(), SmpError>,
    /// Free RAM.
    pub frames: Frames,
}

/// Total RAM in MiB, rounded up (the `mem=` of the ready line).
pub fn mib_rounded_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}
