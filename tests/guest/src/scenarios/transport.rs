//! Scenarios that drive a virtio-mmio transport the way a buggy or hostile driver would, on
//! the first device of the command line (whatever its type; run them alone: they reset
//! the device under any other driver).
//!
//! - `virtio-flood`: for [`FLOOD_MS`] ms, as fast as CPL3 code can write registers, three
//!   status sequences each of which the VMM warns about: DRIVER_OK without the steps before
//!   it; driver features not acceptable (bit 30, the vhost-user protocol bit); driver
//!   features changed after FEATURES_OK. Each round ends with a reset. Then it resets the
//!   device, checks the status reads 0, prints `virtio-flood <n> rounds on <base>` and
//!   passes: the VMM must have survived it, and the host's logs must not have grown with
//!   it (the test checks that side).
//! - `virtio-status`: a full handshake to DRIVER_OK (no queues), then a status write that
//!   clears DRIVER_OK: the device must refuse it (DRIVER_OK still set) and ask for a reset
//!   (DEVICE_NEEDS_RESET), also after DRIVER_OK is written again; after a reset the status
//!   reads 0 and the device comes up again cleanly. Prints `virtio-status needs-reset ok`.

use crate::machine::Machine;
use crate::mmio::{self, Mmio};
use crate::time::Deadline;
use crate::virtio::mmio::{reg, DeviceSpec, InitError, ProbeError, Transport, MIN_SIZE};
use crate::virtio::{feature, status, Regs};
use core::fmt;

/// How long `virtio-flood` floods.
pub const FLOOD_MS: u64 = 3000;

/// Why a transport scenario failed.
#[derive(Debug)]
pub enum Error {
    /// No virtio-mmio device on the command line.
    NoDevice,
    /// The first device is outside the mapped MMIO hole.
    Unreachable(DeviceSpec),
    /// It does not answer as a virtio-mmio device.
    Probe(ProbeError),
    /// The handshake failed.
    Init(InitError),
    /// The status register reads something unexpected.
    Status {
        /// After what.
        after: &'static str,
        /// What it reads.
        found: u32,
        /// What it should read.
        expected: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice => write!(f, "no virtio-mmio device on the command line"),
            Self::Unreachable(s) => write!(f, "virtio-mmio device at {:#x} is unreachable", s.base),
            Self::Probe(e) => e.fmt(f),
            Self::Init(e) => e.fmt(f),
            Self::Status {
                after,
                found,
                expected,
            } => write!(
                f,
                "status reads {found:#x} after {after}, expected {expected:#x}"
            ),
        }
    }
}

/// The first device's registers.
fn first_device(machine: &Machine) -> Result<(DeviceSpec, Mmio), Error> {
    let spec = machine
        .config
        .devices
        .iter()
        .next()
        .ok_or(Error::NoDevice)?;
    if !mmio::reachable(spec.base, spec.size.max(MIN_SIZE)) {
        return Err(Error::Unreachable(spec));
    }
    // SAFETY: the block is inside the mapped hole (checked); these scenarios are the only
    // driver of the device while they run (they are run alone).
    let regs = unsafe { Mmio::new(spec.base) };
    Ok((spec, regs))
}

fn expect(regs: &Mmio, after: &'static str, expected: u32) -> Result<(), Error> {
    let found = regs.read32(reg::STATUS);
    if found == expected {
        Ok(())
    } else {
        Err(Error::Status {
            after,
            found,
            expected,
        })
    }
}

fn set_features(regs: &Mmio, features: u64) {
    for half in 0..2u32 {
        regs.write32(reg::DRIVER_FEATURES_SEL, half);
        regs.write32(reg::DRIVER_FEATURES, (features >> (32 * half)) as u32);
    }
}

/// `virtio-flood`.
pub fn flood(machine: &mut Machine) -> Result<(), Error> {
    let (spec, regs) = first_device(machine)?;
    Transport::probe(&regs).map_err(Error::Probe)?;
    let (ack, driver) = (status::ACKNOWLEDGE, status::DRIVER);
    let deadline = Deadline::after_ms(FLOOD_MS);
    let mut rounds = 0u64;
    while !deadline.passed() {
        // DRIVER_OK without ACKNOWLEDGE, DRIVER and FEATURES_OK.
        regs.write32(reg::STATUS, status::DRIVER_OK);
        regs.write32(reg::STATUS, 0);
        // Features the device did not offer.
        regs.write32(reg::STATUS, ack | driver);
        set_features(
            &regs,
            feature::VERSION_1 | feature::VHOST_USER_PROTOCOL_FEATURES,
        );
        regs.write32(reg::STATUS, ack | driver | status::FEATURES_OK);
        regs.write32(reg::STATUS, 0);
        // Features changed after FEATURES_OK.
        regs.write32(reg::STATUS, ack | driver);
        set_features(&regs, feature::VERSION_1);
        regs.write32(reg::STATUS, ack | driver | status::FEATURES_OK);
        regs.write32(reg::DRIVER_FEATURES, 0);
        regs.write32(reg::STATUS, 0);
        rounds += 1;
    }
    regs.write32(reg::STATUS, 0);
    expect(&regs, "the last reset", 0)?;
    crate::say!("virtio-flood {rounds} rounds on {:#x}", spec.base);
    Ok(())
}

/// `virtio-status`.
pub fn clear_driver_ok(machine: &mut Machine) -> Result<(), Error> {
    let (_, regs) = first_device(machine)?;
    let mut t = Transport::probe(&regs).map_err(Error::Probe)?;
    let running = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    t.negotiate(feature::VERSION_1).map_err(Error::Init)?;
    t.driver_ok().map_err(Error::Init)?;
    expect(&regs, "DRIVER_OK", running)?;
    regs.write32(reg::STATUS, running & !status::DRIVER_OK);
    expect(
        &regs,
        "clearing DRIVER_OK",
        running | status::DEVICE_NEEDS_RESET,
    )?;
    regs.write32(reg::STATUS, running);
    expect(
        &regs,
        "setting DRIVER_OK again",
        running | status::DEVICE_NEEDS_RESET,
    )?;
    t.reset().map_err(Error::Init)?;
    t.negotiate(feature::VERSION_1).map_err(Error::Init)?;
    t.driver_ok().map_err(Error::Init)?;
    expect(&regs, "DRIVER_OK after the reset", running)?;
    t.reset().map_err(Error::Init)?;
    crate::say!("virtio-status needs-reset ok");
    Ok(())
}
