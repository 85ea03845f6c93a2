//! Removing the socket a backend created (`--socket-path`) when it exits. Landlock denies
//! the confined process every filesystem access, unlink included, so a small process
//! forked before the jail (while the backend is single-threaded) waits for the backend's
//! end (the end of a pipe only the backend holds: any exit, SIGKILL too) and then removes
//! the path if it still names the socket that was bound (same device and inode), so a file
//! put there meanwhile is kept. It inherits the blocked SIGTERM/SIGINT, so a signal to the
//! whole process group (Ctrl-C) does not end it before its work.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

/// The pipes' write ends, held for the process's life (one per keeper: a process may run
/// several daemons, as the tests do).
static HELD: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Forks the keeper for the socket at `path` (just bound). Call while single-threaded.
pub(super) fn keep(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let bound = identity(&c_path)?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which has room for them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded (the caller's contract, checked again by
    // finish_jail), so the child may run any code; it only makes the calls below and
    // leaves with _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(write);
            wait_and_remove(read.as_raw_fd(), &c_path, bound);
        }
        _ => {
            drop(read);
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(write);
            Ok(())
        }
    }
}

/// (device, inode) of the socket at `path`; an error if it is not a socket.
fn identity(path: &CString) -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero stat is a valid value for lstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable and of the right type.
    if unsafe { libc::lstat(path.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    Ok((st.st_dev, st.st_ino))
}

/// The keeper: closes everything but the pipe, waits for its end, removes the socket.
fn wait_and_remove(read: RawFd, path: &CString, bound: (u64, u64)) -> ! {
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"socket-keeper".as_ptr()) };
    // Nothing of the backend's (its disk, the frontend's socket, its stderr: a reader of
    // that pipe sees its end when the backend exits) stays open here.
    // SAFETY: close_range on descriptor ranges; the pipe's end is outside both.
    unsafe {
        if read > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (read - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (read + 1) as u32, u32::MAX, 0u32);
    }
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`.
        let n = unsafe { libc::read(read, (&mut byte as *mut u8).cast(), 1) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    if identity(path).is_ok_and(|now| now == bound) {
        // SAFETY: `path` is NUL-terminated.
        unsafe { libc::unlink(path.as_ptr()) };
    }
    // SAFETY: ends this process without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}
