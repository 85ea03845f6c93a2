//! Scenarios that drive a virtio transport the way a buggy or hostile driver would, on
//! the first device found (the command line's first virtio-mmio device, else the first
//! virtio-pci function; whatever its type; run them alone: they reset the device under any
//! other driver).
//!
//! - `virtio-flood`: for [`FLOOD_MS`] ms, as fast as CPL3 code can write registers, three
//!   status sequences each of which the VMM warns about: DRIVER_OK without the steps before
//!   it; driver features not acceptable (bit 30, the vhost-user protocol bit); driver
//!   features changed after FEATURES_OK. Each round ends with a reset. Then it resets the
//!   device, checks the status reads 0, prints `virtio-flood <n> rounds on <where>` and
//!   passes: the VMM must have survived it, and the host's logs must not have grown with
//!   it (the test checks that side).
//! - `virtio-status`: a full handshake to DRIVER_OK (no queues), then a status write that
//!   clears DRIVER_OK: the device must refuse it (DRIVER_OK still set) and ask for a reset
//!   (DEVICE_NEEDS_RESET), also after DRIVER_OK is written again; after a reset the status
//!   reads 0 and the device comes up again cleanly. Prints `virtio-status needs-reset ok`.

use crate::disks::{self, Announced, Dev};
use crate::machine::Machine;
use crate::pcibus::Place;
use crate::time::Deadline;
use crate::virtio::transport::InitError;
use crate::virtio::{feature, status, Transport};
use core::fmt;

/// How long `virtio-flood` floods.
pub const FLOOD_MS: u64 = 3000;

/// Why a transport scenario failed.
#[derive(Debug)]
pub enum Error {
    /// No virtio device at all.
    NoDevice,
    /// The first device is not usable.
    Announced(Announced),
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
            Self::NoDevice => write!(f, "no virtio device"),
            Self::Announced(a) => a.fmt(f),
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

/// The first device's transport.
fn first_device(machine: &Machine) -> Result<(Place, Dev), Error> {
    let mut registry = disks::lock();
    let devices = machine.config.devices;
    if let Some(p) = registry.problems(&devices).next() {
        return Err(Error::Announced(*p));
    }
    let (place, _) = registry.found(&devices).next().ok_or(Error::NoDevice)?;
    let t = disks::transport(place).map_err(Error::Announced)?;
    Ok((place, t))
}

fn expect(t: &Dev, after: &'static str, expected: u32) -> Result<(), Error> {
    let found = t.status();
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

/// `virtio-flood`.
pub fn flood(machine: &mut Machine) -> Result<(), Error> {
    let (place, t) = first_device(machine)?;
    let (ack, driver) = (status::ACKNOWLEDGE, status::DRIVER);
    let deadline = Deadline::after_ms(FLOOD_MS);
    let mut rounds = 0u64;
    while !deadline.passed() {
        // DRIVER_OK without ACKNOWLEDGE, DRIVER and FEATURES_OK.
        t.set_status(status::DRIVER_OK);
        t.set_status(0);
        // Features the device did not offer.
        t.set_status(ack | driver);
        t.set_driver_features(feature::VERSION_1 | feature::VHOST_USER_PROTOCOL_FEATURES);
        t.set_status(ack | driver | status::FEATURES_OK);
        t.set_status(0);
        // Features changed after FEATURES_OK.
        t.set_status(ack | driver);
        t.set_driver_features(feature::VERSION_1);
        t.set_status(ack | driver | status::FEATURES_OK);
        t.set_driver_features(0);
        t.set_status(0);
        rounds += 1;
    }
    t.set_status(0);
    expect(&t, "the last reset", 0)?;
    match place {
        Place::Mmio(s) => crate::say!("virtio-flood {rounds} rounds on {:#x}", s.base),
        Place::Pci(_) => crate::say!("virtio-flood {rounds} rounds on {place}"),
    }
    Ok(())
}

/// `virtio-status`.
pub fn clear_driver_ok(machine: &mut Machine) -> Result<(), Error> {
    let (_, mut t) = first_device(machine)?;
    let running = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    t.negotiate(feature::VERSION_1).map_err(Error::Init)?;
    t.driver_ok().map_err(Error::Init)?;
    expect(&t, "DRIVER_OK", running)?;
    t.set_status(running & !status::DRIVER_OK);
    expect(
        &t,
        "clearing DRIVER_OK",
        running | status::DEVICE_NEEDS_RESET,
    )?;
    t.set_status(running);
    expect(
        &t,
        "setting DRIVER_OK again",
        running | status::DEVICE_NEEDS_RESET,
    )?;
    t.reset().map_err(Error::Init)?;
    t.negotiate(feature::VERSION_1).map_err(Error::Init)?;
    t.driver_ok().map_err(Error::Init)?;
    expect(&t, "DRIVER_OK after the reset", running)?;
    t.reset().map_err(Error::Init)?;
    crate::say!("virtio-status needs-reset ok");
    Ok(())
}
