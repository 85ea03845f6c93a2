//! The disk image: a raw regular file or a block device, opened by path or handed over as
//! an inherited descriptor, with positional vectored I/O, `fdatasync`, and `fallocate` for
//! DISCARD and WRITE_ZEROES.
//!
//! All I/O is positional (`preadv`/`pwritev`), so queues on different threads share one
//! descriptor without a file offset to fight over.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{fcntl, FallocateFlags, FcntlArg, OFlag};

use super::virtio::SECTOR_SIZE;
use crate::sys;

// BLKGETSIZE64: the size of a block device in bytes (<linux/fs.h>: _IOR(0x12, 114, size_t)).
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
// BLKSSZGET: a block device's logical sector size (<linux/fs.h>: _IO(0x12, 104), an int).
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

/// Most iovecs one `preadv`/`pwritev` call takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// How to open the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// Refuse every write; open read-only.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Logical block size the guest is told about (512 or 4096).
    pub logical_block_size: u32,
}

/// Alignment `O_DIRECT` I/O on this image needs, from `statx(STATX_DIOALIGN)` or, for
/// block devices on kernels without it, `BLKSSZGET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectAlignment {
    /// Buffer addresses and lengths must be multiples of this.
    pub memory: usize,
    /// File offsets and lengths must be multiples of this.
    pub offset: u64,
}

/// Why the image can't be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `open(2)` failed.
    #[error("opening disk image {name}: {source}")]
    Open {
        /// The path.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `fstat`, `ioctl` or `fcntl` on the image failed.
    #[error("inspecting disk image {name}: {source}")]
    Inspect {
        /// The path or `fd N`.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("disk image {name} is neither a regular file nor a block device")]
    NotADisk {
        /// The path or `fd N`.
        name: String,
    },
    /// Zero bytes long.
    #[error("disk image {name} is empty (0 bytes)")]
    Empty {
        /// The path or `fd N`.
        name: String,
    },
    /// Not a whole number of 512-byte sectors (or of logical blocks).
    #[error(
        "disk image {name} is {size} bytes, not a multiple of {multiple} \
         (the image must be a whole number of {multiple}-byte blocks)"
    )]
    Misaligned {
        /// The path or `fd N`.
        name: String,
        /// Its size.
        size: u64,
        /// What it must be a multiple of.
        multiple: u64,
    },
    /// A read-write disk on a descriptor opened read-only.
    #[error("disk image {name} was opened read-only; pass --read-only to serve it read-only")]
    FdReadOnly {
        /// `fd N`.
        name: String,
    },
    /// `--direct` asked for, but the alignment can't be found or doesn't fit.
    #[error("--direct on disk image {name}: {reason}")]
    Direct {
        /// The path or `fd N`.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    name: String,
    size: u64,
    read_only: bool,
    block_device: bool,
    direct: Option<DirectAlignment>,
}

impl Disk {
    /// Opens the image at `path`. `O_NOATIME` is asked for (every guest read would
    /// otherwise update the image's access time), and dropped if we don't own the file.
    pub fn open(path: &Path, options: DiskOptions) -> Result<Disk, DiskError> {
        let name = path.display().to_string();
        let mut flags = libc::O_CLOEXEC;
        if options.direct {
            flags |= libc::O_DIRECT;
        }
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .write(!options.read_only)
                .custom_flags(flags)
                .open(path)
        };
        let file = match open(flags | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(flags),
            other => other,
        }
        .map_err(|source| DiskError::Open {
            name: name.clone(),
            source,
        })?;
        Disk::new(file, name, options)
    }

    /// Takes over an image descriptor opened by whoever started us (`--disk-fd`). `name`
    /// is what messages call it. `O_DIRECT` is set on it when asked for.
    pub fn from_fd(fd: OwnedFd, name: String, options: DiskOptions) -> Result<Disk, DiskError> {
        let file = File::from(fd);
        let inspect = |source| DiskError::Inspect {
            name: name.clone(),
            source,
        };
        let mut fl = fcntl(&file, FcntlArg::F_GETFL)
            .map(OFlag::from_bits_retain)
            .map_err(|e| inspect(e.into()))?;
        if !options.read_only && fl & OFlag::O_ACCMODE == OFlag::O_RDONLY {
            return Err(DiskError::FdReadOnly { name });
        }
        // Best effort, as in `open`: only the file's owner may set O_NOATIME.
        if fcntl(&file, FcntlArg::F_SETFL(fl | OFlag::O_NOATIME)).is_ok() {
            fl |= OFlag::O_NOATIME;
        }
        if options.direct && !fl.contains(OFlag::O_DIRECT) {
            if let Err(e) = fcntl(&file, FcntlArg::F_SETFL(fl | OFlag::O_DIRECT)) {
                return Err(DiskError::Direct {
                    name,
                    reason: format!(
                        "setting O_DIRECT: {} (the file system may not support direct I/O)",
                        io::Error::from(e)
                    ),
                });
            }
        }
        Disk::new(file, name, options)
    }

    /// Takes over an image the launcher opened and inspected (`ToProcess::SwapDisk`): no
    /// system call is made here, so the jailed control thread needs none beyond receiving
    /// the fd. Refused: an empty or misaligned `size` (checked again, the launcher being
    /// only trusted to have measured it), or `direct` (the launcher does not open for
    /// `O_DIRECT` and the swap does not set it).
    pub fn adopt(
        fd: OwnedFd,
        name: String,
        size: u64,
        block_device: bool,
        options: DiskOptions,
    ) -> Result<Disk, DiskError> {
        let name = check_size(name, size, &options)?;
        if options.direct {
            return Err(DiskError::Direct {
                name,
                reason: "an image swapped in on a running VM is not served with O_DIRECT".into(),
            });
        }
        Ok(Disk {
            file: File::from(fd),
            name,
            size,
            read_only: options.read_only,
            block_device,
            direct: None,
        })
    }

    fn new(file: File, name: String, options: DiskOptions) -> Result<Disk, DiskError> {
        let inspect = |source| DiskError::Inspect {
            name: name.clone(),
            source,
        };
        let file_type = file.metadata().map_err(inspect)?.file_type();
        let block_device = file_type.is_block_device();
        let size = if file_type.is_file() {
            file.metadata().map_err(inspect)?.len()
        } else if block_device {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
            if let Err(e) = unsafe { blkgetsize64(file.as_raw_fd(), &mut size) } {
                return Err(inspect(e.into()));
            }
            size
        } else {
            return Err(DiskError::NotADisk { name });
        };
        let name = check_size(name, size, &options)?;
        let direct = if options.direct {
            let alignment =
                direct_alignment(&file, block_device).map_err(|reason| DiskError::Direct {
                    name: name.clone(),
                    reason,
                })?;
            if alignment.offset > u64::from(options.logical_block_size) {
                return Err(DiskError::Direct {
                    name,
                    reason: format!(
                        "the image needs {}-byte aligned I/O, larger than the logical block \
                         size {}; pass --logical-block-size {}",
                        alignment.offset, options.logical_block_size, alignment.offset
                    ),
                });
            }
            Some(alignment)
        } else {
            None
        };
        Ok(Disk {
            file,
            name,
            size,
            read_only: options.read_only,
            block_device,
            direct,
        })
    }

    /// What messages call the image (its path, or `fd N`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the image is a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The `O_DIRECT` alignment, when the image is open with `O_DIRECT`.
    pub fn direct_alignment(&self) -> Option<DirectAlignment> {
        self.direct
    }

    /// Reads exactly the bytes the iovecs describe, from `offset` on. `iovs` is consumed
    /// (advanced past what was transferred). A read that reaches the end of the file early
    /// fails with `UnexpectedEof`.
    ///
    /// # Safety
    /// Each iovec must describe memory that is valid for writes of `iov_len` bytes for the
    /// duration of the call and that no Rust reference aliases.
    pub unsafe fn read_exact_vectored_at(
        &self,
        iovs: &mut [libc::iovec],
        offset: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller's contract covers the buffers; preadv only writes into them.
        unsafe { self.transfer(iovs, offset, false) }
    }

    /// Writes exactly the bytes the iovecs describe, at `offset`. `iovs` is consumed.
    ///
    /// # Safety
    /// Each iovec must describe memory that is valid for reads of `iov_len` bytes for the
    /// duration of the call.
    pub unsafe fn write_all_vectored_at(
        &self,
        iovs: &mut [libc::iovec],
        offset: u64,
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        // SAFETY: the caller's contract covers the buffers; pwritev only reads them.
        unsafe { self.transfer(iovs, offset, true) }
    }

    /// The loop behind both directions: short transfers are resumed, `EINTR` retried.
    ///
    /// # Safety
    /// As for the two public callers, for the direction given by `write`.
    unsafe fn transfer(
        &self,
        iovs: &mut [libc::iovec],
        offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut first = 0;
        let mut offset = offset;
        while first < iovs.len() {
            if iovs[first].iov_len == 0 {
                first += 1;
                continue;
            }
            let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
            let file_offset = libc::off64_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let done = if write {
                // SAFETY: the iovecs describe readable memory (caller's contract).
                unsafe { sys::pwritev(&self.file, batch, file_offset) }
            } else {
                // SAFETY: the iovecs describe writable, unaliased memory (caller's contract).
                unsafe { sys::preadv(&self.file, batch, file_offset) }
            };
            let done = match done {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            // `done` is positive and at most the batch's total length.
            let mut left = done;
            offset += left as u64;
            while left > 0 && first < iovs.len() {
                let iov = &mut iovs[first];
                let step = left.min(iov.iov_len);
                // Advancing within the buffer the caller described: stays in bounds.
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(step).cast();
                iov.iov_len -= step;
                left -= step;
                if iov.iov_len == 0 {
                    first += 1;
                }
            }
        }
        Ok(())
    }

    /// Reads into a plain buffer (used for bounce buffers).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec is `buf`, which we borrow mutably for the call.
        unsafe { self.read_exact_vectored_at(&mut iov, offset) }
    }

    /// Writes a plain buffer (used for bounce buffers).
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut iov = [libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec is `buf`, borrowed for the call; pwritev only reads it.
        unsafe { self.write_all_vectored_at(&mut iov, offset) }
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `[offset, offset + len)` (`FALLOC_FL_PUNCH_HOLE`); it reads back as
    /// zeros. Discard is a hint, so an image whose file system can't punch holes succeeds
    /// without doing anything.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        match self.fallocate(FallocateFlags::FALLOC_FL_PUNCH_HOLE, offset, len) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Makes `[offset, offset + len)` read as zeros: `FALLOC_FL_PUNCH_HOLE` when `unmap`
    /// (the guest allows deallocation), else `FALLOC_FL_ZERO_RANGE`; when the file system
    /// refuses both, by writing zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if unmap {
            match self.fallocate(FallocateFlags::FALLOC_FL_PUNCH_HOLE, offset, len) {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        match self.fallocate(FallocateFlags::FALLOC_FL_ZERO_RANGE, offset, len) {
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len),
            other => other,
        }
    }

    fn fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            let mode = mode | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match nix::fcntl::fallocate(&self.file, mode, off, len) {
                Ok(()) => return Ok(()),
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes zeros from a static, page-aligned zero buffer, 1 MiB per system call.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        const PER_CALL: usize = 16;
        let chunk = ZEROS.0.len() as u64;
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; PER_CALL];
        let mut done = 0u64;
        while done < len {
            let mut n = 0;
            let mut batch = 0u64;
            while n < PER_CALL && done + batch < len {
                let this = chunk.min(len - done - batch);
                iovs[n] = libc::iovec {
                    // pwritev only reads through this pointer (a static, never written).
                    iov_base: ZEROS.0.as_ptr().cast_mut().cast(),
                    iov_len: this as usize,
                };
                batch += this;
                n += 1;
            }
            // SAFETY: every iovec points into the static zero buffer and is no longer
            // than it; pwritev only reads them.
            unsafe { self.write_all_vectored_at(&mut iovs[..n], offset + done)? };
            done += batch;
        }
        Ok(())
    }
}

/// `size` is a disk's: not empty, a whole number of logical blocks (at least sectors).
/// Gives `name` back for the caller's next error.
fn check_size(name: String, size: u64, options: &DiskOptions) -> Result<String, DiskError> {
    if size == 0 {
        return Err(DiskError::Empty { name });
    }
    let multiple = SECTOR_SIZE.max(u64::from(options.logical_block_size));
    if size % multiple != 0 {
        return Err(DiskError::Misaligned {
            name,
            size,
            multiple,
        });
    }
    Ok(name)
}

/// 64 KiB of zeros, 4 KiB aligned so it also serves `O_DIRECT` images.
#[repr(C, align(4096))]
struct Zeros([u8; 65536]);
static ZEROS: Zeros = Zeros([0; 65536]);

/// Errors meaning "this file system or device can't do that operation".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// Finds the `O_DIRECT` alignment: `statx(STATX_DIOALIGN)` (Linux 6.1+), or the logical
/// sector size of a block device (`BLKSSZGET`). When neither answers, `--direct` is refused
/// rather than guessed, because a wrong guess fails every request with `EINVAL`.
fn direct_alignment(file: &File, block_device: bool) -> Result<DirectAlignment, String> {
    if let Some((memory, offset)) = sys::statx_dio_align(file) {
        if memory == 0 || offset == 0 {
            return Err("its file system does not support direct I/O".into());
        }
        return Ok(DirectAlignment {
            memory: memory as usize,
            offset: u64::from(offset),
        });
    }
    if block_device {
        let mut sector: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points at `sector`.
        if unsafe { blksszget(file.as_raw_fd(), &mut sector) }.is_ok() && sector > 0 {
            return Ok(DirectAlignment {
                memory: sector as usize,
                offset: sector as u64,
            });
        }
    }
    Err(
        "cannot determine the alignment direct I/O needs (statx STATX_DIOALIGN is not \
         reported; Linux 6.1 or later reports it); run without --direct"
            .into(),
    )
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
