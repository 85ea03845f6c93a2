//! Carrying out a parsed request against the disk: the status to report and how many
//! bytes were written into the guest's buffers.
//!
//! Everything the guest claims is checked here before the disk is touched: the data
//! direction for the request type, lengths (whole sectors), the sector range (with
//! overflow), DISCARD/WRITE_ZEROES segment count, flags and sizes, and the read-only flag.
//! A request that fails a check gets `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for
//! what the device doesn't do) and leaves the image untouched.

use std::io;
use std::sync::Arc;

use super::image::DiskImage;
use super::iovec::{BounceBuffer, IoVecs};
use super::request::{copy_from_guest, copy_to_guest, Request, Segment};
use super::virtio::{
    RangeSegment, DISCARD_SEGMENT_SIZE, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS,
    MAX_WRITE_ZEROES_SECTORS, SECTOR_SHIFT, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use super::GuestRam;
use vm_memory::{GuestMemoryBackend, VolatileSlice};

/// Why a request failed (for the log; the guest only sees the status).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A length that is not a whole number of sectors.
    #[error("{what} length {len} is not a multiple of 512")]
    NotWholeSectors {
        /// Which length.
        what: &'static str,
        /// The length.
        len: u64,
    },
    /// Sectors past the end of the disk (or an offset that overflows).
    #[error("sectors {sector}+{count} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// Data in the direction the request type doesn't move data.
    #[error("{request} request with {len} bytes of device-{direction} data")]
    WrongDirection {
        /// Request type name.
        request: &'static str,
        /// Which direction was wrongly used.
        direction: &'static str,
        /// How much.
        len: u64,
    },
    /// A write-type request on a read-only disk.
    #[error("{0} request on a read-only disk")]
    ReadOnly(&'static str),
    /// DISCARD or WRITE_ZEROES on a read-only disk, which does not offer them.
    #[error("{0} request on a read-only disk, which does not offer it")]
    NotOffered(&'static str),
    /// GET_ID with a buffer shorter than 20 bytes.
    #[error("GET_ID buffer of {0} bytes, fewer than 20")]
    IdBufferTooSmall(u64),
    /// DISCARD/WRITE_ZEROES payload that is not a whole number of segments.
    #[error("{request} payload of {len} bytes is not a whole number of 16-byte segments")]
    BadSegmentPayload {
        /// Request type name.
        request: &'static str,
        /// Payload length.
        len: u64,
    },
    /// More DISCARD/WRITE_ZEROES segments than advertised.
    #[error("{request} with {count} segments, more than {max}", max = MAX_DISCARD_SEGMENTS)]
    TooManySegments {
        /// Request type name.
        request: &'static str,
        /// How many.
        count: u64,
    },
    /// Flags the request type does not allow.
    #[error("{request} segment with flags {flags:#x}")]
    BadFlags {
        /// Request type name.
        request: &'static str,
        /// The flags.
        flags: u32,
    },
    /// A segment larger than advertised.
    #[error("{request} segment of {sectors} sectors, more than {max}")]
    SegmentTooLarge {
        /// Request type name.
        request: &'static str,
        /// Its size.
        sectors: u32,
        /// The advertised maximum.
        max: u32,
    },
    /// An unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Guest memory could not be accessed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The image refused the I/O.
    #[error("{op} at byte {offset} of {disk}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        offset: u64,
        /// The image.
        disk: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl RequestError {
    /// The status the guest gets for this failure.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_)
            | RequestError::NotOffered(_)
            | RequestError::TooManySegments { .. }
            | RequestError::BadFlags { .. } => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    /// Whether this is the host's fault (an I/O error), worth a warning, rather than the
    /// guest's (logged at debug level: a guest must not be able to flood the host log).
    pub fn is_host_error(&self) -> bool {
        matches!(self, RequestError::Io { .. })
    }
}

/// Executes requests against one disk; one per queue worker (it owns the scratch space).
#[derive(Debug)]
pub struct Executor {
    disk: Arc<DiskImage>,
    serial: [u8; ID_BYTES],
    iovecs: IoVecs,
    bounce: Option<BounceBuffer>,
}

impl Executor {
    /// Serves `disk` from the next request on (a disk swapped in by the launcher).
    pub fn set_disk(&mut self, disk: Arc<DiskImage>) {
        self.disk = disk;
    }

    /// An executor for `disk`, answering GET_ID with `serial` (zero-padded).
    pub fn new(disk: Arc<DiskImage>, serial: [u8; ID_BYTES]) -> Self {
        Executor {
            disk,
            serial,
            iovecs: IoVecs::default(),
            bounce: None,
        }
    }

    /// Executes one request; returns how many bytes it wrote into the guest's data buffers
    /// (not counting the status byte).
    pub fn execute(&mut self, mem: &GuestRam, req: &Request<'_>) -> Result<u32, RequestError> {
        let h = req.header;
        match h.request_type {
            VIRTIO_BLK_T_IN => {
                no_data(req.readable_len, "IN", "readable")?;
                let offset = self.range(h.sector, req.writable_len, "IN")?;
                self.read(mem, req.writable, req.writable_len, offset)?;
                // A chain is at most 4 GiB long (virtio-queue enforces it), and the status
                // byte is part of it, so the data length fits in a u32.
                Ok(u32::try_from(req.writable_len).unwrap_or(u32::MAX))
            }
            VIRTIO_BLK_T_OUT => {
                no_data(req.writable_len, "OUT", "writable")?;
                self.writable("OUT")?;
                let offset = self.range(h.sector, req.readable_len, "OUT")?;
                self.write(mem, req.readable, req.readable_len, offset)?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.disk
                    .flush()
                    .map_err(|source| self.io_error("flush", 0, source))?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                if req.writable_len < ID_BYTES as u64 {
                    return Err(RequestError::IdBufferTooSmall(req.writable_len));
                }
                copy_to_guest(mem, req.writable, 0, &self.serial)?;
                Ok(ID_BYTES as u32)
            }
            VIRTIO_BLK_T_DISCARD => {
                self.offered("DISCARD")?;
                let seg = self.range_segment(mem, req, "DISCARD", MAX_DISCARD_SECTORS)?;
                if seg.flags != 0 {
                    // The unmap flag is for WRITE_ZEROES; no other flag exists.
                    return Err(RequestError::BadFlags {
                        request: "DISCARD",
                        flags: seg.flags,
                    });
                }
                let (offset, len) = self.sector_range(seg, "DISCARD")?;
                self.disk
                    .discard(offset, len)
                    .map_err(|source| self.io_error("discard", offset, source))?;
                Ok(0)
            }
            VIRTIO_BLK_T_WRITE_ZEROES => {
                self.offered("WRITE_ZEROES")?;
                let seg = self.range_segment(mem, req, "WRITE_ZEROES", MAX_WRITE_ZEROES_SECTORS)?;
                if seg.flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                    return Err(RequestError::BadFlags {
                        request: "WRITE_ZEROES",
                        flags: seg.flags,
                    });
                }
                let (offset, len) = self.sector_range(seg, "WRITE_ZEROES")?;
                let unmap = seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                self.disk
                    .write_zeroes(offset, len, unmap)
                    .map_err(|source| self.io_error("write zeroes", offset, source))?;
                Ok(0)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// DISCARD and WRITE_ZEROES are not offered on a read-only disk (`backend::features`):
    /// a driver that sends one anyway gets UNSUPP, the status of a request type the device
    /// does not support (virtio 1.2, 5.2.6), and the image is not touched.
    fn offered(&self, request: &'static str) -> Result<(), RequestError> {
        if self.disk.read_only() {
            Err(RequestError::NotOffered(request))
        } else {
            Ok(())
        }
    }

    fn writable(&self, request: &'static str) -> Result<(), RequestError> {
        if self.disk.read_only() {
            Err(RequestError::ReadOnly(request))
        } else {
            Ok(())
        }
    }

    /// Checks `len` bytes from `sector` are whole sectors on the disk; returns the offset.
    fn range(&self, sector: u64, len: u64, what: &'static str) -> Result<u64, RequestError> {
        if len % SECTOR_SIZE != 0 {
            return Err(RequestError::NotWholeSectors { what, len });
        }
        let count = len >> SECTOR_SHIFT;
        let capacity = self.disk.capacity_sectors();
        match sector.checked_add(count) {
            Some(end) if end <= capacity => Ok(sector << SECTOR_SHIFT),
            _ => Err(RequestError::OutOfRange {
                sector,
                count,
                capacity,
            }),
        }
    }

    /// Reads and checks the one DISCARD/WRITE_ZEROES segment.
    fn range_segment(
        &self,
        mem: &GuestRam,
        req: &Request<'_>,
        request: &'static str,
        max: u32,
    ) -> Result<RangeSegment, RequestError> {
        no_data(req.writable_len, request, "writable")?;
        self.writable(request)?;
        let len = req.readable_len;
        if len == 0 || len % DISCARD_SEGMENT_SIZE as u64 != 0 {
            return Err(RequestError::BadSegmentPayload { request, len });
        }
        let count = len / DISCARD_SEGMENT_SIZE as u64;
        if count > u64::from(MAX_DISCARD_SEGMENTS) {
            return Err(RequestError::TooManySegments { request, count });
        }
        let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
        copy_from_guest(mem, req.readable, 0, &mut raw)?;
        let seg = RangeSegment::from_bytes(&raw);
        if seg.num_sectors > max {
            return Err(RequestError::SegmentTooLarge {
                request,
                sectors: seg.num_sectors,
                max,
            });
        }
        Ok(seg)
    }

    fn sector_range(
        &self,
        seg: RangeSegment,
        request: &'static str,
    ) -> Result<(u64, u64), RequestError> {
        let len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
        let offset = self.range(seg.sector, len, request)?;
        Ok((offset, len))
    }

    /// Disk to guest.
    fn read(
        &mut self,
        mem: &GuestRam,
        segs: &[Segment],
        len: u64,
        offset: u64,
    ) -> Result<(), RequestError> {
        if len == 0 {
            return Ok(());
        }
        let disk = match &*self.disk {
            DiskImage::Raw(disk) => disk,
            DiskImage::Qcow2(image) => {
                let slices = guest_slices(mem, segs)?;
                return image
                    .read(&slices, offset)
                    .map_err(|source| self.io_error("read", offset, source));
            }
        };
        if let Err(e) = self.iovecs.fill(mem, segs) {
            self.iovecs.clear();
            return Err(e.into());
        }
        let result = if self.needs_bounce() {
            self.iovecs.clear();
            self.bounce_read(mem, segs, len, offset)
        } else {
            // SAFETY: the iovecs describe guest memory that `mem` keeps mapped for this call;
            // it is shared with the guest, not aliased by any Rust reference, and valid for
            // writes (guest RAM is mapped read-write).
            unsafe { disk.read_exact_vectored_at(self.iovecs.as_mut_slice(), offset) }
        };
        self.iovecs.clear();
        result.map_err(|source| self.io_error("read", offset, source))
    }

    /// Guest to disk.
    fn write(
        &mut self,
        mem: &GuestRam,
        segs: &[Segment],
        len: u64,
        offset: u64,
    ) -> Result<(), RequestError> {
        if len == 0 {
            return Ok(());
        }
        let disk = match &*self.disk {
            DiskImage::Raw(disk) => disk,
            DiskImage::Qcow2(image) => {
                let slices = guest_slices(mem, segs)?;
                return image
                    .write(&slices, offset)
                    .map_err(|source| self.io_error("write", offset, source));
            }
        };
        if let Err(e) = self.iovecs.fill(mem, segs) {
            self.iovecs.clear();
            return Err(e.into());
        }
        let result = if self.needs_bounce() {
            self.iovecs.clear();
            self.bounce_write(mem, segs, len, offset)
        } else {
            // SAFETY: the iovecs describe guest memory that `mem` keeps mapped for this
            // call; pwritev only reads it.
            unsafe { disk.write_all_vectored_at(self.iovecs.as_mut_slice(), offset) }
        };
        self.iovecs.clear();
        result.map_err(|source| self.io_error("write", offset, source))
    }

    /// With `O_DIRECT`, whether the guest's buffers can't be used as they are.
    fn needs_bounce(&self) -> bool {
        match self.disk.direct_alignment() {
            Some(a) => !self.iovecs.aligned(a.memory, a.offset),
            None => false,
        }
    }

    fn bounce_buffer(&mut self) -> io::Result<&mut BounceBuffer> {
        if self.bounce.is_none() {
            self.bounce = Some(BounceBuffer::new().ok_or(io::ErrorKind::OutOfMemory)?);
        }
        // Just filled if it was empty.
        self.bounce
            .as_mut()
            .ok_or_else(|| io::ErrorKind::OutOfMemory.into())
    }

    fn bounce_read(
        &mut self,
        mem: &GuestRam,
        segs: &[Segment],
        len: u64,
        offset: u64,
    ) -> io::Result<()> {
        let image = Arc::clone(&self.disk);
        let DiskImage::Raw(disk) = &*image else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let buf = self.bounce_buffer()?.as_mut_slice();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            disk.read_exact_at(&mut buf[..n], offset + done)?;
            copy_to_guest(mem, segs, done, &buf[..n]).map_err(io::Error::other)?;
            done += n as u64;
        }
        Ok(())
    }

    fn bounce_write(
        &mut self,
        mem: &GuestRam,
        segs: &[Segment],
        len: u64,
        offset: u64,
    ) -> io::Result<()> {
        let image = Arc::clone(&self.disk);
        let DiskImage::Raw(disk) = &*image else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let buf = self.bounce_buffer()?.as_mut_slice();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            copy_from_guest(mem, segs, done, &mut buf[..n]).map_err(io::Error::other)?;
            disk.write_all_at(&buf[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn io_error(&self, op: &'static str, offset: u64, source: io::Error) -> RequestError {
        RequestError::Io {
            op,
            offset,
            disk: self.disk.name().to_string(),
            source,
        }
    }
}

/// The guest memory of `segs` as volatile slices (a segment spanning regions is several).
fn guest_slices<'m>(
    mem: &'m GuestRam,
    segs: &[Segment],
) -> Result<Vec<VolatileSlice<'m, ()>>, RequestError> {
    let mut slices = Vec::with_capacity(segs.len());
    for seg in segs {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            slices.push(slice?);
        }
    }
    Ok(slices)
}

fn no_data(len: u64, request: &'static str, direction: &'static str) -> Result<(), RequestError> {
    if len == 0 {
        Ok(())
    } else {
        Err(RequestError::WrongDirection {
            request,
            direction,
            len,
        })
    }
}
