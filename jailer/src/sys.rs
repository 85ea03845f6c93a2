//! Where nix falls short: the raw system calls the launcher and `bulkhead-jailer` still
//! make themselves outside the jail's clone child. Everything else goes through nix's safe
//! wrappers.
//!
//! The jail's child, between `clone3` and `exec`, makes its calls raw in its own module
//! (`jail/clone.rs`, with the fd placement of `jail/fds.rs` and the limits of
//! `jail/rlimits.rs` it calls): it may not allocate or take a lock (the parent is
//! multi-threaded), and `clone3`, `execveat`, `close_range` have no nix wrapper. The
//! parent's side of that child (`jail/child.rs`, `jail/mod.rs`) keeps `waitid(P_PIDFD)`
//! raw (nix's turns a real-time signal, such as the vmm's kick, into an error, where the
//! exit status must be reported) and `pidfd_send_signal` (no wrapper). Ioctls (TUN,
//! interface flags) and `flock` (nix 0.32 deprecates its `flock` for an owning `Flock`
//! that would change who holds the lock) stay where they are used.
//!
//! | Call | Why not nix |
//! |---|---|
//! | `sigtimedwait` | nix has `sigwait` only, with no timeout |
//! | `prlimit` on another process | nix has `setrlimit` (own process) only |
//! | `pidfd_open` | no wrapper in nix 0.32 |
//! | `sched_setscheduler(SCHED_IDLE)` | nix's `sched` has affinity only |
//! | `seccomp(SECCOMP_GET_ACTION_AVAIL)` | no wrapper in nix |
//! | `setgroups(0, NULL)` as a system call | glibc's (and so nix's) applies it to every thread; `open_as` changes only the calling thread |
//! | the pre-exec steps of a plain (not jailed) child: `fcntl(F_DUPFD_CLOEXEC)`, `dup2` onto fixed numbers, `setsid`, `PR_SET_PDEATHSIG`, `getppid` | run between fork and exec on fd numbers that no Rust object owns in the child; nix's `dup2` wants an `OwnedFd` target that it would close on drop |

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

/// Waits up to `timeout` for one of `set` (blocked by the caller); the signal, if one came.
pub fn sigtimedwait(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is an initialised sigset for the call's duration; a null info pointer is
    // allowed; `ts` is a local.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(sig).ok()
}

/// Sets RLIMIT_FSIZE of process `pid` (soft and hard) to `size`.
pub fn set_file_size_limit(pid: i32, size: u64) -> io::Result<()> {
    let new = libc::rlimit {
        rlim_cur: size,
        rlim_max: size,
    };
    // SAFETY: prlimit reads `new`, a local; the old value is not asked for (null).
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd of process `pid` (which the caller keeps from being reaped).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Moves the calling process to the SCHED_IDLE scheduling class.
pub fn sched_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: reads `param`, a local.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the kernel's seccomp can take action `action` (SECCOMP_GET_ACTION_AVAIL).
pub fn seccomp_action_available(action: u32) -> io::Result<()> {
    let mut action = action;
    // SAFETY: the kernel reads one u32 through the pointer, a local.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &mut action as *mut u32,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops the calling thread's supplementary groups (the system call, which changes only
/// this thread).
pub fn drop_groups_this_thread() -> io::Result<()> {
    // SAFETY: setgroups with size 0 reads no memory.
    if unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most fds a plain child is given by [`place_fds`].
pub const MAX_PLACED_FDS: usize = 64;

/// In a forked child (allocation-free): makes each `(from, to)` fd available as `to`,
/// inheritable. Goes through temporary copies so that a `from` equal to another pair's `to`
/// is not clobbered.
pub fn place_fds(pairs: &[(RawFd, RawFd)]) -> io::Result<()> {
    const TEMP_BASE: RawFd = 100;
    let mut temps = [0 as RawFd; MAX_PLACED_FDS];
    if pairs.len() > temps.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (i, (from, _)) in pairs.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd number; no memory is touched.
        let t = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, TEMP_BASE) };
        if t < 0 {
            return Err(io::Error::last_os_error());
        }
        temps[i] = t;
    }
    for (i, (_, to)) in pairs.iter().enumerate() {
        // SAFETY: dup2 between fds of this (child) process; the new fd does not have
        // FD_CLOEXEC, so it survives exec.
        if unsafe { libc::dup2(temps[i], *to) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In a forked child (allocation-free): a session of its own, and death with the parent
/// (`signal`); fails if the parent is already gone.
pub fn detach_and_tie_to_parent(signal: Signal) -> io::Result<()> {
    // SAFETY: setsid, prctl(PR_SET_PDEATHSIG) and getppid touch no memory of ours.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_int) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() == 1 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::raise;
    use std::os::fd::AsFd;

    #[test]
    fn sigtimedwait_takes_a_pending_signal_and_times_out_without_one() {
        // On a thread of its own: the mask and the pending signal are that thread's.
        std::thread::spawn(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGUSR2);
            set.thread_block().expect("blocking SIGUSR2");
            let none = sigtimedwait(&set, Duration::from_millis(20));
            assert_eq!(none, None);
            // raise(3) signals the calling thread.
            raise(Signal::SIGUSR2).expect("raise");
            let got = sigtimedwait(&set, Duration::from_secs(5));
            assert_eq!(got, Some(Signal::SIGUSR2));
        })
        .join()
        .expect("the signal thread");
    }

    #[test]
    fn a_pidfd_becomes_readable_when_its_process_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("starting sleep");
        let pidfd = pidfd_open(child.id() as i32).expect("pidfd_open");
        let readable = |ms: u16| {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            nix::poll::poll(&mut fds, PollTimeout::from(ms)).expect("poll") == 1
        };
        assert!(!readable(0), "readable while the process runs");
        child.kill().expect("killing sleep");
        assert!(readable(5000), "not readable once the process ended");
        child.wait().expect("reaping sleep");
    }
}
