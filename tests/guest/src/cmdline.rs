//! The kernel command line: copied out of guest memory, then parsed.
//!
//! Tokens are separated by spaces; the guest reads `bulkhead.test=<name>[,<name>...]`
//! (repeatable; the scenarios run in the order given) and `bulkhead.cpus=<n>`, and ignores
//! every other token (`console=ttyS0`, `virtio_mmio.device=...`, ...).

use crate::bootparams::E820;
use crate::phys;
use crate::scenarios::{Scenario, ScenarioList};
use crate::serial::Escaped;
use crate::sync::RawCell;
use core::fmt;

/// Longest command line, NUL included (x86 `COMMAND_LINE_SIZE`).
pub const MAX_LEN: usize = 2048;

static COPY: RawCell<[u8; MAX_LEN]> = RawCell::new([0; MAX_LEN]);

/// Why the command line could not be read (the VMM broke the boot contract).
#[derive(Debug)]
pub struct Unreadable(pub u64);

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command line at {:#x} is not in mapped memory", self.0)
    }
}

/// Copy the NUL-terminated command line at `addr` (0: none) and return it without the NUL.
/// At most [`MAX_LEN`] bytes are kept: a longer line is cut there.
///
/// Called once, by the boot CPU.
pub fn copy(e820: &E820, addr: u64) -> Result<&'static [u8], Unreadable> {
    if addr == 0 {
        return Ok(&[]);
    }
    let readable = phys::readable_len(e820, addr, MAX_LEN);
    let source = phys::bytes(e820, addr, readable)
        .filter(|s| !s.is_empty())
        .ok_or(Unreadable(addr))?;
    let len = source.iter().position(|&b| b == 0).unwrap_or(source.len());
    // SAFETY: only the boot CPU calls this, once, before anything reads `COPY`; `len` is
    // at most `MAX_LEN`. The returned slice is never written again.
    unsafe {
        let copy = &mut *COPY.get();
        copy[..len].copy_from_slice(&source[..len]);
        Ok(&(&*COPY.get())[..len])
    }
}

/// What the command line asks of the guest.
pub struct Config {
    /// `bulkhead.test=`: the scenarios to run; `None` = the default self-test.
    pub scenarios: Option<ScenarioList>,
    /// `bulkhead.cpus=`: how many CPUs must come up.
    pub cpus: Option<u32>,
}

/// A command line the guest cannot act on (exit status 2).
#[derive(Debug)]
pub enum CmdlineError {
    /// A `bulkhead.test` name that is not a scenario.
    UnknownScenario(&'static [u8]),
    /// A `bulkhead.cpus` value that is not a decimal number.
    BadCpus(&'static [u8]),
    /// More scenario names than [`ScenarioList`] holds.
    TooManyScenarios,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownScenario(name) => write!(f, "unknown scenario \"{}\"", Escaped(name)),
            Self::BadCpus(v) => write!(f, "bad bulkhead.cpus value \"{}\"", Escaped(v)),
            Self::TooManyScenarios => write!(
                f,
                "more than {} scenarios in bulkhead.test",
                ScenarioList::CAPACITY
            ),
        }
    }
}

fn parse_decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u32, |n, &c| {
        let digit = char::from(c).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// Parse the command line.
pub fn parse(line: &'static [u8]) -> Result<Config, CmdlineError> {
    let mut config = Config {
        scenarios: None,
        cpus: None,
    };
    for token in line
        .split(|c| c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        if let Some(names) = token.strip_prefix(b"bulkhead.test=") {
            let list = config.scenarios.get_or_insert_with(ScenarioList::new);
            for name in names.split(|&c| c == b',') {
                let scenario =
                    Scenario::from_name(name).ok_or(CmdlineError::UnknownScenario(name))?;
                list.push(scenario)
                    .map_err(|_| CmdlineError::TooManyScenarios)?;
            }
        } else if let Some(value) = token.strip_prefix(b"bulkhead.cpus=") {
            config.cpus = Some(parse_decimal(value).ok_or(CmdlineError::BadCpus(value))?);
        }
    }
    Ok(config)
}
