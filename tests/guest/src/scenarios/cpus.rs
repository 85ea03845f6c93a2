//! `cpus`: every processor the MP table lists came up, as many as `bulkhead.cpus` says
//! (if given), and each AP runs a job posted to it (it reads its own APIC id at CPL3).
//!
//! Without an MP table the guest runs on the boot CPU alone; that passes unless
//! `bulkhead.cpus` asks for more. A malformed MP table fails.

use crate::lapic;
use crate::machine::Machine;
use crate::mptable::MpError;
use crate::smp::{self, RunError, SmpError};
use core::fmt;

/// Why `cpus` failed.
#[derive(Debug)]
pub enum Error {
    /// The MP table is malformed.
    MpTable(MpError),
    /// Bring-up went wrong.
    Start(SmpError),
    /// The boot CPU is not the one the MP table flags.
    WrongBsp { table: u8, actual: u32 },
    /// A listed CPU is not up.
    Missing(u8),
    /// A CPU is up that the MP table does not list.
    Unlisted(u32),
    /// `bulkhead.cpus` disagrees with the CPUs that came up.
    Count { expected: u32, up: usize },
    /// An AP did not run its job.
    Job(RunError),
    /// An AP's job reported another APIC id than the AP did at start-up.
    JobApicId { cpu: usize, expected: u32, got: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MpTable(e) => write!(f, "{e}"),
            Self::Start(e) => write!(f, "{e}"),
            Self::WrongBsp { table, actual } => {
                write!(
                    f,
                    "MP table says the BSP is APIC id {table}, it is {actual}"
                )
            }
            Self::Missing(id) => write!(f, "CPU with APIC id {id} did not come up"),
            Self::Unlisted(id) => write!(f, "CPU with APIC id {id} is not in the MP table"),
            Self::Count { expected, up } => {
                write!(f, "bulkhead.cpus={expected} but {up} CPUs came up")
            }
            Self::Job(e) => write!(f, "{e}"),
            Self::JobApicId { cpu, expected, got } => {
                write!(f, "CPU {cpu} has APIC id {expected} but its job read {got}")
            }
        }
    }
}

fn own_apic_id(_cpu: usize) -> u64 {
    u64::from(lapic::id())
}

/// Run the scenario.
pub fn run(machine: &mut Machine) -> Result<(), Error> {
    match &machine.mp {
        Ok(mp) => {
            if u32::from(mp.bsp()) != lapic::id() {
                return Err(Error::WrongBsp {
                    table: mp.bsp(),
                    actual: lapic::id(),
                });
            }
            machine.smp.map_err(Error::Start)?;
            if let Some(&id) = mp.apic_ids().iter().find(|&&id| !smp::is_up(u32::from(id))) {
                return Err(Error::Missing(id));
            }
            if let Some((_, id)) =
                smp::up().find(|&(_, id)| !mp.apic_ids().iter().any(|&l| u32::from(l) == id))
            {
                return Err(Error::Unlisted(id));
            }
        }
        Err(MpError::NotFound) => {}
        Err(e) => return Err(Error::MpTable(*e)),
    }
    let up = smp::online();
    if let Some(expected) = machine.config.cpus {
        if usize::try_from(expected) != Ok(up) {
            return Err(Error::Count { expected, up });
        }
    }
    for (cpu, expected) in smp::up().skip(1) {
        let got = smp::run_on(cpu, own_apic_id).map_err(Error::Job)?;
        if got != u64::from(expected) {
            return Err(Error::JobApicId { cpu, expected, got });
        }
    }
    Ok(())
}
