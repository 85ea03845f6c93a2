//! The virtio-vsock device in use: found by type among the virtio-mmio devices of the
//! command line and the virtio-pci functions (the probe `disks` does), set up on first use
//! (queue, buffer and connection memory from the frame allocator, never given back) and
//! kept for the rest of the run.

use crate::cmdline::DeviceList;
use crate::disks::{self, Announced, Dev};
use crate::frames::{Frames, PAGE};
use crate::pcibus::Place;
use crate::sync::{SpinGuard, SpinLock};
use crate::virtio::device_id;
use crate::virtio::queue::{self, QueueMemory};
use crate::virtio::vsock::{self, Vsock, VsockInitError, VsockMemory};
use core::fmt;

/// Why the device could not be used.
#[derive(Debug, Clone, Copy)]
pub enum VsockDevError {
    /// No virtio-vsock device; the first announced device that is not usable, if any.
    NoDevice(Option<Announced>),
    /// The announced device could not be reached.
    Unreachable(Announced),
    /// Set-up failed.
    Init(VsockInitError),
    /// RAM ran out.
    OutOfMemory,
}

impl fmt::Display for VsockDevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice(None) => write!(f, "no virtio-vsock device"),
            Self::NoDevice(Some(p)) => write!(f, "no virtio-vsock device; {p}"),
            Self::Unreachable(p) => write!(f, "vsock0: {p}"),
            Self::Init(e) => write!(f, "setting up vsock0: {e}"),
            Self::OutOfMemory => write!(f, "vsock0: out of RAM for virtqueues and buffers"),
        }
    }
}

/// The vsock device in use.
pub struct Sock {
    /// Where it is.
    pub place: Place,
    /// The driver.
    pub vsock: Vsock<Dev>,
}

static VSOCK: SpinLock<Option<Sock>> = SpinLock::new(None);

/// The device slot (boot CPU, one scenario at a time).
pub fn lock() -> SpinGuard<'static, Option<Sock>> {
    VSOCK.lock()
}

/// The first virtio-vsock device found, and the first unusable announced device.
pub fn find(devices: &DeviceList) -> (Option<Place>, Option<Announced>) {
    let mut registry = disks::lock();
    let problem = registry.problems(devices).next().copied();
    let place = registry
        .found(devices)
        .find(|&(_, d)| d == device_id::VSOCK)
        .map(|(p, _)| p);
    (place, problem)
}

fn alloc_queue(frames: &mut Frames) -> Option<QueueMemory> {
    const _: () = assert!(queue::desc_bytes(queue::MAX_SIZE) <= PAGE);
    const _: () = assert!(queue::used_bytes(queue::MAX_SIZE) <= PAGE);
    Some(QueueMemory {
        desc: frames.alloc(PAGE, PAGE)?,
        avail: frames.alloc(PAGE, PAGE)?,
        used: frames.alloc(PAGE, PAGE)?,
    })
}

/// The device, set up on first use.
pub fn get<'a>(
    slot: &'a mut Option<Sock>,
    devices: &DeviceList,
    frames: &mut Frames,
) -> Result<&'a mut Sock, VsockDevError> {
    if slot.is_none() {
        let (place, problem) = find(devices);
        let place = place.ok_or(VsockDevError::NoDevice(problem))?;
        let oom = VsockDevError::OutOfMemory;
        let rx = u64::from(vsock::RX_BUF) * u64::from(vsock::RX_COUNT);
        let tx = u64::from(vsock::TX_BUF) * u64::from(vsock::TX_COUNT);
        let ev = u64::from(vsock::EVENT_BUF) * u64::from(vsock::EVENT_COUNT);
        let mem = VsockMemory {
            rx_queue: alloc_queue(frames).ok_or(oom)?,
            tx_queue: alloc_queue(frames).ok_or(oom)?,
            event_queue: alloc_queue(frames).ok_or(oom)?,
            rx_bufs: frames.alloc(rx, PAGE).ok_or(oom)?,
            tx_bufs: frames.alloc(tx, PAGE).ok_or(oom)?,
            event_bufs: frames.alloc(ev, PAGE).ok_or(oom)?,
            tables: frames.alloc(vsock::TABLES_BYTES, PAGE).ok_or(oom)?,
            conn_bufs: frames.alloc(vsock::CONN_BYTES, PAGE).ok_or(oom)?,
        };
        let transport = disks::transport(place).map_err(VsockDevError::Unreachable)?;
        // SAFETY: fresh memory from the allocator, of the sizes `VsockMemory` needs, kept
        // for the device forever.
        let v = unsafe { Vsock::init(transport, mem) }.map_err(VsockDevError::Init)?;
        *slot = Some(Sock { place, vsock: v });
    }
    Ok(slot.as_mut().expect("set up just above"))
}
