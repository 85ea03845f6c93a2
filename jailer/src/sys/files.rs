//! `flock` (nix 0.32 deprecates its `flock` for an owning `Flock`, which would change who
//! holds the lock) and the generic `ioctl` the interface configuration uses with several
//! `struct ifreq` layouts.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `flock(fd, operation)` (`LOCK_EX`, `LOCK_NB`, ...); the lock goes with the open file.
pub fn flock(fd: BorrowedFd<'_>, operation: i32) -> io::Result<()> {
    // SAFETY: flock on a descriptor borrowed for the call; no memory is passed.
    if unsafe { libc::flock(fd.as_raw_fd(), operation) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ioctl(fd, request, arg)` with a pointer to `arg`.
///
/// # Safety
/// `T` must be the layout (and size) the kernel reads and writes for `request`.
pub unsafe fn ioctl_mut<T>(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: &mut T,
) -> io::Result<()> {
    // SAFETY: `arg` is valid for reading and writing across the call, and the caller
    // guarantees its layout is the one `request` expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
