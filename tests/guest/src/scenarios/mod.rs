//! The scenarios' implementations (their names and lists: `bulkhead_guest::scenario`).
//!
//! Each scenario is a module with `run(&mut Machine) -> Result<(), Error>`; a failure
//! becomes `FAIL <scenario>: <error>`. The `exception` and `panic` scenarios do not return:
//! they end the run through the fatal-error path (exit status 3). The virtio-blk scenarios
//! (`blk-*`) live in `blk/` and share one error type.

mod blk;
pub mod console;
mod console_soak;
mod cpus;
mod exception;
mod fail;
mod idle;
mod memory;
pub mod net;
mod panic;
mod pci;
mod serial_flood;
pub mod soak;
mod transport;
pub mod vsock;

use crate::machine::Machine;
use crate::scenario::Scenario;
use crate::soak::Summary;
use core::fmt;

/// Why a scenario failed.
#[derive(Debug)]
pub enum Failure {
    /// See `cpus.rs`.
    Cpus(cpus::Error),
    /// See `memory.rs`.
    Memory(memory::Error),
    /// See `blk/mod.rs`.
    Blk(blk::Error),
    /// See `net/mod.rs` (the console scenarios too).
    Net(net::Error),
    /// See `transport.rs`.
    Transport(transport::Error),
    /// See `pci.rs`.
    Pci(pci::Error),
    /// See `vsock/mod.rs` (and `idle.rs`).
    Vsock(vsock::Error),
    /// See `soak.rs`.
    Soak(soak::Error),
    /// The `fail` scenario.
    Fail,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpus(e) => e.fmt(f),
            Self::Memory(e) => e.fmt(f),
            Self::Blk(e) => e.fmt(f),
            Self::Net(e) => e.fmt(f),
            Self::Transport(e) => e.fmt(f),
            Self::Pci(e) => e.fmt(f),
            Self::Vsock(e) => e.fmt(f),
            Self::Soak(e) => e.fmt(f),
            Self::Fail => write!(f, "this scenario always fails"),
        }
    }
}

/// Run one scenario; a soak that passed returns its counts.
pub fn run(scenario: Scenario, machine: &mut Machine) -> Result<Option<Summary>, Failure> {
    let soak = match scenario {
        Scenario::BlkSoak => Some(blk::soak::run_soak(machine)),
        Scenario::NetSoak => Some(net::soak::run_soak(machine)),
        Scenario::ConsoleSoak => Some(console_soak::run_soak(machine)),
        _ => None,
    };
    if let Some(result) = soak {
        return result.map(Some).map_err(Failure::Soak);
    }
    run_plain(scenario, machine).map(|()| None)
}

/// Run a scenario that has no counts.
fn run_plain(scenario: Scenario, machine: &mut Machine) -> Result<(), Failure> {
    match scenario {
        Scenario::Cpus => cpus::run(machine).map_err(Failure::Cpus),
        Scenario::Memory => memory::run(machine).map_err(Failure::Memory),
        Scenario::Fail => fail::run(),
        Scenario::Exception => exception::run(),
        Scenario::Panic => panic::run(),
        Scenario::BlkProbe => blk::probe::run(machine).map_err(Failure::Blk),
        Scenario::BlkIdentify => blk::identify::run(machine).map_err(Failure::Blk),
        Scenario::BlkRw => blk::rw::run(machine).map_err(Failure::Blk),
        Scenario::BlkFlush => blk::flush::run(machine).map_err(Failure::Blk),
        Scenario::BlkReadonly => blk::readonly::run(machine).map_err(Failure::Blk),
        Scenario::BlkIrq => blk::irq::run(machine).map_err(Failure::Blk),
        Scenario::BlkDiscard => blk::discard::run(machine).map_err(Failure::Blk),
        Scenario::BlkBench => blk::bench::run(machine).map_err(Failure::Blk),
        Scenario::BlkHostile => blk::hostile::run(machine).map_err(Failure::Blk),
        Scenario::BlkMq => blk::mq::run(machine).map_err(Failure::Blk),
        Scenario::BlkSwap => blk::swap::run(machine).map_err(Failure::Blk),
        Scenario::NetProbe => net::probe::run(machine).map_err(Failure::Net),
        Scenario::NetIdentify => net::identify::run(machine).map_err(Failure::Net),
        Scenario::NetServe => net::serve::run(machine).map_err(Failure::Net),
        Scenario::NetSend => net::send::run(machine).map_err(Failure::Net),
        Scenario::NetBench => net::bench::run(machine).map_err(Failure::Net),
        Scenario::NetMacswap => net::macswap::run(machine).map_err(Failure::Net),
        Scenario::ConsoleProbe => console::probe(machine).map_err(Failure::Net),
        Scenario::ConsoleWrite => console::write(machine).map_err(Failure::Net),
        Scenario::ConsoleEcho => console::echo(machine).map_err(Failure::Net),
        Scenario::ConsoleResize => console::resize(machine).map_err(Failure::Net),
        Scenario::VirtioFlood => transport::flood(machine).map_err(Failure::Transport),
        Scenario::VirtioStatus => transport::clear_driver_ok(machine).map_err(Failure::Transport),
        Scenario::PciProbe => pci::probe(machine).map_err(Failure::Pci),
        Scenario::PciHostile => pci::hostile(machine).map_err(Failure::Pci),
        Scenario::VsockProbe => vsock::probe::run(machine).map_err(Failure::Vsock),
        Scenario::VsockEcho => vsock::echo::run(machine).map_err(Failure::Vsock),
        Scenario::VsockConnect => vsock::connect::run(machine).map_err(Failure::Vsock),
        Scenario::VsockHostile => vsock::hostile::run(machine).map_err(Failure::Vsock),
        Scenario::VsockLatency => vsock::latency::run(machine).map_err(Failure::Vsock),
        Scenario::Idle => idle::run(machine).map_err(Failure::Vsock),
        Scenario::SerialFlood => {
            serial_flood::run(machine);
            Ok(())
        }
        Scenario::BlkSoak | Scenario::NetSoak | Scenario::ConsoleSoak => {
            unreachable!("soaks run in run()")
        }
    }
}
