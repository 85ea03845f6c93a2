//! What the soak scenarios share (`blk/soak.rs`, `net/soak.rs`, `console_soak.rs`): the
//! error type, the stall lines, and waiting on a device that may be gone for a while.
//!
//! A device whose process the host restarts must look to the guest like a slow device,
//! not a failing one: a soak waits up to [`PATIENCE_MS`] for each operation (reset by
//! every completion), reading the device status every [`STATUS_POLL_MS`] meanwhile (an
//! exit to the VMM, so not in the tight loop); DEVICE_NEEDS_RESET ends it with
//! [`Error::NeedsReset`].
//!
//! Stall lines: `<scenario>: stall <ms> ms` for every gap of at least
//! `bulkhead.soak-stall-ms` between two consecutive completed operations (the time spent
//! printing a line is not counted in the next gap).

use super::{blk, net};
use crate::soak::{NetCorrupt, Stalls};
use crate::time::{self, Deadline};
use crate::virtio::{status, Transport};
use core::fmt;

/// How long one operation may take before the soak fails (the device is not just slow).
pub const PATIENCE_MS: u64 = 10_000;
/// While waiting, the device status is read at most this often.
pub const STATUS_POLL_MS: u64 = 10;

/// A device in messages: `blk0`, `net0`, `console0`.
#[derive(Clone, Copy, Debug)]
pub struct Dev(pub &'static str, pub usize);

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.0, self.1)
    }
}

/// Why a soak failed.
#[derive(Debug)]
pub enum Error {
    /// The block device could not be used.
    Blk(blk::Error),
    /// The network or console device could not be used.
    Net(net::Error),
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset {
        /// Which.
        dev: Dev,
        /// Its status register.
        status: u32,
        /// What the soak was waiting for.
        waiting: &'static str,
    },
    /// Nothing completed for [`PATIENCE_MS`].
    Timeout {
        /// Which device.
        dev: Dev,
        /// What the soak was waiting for.
        waiting: &'static str,
    },
    /// A block request completed with a status other than OK.
    BlkStatus {
        /// `write`, `read` or `flush`.
        op: &'static str,
        /// The write number it belongs to.
        n: u64,
        /// The status byte.
        status: u8,
    },
    /// A sector read back is not the write just completed.
    BlkMismatch {
        /// The write number.
        n: u64,
        /// Its sector.
        sector: u64,
        /// The first wrong byte, its expected and found values.
        byte: usize,
        /// Expected.
        expected: u8,
        /// Found.
        found: u8,
    },
    /// Completions of requests not in flight (completed twice?).
    Strays(u32),
    /// An echoed datagram is not one that was sent.
    NetCorrupt(NetCorrupt),
    /// An echo of a sequence number not sent yet.
    NeverSent(u64),
    /// The host never echoed the warm-up datagram.
    NoEcho {
        /// The host's port.
        port: u16,
        /// How long the soak tried.
        ms: u64,
    },
}

impl From<blk::Error> for Error {
    fn from(e: blk::Error) -> Self {
        Self::Blk(e)
    }
}

impl From<crate::disks::DiskError> for Error {
    fn from(e: crate::disks::DiskError) -> Self {
        Self::Blk(blk::Error::Disk(e))
    }
}

impl From<net::Error> for Error {
    fn from(e: net::Error) -> Self {
        Self::Net(e)
    }
}

impl From<crate::nics::DevError> for Error {
    fn from(e: crate::nics::DevError) -> Self {
        Self::Net(net::Error::Dev(e))
    }
}

impl From<crate::virtio::bufs::RingError> for Error {
    fn from(e: crate::virtio::bufs::RingError) -> Self {
        Self::Net(net::Error::Ring(e))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blk(e) => e.fmt(f),
            Self::Net(e) => e.fmt(f),
            Self::NeedsReset {
                dev,
                status,
                waiting,
            } => write!(
                f,
                "{dev} reports DEVICE_NEEDS_RESET (status {status:#x}) while waiting for {waiting}"
            ),
            Self::Timeout { dev, waiting } => write!(
                f,
                "{dev}: nothing completed for {PATIENCE_MS} ms while waiting for {waiting}"
            ),
            Self::BlkStatus { op, n, status } => write!(
                f,
                "{op} of write {n} completed with status {status} ({})",
                crate::virtio::blk::status::name(*status)
            ),
            Self::BlkMismatch {
                n,
                sector,
                byte,
                expected,
                found,
            } => write!(
                f,
                "write {n} read back from sector {sector}: byte {byte} is {found:#04x}, expected {expected:#04x}"
            ),
            Self::Strays(n) => write!(
                f,
                "{n} completion(s) of requests not in flight (a request completed twice?)"
            ),
            Self::NetCorrupt(e) => e.fmt(f),
            Self::NeverSent(seq) => write!(f, "echo of datagram {seq}, which was never sent"),
            Self::NoEcho { port, ms } => write!(
                f,
                "the host did not echo a datagram to its UDP port {port} within {ms} ms"
            ),
        }
    }
}

/// Waiting for one operation of a device that may be gone for a while.
pub struct Patience {
    dev: Dev,
    give_up: Deadline,
    next_status: Deadline,
}

impl Patience {
    /// Start waiting on `dev`.
    pub fn new(dev: Dev) -> Self {
        Self {
            dev,
            give_up: Deadline::after_ms(PATIENCE_MS),
            next_status: Deadline::after_ms(STATUS_POLL_MS),
        }
    }

    /// Something completed: start the wait again.
    pub fn progress(&mut self) {
        self.give_up = Deadline::after_ms(PATIENCE_MS);
        self.next_status = Deadline::after_ms(STATUS_POLL_MS);
    }

    /// Nothing this time: fail when the device asks for a reset or the wait is too long.
    pub fn idle<T: Transport>(&mut self, t: &T, waiting: &'static str) -> Result<(), Error> {
        if self.next_status.passed() {
            self.next_status = Deadline::after_ms(STATUS_POLL_MS);
            needs_reset(t, self.dev, waiting)?;
        }
        if self.give_up.passed() {
            // The status once more: a device that asks for a reset says so rather than
            // "timeout".
            needs_reset(t, self.dev, waiting)?;
            return Err(Error::Timeout {
                dev: self.dev,
                waiting,
            });
        }
        core::hint::spin_loop();
        Ok(())
    }
}

/// Fail if the device reports DEVICE_NEEDS_RESET.
pub fn needs_reset<T: Transport>(t: &T, dev: Dev, waiting: &'static str) -> Result<(), Error> {
    let s = t.status();
    if s & status::DEVICE_NEEDS_RESET != 0 {
        return Err(Error::NeedsReset {
            dev,
            status: s,
            waiting,
        });
    }
    Ok(())
}

/// The stall lines of one soak.
pub struct Watch {
    name: &'static str,
    stalls: Stalls,
}

impl Watch {
    /// Scenario `name`; a gap of at least `stall_ms` is a stall. Measured from now.
    pub fn new(name: &'static str, stall_ms: u64) -> Self {
        Self {
            name,
            stalls: Stalls::new(time::ms(stall_ms), time::now()),
        }
    }

    /// An operation completed: print a stall line if the gap since the last one is one.
    pub fn completed(&mut self) {
        if let Some(gap) = self.stalls.completed(time::now()) {
            crate::say!("{}: stall {} ms", self.name, time::cycles_to_us(gap) / 1000);
            self.stalls.resume(time::now());
        }
    }

    /// The longest gap, in ms.
    pub fn max_ms(&self) -> u64 {
        time::cycles_to_us(self.stalls.max()) / 1000
    }
}
