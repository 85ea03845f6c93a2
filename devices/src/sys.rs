//! Where nix falls short: the raw system calls the device backends still make themselves,
//! because nix cannot make them as the backends need them. Everything else goes through
//! nix's wrappers (or std's); other `unsafe` in this crate is about memory (guest memory,
//! shared mappings), not about calling the kernel.
//!
//! | Call | Why not nix |
//! |---|---|
//! | the `fstat` system call ([`fstat`]) | nix's `fstat` calls libc's, which glibc makes as `newfstatat` (and std's `metadata` as `statx`): the vhost-user seccomp role allows `fstat` only |
//! | `close_range` ([`close_range`]) | nix 0.32 has no `close_range` |
//! | `getrandom` ([`getrandom`]) | nix 0.32 has no `getrandom` (and std exposes none) |
//! | `fcntl(F_GETFD)` on a number ([`check_open`]) | nix's `fcntl` takes a `BorrowedFd`, which an inherited fd number is not until it is checked open and adopted |
//! | `getsockopt(SOL_SOCKET, SO_DOMAIN)` ([`socket_int_option`]) | nix 0.32 has no `SO_DOMAIN` option, and its `SockType` fails on a type it does not know where we want "not a stream" |
//! | `POLLRDHUP` ([`POLLRDHUP`], [`peer_hung_up`]) | nix's `PollFlags` cannot name it, and `PollFd::revents` gives `None` when the kernel sets it |
//! | `_exit` ([`exit_now`]) | nix 0.32 has no `_exit`; std's `exit` runs the atexit handlers and flushes stdio, which a forked child of a threaded process must not |
//! | `preadv64`/`pwritev64` on raw iovecs (`block::disk`, `image::qcow2`) | the iovecs point into guest memory, which may change under us (another vCPU, the frontend): nix's `preadv`/`pwritev` take `IoSliceMut`/`IoSlice`, i.e. Rust slices, which must not alias memory changed behind Rust's back |
//! | `readv`/`writev` on raw iovecs (`net::device`) | as `preadv`/`pwritev`: the iovecs point into guest memory |
//! | borrowing an `EventFd`'s fd ([`event_fd`]) | vmm-sys-util's `EventFd` implements `AsRawFd` but not `AsFd`, which nix's `poll` wants |
//! | `statx` for `STATX_DIOALIGN` (`block::disk`) | nix 0.32 has no `statx` |
//! | `accept4`/`ptrace` for `--seccomp-selftest` ([`provoke_accept4`], [`provoke_ptrace`], called by `daemon::thread_name`) | a self-test makes exactly the forbidden system call it names, with arguments that harm nothing when it is allowed (nix could make `accept4`, and `ptrace` only with its `ptrace` feature, which the workspace does not enable) |

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::poll::{PollFd, PollFlags};
use vmm_sys_util::eventfd::EventFd;

/// Poll for the peer's end of a stream socket (`POLLRDHUP`, which nix cannot name).
pub const POLLRDHUP: PollFlags = PollFlags::from_bits_retain(libc::POLLRDHUP);

/// Whether `p`, polled for [`POLLRDHUP`] alone, saw the peer hang up, or one of `also`
/// (some of POLLHUP, POLLERR, POLLNVAL).
///
/// nix gives no flags when the kernel sets one it does not know; the kernel reports only
/// the events asked and POLLERR/POLLHUP/POLLNVAL, so the only such flag is POLLRDHUP.
pub fn peer_hung_up(p: &PollFd, also: PollFlags) -> bool {
    p.revents().is_none_or(|r| r.intersects(also))
}

/// Fills `bytes` from the kernel's random pool (`getrandom`); with `nonblock`
/// (`GRND_NONBLOCK`) fails rather than waits for the pool to be seeded. A short read is an
/// error too.
pub fn getrandom(bytes: &mut [u8], nonblock: bool) -> io::Result<()> {
    let flags = if nonblock { libc::GRND_NONBLOCK } else { 0 };
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), flags) };
    match usize::try_from(n) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(io::ErrorKind::UnexpectedEof.into()),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// Whether fd number `fd`, not yet owned by anything here (an inherited descriptor named on
/// the command line), is open (`fcntl(F_GETFD)`).
pub fn check_open(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only queries the descriptor's flags; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `stat` of `fd` by the `fstat` system call (not glibc's `newfstatat`, not std's
/// `statx`): the only one the vhost-user seccomp role allows.
pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the fstat system call writes only `st`, a buffer of the kernel's `struct
    // stat` for this architecture (libc::stat), and reads nothing but the fd number; it
    // fully initialises `st` when it returns 0.
    unsafe {
        if libc::syscall(libc::SYS_fstat, fd.as_raw_fd(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.assume_init())
    }
}

/// Closes every descriptor from `first` to `last` (inclusive; `close_range` with no flags).
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range reads no memory of ours; the caller owns (and gives up) every
    // descriptor in the range.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends this process at once (`_exit`): no atexit handlers, no destructors, no stdio
/// flush. For a forked child, which must not run the parent's.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit reads no memory of ours and does not return.
    unsafe { libc::_exit(code) }
}

/// The integer socket option `option` (`SOL_SOCKET` level) of `fd`.
pub fn socket_int_option(fd: &impl AsRawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that big.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// For `--seccomp-selftest`: the `accept4` system call on fd -1, which only fails (EBADF)
/// when the filter allows it (a narrowed queue thread's filter does not).
pub fn provoke_accept4() {
    // SAFETY: accept4 on fd -1 with null address pointers only fails (EBADF) when allowed.
    unsafe { libc::syscall(libc::SYS_accept4, -1, 0, 0, 0) };
}

/// For `--seccomp-selftest`: a `ptrace` system call, which no allowlist has.
///
/// Not PTRACE_TRACEME: allowed (--seccomp log) on a thread other than the leader (a
/// standalone backend's vu-conn), it made that thread the parent's tracee, and the process
/// could not be reaped once it exited. PEEKDATA on pid 0 only fails (ESRCH).
pub fn provoke_ptrace() {
    // SAFETY: PTRACE_PEEKDATA of no process; the null address is never read.
    unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKDATA, 0, 0, 0) };
}

/// `preadv64`: reads into the memory `iovs` describe, at `offset` of `fd`; at most
/// `UIO_MAXIOV` (1024) iovecs. Gives the byte count (0 at end of file).
///
/// # Safety
/// Each iovec must describe memory valid for writes of `iov_len` bytes for the duration of
/// the call, which nothing else reads or writes through a Rust reference meanwhile.
pub unsafe fn preadv(fd: &impl AsRawFd, iovs: &[libc::iovec], offset: i64) -> io::Result<usize> {
    let count = libc::c_int::try_from(iovs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the iovecs describe writable memory (the caller's contract) and the count
    // is the slice's length.
    let n = unsafe { libc::preadv64(fd.as_raw_fd(), iovs.as_ptr(), count, offset) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `pwritev64`: writes the memory `iovs` describe at `offset` of `fd`; at most `UIO_MAXIOV`
/// (1024) iovecs. Gives the byte count.
///
/// # Safety
/// Each iovec must describe memory valid for reads of `iov_len` bytes for the duration of
/// the call.
pub unsafe fn pwritev(fd: &impl AsRawFd, iovs: &[libc::iovec], offset: i64) -> io::Result<usize> {
    let count = libc::c_int::try_from(iovs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the iovecs describe readable memory (the caller's contract) and the count is
    // the slice's length.
    let n = unsafe { libc::pwritev64(fd.as_raw_fd(), iovs.as_ptr(), count, offset) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `readv`: reads from `fd` into the memory `iovs` describe; at most `UIO_MAXIOV` iovecs.
///
/// # Safety
/// Each iovec must describe memory valid for writes of `iov_len` bytes for the duration of
/// the call, which nothing else reads or writes through a Rust reference meanwhile.
pub unsafe fn readv(fd: &impl AsRawFd, iovs: &[libc::iovec]) -> io::Result<usize> {
    let count = libc::c_int::try_from(iovs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the iovecs describe writable memory (the caller's contract) and the count
    // is the slice's length.
    let n = unsafe { libc::readv(fd.as_raw_fd(), iovs.as_ptr(), count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `writev`: writes the memory `iovs` describe to `fd`; at most `UIO_MAXIOV` iovecs.
///
/// # Safety
/// Each iovec must describe memory valid for reads of `iov_len` bytes for the duration of
/// the call.
pub unsafe fn writev(fd: &impl AsRawFd, iovs: &[libc::iovec]) -> io::Result<usize> {
    let count = libc::c_int::try_from(iovs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the iovecs describe readable memory (the caller's contract) and the count is
    // the slice's length.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iovs.as_ptr(), count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `event`'s fd, borrowed for as long as `event` is.
pub fn event_fd(event: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: an EventFd owns its fd and closes it only when dropped, which the borrow of
    // `event` (the returned lifetime) rules out.
    unsafe { BorrowedFd::borrow_raw(event.as_raw_fd()) }
}

/// The alignments `(memory, offset)` direct I/O on `fd` needs, from `statx`'s
/// `STATX_DIOALIGN` (Linux 6.1+); `None` when the kernel does not report them. Zeros mean
/// the file system does not support direct I/O.
pub fn statx_dio_align(fd: &impl AsRawFd) -> Option<(u32, u32)> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx with AT_EMPTY_PATH on the descriptor writes one `struct statx` into
    // `stx`, which is sized for it; the path is a NUL-terminated empty string.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return None;
    }
    // SAFETY: statx succeeded, so it filled the structure (and it was zeroed before).
    let stx = unsafe { stx.assume_init() };
    (stx.stx_mask & libc::STATX_DIOALIGN != 0)
        .then_some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstat_sees_a_file_and_refuses_a_closed_fd() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let st = fstat(&file).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
        let e = fstat(&-1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn peer_hung_up_sees_the_peer_close() {
        use nix::poll::{poll, PollTimeout};
        use std::os::fd::AsFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let also = PollFlags::POLLHUP | PollFlags::POLLERR;
        let mut pfd = [PollFd::new(a.as_fd(), POLLRDHUP)];
        assert_eq!(poll(&mut pfd, PollTimeout::ZERO).unwrap(), 0);
        assert!(!peer_hung_up(&pfd[0], also), "peer still there");
        drop(b);
        let mut pfd = [PollFd::new(a.as_fd(), POLLRDHUP)];
        assert_eq!(poll(&mut pfd, PollTimeout::ZERO).unwrap(), 1);
        assert!(peer_hung_up(&pfd[0], also), "peer gone");
    }

    #[test]
    fn getrandom_fills_the_buffer() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        getrandom(&mut a, false).unwrap();
        getrandom(&mut b, true).unwrap();
        assert_ne!(a, b);
    }
}
