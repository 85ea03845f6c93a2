//! The virtio-blk scenarios, on the disk `bulkhead.blk.disk` names (default: the first
//! virtio-blk device), and what they share: the error type, identification, and a
//! pipeline that keeps several requests in flight.

pub mod bench;
pub mod discard;
pub mod flush;
pub mod hostile;
pub mod identify;
pub mod irq;
pub mod mq;
pub mod probe;
pub mod readonly;
pub mod rw;
pub mod soak;
pub mod swap;

use crate::cmdline::{SectorRange, Serial};
use crate::disks::{Disk, DiskError, REQUEST_TIMEOUT_MS};
use crate::escape::Escaped;
use crate::ioapic::NoSuchPin;
use crate::time::Deadline;
use crate::virtio::blk::{status, Request, ID_BYTES, SECTOR};
use crate::virtio::Transport;
use core::fmt;

/// Why a block scenario failed.
#[derive(Debug)]
pub enum Error {
    /// The disk could not be used, or a request went wrong on the way.
    Disk(DiskError),
    /// A request came back with a status other than OK.
    Status {
        /// The request.
        request: Request,
        /// Its status.
        status: u8,
    },
    /// Data read back differs from what was written.
    Mismatch {
        /// Disk byte offset.
        offset: u64,
        /// What should be there.
        expected: u8,
        /// What was read.
        found: u8,
    },
    /// The sector range does not fit on the disk.
    OutOfRange {
        /// Which option.
        key: &'static str,
        /// The range.
        range: SectorRange,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// Capacity 0.
    Empty,
    /// `bulkhead.blk.capacity` disagrees.
    Capacity {
        /// Expected.
        expected: u64,
        /// Seen.
        found: u64,
    },
    /// `bulkhead.blk.serial` disagrees.
    Serial {
        /// Expected.
        expected: Serial,
        /// Seen.
        found: [u8; ID_BYTES as usize],
    },
    /// `bulkhead.blk.ro` disagrees.
    ReadOnly {
        /// Expected.
        expected: bool,
    },
    /// The device does not offer a feature the scenario needs.
    NotOffered(&'static str),
    /// A write to a read-only disk did not fail with IOERR.
    WriteNotRefused(u8),
    /// The IOAPIC has no such pin.
    Pin(NoSuchPin),
    /// `blk-irq`: no interrupt in time.
    NoInterrupt {
        /// The IOAPIC line or MSI-X vector.
        line: irq::Source,
        /// Whether the request completed anyway.
        completed: bool,
    },
    /// `blk-irq`: InterruptStatus without the used-buffer bit after an interrupt.
    InterruptStatus(u32),
    /// `blk-irq` on virtio-pci: `queue_msix_vector` read back 0xffff (or MSI-X is missing).
    NoMsixVector,
    /// `blk-mq`: the device offers fewer than two queues, or not all of them are set up.
    Queues {
        /// Queues the device offers (`num_queues`).
        offered: u16,
        /// Queues set up.
        queues: u16,
    },
    /// `blk-hostile`: a malformed request did not get its exact answer.
    HostileAnswer {
        /// The malformed request.
        case: &'static str,
        /// The status it must complete with.
        expected: u8,
        /// What it got (a status name, `none` or `pending`).
        found: &'static str,
    },
    /// `blk-hostile`: after the malformed requests the device asks for a reset, has
    /// failed, or returned chains nobody waited for.
    HostileDevice {
        /// The device status register.
        device_status: u32,
        /// Completions that matched no request in flight.
        late: u32,
    },
    /// `blk-hostile`: the device stopped serving after a malformed request.
    HostileWedged {
        /// The malformed request.
        case: &'static str,
        /// What went wrong with the good request after it.
        error: DiskError,
    },
    /// `blk-hostile`: the good read after a malformed request did not return the data.
    HostileBadRead(&'static str, u8),
    /// `blk-swap`: ConfigGeneration did not change within this many ms.
    NoConfigChange(u64),
    /// `blk-swap`: the generation changed but InterruptStatus (this value) does not show
    /// a configuration change.
    NoConfigInterrupt(u32),
    /// `blk-swap`: the configuration could not be read again.
    Config(crate::virtio::transport::InitError),
}

impl From<DiskError> for Error {
    fn from(e: DiskError) -> Self {
        Self::Disk(e)
    }
}

impl From<NoSuchPin> for Error {
    fn from(e: NoSuchPin) -> Self {
        Self::Pin(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk(e) => e.fmt(f),
            Self::Status { request, status: s } => {
                write!(f, "{request} completed with status {s} ({})", status::name(*s))
            }
            Self::Mismatch {
                offset,
                expected,
                found,
            } => write!(
                f,
                "byte {offset} (sector {}) reads {found:#04x}, expected {expected:#04x}",
                offset / SECTOR
            ),
            Self::OutOfRange {
                key,
                range,
                capacity,
            } => write!(
                f,
                "{key} sectors {}..{} do not fit a disk of {capacity} sectors",
                range.first,
                range.first.saturating_add(range.count)
            ),
            Self::Empty => write!(f, "capacity is 0"),
            Self::NoConfigChange(ms) => {
                write!(f, "timeout waiting for a configuration change ({ms} ms)")
            }
            Self::Config(e) => write!(f, "reading the configuration again: {e}"),
            Self::NoConfigInterrupt(isr) => write!(
                f,
                "InterruptStatus reads {isr:#x} after a configuration change: bit 1 must be set"
            ),
            Self::Capacity { expected, found } => {
                write!(f, "capacity is {found} sectors, expected {expected}")
            }
            Self::Serial { expected, found } => write!(
                f,
                "serial is \"{}\", expected \"{}\"",
                Escaped(id_str(found)),
                Escaped(expected.as_bytes())
            ),
            Self::ReadOnly { expected } => write!(
                f,
                "disk is {}, expected {}",
                if *expected { "writable" } else { "read-only" },
                if *expected { "read-only" } else { "writable" }
            ),
            Self::NotOffered(what) => write!(f, "device does not offer {what}"),
            Self::WriteNotRefused(s) => write!(
                f,
                "write to a read-only disk completed with status {s} ({}), expected 1 (IOERR)",
                status::name(*s)
            ),
            Self::Pin(e) => e.fmt(f),
            Self::NoInterrupt { line, completed } => write!(
                f,
                "timeout waiting for an interrupt on {line} (request {})",
                if *completed { "completed" } else { "not completed either" }
            ),
            Self::InterruptStatus(s) => write!(
                f,
                "InterruptStatus reads {s:#x} after a used-buffer interrupt: bit 0 must be set (Linux ignores the interrupt otherwise)"
            ),
            Self::NoMsixVector => write!(
                f,
                "the device refused an MSI-X vector for queue 0 (queue_msix_vector reads 0xffff) or has no MSI-X"
            ),
            Self::Queues { offered, queues } => write!(
                f,
                "the device offers {offered} queues, {queues} set up (blk-mq needs 2 to {} and all of them)",
                crate::virtio::blk::MAX_QUEUES
            ),
            Self::HostileAnswer {
                case,
                expected,
                found,
            } => write!(
                f,
                "malformed request ({case}) answered {found}, expected {}",
                status::name(*expected)
            ),
            Self::HostileDevice {
                device_status,
                late,
            } => write!(
                f,
                "after the malformed requests: device status {device_status:#x} (expected 0xf: no DEVICE_NEEDS_RESET, no FAILED), {late} late completions (expected 0)"
            ),
            Self::HostileWedged { case, error } => {
                write!(f, "after the malformed request ({case}): {error}")
            }
            Self::HostileBadRead(case, s) => write!(
                f,
                "after the malformed request ({case}): good read completed with status {s} ({})",
                status::name(*s)
            ),
        }
    }
}

/// The serial as GET_ID returned it, up to the first NUL.
pub fn id_str(id: &[u8; ID_BYTES as usize]) -> &[u8] {
    let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    &id[..len]
}

/// Check that `range` is on the disk.
pub fn check_range(disk: &Disk, key: &'static str, range: SectorRange) -> Result<(), Error> {
    match range.end() {
        Some(end) if end <= disk.capacity() => Ok(()),
        _ => Err(Error::OutOfRange {
            key,
            range,
            capacity: disk.capacity(),
        }),
    }
}

/// Run `req` in slot 0 and require status OK.
pub fn run_ok(disk: &mut Disk, req: &Request) -> Result<(), Error> {
    let done = disk.run(0, req)?;
    if done.status != status::OK {
        return Err(Error::Status {
            request: *req,
            status: done.status,
        });
    }
    Ok(())
}

/// Reads (or writes, with `write`) over `range`, `chunk` sectors a request at most.
pub fn chunks(range: SectorRange, chunk: u32, write: bool) -> impl Iterator<Item = Request> {
    let end = range.first + range.count;
    (range.first..end).step_by(chunk as usize).map(move |s| {
        let n = (end - s).min(u64::from(chunk)) as u32;
        if write {
            Request::write(s, n)
        } else {
            Request::read(s, n)
        }
    })
}

/// Run `requests` with up to `depth` in flight (slots `0..depth`, which must exist):
/// `before` fills a request's data before it is queued, `after` looks at it once it came
/// back OK. One kick per batch of submissions.
pub fn pipeline(
    disk: &mut Disk,
    requests: impl IntoIterator<Item = Request>,
    depth: usize,
    mut before: impl FnMut(&mut [u8], &Request),
    mut after: impl FnMut(&[u8], &Request) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut requests = requests.into_iter();
    let mut more = true;
    loop {
        let mut added = false;
        for i in 0..depth {
            if !more || !disk.idle(i) {
                continue;
            }
            let Some(req) = requests.next() else {
                more = false;
                break;
            };
            before(&mut disk.data(i)[..req.data_bytes() as usize], &req);
            disk.submit(i, &req)?;
            added = true;
        }
        if added {
            disk.kick();
        }
        if disk.in_flight() == 0 {
            return Ok(());
        }
        let done = disk.wait(Deadline::after_ms(REQUEST_TIMEOUT_MS))?;
        if done.status != status::OK {
            return Err(Error::Status {
                request: done.request,
                status: done.status,
            });
        }
        let bytes = done.request.data_bytes() as usize;
        after(&disk.data(done.slot)[..bytes], &done.request)?;
    }
}

/// What GET_ID and the configuration say about a disk; prints the identify line.
pub fn identify(disk: &mut Disk) -> Result<[u8; ID_BYTES as usize], Error> {
    run_ok(disk, &Request::get_id())?;
    let id = disk.slot(0).id();
    let t = disk.blk.transport();
    let c = disk.blk.config;
    crate::say!(
        "{} capacity={} serial=\"{}\" ro={} blk_size={} seg_max={} queues={} features={:#x} accepted={:#x} queue_size={}",
        disk.name(),
        c.capacity,
        Escaped(id_str(&id)),
        u8::from(disk.blk.read_only()),
        c.blk_size,
        c.seg_max,
        c.num_queues,
        t.offered(),
        t.accepted(),
        disk.blk.queue.size()
    );
    Ok(id)
}
