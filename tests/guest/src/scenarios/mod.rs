//! The scenarios a run can ask for with `bulkhead.test=`, and how they are run.
//!
//! Each scenario is a module with `run(&mut Machine) -> Result<(), Error>`; a failure
//! becomes `FAIL <scenario>: <error>`. The `exception` and `panic` scenarios do not return:
//! they end the run through the fatal-error path (exit status 3).

mod cpus;
mod exception;
mod fail;
mod memory;
mod panic;

use crate::machine::Machine;
use core::fmt;

/// A test scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every CPU in the MP table (and `bulkhead.cpus`, if given) came up and runs jobs.
    Cpus,
    /// The e820 map is sane and RAM holds what is written to it.
    Memory,
    /// Always fails.
    Fail,
    /// Takes a page fault at CPL3.
    Exception,
    /// Panics.
    Panic,
}

/// All scenarios, with their command-line names.
const NAMES: [(Scenario, &str); 5] = [
    (Scenario::Cpus, "cpus"),
    (Scenario::Memory, "memory"),
    (Scenario::Fail, "fail"),
    (Scenario::Exception, "exception"),
    (Scenario::Panic, "panic"),
];

/// What runs without `bulkhead.test`: every scenario that is harmless to the devices found.
pub const DEFAULT: [Scenario; 2] = [Scenario::Cpus, Scenario::Memory];

impl Scenario {
    /// Name on the command line and in PASS/FAIL lines.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("?", |(_, name)| name)
    }

    /// The scenario called `name`.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        NAMES
            .iter()
            .find(|(_, n)| n.as_bytes() == name)
            .map(|(s, _)| *s)
    }
}

/// Scenarios to run, in command-line order.
pub struct ScenarioList {
    items: [Scenario; Self::CAPACITY],
    len: usize,
}

/// The list is full.
#[derive(Debug)]
pub struct ListFull;

impl ScenarioList {
    /// Most scenarios one command line can ask for.
    pub const CAPACITY: usize = 32;

    /// An empty list.
    pub fn new() -> Self {
        Self {
            items: [Scenario::Fail; Self::CAPACITY],
            len: 0,
        }
    }

    /// Append a scenario.
    pub fn push(&mut self, s: Scenario) -> Result<(), ListFull> {
        *self.items.get_mut(self.len).ok_or(ListFull)? = s;
        self.len += 1;
        Ok(())
    }

    /// The scenarios.
    pub fn as_slice(&self) -> &[Scenario] {
        &self.items[..self.len]
    }
}

impl Default for ScenarioList {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a scenario failed.
#[derive(Debug)]
pub enum Failure {
    /// See `cpus.rs`.
    Cpus(cpus::Error),
    /// See `memory.rs`.
    Memory(memory::Error),
    /// The `fail` scenario.
    Fail,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpus(e) => e.fmt(f),
            Self::Memory(e) => e.fmt(f),
            Self::Fail => write!(f, "this scenario always fails"),
        }
    }
}

/// Run one scenario.
pub fn run(scenario: Scenario, machine: &mut Machine) -> Result<(), Failure> {
    match scenario {
        Scenario::Cpus => cpus::run(machine).map_err(Failure::Cpus),
        Scenario::Memory => memory::run(machine).map_err(Failure::Memory),
        Scenario::Fail => fail::run(),
        Scenario::Exception => exception::run(),
        Scenario::Panic => panic::run(),
    }
}
