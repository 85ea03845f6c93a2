//! The virtio-net and virtio-console devices in use: found among the command line's
//! `virtio_mmio.device`s and the virtio-pci functions (through the probe `disks` already
//! does), set up on first use
//! (queue and buffer memory from the frame allocator, never given back) and kept for the
//! rest of the run.

use crate::cmdline::DeviceList;
use crate::disks::{self, Announced, Dev};
use crate::frames::{Frames, PAGE};
use crate::pcibus::Place;
use crate::sync::{SpinGuard, SpinLock};
use crate::virtio::console::{self, Console, ConsoleInitError, ConsoleMemory};
use crate::virtio::device_id;
use crate::virtio::net::{self, Net, NetInitError, NetMemory};
use crate::virtio::queue::{self, QueueMemory};
use core::fmt;

/// Most virtio-net devices used.
pub const MAX_NICS: usize = 4;

/// Why a device could not be used.
#[derive(Debug, Clone, Copy)]
pub enum DevError {
    /// No such device of this type (`kind`); `found` of them were found.
    NoDevice {
        /// "virtio-net" or "virtio-console".
        kind: &'static str,
        /// Index asked for.
        wanted: usize,
        /// Devices of the type found.
        found: usize,
        /// The first announced device that is not usable, if any.
        problem: Option<Announced>,
    },
    /// Set-up failed.
    Net(usize, NetInitError),
    /// Set-up failed.
    Console(ConsoleInitError),
    /// RAM ran out.
    OutOfMemory,
}

impl fmt::Display for DevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice {
                kind,
                wanted,
                found,
                problem,
            } => {
                if *found == 0 {
                    write!(f, "no {kind} device")?;
                } else {
                    write!(f, "no {kind} device {wanted} ({found} found)")?;
                }
                match problem {
                    Some(p) => write!(f, "; {p}"),
                    None => Ok(()),
                }
            }
            Self::Net(n, e) => write!(f, "setting up net{n}: {e}"),
            Self::Console(e) => write!(f, "setting up console0: {e}"),
            Self::OutOfMemory => write!(f, "out of RAM for virtqueues and buffers"),
        }
    }
}

/// A virtio-net device in use.
pub struct Nic {
    /// Its index among the virtio-net devices (`net<n>`).
    pub index: usize,
    /// Where it is.
    pub place: Place,
    /// The driver.
    pub net: Net<Dev>,
}

/// The virtio-console device in use.
pub struct Cons {
    /// Where it is.
    pub place: Place,
    /// The driver.
    pub console: Console<Dev>,
}

/// The devices set up so far.
pub struct Registry {
    nics: [Option<Nic>; MAX_NICS],
    console: Option<Cons>,
}

static REGISTRY: SpinLock<Registry> = SpinLock::new(Registry {
    nics: [const { None }; MAX_NICS],
    console: None,
});

/// The registry (boot CPU, one scenario at a time).
pub fn lock() -> SpinGuard<'static, Registry> {
    REGISTRY.lock()
}

/// The `n`-th device of type `id` among the probed ones, and how many there are.
fn find(devices: &DeviceList, id: u32, n: usize) -> (Option<Place>, usize, Option<Announced>) {
    let mut registry = disks::lock();
    let problem = registry.problems(devices).next().copied();
    let mut spec = None;
    let mut count = 0;
    for (s, _) in registry.found(devices).filter(|&(_, d)| d == id) {
        if count == n {
            spec = Some(s);
        }
        count += 1;
    }
    (spec, count, problem)
}

/// How many devices of type `id` the command line has.
pub fn count(devices: &DeviceList, id: u32) -> usize {
    find(devices, id, 0).1
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

impl Registry {
    /// Virtio-net device `n`, set up on first use.
    pub fn nic(
        &mut self,
        devices: &DeviceList,
        frames: &mut Frames,
        n: usize,
    ) -> Result<&mut Nic, DevError> {
        let (spec, found, problem) = find(devices, device_id::NET, n);
        let no_device = DevError::NoDevice {
            kind: "virtio-net",
            wanted: n,
            found,
            problem,
        };
        let spec = spec.ok_or(no_device)?;
        let slot = self.nics.get_mut(n).ok_or(no_device)?;
        if slot.is_none() {
            let mem = NetMemory {
                rx_queue: alloc_queue(frames).ok_or(DevError::OutOfMemory)?,
                tx_queue: alloc_queue(frames).ok_or(DevError::OutOfMemory)?,
                rx_bufs: frames
                    .alloc(net::BUF_BYTES, PAGE)
                    .ok_or(DevError::OutOfMemory)?,
                tx_bufs: frames
                    .alloc(net::BUF_BYTES, PAGE)
                    .ok_or(DevError::OutOfMemory)?,
            };
            let transport = disks::transport(spec).map_err(|e| DevError::NoDevice {
                kind: "virtio-net",
                wanted: n,
                found,
                problem: Some(e),
            })?;
            // SAFETY: fresh memory from the allocator, of the sizes `NetMemory` needs, kept
            // for the device forever.
            let net = unsafe { Net::init(transport, mem) }.map_err(|e| DevError::Net(n, e))?;
            *slot = Some(Nic {
                index: n,
                place: spec,
                net,
            });
        }
        Ok(slot.as_mut().expect("set up just above"))
    }

    /// The (first) virtio-console device, set up on first use.
    pub fn console(
        &mut self,
        devices: &DeviceList,
        frames: &mut Frames,
    ) -> Result<&mut Cons, DevError> {
        let (spec, found, problem) = find(devices, device_id::CONSOLE, 0);
        let spec = spec.ok_or(DevError::NoDevice {
            kind: "virtio-console",
            wanted: 0,
            found,
            problem,
        })?;
        if self.console.is_none() {
            let rx_bytes = u64::from(console::RX_BUF) * u64::from(console::RX_COUNT);
            let tx_bytes = u64::from(console::TX_BUF) * u64::from(console::TX_COUNT);
            let mem = ConsoleMemory {
                rx_queue: alloc_queue(frames).ok_or(DevError::OutOfMemory)?,
                tx_queue: alloc_queue(frames).ok_or(DevError::OutOfMemory)?,
                rx_bufs: frames.alloc(rx_bytes, PAGE).ok_or(DevError::OutOfMemory)?,
                tx_bufs: frames.alloc(tx_bytes, PAGE).ok_or(DevError::OutOfMemory)?,
            };
            let transport = disks::transport(spec).map_err(|e| DevError::NoDevice {
                kind: "virtio-console",
                wanted: 0,
                found,
                problem: Some(e),
            })?;
            // SAFETY: fresh memory of the sizes `ConsoleMemory` needs, kept forever.
            let console = unsafe { Console::init(transport, mem) }.map_err(DevError::Console)?;
            self.console = Some(Cons {
                place: spec,
                console,
            });
        }
        Ok(self.console.as_mut().expect("set up just above"))
    }
}
