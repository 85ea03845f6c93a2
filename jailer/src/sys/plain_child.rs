//! The pre-exec steps of a plain (not jailed) child, run by `Command::pre_exec` between
//! fork and exec: allocation-free, on fd numbers that no Rust object owns in the child
//! (nix's `dup2` wants an `OwnedFd` target that it would close on drop).

use std::io;
use std::os::fd::RawFd;

use nix::sys::signal::Signal;

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
