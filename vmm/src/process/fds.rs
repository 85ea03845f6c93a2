//! Inherited fds: checked before they are adopted.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

/// An inherited fd that cannot be what it is said to be.
#[derive(Debug, thiserror::Error)]
#[error("{what}: fd {fd} {why}")]
pub struct FdError {
    /// What it was for (a device name, `control`).
    pub what: String,
    /// The fd.
    pub fd: RawFd,
    /// What is wrong.
    pub why: String,
}

/// Checks that inherited `fd` (for `what`) is an open socket.
pub fn check_socket(what: &str, fd: RawFd) -> Result<RawFd, FdError> {
    let err = |why: String| FdError {
        what: what.to_owned(),
        fd,
        why,
    };
    let st = crate::sys::fstat(fd).map_err(|e| err(format!("is not open ({e})")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(err("is not a socket".into()));
    }
    Ok(fd)
}

/// Adopts inherited `fd` (for `what`: kernel, initrd, serial file) as a file; it must be
/// open and not a directory or socket. The caller makes sure no other owner of `fd`
/// exists in this process.
pub fn take_file(what: &str, fd: RawFd) -> Result<File, FdError> {
    let err = |why: String| FdError {
        what: what.to_owned(),
        fd,
        why,
    };
    if fd <= 2 {
        return Err(err("must be above 2".into()));
    }
    let st = crate::sys::fstat(fd).map_err(|e| err(format!("is not open ({e})")))?;
    if matches!(st.st_mode & libc::S_IFMT, libc::S_IFDIR | libc::S_IFSOCK) {
        return Err(err("is a directory or a socket, not a file".into()));
    }
    // SAFETY: an inherited fd, open (checked), given for `what` alone (the caller checked
    // that no other argument names it); nothing else in this process owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}
