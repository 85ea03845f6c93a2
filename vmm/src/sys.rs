//! Where nix falls short: the raw system calls the vmm still makes itself, because nix
//! cannot make them as the vmm needs them, and the poll flag nix cannot name. Everything
//! else goes through nix's safe wrappers.
//!
//! | Call | Why not nix |
//! |---|---|
//! | `pthread_kill` with the kick signal | nix's `Signal` cannot name a real-time signal (the kick is `SIGRTMIN`) |
//! | borrowing an `EventFd`'s fd | vmm-sys-util's `EventFd` (what kvm-ioctls takes) implements `AsRawFd` but not `AsFd`, which nix's `poll` wants |
//! | `POLLRDHUP` | nix's `PollFlags` lacks it: [`POLLRDHUP`] and [`peer_hung_up`] handle it |
//! | the `fstat` system call | nix's `fstat` calls libc's, which glibc makes as `newfstatat`: the vmm's seccomp filter allows `fstat` only; and an inherited fd number checked before it is adopted is no `BorrowedFd` yet |

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::poll::{PollFd, PollFlags};
use vmm_sys_util::eventfd::EventFd;

/// Poll for the peer's end of a stream socket (`POLLRDHUP`, which nix cannot name).
pub const POLLRDHUP: PollFlags = PollFlags::from_bits_retain(libc::POLLRDHUP);

/// Whether `p`, polled for [`POLLRDHUP`] alone, saw the peer hang up or an error in
/// `also` (some of POLLHUP, POLLERR, POLLNVAL).
///
/// nix returns no flags when the kernel sets one it does not know; the kernel reports only
/// the events asked and POLLERR/POLLHUP/POLLNVAL, so the only such flag is POLLRDHUP.
pub fn peer_hung_up(p: &PollFd, also: PollFlags) -> bool {
    p.revents().is_none_or(|r| r.intersects(also))
}

/// `event`'s fd, borrowed for as long as `event` is.
pub fn event_fd(event: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: an EventFd owns its fd and closes it only when dropped, which the borrow of
    // `event` (the returned lifetime) rules out.
    unsafe { BorrowedFd::borrow_raw(event.as_raw_fd()) }
}

/// Sends real-time signal `signal` to thread `thread`.
///
/// The caller makes sure `thread` has not been joined or detached (a dead pthread_t may
/// be reused).
pub fn signal_thread(thread: libc::pthread_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pthread_kill reads no memory of ours; the caller guarantees `thread` is a
    // live thread of this process.
    match unsafe { libc::pthread_kill(thread, signal) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The `stat` of fd number `fd` by the `fstat` system call (not glibc's `newfstatat`).
/// `fd` need not be open: that is an `EBADF` error.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the fstat system call writes only `st`, a buffer of the kernel's `struct
    // stat` for this architecture (libc::stat), and reads nothing but the fd number; it
    // fully initialises `st` when it returns 0.
    unsafe {
        if libc::syscall(libc::SYS_fstat, fd, st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.assume_init())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn fstat_sees_a_file_and_refuses_a_closed_fd() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let st = fstat(file.as_raw_fd()).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
        let e = fstat(-1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn signal_zero_reaches_a_live_thread() {
        use std::os::unix::thread::JoinHandleExt;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        // Signal 0 only checks that the thread exists; it waits on `rx` till `tx` goes.
        signal_thread(t.as_pthread_t(), 0).unwrap();
        drop(tx);
        t.join().unwrap().unwrap_err();
    }
}
