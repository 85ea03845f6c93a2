//! What a virtio driver needs from a transport, whichever it is: the virtio-mmio register
//! block ([`super::mmio::MmioTransport`]) or a virtio-pci function's capabilities
//! ([`super::pci::PciTransport`]). The drivers (`blk`, `net`, `console`) are generic over
//! [`Transport`]; the guest binary drives both kinds through [`Either`].
//!
//! The handshake is the same on both (virtio 1.2, 3.1.1): reset, ACKNOWLEDGE, DRIVER, the 64
//! feature bits, FEATURES_OK (which must stick), the queues, DRIVER_OK; [`handshake`] and
//! the provided methods hold it, each transport supplies the register accesses.

use super::queue::QueueMemory;
use super::{feature, status};
use core::fmt;

/// Reads of the status register after a reset before giving up on seeing 0.
const RESET_POLLS: u32 = 1000;
/// Configuration-space read attempts before giving up on a stable generation.
pub const CONFIG_ATTEMPTS: u32 = 16;

/// Why the handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The status register did not read 0 after the reset.
    Reset(u32),
    /// The device does not offer VERSION_1.
    NotVersion1(u64),
    /// FEATURES_OK did not stick: the device refused the accepted features.
    FeaturesRefused {
        /// What the driver accepted.
        accepted: u64,
        /// The status register afterwards.
        status: u32,
    },
    /// QueueNumMax (queue_size on PCI) is 0: no such queue.
    NoQueue(u16),
    /// The queue is already live (QueueReady / queue_enable reads 1 after a reset).
    QueueBusy(u16),
    /// QueueReady / queue_enable did not read back 1.
    QueueNotReady(u16),
    /// The device reports DEVICE_NEEDS_RESET or FAILED after DRIVER_OK.
    Status(u32),
    /// The configuration space kept changing while being read.
    ConfigUnstable,
    /// More queues than the transport keeps notify addresses for.
    TooManyQueues(u16),
    /// The queue's notify address lies outside the notify area (PCI).
    NotifyOutside(u16, u64),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset(s) => write!(f, "status reads {s:#x} after a reset, not 0"),
            Self::NotVersion1(o) => write!(f, "device does not offer VERSION_1 (features {o:#x})"),
            Self::FeaturesRefused { accepted, status } => write!(
                f,
                "device refused features {accepted:#x} (FEATURES_OK not set, status {status:#x})"
            ),
            Self::NoQueue(q) => write!(f, "queue {q} does not exist (maximum size 0)"),
            Self::QueueBusy(q) => write!(f, "queue {q} is ready before set-up"),
            Self::QueueNotReady(q) => write!(f, "queue {q} did not become ready"),
            Self::Status(s) => write!(f, "device status {s:#x} after DRIVER_OK"),
            Self::ConfigUnstable => write!(
                f,
                "configuration space changed during {CONFIG_ATTEMPTS} attempts to read it"
            ),
            Self::TooManyQueues(q) => write!(f, "queue {q}: too many queues for this driver"),
            Self::NotifyOutside(q, off) => write!(
                f,
                "queue {q}: notify offset {off:#x} lies outside the notify capability's area"
            ),
        }
    }
}

/// The features of the last negotiation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// What the device offered.
    pub offered: u64,
    /// What the driver accepted.
    pub accepted: u64,
}

/// A virtio transport: the device's status, features, queues, notifications and
/// configuration space.
pub trait Transport {
    /// The virtio device type (`virtio::device_id`).
    fn device_id(&self) -> u32;
    /// The device status (`virtio::status`).
    fn status(&self) -> u32;
    /// Write the device status (0 resets).
    fn set_status(&self, bits: u32);
    /// The 64 feature bits the device offers.
    fn device_features(&self) -> u64;
    /// Write the 64 feature bits the driver accepts.
    fn set_driver_features(&self, features: u64);
    /// The features of the last negotiation.
    fn negotiated(&self) -> Negotiated;
    /// Record them.
    fn set_negotiated(&mut self, n: Negotiated);
    /// Reset, negotiate `want` ([`handshake`]) and whatever the transport adds before the
    /// queues are set up (the configuration interrupt's MSI-X vector on PCI).
    fn negotiate(&mut self, want: u64) -> Result<u64, InitError>;
    /// The largest size of queue `index` (0: no such queue).
    fn queue_max(&self, index: u16) -> u32;
    /// Hand queue `index` of `size` entries in `mem` to the device and enable it; between
    /// [`negotiate`](Self::negotiate) and [`driver_ok`](Self::driver_ok). Sets FAILED on
    /// failure.
    fn setup_queue(&self, index: u16, size: u16, mem: &QueueMemory) -> Result<(), InitError>;
    /// Tell the device that queue `index` has new buffers.
    fn notify(&self, index: u16);
    /// The interrupt status: virtio-mmio InterruptStatus, or the virtio-pci ISR (which a
    /// read clears). Bit 0 used buffer, bit 1 configuration change.
    fn interrupt_status(&self) -> u32;
    /// Acknowledge interrupt status bits (virtio-mmio InterruptACK; nothing to do on PCI,
    /// where reading the ISR acknowledges and MSI-X needs no acknowledgement).
    fn interrupt_ack(&self, bits: u32);
    /// Changes whenever the configuration space does.
    fn config_generation(&self) -> u32;
    /// The configuration-space byte at `offset`.
    fn config8(&self, offset: u32) -> u8;
    /// The configuration-space u16 at `offset` (one 16-bit access).
    fn config16(&self, offset: u32) -> u16;
    /// The configuration-space u32 at `offset` (one 32-bit access).
    fn config32(&self, offset: u32) -> u32;

    /// What the device offered (after [`negotiate`](Self::negotiate)).
    fn offered(&self) -> u64 {
        self.negotiated().offered
    }

    /// What the driver accepted (after [`negotiate`](Self::negotiate)).
    fn accepted(&self) -> u64 {
        self.negotiated().accepted
    }

    /// Give up on the device: set FAILED on top of the current status.
    fn fail(&self) {
        self.set_status(self.status() | status::FAILED);
    }

    /// Reset the device and wait for the status to read 0.
    fn reset(&self) -> Result<(), InitError> {
        self.set_status(0);
        let mut last = 0;
        for _ in 0..RESET_POLLS {
            last = self.status();
            if last == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(InitError::Reset(last))
    }

    /// Set DRIVER_OK: the device may now use its queues. Fails if the device then reports
    /// DEVICE_NEEDS_RESET or FAILED.
    fn driver_ok(&self) -> Result<(), InitError> {
        let bits = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(bits | status::DRIVER_OK);
        let now = self.status();
        if now & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 || now & status::DRIVER_OK == 0
        {
            self.fail();
            return Err(InitError::Status(now));
        }
        Ok(())
    }

    /// Read the configuration space consistently: run `read` (which reads fields with
    /// [`Config`]) until the generation is the same before and after.
    fn read_config<T>(&self, read: impl FnMut(&Config<'_, Self>) -> T) -> Result<T, InitError> {
        self.read_config_generation(read).map(|(value, _)| value)
    }

    /// [`read_config`](Self::read_config), also returning the generation the value belongs
    /// to (read before and after it).
    fn read_config_generation<T>(
        &self,
        mut read: impl FnMut(&Config<'_, Self>) -> T,
    ) -> Result<(T, u32), InitError> {
        let config = Config { t: self };
        for _ in 0..CONFIG_ATTEMPTS {
            let before = self.config_generation();
            let value = read(&config);
            if self.config_generation() == before {
                return Ok((value, before));
            }
        }
        Err(InitError::ConfigUnstable)
    }
}

/// Reset, ACKNOWLEDGE, DRIVER, accept `offered & want` (VERSION_1 required, the vhost-user
/// protocol bit never) and check that FEATURES_OK sticks. Returns the accepted features.
/// On failure after the reset the device is marked FAILED.
pub fn handshake<T: Transport + ?Sized>(t: &mut T, want: u64) -> Result<u64, InitError> {
    t.reset()?;
    t.set_status(status::ACKNOWLEDGE);
    t.set_status(status::ACKNOWLEDGE | status::DRIVER);
    let result = exchange_features(t, want);
    if result.is_err() {
        t.fail();
    }
    result
}

fn exchange_features<T: Transport + ?Sized>(t: &mut T, want: u64) -> Result<u64, InitError> {
    let offered = t.device_features();
    t.set_negotiated(Negotiated {
        offered,
        accepted: 0,
    });
    if offered & feature::VERSION_1 == 0 {
        return Err(InitError::NotVersion1(offered));
    }
    let accepted = offered & want & !feature::VHOST_USER_PROTOCOL_FEATURES;
    t.set_driver_features(accepted);
    t.set_negotiated(Negotiated { offered, accepted });
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    let now = t.status();
    if now & status::FEATURES_OK == 0 {
        return Err(InitError::FeaturesRefused {
            accepted,
            status: now,
        });
    }
    Ok(accepted)
}

/// Field reads in the device-specific configuration space, each of its field's width.
pub struct Config<'a, T: ?Sized> {
    t: &'a T,
}

impl<T: Transport + ?Sized> Config<'_, T> {
    /// The byte at `offset`.
    pub fn u8(&self, offset: u32) -> u8 {
        self.t.config8(offset)
    }

    /// The little-endian u16 at `offset`.
    pub fn u16(&self, offset: u32) -> u16 {
        self.t.config16(offset)
    }

    /// The little-endian u32 at `offset`.
    pub fn u32(&self, offset: u32) -> u32 {
        self.t.config32(offset)
    }

    /// The little-endian u64 at `offset`, as two 32-bit reads (as Linux does).
    pub fn u64(&self, offset: u32) -> u64 {
        u64::from(self.u32(offset)) | u64::from(self.u32(offset + 4)) << 32
    }
}

/// One transport or the other: what the guest binary keeps per device, so that one driver
/// type serves devices found on either.
pub enum Either<M, P> {
    /// A virtio-mmio device.
    Mmio(M),
    /// A virtio-pci function.
    Pci(P),
}

macro_rules! either {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            Either::Mmio($t) => $e,
            Either::Pci($t) => $e,
        }
    };
}

impl<M: Transport, P: Transport> Transport for Either<M, P> {
    fn device_id(&self) -> u32 {
        either!(self, t => t.device_id())
    }
    fn status(&self) -> u32 {
        either!(self, t => t.status())
    }
    fn set_status(&self, bits: u32) {
        either!(self, t => t.set_status(bits))
    }
    fn device_features(&self) -> u64 {
        either!(self, t => t.device_features())
    }
    fn set_driver_features(&self, features: u64) {
        either!(self, t => t.set_driver_features(features))
    }
    fn negotiated(&self) -> Negotiated {
        either!(self, t => t.negotiated())
    }
    fn set_negotiated(&mut self, n: Negotiated) {
        either!(self, t => t.set_negotiated(n))
    }
    fn negotiate(&mut self, want: u64) -> Result<u64, InitError> {
        either!(self, t => t.negotiate(want))
    }
    fn queue_max(&self, index: u16) -> u32 {
        either!(self, t => t.queue_max(index))
    }
    fn setup_queue(&self, index: u16, size: u16, mem: &QueueMemory) -> Result<(), InitError> {
        either!(self, t => t.setup_queue(index, size, mem))
    }
    fn notify(&self, index: u16) {
        either!(self, t => t.notify(index))
    }
    fn interrupt_status(&self) -> u32 {
        either!(self, t => t.interrupt_status())
    }
    fn interrupt_ack(&self, bits: u32) {
        either!(self, t => t.interrupt_ack(bits))
    }
    fn config_generation(&self) -> u32 {
        either!(self, t => t.config_generation())
    }
    fn config8(&self, offset: u32) -> u8 {
        either!(self, t => t.config8(offset))
    }
    fn config16(&self, offset: u32) -> u16 {
        either!(self, t => t.config16(offset))
    }
    fn config32(&self, offset: u32) -> u32 {
        either!(self, t => t.config32(offset))
    }
}
