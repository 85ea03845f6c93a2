//! The image a queue serves: a raw file or block device ([`Disk`], positional vectored
//! I/O straight between the file and guest memory, `O_DIRECT` when asked), or a qcow2
//! chain ([`Qcow2Image`], through imago, straight into guest memory too). The executor
//! asks this enum, and only the raw arm knows about iovecs and `O_DIRECT`.

use std::io;

use crate::image::qcow2::Qcow2Image;

use super::disk::{DirectAlignment, Disk};
use super::virtio::SECTOR_SIZE;

/// An image being served.
#[derive(Debug)]
pub enum DiskImage {
    /// A raw file or block device.
    Raw(Disk),
    /// A qcow2 file and its backing chain.
    Qcow2(Qcow2Image),
}

impl From<Disk> for DiskImage {
    fn from(disk: Disk) -> Self {
        DiskImage::Raw(disk)
    }
}

impl From<Qcow2Image> for DiskImage {
    fn from(image: Qcow2Image) -> Self {
        DiskImage::Qcow2(image)
    }
}

impl DiskImage {
    /// What messages call the image (its path, or `fd N`).
    pub fn name(&self) -> &str {
        match self {
            DiskImage::Raw(d) => d.name(),
            DiskImage::Qcow2(q) => q.name(),
        }
    }

    /// The size the guest sees, in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        match self {
            DiskImage::Raw(d) => d.size(),
            DiskImage::Qcow2(q) => q.size(),
        }
    }

    /// The size the guest sees, in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size() / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        match self {
            DiskImage::Raw(d) => d.read_only(),
            DiskImage::Qcow2(q) => q.read_only(),
        }
    }

    /// The format's name, for messages.
    pub fn format(&self) -> &'static str {
        match self {
            DiskImage::Raw(_) => "raw",
            DiskImage::Qcow2(_) => "qcow2",
        }
    }

    /// The `O_DIRECT` alignment (raw images opened with `--direct` only).
    pub fn direct_alignment(&self) -> Option<DirectAlignment> {
        match self {
            DiskImage::Raw(d) => d.direct_alignment(),
            DiskImage::Qcow2(_) => None,
        }
    }

    /// FLUSH: written data durable (for qcow2, data before metadata).
    pub fn flush(&self) -> io::Result<()> {
        match self {
            DiskImage::Raw(d) => d.flush(),
            DiskImage::Qcow2(q) => q.flush(),
        }
    }

    /// DISCARD: the range reads as zeros afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            DiskImage::Raw(d) => d.discard(offset, len),
            DiskImage::Qcow2(q) => q.discard(offset, len),
        }
    }

    /// WRITE_ZEROES, deallocating where `unmap` allows.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        match self {
            DiskImage::Raw(d) => d.write_zeroes(offset, len, unmap),
            DiskImage::Qcow2(q) => q.write_zeroes(offset, len, unmap),
        }
    }
}
