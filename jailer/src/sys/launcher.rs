//! The launcher's own raw calls (outside any child): calls nix has no wrapper for, or
//! whose nix wrapper makes a different system call or acts on every thread.

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
