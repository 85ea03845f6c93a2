//! Removing the socket a backend created (`--socket-path`) when it exits. Landlock denies
//! the confined process every filesystem access, unlink included, so a small process
//! forked before the jail (while the backend is single-threaded) waits for the backend's
//! end (the end of a pipe only the backend holds: any exit, SIGKILL too) and then removes
//! the path if it still names the socket that was bound (same device and inode), so a file
//! put there meanwhile is kept. It inherits the blocked SIGTERM/SIGINT, so a signal to the
//! whole process group (Ctrl-C) does not end it before its work.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::unistd::ForkResult;

use crate::sys;

/// The pipes' write ends, held for the process's life (one per keeper: a process may run
/// several daemons, as the tests do).
static HELD: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Forks the keeper for the socket at `path` (just bound). Call while single-threaded.
pub(super) fn keep(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let bound = identity(&c_path)?;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the process is single-threaded (the caller's contract, checked again by
    // finish_jail), so the child may run any code; it only makes the calls below and
    // leaves with _exit.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            drop(write);
            wait_and_remove(read, &c_path, bound);
        }
        ForkResult::Parent { .. } => {
            drop(read);
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(write);
            Ok(())
        }
    }
}

/// (device, inode) of the socket at `path`; an error if it is not a socket.
fn identity(path: &CString) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::lstat(path.as_c_str())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    Ok((st.st_dev, st.st_ino))
}

/// The keeper: closes everything but the pipe, waits for its end, removes the socket.
fn wait_and_remove(read: OwnedFd, path: &CString, bound: (u64, u64)) -> ! {
    let _ = nix::sys::prctl::set_name(c"socket-keeper");
    // Nothing of the backend's (its disk, the frontend's socket, its stderr: a reader of
    // that pipe sees its end when the backend exits) stays open here: close_range either
    // side of the pipe's end.
    let n = read.as_raw_fd() as u32;
    if n > 0 {
        let _ = sys::close_range(0, n - 1);
    }
    let _ = sys::close_range(n + 1, u32::MAX);
    let mut byte = [0u8];
    while let Err(nix::Error::EINTR) = nix::unistd::read(&read, &mut byte) {}
    if identity(path).is_ok_and(|now| now == bound) {
        let _ = nix::unistd::unlink(path.as_c_str());
    }
    sys::exit_now(0)
}
