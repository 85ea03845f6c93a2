//! The virtio-blk disks: found among the command line's `virtio_mmio.device`s and the
//! virtio-pci functions of PCI bus 0, set up on first use, kept for the rest of the run,
//! and driven from CPL3 by polling.
//!
//! [`lock`] gives the boot CPU the registry; [`Registry::open`] probes every device once
//! (virtio-mmio: MagicValue, Version, DeviceID; virtio-pci: IDs, capabilities, BAR; the
//! mmio devices first, in command-line order, then the PCI functions in BDF order), and
//! sets up virtio-blk device `n` (counting block devices only) on first use: queue memory and a pool
//! of request [`Slot`]s come from the frame allocator and are never given back. A [`Disk`]
//! adds what the library's [`Blk`] leaves to its user: which slot a completion belongs to,
//! and waiting with a TSC deadline. Completions of chains that no slot owns (malformed
//! requests of `blk-hostile` that the device returned late) are counted and dropped.

use crate::acpi::Ecam;
use crate::cmdline::DeviceList;
use crate::frames::{Frames, PAGE};
use crate::idt::vector;
use crate::mmio::{self, Mmio};
use crate::pcibus::{self, PciDevice, PciProblem, Place};
use crate::sync::{SpinGuard, SpinLock};
use crate::time::Deadline;
use crate::virtio::blk::{self, Blk, BlkInitError, Request, Slot, SubmitError};
use crate::virtio::device_id;
use crate::virtio::mmio::{DeviceSpec, MmioTransport, ProbeError};
use crate::virtio::pci::{MsiTarget, PciTransport};
use crate::virtio::queue::{self, QueueMemory, UsedError};
use crate::virtio::{Either, Transport};
use core::fmt;

/// The transport of a device in use: virtio-mmio or virtio-pci.
pub type Dev = Either<MmioTransport<Mmio>, PciTransport<Mmio>>;

/// Most devices found (virtio-mmio and virtio-pci together).
pub const MAX_FOUND: usize = 32;

/// Most virtio-blk disks used.
pub const MAX_DISKS: usize = 8;
/// Most request slots per disk (the benchmark's deepest queue).
pub const MAX_SLOTS: usize = 32;
/// How long a single request may take before it counts as lost.
pub const REQUEST_TIMEOUT_MS: u64 = 5000;

/// What a wait was for.
#[derive(Debug, Clone, Copy)]
pub enum Waiting {
    /// A request.
    Request(Request),
    /// Any of this many requests in flight.
    InFlight(u16),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request(r) => write!(f, "{r}"),
            Self::InFlight(n) => write!(f, "completions ({n} requests in flight)"),
        }
    }
}

/// What is wrong with a device the command line announced.
#[derive(Debug, Clone, Copy)]
pub enum Announced {
    /// It lies outside the MMIO hole the guest maps.
    Unreachable(DeviceSpec),
    /// It is not a (modern) virtio-mmio device.
    Probe(DeviceSpec, ProbeError),
    /// A virtio-pci function that cannot be driven.
    Pci(PciProblem),
}

impl fmt::Display for Announced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(d) => write!(
                f,
                "virtio-mmio device at {:#x} (size {:#x}) is outside the MMIO hole 0xc0000000..4G",
                d.base, d.size
            ),
            Self::Probe(d, e) => write!(f, "virtio-mmio device at {:#x}: {e}", d.base),
            Self::Pci(p) => p.fmt(f),
        }
    }
}

/// Why a disk could not be used.
#[derive(Debug, Clone, Copy)]
pub enum DiskError {
    /// No virtio-blk device `wanted`; `found` block devices were found.
    NoDevice {
        /// The index asked for.
        wanted: usize,
        /// Block devices found.
        found: usize,
        /// The first announced device that is not usable, if any.
        problem: Option<Announced>,
    },
    /// An announced device is not usable.
    Announced(Announced),
    /// The driver could not set it up.
    Init(usize, BlkInitError),
    /// RAM ran out for queue or buffer memory.
    OutOfMemory(&'static str),
    /// A request could not be queued.
    Submit(Request, SubmitError),
    /// The device broke its used ring.
    Used(UsedError),
    /// Nothing came back in time.
    Timeout(Waiting),
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice {
                wanted,
                found,
                problem,
            } => {
                if *found == 0 {
                    write!(f, "no virtio-blk device")?;
                } else {
                    write!(f, "no virtio-blk device {wanted} ({found} found)")?;
                }
                match problem {
                    Some(p) => write!(f, "; {p}"),
                    None => Ok(()),
                }
            }
            Self::Announced(a) => a.fmt(f),
            Self::Init(n, e) => write!(f, "setting up blk{n}: {e}"),
            Self::OutOfMemory(what) => write!(f, "out of RAM for {what}"),
            Self::Submit(r, e) => write!(f, "queueing {r}: {e}"),
            Self::Used(e) => write!(f, "{e}"),
            Self::Timeout(w) => write!(f, "timeout waiting for {w}"),
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Its slot.
    pub slot: usize,
    /// The request.
    pub request: Request,
    /// The status byte.
    pub status: u8,
}

/// A virtio-blk device in use.
pub struct Disk {
    index: usize,
    place: Place,
    /// The driver.
    pub blk: Blk<Dev>,
    slots: [Option<Slot>; MAX_SLOTS],
    slot_data: u32,
    /// Request in flight per slot.
    busy: [Option<Request>; MAX_SLOTS],
    /// Slot + 1 that owns each chain head (0: none).
    owner: [u8; queue::MAX_SIZE as usize],
    /// Completions no slot owned.
    strays: u32,
}

/// `blk<n>` in output lines.
pub struct Name(pub usize);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blk{}", self.0)
    }
}

impl Disk {
    /// `blk<n>`.
    pub fn name(&self) -> Name {
        Name(self.index)
    }

    /// Where it is (and so how it interrupts).
    pub fn place(&self) -> Place {
        self.place
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.blk.config.capacity
    }

    /// Completions that no slot owned, so far.
    pub fn strays(&self) -> u32 {
        self.strays
    }

    /// Make sure there are at least `count` slots with `data_len` bytes of data each
    /// (re-allocating all of them if they are smaller; nothing may be in flight then).
    pub fn ensure_slots(
        &mut self,
        frames: &mut Frames,
        count: usize,
        data_len: u32,
    ) -> Result<(), DiskError> {
        let count = count.min(MAX_SLOTS);
        if self.slot_data < data_len {
            assert_eq!(self.in_flight(), 0, "slots re-allocated while in use");
            self.slots = [None; MAX_SLOTS];
            self.slot_data = data_len;
        }
        let data_len = self.slot_data;
        for slot in self.slots[..count].iter_mut().filter(|s| s.is_none()) {
            let meta = frames
                .alloc(blk::slot::META_BYTES, PAGE)
                .ok_or(DiskError::OutOfMemory("request slots"))?;
            let data = frames
                .alloc(u64::from(data_len).max(1), PAGE)
                .ok_or(DiskError::OutOfMemory("request buffers"))?;
            // SAFETY: fresh, identity-mapped RAM from the allocator (never handed out
            // before, never freed), used only through this slot.
            *slot = Some(unsafe { Slot::new(meta, data, data_len) });
        }
        Ok(())
    }

    /// Wait a little for requests a failed scenario left in flight; give up on those that
    /// do not come back: their slots get fresh memory on the next `ensure_slots` (the
    /// device may still write to the old), their late completions count as strays.
    fn settle(&mut self) {
        let deadline = Deadline::after_ms(1000);
        while self.in_flight() > 0 && !deadline.passed() {
            if !matches!(self.poll(), Ok(Some(_)) | Ok(None)) {
                break;
            }
        }
        for i in 0..MAX_SLOTS {
            if self.busy[i].take().is_some() {
                self.slots[i] = None;
                for owner in self.owner.iter_mut().filter(|o| usize::from(**o) == i + 1) {
                    *owner = 0;
                }
            }
        }
    }

    /// Slot `i` (after [`ensure_slots`](Self::ensure_slots)).
    pub fn slot(&self, i: usize) -> Slot {
        self.slots[i].expect("slot used before ensure_slots")
    }

    /// The data buffer of slot `i`, which must be idle.
    pub fn data(&mut self, i: usize) -> &mut [u8] {
        assert!(self.busy[i].is_none(), "data of a busy slot");
        let slot = self.slot(i);
        // SAFETY: the slot is idle (checked), so the device does not touch its buffer, and
        // the returned borrow of `self` keeps anyone else from getting at it meanwhile.
        unsafe { slot.data_mut() }
    }

    /// Is slot `i` idle?
    pub fn idle(&self, i: usize) -> bool {
        self.busy[i].is_none()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u16 {
        self.busy.iter().filter(|b| b.is_some()).count() as u16
    }

    /// Queue `req` in idle slot `i` (published by the next [`kick`](Self::kick)).
    pub fn submit(&mut self, i: usize, req: &Request) -> Result<u16, DiskError> {
        assert!(self.busy[i].is_none(), "submit on a busy slot");
        let slot = self.slot(i);
        // SAFETY: the slot's memory is valid (`ensure_slots`) and idle (checked).
        let head =
            unsafe { self.blk.submit(&slot, req) }.map_err(|e| DiskError::Submit(*req, e))?;
        self.busy[i] = Some(*req);
        self.owner[usize::from(head)] = i as u8 + 1;
        Ok(head)
    }

    /// Mark slot `i` busy with a chain built by hand (`blk-hostile`).
    pub fn claim(&mut self, i: usize, head: u16, req: Request) {
        self.busy[i] = Some(req);
        self.owner[usize::from(head)] = i as u8 + 1;
    }

    /// Publish and notify if needed.
    pub fn kick(&mut self) -> bool {
        self.blk.kick()
    }

    /// Take one completion, if there is one.
    pub fn poll(&mut self) -> Result<Option<Done>, DiskError> {
        loop {
            let Some(used) = self.blk.poll().map_err(DiskError::Used)? else {
                return Ok(None);
            };
            let owner = core::mem::take(&mut self.owner[usize::from(used.head)]);
            let Some(i) = usize::from(owner).checked_sub(1) else {
                self.strays += 1;
                continue;
            };
            let Some(request) = self.busy[i].take() else {
                self.strays += 1;
                continue;
            };
            let status = self.slot(i).status();
            return Ok(Some(Done {
                slot: i,
                request,
                status,
            }));
        }
    }

    /// Wait for the next completion until `deadline`.
    pub fn wait(&mut self, deadline: Deadline) -> Result<Done, DiskError> {
        loop {
            if let Some(done) = self.poll()? {
                return Ok(done);
            }
            if deadline.passed() {
                return Err(DiskError::Timeout(Waiting::InFlight(self.in_flight())));
            }
            core::hint::spin_loop();
        }
    }

    /// Submit `req` in slot `i`, kick, and wait for it (nothing else may be in flight).
    pub fn run(&mut self, i: usize, req: &Request) -> Result<Done, DiskError> {
        self.submit(i, req)?;
        self.kick();
        let deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        loop {
            match self.wait(deadline) {
                Ok(done) if done.slot == i => return Ok(done),
                Ok(_) => continue,
                Err(DiskError::Timeout(_)) => {
                    return Err(DiskError::Timeout(Waiting::Request(*req)))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A device, once probed.
#[derive(Clone, Copy)]
struct Found {
    place: Place,
    device_id: u32,
}

/// Every virtio device found, and the disks set up so far.
pub struct Registry {
    probed: bool,
    ecam: Option<Ecam>,
    found: [Option<Found>; MAX_FOUND],
    problems: [Option<Announced>; MAX_FOUND],
    disks: [Option<Disk>; MAX_DISKS],
    queue_memory: [Option<[QueueMemory; blk::MAX_QUEUES]>; MAX_DISKS],
}

static REGISTRY: SpinLock<Registry> = SpinLock::new(Registry {
    probed: false,
    ecam: None,
    found: [None; MAX_FOUND],
    problems: [const { None }; MAX_FOUND],
    disks: [const { None }; MAX_DISKS],
    queue_memory: [None; MAX_DISKS],
});

/// The registry (boot CPU, one scenario at a time).
pub fn lock() -> SpinGuard<'static, Registry> {
    REGISTRY.lock()
}

/// A transport for the device at `place` (probed: reachable, and only the registries
/// drive it). Virtio-pci functions get memory decoding and bus mastering turned on, and
/// MSI-X pointed at this CPU: configuration changes on [`vector::VIRTIO_CONFIG`], queues
/// on [`vector::VIRTIO`].
pub fn transport(place: Place) -> Result<Dev, Announced> {
    match place {
        Place::Mmio(spec) => {
            // SAFETY: probed: inside the mapped hole, and only the registries drive it.
            let regs = unsafe { Mmio::new(spec.base) };
            MmioTransport::probe(regs)
                .map(Either::Mmio)
                .map_err(|e| Announced::Probe(spec, e))
        }
        Place::Pci(p) => Ok(Either::Pci(pci_transport(&p))),
    }
}

fn pci_transport(p: &PciDevice) -> PciTransport<Mmio> {
    // SAFETY: the scan checked that the function's configuration space and the part of
    // the BAR its capabilities span are inside the mapped hole; only the registries drive
    // the device.
    let (cfg, bar) = unsafe { (Mmio::new(p.cfg), Mmio::new(p.bar)) };
    crate::pci::enable(&cfg);
    let id = crate::pci::header(&cfg).map_or(0, |h| {
        crate::virtio::pci::virtio_type(h.vendor, h.device).unwrap_or(0)
    });
    let msi = MsiTarget::lapic(
        crate::lapic::id() as u8,
        vector::VIRTIO_CONFIG,
        vector::VIRTIO,
    );
    PciTransport::new(bar, cfg, p.layout, id, Some(msi))
}

impl Registry {
    /// Where PCI bus 0's configuration space is (from the ACPI MCFG), before the first
    /// probe; without it only virtio-mmio devices are found.
    pub fn set_ecam(&mut self, ecam: Ecam) {
        self.ecam = Some(ecam);
    }

    /// The ECAM, if the ACPI tables gave one.
    pub fn ecam(&self) -> Option<Ecam> {
        self.ecam
    }

    /// Probe every command-line device and every virtio-pci function (once).
    fn probe(&mut self, devices: &DeviceList) {
        if self.probed {
            return;
        }
        self.probed = true;
        let (mut found, mut problems) = (0, 0);
        let mut note = |r: Result<Found, Announced>, this: &mut Self| match r {
            Ok(f) if found < MAX_FOUND => {
                this.found[found] = Some(f);
                found += 1;
            }
            Ok(_) => {}
            Err(e) if problems < MAX_FOUND => {
                this.problems[problems] = Some(e);
                problems += 1;
            }
            Err(_) => {}
        };
        for spec in devices.iter() {
            let result = if mmio::reachable(spec.base, spec.size.max(mmio_min())) {
                transport(Place::Mmio(spec)).map(|t| Found {
                    place: Place::Mmio(spec),
                    device_id: t.device_id(),
                })
            } else {
                Err(Announced::Unreachable(spec))
            };
            note(result, self);
        }
        let Some(ecam) = self.ecam else {
            return;
        };
        let Ok(bus) = pcibus::scan(&ecam) else {
            return;
        };
        for f in bus.functions() {
            let Some(device_id) = f.virtio_type() else {
                continue;
            };
            let result = f
                .virtio()
                .map(|p| Found {
                    place: Place::Pci(p),
                    device_id,
                })
                .map_err(Announced::Pci);
            note(result, self);
        }
    }

    /// The devices that are not usable, after probing.
    pub fn problems(&mut self, devices: &DeviceList) -> impl Iterator<Item = &Announced> {
        self.probe(devices);
        self.problems.iter().flatten()
    }

    /// Devices found, with their type: (place, device id).
    pub fn found(&mut self, devices: &DeviceList) -> impl Iterator<Item = (Place, u32)> + '_ {
        self.probe(devices);
        self.found.iter().flatten().map(|f| (f.place, f.device_id))
    }

    /// Number of virtio-blk devices.
    pub fn blk_count(&mut self, devices: &DeviceList) -> usize {
        self.found(devices)
            .filter(|&(_, id)| id == device_id::BLOCK)
            .count()
    }

    /// The disk the command line selects (`bulkhead.blk.disk`), opened as [`open`](Self::open)
    /// does.
    pub fn open_configured(
        &mut self,
        machine: &mut crate::machine::Machine,
    ) -> Result<&mut Disk, DiskError> {
        self.open(
            &machine.config.devices,
            &mut machine.frames,
            machine.config.blk.disk,
        )
    }

    /// Virtio-blk device `n`, set up on first use.
    pub fn open(
        &mut self,
        devices: &DeviceList,
        frames: &mut Frames,
        n: usize,
    ) -> Result<&mut Disk, DiskError> {
        self.probe(devices);
        let found = self.blk_count(devices);
        let place = self
            .found
            .iter()
            .flatten()
            .filter(|f| f.device_id == device_id::BLOCK)
            .nth(n)
            .map(|f| f.place)
            .ok_or(DiskError::NoDevice {
                wanted: n,
                found,
                problem: self.problems.iter().flatten().next().copied(),
            })?;
        if n >= MAX_DISKS {
            return Err(DiskError::NoDevice {
                wanted: n,
                found: MAX_DISKS,
                problem: None,
            });
        }
        if self.disks[n].is_none() {
            let mem = match self.queue_memory[n] {
                Some(mem) => mem,
                None => {
                    let mut areas = [None; blk::MAX_QUEUES];
                    for area in &mut areas {
                        *area =
                            Some(alloc_queue(frames).ok_or(DiskError::OutOfMemory("virtqueues"))?);
                    }
                    let mem = areas.map(|a| a.expect("allocated just above"));
                    self.queue_memory[n] = Some(mem);
                    mem
                }
            };
            let transport = transport(place).map_err(DiskError::Announced)?;
            // SAFETY: `mem` is this disk's own queue memory (one per queue), each sized for
            // MAX_SIZE, used by no one else, kept forever.
            let blk = unsafe { Blk::init(transport, mem[0], &mem[1..], blk::WANTED) }
                .map_err(|e| DiskError::Init(n, e))?;
            self.disks[n] = Some(Disk {
                index: n,
                place,
                blk,
                slots: [None; MAX_SLOTS],
                slot_data: 0,
                busy: [None; MAX_SLOTS],
                owner: [0; queue::MAX_SIZE as usize],
                strays: 0,
            });
        }
        let disk = self.disks[n].as_mut().expect("set up just above");
        disk.settle();
        Ok(disk)
    }
}

fn mmio_min() -> u64 {
    crate::virtio::mmio::MIN_SIZE
}

/// Queue memory for MAX_SIZE entries: one page per area.
fn alloc_queue(frames: &mut Frames) -> Option<QueueMemory> {
    const _: () = assert!(queue::desc_bytes(queue::MAX_SIZE) <= PAGE);
    const _: () = assert!(queue::used_bytes(queue::MAX_SIZE) <= PAGE);
    Some(QueueMemory {
        desc: frames.alloc(PAGE, PAGE)?,
        avail: frames.alloc(PAGE, PAGE)?,
        used: frames.alloc(PAGE, PAGE)?,
    })
}
