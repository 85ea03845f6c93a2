//! Guest memory: one memfd, mapped shared, so device processes can map the same pages.
//!
//! The memfd holds all guest RAM back to back; each RAM range of [`crate::layout`] maps a
//! slice of it at its file offset. Device back-ends receive the fd and the same offsets
//! (vhost-user `SET_MEM_TABLE`).

use std::fs::File;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// The guest memory of a VM and the memfd behind it.
pub struct GuestMemory {
    /// The mapped regions.
    pub mem: GuestMemoryMmap,
    /// The memfd holding every region (for sharing with device processes).
    pub file: File,
    /// Total RAM in bytes.
    pub size: u64,
}

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not page aligned.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 4 KiB")]
    BadSize(u64),
    /// memfd_create failed.
    #[error("creating the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    /// Setting the memfd's size failed.
    #[error("sizing the guest memory memfd to {size} bytes")]
    Truncate {
        /// Requested size.
        size: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the regions failed.
    #[error("mapping guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

impl GuestMemory {
    /// Creates `size` bytes of guest RAM laid out around the MMIO gap.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % 4096 != 0 {
            return Err(MemoryError::BadSize(size));
        }
        let file = memfd("bulkhead-guest-ram").map_err(MemoryError::Memfd)?;
        file.set_len(size)
            .map_err(|source| MemoryError::Truncate { size, source })?;
        let mut offset = 0u64;
        let mut ranges = Vec::new();
        for (start, len) in layout::ram_ranges(size) {
            let fo = FileOffset::new(file.try_clone().map_err(MemoryError::Memfd)?, offset);
            ranges.push((GuestAddress(start), len as usize, Some(fo)));
            offset += len;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        Ok(GuestMemory { mem, file, size })
    }
}

/// Creates an empty close-on-exec memfd.
pub(crate) fn memfd(name: &str) -> std::io::Result<File> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    Ok(File::from(memfd_create(name, MFdFlags::MFD_CLOEXEC)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn rejects_unaligned_size() {
        assert!(matches!(
            GuestMemory::new(1000),
            Err(MemoryError::BadSize(1000))
        ));
        assert!(matches!(GuestMemory::new(0), Err(MemoryError::BadSize(0))));
    }

    #[test]
    fn writes_land_in_the_memfd() {
        use std::os::unix::fs::FileExt;
        let gm = GuestMemory::new(16 << 20).unwrap();
        gm.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        gm.file.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(gm.mem.num_regions(), 1);
    }
}
